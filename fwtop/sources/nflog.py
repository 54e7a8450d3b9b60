"""Kernel reader for NFLOG drop events (iptables `-j NFLOG`, nft `log group N`).

Owns one NETLINK_NETFILTER socket bound to the NFLOG groups fwtop listens to, in the network
namespace of the thread that created it (sockets keep their namespace, so `read` may then run on
any thread), plus the bookkeeping of what the kernel could not deliver. Byte decoding is in
fwtop.core.nflog; this module does the socket, the config handshake, error words and loss counts.

Loss accounting: every group is bound with NFULNL_CFG_F_SEQ, so each message carries NFULA_SEQ,
the group's own counter (starting at 0 when fwtop binds it). The kernel numbers a message when it
builds it, before it tries to queue it on the socket, so a gap in a group's sequence is exactly
the number of messages dropped (socket buffer full, or a whole batch lost). ENOBUFS on recv only
says "at least one was lost": until the next message of the group shows the gap, each ENOBUFS
counts as one. NFULA_SEQ_GLOBAL is not used: it counts every group of the namespace, including
groups other programs hold, so its gaps are not fwtop's losses.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
from collections.abc import Callable, Sequence
from types import TracebackType

from fwtop.core import nflog
from fwtop.core.events import DropEvent, SourceStats
from fwtop.core.packet import BytesLike

_SO_RCVBUFFORCE = 33  # asm-generic/socket.h; not exported by the socket module
# One datagram holds at most NFULA_CFG_NLBUFSIZ bytes (kernel cap 128 KiB) or one message.
_RECV_BUF = 256 * 1024
_ACK_TIMEOUT_S = 2.0
_CAP_NET_ADMIN = 12
# An index the refreshed map still lacks (interface already gone) is not looked up again sooner.
_IFNAME_REFRESH_S = 1.0
_SEQ_HALF = 1 << 31
# Adaptive batching: a batch should hold about this much time's worth of a group's events, so
# batching adds well under a millisecond of latency while it divides the recv syscalls by the
# batch size (15 at 50,000 events/s; 1 below ~6,700/s). See _adapt for the rules.
_BATCH_FILL_S = 0.0003
_QTHRESH_MAX = 64
_ADAPT_EVERY_S = 0.02
_ADAPT_HOLD_S = 0.5
_ADAPT_IDLE_S = 0.5
# A batch is built in one skb of this size; the kernel's default (~3.7 KiB) holds only 21 of
# the ~176-byte messages a 128-byte copy range gives, which would cap batches below 64.
_BATCH_NLBUFSIZ = 16384

# rtnetlink (include/uapi/linux/rtnetlink.h, if_link.h) for the interface names
_NETLINK_ROUTE = 0
_RTM_NEWLINK = 16
_RTM_GETLINK = 18
_IFLA_IFNAME = 3
_NLM_F_DUMP = 0x300
_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")  # family, pad, type, index, flags, change
_NLA = struct.Struct("=HH")


class NflogError(Exception):
    """NFLOG cannot be read; the message is one line meant for the user."""

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_


def _has_cap_net_admin() -> bool:
    try:
        with open("/proc/thread-self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_NET_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0


def _bind_error(group: int, err: int) -> NflogError:
    if err == errno.EBUSY or (err == errno.EPERM and _has_cap_net_admin()):
        # EPERM with the capability means the group's instance belongs to another socket.
        return NflogError(f"NFLOG group {group} is already bound by another program (ulogd?)", err)
    if err in (errno.EPERM, errno.EACCES):
        return NflogError("reading NFLOG needs root (CAP_NET_ADMIN)", err)
    if err in (errno.EINVAL, errno.ENOENT, errno.EOPNOTSUPP, errno.EPROTONOSUPPORT,
               errno.ENOTSUP):
        return NflogError("nfnetlink_log is not available in this kernel "
                          "(CONFIG_NETFILTER_NETLINK_LOG / modprobe nfnetlink_log)", err)
    return NflogError(f"binding NFLOG group {group} failed: {os.strerror(err)}", err)


class _InterfaceNames(dict[int, str]):
    """Index -> name, refreshed (at most once a second) when an unknown index is looked up."""

    def __init__(self, load: Callable[[], dict[int, str]]) -> None:
        try:
            super().__init__(load())
        except OSError:
            super().__init__()  # names then arrive with the first refresh
        self._load = load
        self._loaded_at = time.monotonic()

    def __missing__(self, index: int) -> str:
        now = time.monotonic()
        if now - self._loaded_at >= _IFNAME_REFRESH_S:
            self._loaded_at = now
            try:
                self.update(self._load())
            except OSError:
                pass
            if dict.__contains__(self, index):
                return dict.__getitem__(self, index)
        raise KeyError(index)


class _LinkNames:
    """Interface names over rtnetlink, on a socket opened in the reader's namespace.

    socket.if_nameindex() asks the namespace of whichever thread calls it; the reader may be
    read from a thread elsewhere, so names come from a socket that stays where it was made."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  _NETLINK_ROUTE)
        self.sock.settimeout(_ACK_TIMEOUT_S)
        self.sock.bind((0, 0))
        self._seq = 0

    def load(self) -> dict[int, str]:
        self._seq += 1
        req = _NLMSGHDR.pack(32, _RTM_GETLINK, nflog.NLM_F_REQUEST | _NLM_F_DUMP, self._seq, 0)
        req += _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        self.sock.send(req)
        names: dict[int, str] = {}
        while True:
            data = self.sock.recv(1 << 16)
            pos = 0
            while pos + 16 <= len(data):
                mlen, mtype, _f, mseq, _p = _NLMSGHDR.unpack_from(data, pos)
                if mlen < 16 or pos + mlen > len(data):
                    return names
                if mseq == self._seq:
                    if mtype in (nflog.NLMSG_DONE, nflog.NLMSG_ERROR):
                        return names
                    if mtype == _RTM_NEWLINK and mlen >= 32:
                        index = _IFINFOMSG.unpack_from(data, pos + 16)[2]
                        name = _ifla_name(data, pos + 32, pos + mlen)
                        if name is not None:
                            names[index] = name
                pos += (mlen + 3) & ~3

    def close(self) -> None:
        self.sock.close()


def _ifla_name(data: bytes, pos: int, end: int) -> str | None:
    while pos + 4 <= end:
        alen, atype = _NLA.unpack_from(data, pos)
        if alen < 4 or pos + alen > end:
            return None
        if atype & nflog.NLA_TYPE_MASK == _IFLA_IFNAME:
            return data[pos + 4:pos + alen].split(b"\x00", 1)[0].decode("utf-8", "replace")
        pos += (alen + 3) & ~3
    return None


class NflogReader:
    """Receives the drop events of the given NFLOG groups.

    `copy_range` bytes of each packet are copied (128 holds any IPv4/IPv6 + TCP header).
    The kernel sends a batch when it holds `qthresh` messages or after `timeout_cs` hundredths
    of a second. qthresh=1 sends each packet at once (lowest latency, one recv per event); a
    larger qthresh packs many events per recv, at up to `timeout_cs` of added latency.
    qthresh=None (the default) adapts it per group to the rate the group logs at, so that a batch
    holds about 0.3 ms of events: 1 while drops trickle in, 15 at 50,000/s, at most 64 (see
    docs/performance.md for the measured trade-off). `nlbufsiz` bounds a batch in
    bytes (the kernel silently keeps its ~3.7 KiB default, 21 such messages, for values outside
    that to 128 KiB); None picks 16 KiB when batching, else the kernel's default.

    read() never blocks unless given a timeout, so it serves a thread loop (read(timeout=0.2))
    and a selector (register fileno(), then read()) alike."""

    def __init__(self, groups: Sequence[int], copy_range: int = 128, qthresh: int | None = None,
                 timeout_cs: int = 1, rcvbuf: int = 8 << 20, nlbufsiz: int | None = None) -> None:
        self.groups = tuple(dict.fromkeys(int(g) for g in groups))
        for g in self.groups:
            if not 0 <= g <= 0xFFFF:
                raise NflogError(f"NFLOG group {g} is out of range (0-65535)")
        if qthresh is not None and qthresh < 1:
            raise NflogError(f"NFLOG queue threshold must be at least 1, not {qthresh}")
        self._adaptive = qthresh is None
        start_q = 1 if qthresh is None else qthresh
        if nlbufsiz is None and (self._adaptive or start_q > 1):
            nlbufsiz = _BATCH_NLBUFSIZ
        self._qthresh = dict.fromkeys(self.groups, start_q)
        self._received = 0
        self._malformed = 0
        self._seq_lost = 0
        self._enobufs = 0
        self._enobufs_unexplained = 0
        self._next_seq: dict[int, int] = {}
        self._seqs: list[tuple[int, int]] = []
        self._pending: list[DropEvent] = []
        self._closed = False
        self._nlseq = int(time.monotonic_ns() & 0xFFFF) << 8
        self._buf = bytearray(_RECV_BUF)
        self._adapt_at = self._hold_since = time.monotonic()
        self._adapt_seen: dict[int, int] = {}
        self._peak: dict[int, int] = {}
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                       nflog.NETLINK_NETFILTER)
        except OSError as exc:
            raise NflogError("netfilter netlink (nfnetlink) is not available in this kernel",
                             exc.errno) from None
        self._bound: list[int] = []
        self._links: _LinkNames | None = None
        try:
            self._setup(rcvbuf, copy_range, start_q, timeout_cs, nlbufsiz)
        except BaseException:
            self.close()
            raise

    def _setup(self, rcvbuf: int, copy_range: int, qthresh: int, timeout_cs: int,
               nlbufsiz: int | None) -> None:
        sock = self._sock
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, rcvbuf)
        except OSError:
            # Without CAP_NET_ADMIN the buffer is capped by net.core.rmem_max.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((0, 0))
        self._links = _LinkNames()
        self._ifnames = _InterfaceNames(self._links.load)
        sock.settimeout(_ACK_TIMEOUT_S)
        for group in self.groups:
            msg = nflog.bind_and_configure(group, self._next_nlseq(), copy_range=copy_range,
                                           qthresh=qthresh, timeout_cs=timeout_cs,
                                           flags=nflog.NFULNL_CFG_F_SEQ, nlbufsiz=nlbufsiz)
            err = self._request(msg)
            if err == errno.EAGAIN:
                # nfnetlink loaded the nfnetlink_log module on demand: ask again once.
                err = self._request(msg)
            if err:
                raise _bind_error(group, err)
            self._bound.append(group)
        sock.setblocking(False)

    def _next_nlseq(self) -> int:
        self._nlseq = (self._nlseq + 1) & 0xFFFFFFFF
        return self._nlseq

    def _request(self, msg: bytes) -> int:
        """Send a config request and wait for its ack; events that arrive meanwhile (groups bound
        earlier) are kept for the next read()."""
        seq = _NLMSGHDR.unpack_from(msg)[3]
        self._sock.send(msg)
        deadline = time.monotonic() + _ACK_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                n = self._sock.recv_into(self._buf)
            except TimeoutError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self._note_enobufs()
                    continue
                raise NflogError(f"NFLOG: netlink receive failed: {exc.strerror}",
                                 exc.errno) from None
            for ack_seq, err in self._consume(self._buf[:n]):
                if ack_seq == seq:
                    return err
        raise NflogError("NFLOG: the kernel did not answer the group bind request")

    def _consume(self, data: BytesLike) -> list[tuple[int, int]]:
        """Parse one datagram into the pending events; returns its acks."""
        acks: list[tuple[int, int]] = []
        before = len(self._pending)
        self._malformed += nflog.parse_into(data, self._ifnames, time.monotonic(), time.time(),
                                            self._pending, self._seqs, acks)
        self._received += len(self._pending) - before
        self._settle_seqs()
        return acks

    def _settle_seqs(self) -> None:
        """Turn the sequence numbers seen since the last call into the exact lost count."""
        seqs = self._seqs
        if not seqs:
            return
        next_seq = self._next_seq
        for group, seq in seqs:
            gap = (seq - next_seq.get(group, 0)) & 0xFFFFFFFF
            if gap and gap < _SEQ_HALF:
                self._seq_lost += gap
                # The gap is the exact count of what every ENOBUFS so far stood for.
                self._enobufs_unexplained = 0
            next_seq[group] = (seq + 1) & 0xFFFFFFFF
        seqs.clear()

    def _note_enobufs(self) -> None:
        # Gaps before this overrun belong to earlier ones: settle them first.
        self._settle_seqs()
        self._enobufs += 1
        self._enobufs_unexplained += 1

    def _adapt(self) -> None:
        """Set each group's queue threshold to about _BATCH_FILL_S of its logging rate.

        The rate comes from the groups' sequence numbers, so it counts what the kernel logged
        (lost messages included), not what this process managed to read. It is measured over
        windows of at least _ADAPT_EVERY_S between read() calls. A threshold rises at once and
        falls only when no window of the last _ADAPT_HOLD_S asked for more: a reader that was
        starved of CPU for a moment sees a low rate and must not answer it with smaller batches
        (more syscalls) just when it is behind. After a pause in reading longer than
        _ADAPT_IDLE_S the thresholds drop to 1: nothing is flooding."""
        now = time.monotonic()
        elapsed = now - self._adapt_at
        if elapsed < _ADAPT_EVERY_S:
            return
        idle = elapsed > _ADAPT_IDLE_S
        self._adapt_at = now
        settle = idle or now - self._hold_since >= _ADAPT_HOLD_S
        for group in self._bound:
            seen = self._next_seq.get(group, 0)
            rate = ((seen - self._adapt_seen.get(group, 0)) & 0xFFFFFFFF) / elapsed
            self._adapt_seen[group] = seen
            want = 1 if idle else max(1, min(_QTHRESH_MAX, int(rate * _BATCH_FILL_S)))
            peak = max(want, self._peak.get(group, 1))
            have = self._qthresh[group]
            if want >= 2 * have:
                new = want
            elif settle and 2 * peak <= have:
                new = peak
            else:
                new = have
            self._peak[group] = 1 if settle else peak
            if new != have:
                try:
                    self._sock.send(nflog.config_message(group, self._next_nlseq(),
                                                         qthresh=new, ack=False))
                except OSError:
                    continue  # a full socket send queue: try again next time
                self._qthresh[group] = new
        if settle:
            self._hold_since = now

    # --- public API ---------------------------------------------------------------------------

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self, max_events: int = 1024, timeout: float | None = None) -> list[DropEvent]:
        """Events received since the last call, at most about `max_events` (a batch is never
        split). With `timeout` None it never blocks; otherwise it waits up to `timeout` seconds
        for the first datagram."""
        if self._closed:
            return []
        if not self._pending and timeout is not None and timeout > 0:
            ready, _, _ = select.select([self._sock], [], [], timeout)
            if not ready:
                return []
        recv_into = self._sock.recv_into
        buf = self._buf
        pending = self._pending
        before = len(pending)
        seqs = self._seqs
        ifnames = self._ifnames
        parse_into = nflog.parse_into
        acks: list[tuple[int, int]] = []
        malformed = 0
        monotonic = time.monotonic
        # One wall-clock reading per call: per datagram the monotonic clock is enough.
        wall_offset = time.time() - monotonic()
        try:
            while len(pending) < max_events:
                try:
                    n = recv_into(buf)
                except BlockingIOError:
                    break
                except InterruptedError:
                    continue
                except OSError as exc:
                    if exc.errno == errno.ENOBUFS:
                        self._note_enobufs()
                        continue
                    if self._closed:
                        break  # close() from another thread: end quietly
                    raise NflogError(f"NFLOG: netlink receive failed: {exc.strerror}",
                                     exc.errno) from None
                now = monotonic()
                # One copy of the datagram into bytes: slicing bytes is cheaper than slicing a
                # memoryview for the payload and prefix of every message in it.
                malformed += parse_into(buf[:n], ifnames, now, now + wall_offset, pending, seqs,
                                        acks)
                acks.clear()  # late acks of UNBINDs or duplicates: nothing waits for them
        finally:
            self._malformed += malformed
            self._received += len(pending) - before
            self._settle_seqs()
        if self._adaptive:
            self._adapt()
        out, self._pending = self._pending, []
        return out

    def queue_thresholds(self) -> dict[int, int]:
        """The queue threshold each group is set to now (changes over time when adaptive)."""
        return dict(self._qthresh)

    def stats(self) -> SourceStats:
        detail = "groups " + ",".join(str(g) for g in self.groups)
        if self._enobufs:
            detail += f"; socket overruns (ENOBUFS) {self._enobufs}"
        if self._enobufs_unexplained:
            # Each overrun counts one until the group's next message shows the real gap.
            detail += "; lost is a lower bound until the next event"
        return SourceStats(
            source="nflog", running=not self._closed, received=self._received,
            lost=self._seq_lost + self._enobufs_unexplained, malformed=self._malformed,
            detail=detail,
        )

    def close(self) -> None:
        """Unbind the groups (the kernel would also drop them when the socket closes) and close."""
        if self._closed:
            return
        self._closed = True
        for group in self._bound:
            try:
                self._sock.send(nflog.cmd_unbind(group, self._next_nlseq()))
            except OSError:
                pass
        self._bound.clear()
        self._sock.close()
        if self._links is not None:
            self._links.close()

    def __enter__(self) -> NflogReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
