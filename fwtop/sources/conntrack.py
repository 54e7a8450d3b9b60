"""Kernel reader for the conntrack table of the calling thread's network namespace.

The cheap path, every tick: the entry count (/proc/sys/net/netfilter/nf_conntrack_count, the
namespace's own), the limit (nf_conntrack_max, host-wide and read-only inside a namespace),
the buckets, and the per-CPU statistics (/proc/thread-self/net/stat/nf_conntrack: the calling
thread's namespace, where /proc/net would be the process leader's). The files are opened once,
in the namespace, and re-read with pread: an open /proc file keeps the namespace it was opened
in, like a socket, and a tick costs a few microseconds whatever the table holds.

The breakdown: a ctnetlink dump (IPCTNL_MSG_CT_GET, NLM_F_DUMP) on a raw NETLINK_NETFILTER
socket, decoded by fwtop.core.ctnetlink straight into counters. pyroute2's conntrack module
was measured at 85 us per entry (NFCTSocket) and 360 us (Conntrack.dump_entries), 17 s and
72 s for 200,000 entries, against a 2 s budget; see docs/performance.md.

Live rates come from the per-CPU `insert` counter (new entries) and the count (net growth), not
from a NFNLGRP_CONNTRACK_NEW/DESTROY subscription: with the default nf_conntrack_events=2 a
listener makes the kernel build an event message for every connection of the namespace, a cost
fwtop should not add to a machine that is already in trouble.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Mapping
from types import TracebackType

from fwtop.core import ctnetlink
from fwtop.core.conntrack import (
    TIMEOUT_KEYS,
    Breakdown,
    BreakdownCounter,
    ConntrackStats,
    CpuStatTotals,
    StatsParseError,
    parse_cpu_stats,
)

SYSCTL_DIR = "sys/net/netfilter"
STAT_FILE = "thread-self/net/stat/nf_conntrack"
_SO_RCVBUFFORCE = 33
_RCVBUF = 4 << 20
_RECV_BUF = 1 << 20
_TIMEOUT_S = 10.0


class ConntrackUnavailable(Exception):
    """The table cannot be read; the message is one line meant for the user."""

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_


def _not_loaded(path: str) -> ConntrackUnavailable:
    return ConntrackUnavailable(
        f"connection tracking is off: {path} does not exist (the nf_conntrack module is not "
        "loaded; it loads when a rule uses conntrack, or with `modprobe nf_conntrack`)",
        errno.ENOENT)


def _dump_error(err: int) -> ConntrackUnavailable:
    if err in (errno.EPERM, errno.EACCES):
        return ConntrackUnavailable("dumping the conntrack table needs root (CAP_NET_ADMIN)", err)
    if err in (errno.EOPNOTSUPP, errno.EPROTONOSUPPORT, errno.ENOENT, errno.EAGAIN):
        return ConntrackUnavailable(
            "ctnetlink is not available (modprobe nf_conntrack_netlink)", err)
    return ConntrackUnavailable(f"conntrack dump failed: {os.strerror(err)} (errno {err})", err)


class ConntrackReader:
    """Reads the conntrack table of the namespace the creating thread is in.

    stats() is safe to call from any thread (the files are bound at open). breakdown() opens
    its netlink socket on first use, in the namespace of the thread that calls it, and keeps it
    (a dump cut short by `limit` closes it, and the next call opens a new one): call it from a
    thread inside the namespace. Not thread-safe: one reader per polling thread."""

    def __init__(self, proc_root: str = "/proc") -> None:
        self._root = proc_root
        self._fds: dict[str, int] = {}
        self._sock: socket.socket | None = None
        self._seq = int.from_bytes(os.urandom(2), "big") << 8
        self._buf = bytearray(_RECV_BUF)
        try:
            self._fds["count"] = self._open(f"{SYSCTL_DIR}/nf_conntrack_count")
            self._fds["max"] = self._open(f"{SYSCTL_DIR}/nf_conntrack_max")
        except FileNotFoundError as exc:
            self.close()
            raise _not_loaded(exc.filename or f"{proc_root}/{SYSCTL_DIR}") from None
        except PermissionError:
            self.close()
            raise ConntrackUnavailable("reading the conntrack count needs root",
                                       errno.EACCES) from None
        for name, rel in (("buckets", f"{SYSCTL_DIR}/nf_conntrack_buckets"),
                          ("stat", STAT_FILE)):
            try:
                self._fds[name] = self._open(rel)
            except OSError:
                pass  # optional: the snapshot says what it lacks
        self.stat_error: str | None = None if "stat" in self._fds else (
            f"{proc_root}/{STAT_FILE} is not readable: no per-CPU statistics")

    def _open(self, rel: str) -> int:
        return os.open(os.path.join(self._root, rel), os.O_RDONLY | os.O_CLOEXEC)

    # --- the cheap path

    def _read_int(self, name: str) -> int:
        raw = os.pread(self._fds[name], 64, 0)
        try:
            return int(raw.split()[0])
        except (ValueError, IndexError):
            raise ConntrackUnavailable(f"unexpected content in nf_conntrack_{name}: "
                                       f"{raw[:40]!r}") from None

    def read_timeouts(self) -> dict[str, int]:
        """The timeout sysctls of the namespace (those the kernel has), in seconds."""
        out: dict[str, int] = {}
        for key in TIMEOUT_KEYS:
            try:
                with open(os.path.join(self._root, SYSCTL_DIR, f"nf_conntrack_{key}"),
                          "rb") as fh:
                    out[key] = int(fh.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue
        return out

    def stats(self, timeouts: Mapping[str, int] | None = None) -> ConntrackStats:
        """Count, max, buckets and the summed per-CPU statistics, now. `timeouts` (from
        read_timeouts, which costs a dozen opens) is attached as given."""
        if not self._fds:
            raise ConntrackUnavailable("conntrack reader is closed")
        wall = time.time()
        ts = time.monotonic()
        count = self._read_int("count")
        max_ = self._read_int("max")
        buckets = self._read_int("buckets") if "buckets" in self._fds else None
        cpu = CpuStatTotals()
        available = False
        fd = self._fds.get("stat")
        if fd is not None:
            try:
                text = _pread_all(fd).decode("ascii", "replace")
                cpu = parse_cpu_stats(text)
                available = True
                self.stat_error = None
            except (OSError, StatsParseError) as exc:
                self.stat_error = f"per-CPU statistics unreadable: {exc}"
        return ConntrackStats(ts=ts, wall=wall, count=count, max=max_, buckets=buckets, cpu=cpu,
                              timeouts=dict(timeouts or {}), stats_available=available)

    # --- the breakdown

    def _socket(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                 ctnetlink.NETLINK_NETFILTER)
        except OSError as exc:
            raise _dump_error(exc.errno or errno.EPROTONOSUPPORT) from None
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _RCVBUF)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            sock.bind((0, 0))
            sock.settimeout(_TIMEOUT_S)
        except OSError as exc:
            sock.close()
            raise _dump_error(exc.errno or errno.EIO) from None
        self._sock = sock
        return sock

    def breakdown(self, timeouts: Mapping[str, int] | None = None, limit: int | None = None,
                  top: int = 10, oldest: int = 10, total: int | None = None,
                  min_hint_entries: int = 1000) -> Breakdown:
        """Dump the table and count what fills it. With `limit`, stop after that many entries
        (a sample: the kernel dumps in hash order) and scale to `total` (default: the count)."""
        if timeouts is None:
            timeouts = self.read_timeouts()
        if total is None and "count" in self._fds:
            total = self._read_int("count")
        wall = time.time()
        started = time.monotonic()
        acc = BreakdownCounter(timeouts, oldest=oldest, limit=limit)
        cut_short = self._dump_into(acc)
        if cut_short:
            self._close_socket()  # the kernel stops the rest of the dump with it
        elapsed = time.monotonic() - started
        return acc.finish(started, wall, elapsed, total=total, top=top,
                          min_hint_entries=min_hint_entries)

    def _dump_into(self, acc: BreakdownCounter) -> bool:
        """Returns True when the dump was cut short by the accumulator's limit."""
        sock = self._socket()
        for attempt in range(2):
            self._seq = (self._seq + 1) & 0xFFFFFFFF
            seq = self._seq
            try:
                sock.send(ctnetlink.dump_request(seq))
            except OSError as exc:
                self._close_socket()
                raise _dump_error(exc.errno or errno.EIO) from None
            status = ctnetlink.DumpStatus()
            view = memoryview(self._buf)
            while not status.done:
                try:
                    n = sock.recv_into(self._buf)
                except TimeoutError:
                    self._close_socket()
                    raise ConntrackUnavailable("conntrack dump: the kernel stopped answering",
                                               errno.ETIMEDOUT) from None
                except OSError as exc:
                    self._close_socket()
                    raise _dump_error(exc.errno or errno.EIO) from None
                if n == 0:
                    break
                ctnetlink.parse_dump_into(view[:n], acc, status, seq)
                if acc.full and not status.done:
                    return True
            if status.error == errno.EAGAIN and attempt == 0 and acc.n == 0:
                continue  # nfnetlink loaded nf_conntrack_netlink on demand: ask again
            if status.error:
                raise _dump_error(status.error)
            return False
        return False

    # --- lifecycle

    def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def close(self) -> None:
        self._close_socket()
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> ConntrackReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _pread_all(fd: int) -> bytes:
    # One line per CPU of ~140 bytes: 64 KiB holds 450 CPUs; read on for bigger machines.
    chunks = [os.pread(fd, 1 << 16, 0)]
    while len(chunks[-1]) == 1 << 16:
        chunks.append(os.pread(fd, 1 << 16, sum(len(c) for c in chunks)))
    return b"".join(chunks)


# Multicast groups (enum nfnetlink_groups) as bind() masks: group N is bit N-1.
_NFNLGRP_CONNTRACK_NEW = 1
_NFNLGRP_CONNTRACK_DESTROY = 3
_EVENT_GROUPS = (1 << (_NFNLGRP_CONNTRACK_NEW - 1)) | (1 << (_NFNLGRP_CONNTRACK_DESTROY - 1))
_MAX_READS = 4096  # datagrams per read_counts() call: a flood must not stall the tick


class ConntrackEvents:
    """Counts the namespace's conntrack NEW and DESTROY events (NFNLGRP_CONNTRACK_NEW/DESTROY)
    for live rates; messages are counted by type, never decoded.

    Opt-in: with nf_conntrack_events=2 (the default) the kernel only builds event messages
    while someone listens, so this socket makes it do so for every connection of the namespace.
    What the socket could not hold (ENOBUFS) is counted in `overruns`: the rates are then lower
    bounds. The socket keeps the namespace of the thread that created it."""

    def __init__(self) -> None:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                 ctnetlink.NETLINK_NETFILTER)
        except OSError as exc:
            raise _dump_error(exc.errno or errno.EPROTONOSUPPORT) from None
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 8 << 20)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            sock.bind((0, _EVENT_GROUPS))
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise _dump_error(exc.errno or errno.EIO) from None
        self._sock: socket.socket | None = sock
        self._buf = bytearray(1 << 17)
        self.new = 0
        self.destroyed = 0
        self.overruns = 0

    def fileno(self) -> int:
        return self._sock.fileno() if self._sock is not None else -1

    def read_counts(self) -> tuple[int, int]:
        """Drain what arrived; returns the running totals (new, destroyed)."""
        sock = self._sock
        if sock is None:
            return self.new, self.destroyed
        buf = self._buf
        unpack = ctnetlink.NLMSGHDR.unpack_from
        for _ in range(_MAX_READS):
            try:
                n = sock.recv_into(buf)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.overruns += 1
                    continue
                raise _dump_error(exc.errno or errno.EIO) from None
            pos = 0
            while pos + 16 <= n:
                mlen, mtype, _f, _s, _p = unpack(buf, pos)
                if mlen < 16:
                    break
                kind = mtype & 0xFF if mtype >> 8 == ctnetlink.NFNL_SUBSYS_CTNETLINK else -1
                if kind == ctnetlink.IPCTNL_MSG_CT_NEW:
                    self.new += 1
                elif kind == _IPCTNL_MSG_CT_DELETE:
                    self.destroyed += 1
                pos += (mlen + 3) & ~3
        return self.new, self.destroyed

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


_IPCTNL_MSG_CT_DELETE = 2
