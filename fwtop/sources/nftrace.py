"""Kernel-confirmed tracing of one flow with nftrace, in the calling thread's namespace.

fwtop adds its own `owner` table (prerouting and output at priority -350) whose one rule marks
packets of the flow, rate-limited, with `meta nftrace set 1`; the kernel then reports every
nf_tables rule each marked packet meets on NFNLGRP_NFTRACE. The table belongs to fwtop's
libnftables socket: the kernel deletes it when the session closes or fwtop dies, even by
SIGKILL, so nothing is left behind. iptables-legacy tables are not nf_tables and never appear
in a trace.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time

from fwtop.core.nftrace import (
    NFNLGRP_NFTRACE,
    KernelTrace,
    ParseStats,
    group_traces,
    parse_trace,
    trace_table,
)
from fwtop.firewall.libnft import NftError, NftSession

SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_NETFILTER = 12
TABLE_PREFIX = "fwtop_trace_"


class TraceError(Exception):
    pass


class NftraceSession:
    def __init__(self, match: str, rate_per_s: int = 5) -> None:
        if os.geteuid() != 0:
            raise TraceError("tracing needs root (it adds a temporary nftables table)")
        self.table = f"{TABLE_PREFIX}{os.getpid()}"
        self.stats = ParseStats()
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   NETLINK_NETFILTER)
        try:
            self._sock.bind((0, 0))
            self._sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTRACE)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            self._nft = NftSession()
        except (OSError, NftError) as exc:
            self._sock.close()
            raise TraceError(f"cannot start nftrace: {exc}") from None
        try:
            self._nft.run(trace_table(self.table, match, rate_per_s))
        except NftError as exc:
            self.close()
            raise TraceError(f"cannot add the trace table: {exc}") from None
        self.lost = 0

    def collect(self, timeout: float, want: int = 1, quiet: float = 0.3) -> list[KernelTrace]:
        """Traces of up to `want` packets: waits up to `timeout` s for the first, and until no
        step came for `quiet` s after the last (a packet's steps arrive over several hooks)."""
        traces: dict[int, KernelTrace] = {}
        done: list[KernelTrace] = []
        deadline = time.monotonic() + timeout
        # A busy flow traces without pause: "quiet for 0.3 s" never comes, so stop anyway once
        # enough packets are complete, and at the latest a moment after the deadline.
        hard_stop = deadline + max(1.0, 4 * quiet)
        last = first = None
        while True:
            now = time.monotonic()
            enough = len(done) + len(traces) >= want
            if last is not None and (now - last >= quiet) and enough:
                break
            if (first is not None and enough and now - first >= 4 * quiet) or now >= hard_stop:
                break
            if now >= deadline and (last is None or now - last >= quiet):
                break
            wait = quiet if last is not None else max(0.0, deadline - now)
            ready, _, _ = select.select([self._sock], [], [], min(wait, 0.1))
            if not ready:
                continue
            try:
                data = self._sock.recv(1 << 16)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.lost += 1
                    continue
                raise
            steps = parse_trace(data, self.stats)
            if steps:
                group_traces(steps, traces, done, TABLE_PREFIX)
                last = time.monotonic()
                first = first if first is not None else last
        done += traces.values()
        return [t for t in done if t.steps][:max(want, 1)]

    def close(self) -> None:
        nft = getattr(self, "_nft", None)
        if nft is not None:
            nft.close()  # the kernel removes the owner table with this socket
        self._sock.close()

    def __enter__(self) -> NftraceSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
