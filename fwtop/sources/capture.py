"""Kernel reader for packet capture: one AF_PACKET socket (SOCK_RAW, ETH_P_ALL) on one or all
interfaces of the namespace of the thread that opens it, with an optional kernel BPF filter
compiled from a tcpdump expression by `tcpdump -ddd`.

Two ways to read, measured against each other in benchmarks/bench_capture.py: a memory-mapped
TPACKET_V3 ring (the default: the kernel fills whole blocks of packets, one poll per block and
no syscall per packet) and plain `recvfrom_into` (fallback where the ring cannot be set up).
Header decoding is fwtop.core.frames / fwtop.core.packet; this module does the socket, the ring,
the filter, and the honest counts: PACKET_STATISTICS (tp_packets, tp_drops) as kernel drops, and
the packets the reader itself skipped when it fell behind.

Bounded memory whatever the rate: the ring is a fixed mapping; a read() returns at most about
`max_packets`; the raw bytes of only the last `raw_keep` decoded packets are kept (each cut to
`raw_snap` bytes). When half of the ring's blocks are full and unread, the reader samples: it
still counts every packet and still decodes every packet that can decide a flow (TCP SYN/RST/FIN,
ICMP, anything it cannot cheaply classify), and skips the rest (counted); at three quarters it
counts whole blocks without looking inside (counted too), so the kernel never has to drop.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import select
import shutil
import socket
import struct
import subprocess
import time
from types import TracebackType
from typing import Protocol

from fwtop.core.capture_events import CaptureStats, PacketEvent, PacketFields
from fwtop.core.frames import (
    ARPHRD_ETHER,
    ARPHRD_LOOPBACK,
    LINK_ETHERNET,
    LINK_RAW,
    decode_fields,
    icmp_details,
    link_of_arphrd,
    make_packet,
)
from fwtop.core.packet import decode_l3_fields
from fwtop.sources.nflog import _InterfaceNames, _LinkNames

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
TPACKET_V3 = 2
PACKET_OUTGOING = 4
SO_ATTACH_FILTER = 26
SO_LOCK_FILTER = 44
_SO_RCVBUFFORCE = 33
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_VLAN_VALID = 1 << 4

# struct tpacket_block_desc / tpacket_hdr_v1: block_status, num_pkts, offset_to_first_pkt
_BLOCK = struct.Struct("=III")
_BLOCK_STATUS = struct.Struct("=I")
# struct tpacket3_hdr (48 bytes) then struct sockaddr_ll at TPACKET_ALIGN(48): next_offset,
# sec, nsec, snaplen, len, status, mac, net, (rxhash), vlan_tci, (tpid, padding, family,
# protocol), ifindex, hatype, pkttype.
_HDR3 = struct.Struct("=6I2H4xI12x4xiHB")
_STATS = struct.Struct("=III")  # tpacket_stats_v3; the first two fields are tpacket_stats
_FILTER = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k
_SOCKADDR_LL = struct.Struct("=HHiHBB8s")

_IPV4_ETH = b"\x08\x00"
# TCP flags that can decide a flow: SYN, RST, FIN.
_DECISIVE_TCP = 0x07
_FRAME_COPY = 2048  # bytes of each packet copied out of the ring: every header fits


class CaptureError(Exception):
    """Capture cannot run; the message is one line meant for the user."""


class PcapSink(Protocol):
    def write(self, wall: float, frame: bytes, wire_len: int, link: str) -> None: ...


def compile_filter(expr: str, link: str = LINK_ETHERNET) -> list[tuple[int, int, int, int]]:
    """A tcpdump expression compiled to classic BPF by `tcpdump -ddd` for frames that start
    with an Ethernet header (`link` ethernet) or the IP header (raw)."""
    tcpdump = shutil.which("tcpdump")
    if tcpdump is None:
        raise CaptureError("--capture-filter needs tcpdump (it compiles the expression): "
                           "apt-get install tcpdump")
    dlt = "EN10MB" if link == LINK_ETHERNET else "RAW"
    try:
        proc = subprocess.run([tcpdump, "-ddd", "-y", dlt, "--", expr], capture_output=True,
                              text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CaptureError(f"cannot run tcpdump to compile the capture filter: {exc}") from None
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "Warning" not in ln]
        why = lines[-1].removeprefix("tcpdump: ") if lines else f"exit {proc.returncode}"
        raise CaptureError(f"bad capture filter {expr!r}: {why}")
    return parse_ddd(proc.stdout)


def parse_ddd(text: str) -> list[tuple[int, int, int, int]]:
    """`tcpdump -ddd` output (a count, then "code jt jf k" per line) as instructions."""
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    try:
        count = int(lines[0][0])
        prog = [(int(a), int(b), int(c), int(d)) for a, b, c, d in lines[1:]]
    except (IndexError, ValueError):
        raise CaptureError("tcpdump -ddd gave output fwtop cannot read") from None
    if count != len(prog) or not 0 < count <= 4096:
        raise CaptureError("tcpdump -ddd gave a program of the wrong length")
    return prog


def attach_filter(sock: socket.socket, prog: list[tuple[int, int, int, int]]) -> None:
    """SO_ATTACH_FILTER: struct sock_fprog {len; pointer to the instructions}."""
    code = b"".join(_FILTER.pack(c & 0xFFFF, jt & 0xFF, jf & 0xFF, k & 0xFFFFFFFF)
                    for c, jt, jf, k in prog)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("@HP", len(prog), ctypes.addressof(buf))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError as exc:
        raise CaptureError(f"the kernel refused the capture filter: {exc.strerror}") from None


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _bind_all(sock: socket.socket) -> None:
    """bind() to ifindex 0 (every interface): Python's AF_PACKET bind wants a name."""
    addr = _SOCKADDR_LL.pack(socket.AF_PACKET, socket.htons(ETH_P_ALL), 0, 0, 0, 0, b"")
    buf = ctypes.create_string_buffer(addr, len(addr))
    if _libc().bind(sock.fileno(), buf, len(addr)) != 0:
        err = ctypes.get_errno()
        raise CaptureError(f"cannot start the capture: {os.strerror(err)}")


class CaptureReader:
    """Captured packets of one interface (`iface`) or all, in the opening thread's namespace.

    read() never blocks unless given a timeout, so it serves a thread loop and a selector
    alike. `ring` False (or a ring that cannot be set up) reads with recvfrom_into instead."""

    def __init__(self, iface: str | None = None, capture_filter: str | None = None,
                 ring: bool = True, block_size: int = 1 << 20, block_nr: int = 16,
                 retire_ms: int = 50, raw_keep: int = 4096, raw_snap: int = _FRAME_COPY,
                 rcvbuf: int = 8 << 20) -> None:
        if block_size < 4096 or block_size & (block_size - 1) or block_nr < 4:
            raise CaptureError("the capture ring needs a power-of-two block size of at least "
                               "4 KiB and at least 4 blocks")
        self.iface = iface
        self.capture_filter = capture_filter or None
        self._received = 0
        self._decoded = 0
        self._skipped = 0
        self._not_ip = 0
        self._kernel_packets = 0
        self._kernel_drops = 0
        self._seq = 0
        self._closed = False
        self._mm: mmap.mmap | None = None
        self._ring_error: str | None = None
        keep = 1
        while keep < raw_keep:
            keep <<= 1
        self._raw: list[tuple[int, bytes, int, str] | None] = [None] * keep
        self._raw_mask = keep - 1
        self._raw_snap = max(64, raw_snap)
        self.pcap: PcapSink | None = None
        self.last_skip = float("-inf")  # monotonic time of the last packet skipped
        self.last_blind = float("-inf")  # ... of the last block skipped unseen (control too)
        self._names: dict[int, str] = {}
        self._pending: list[PacketEvent] = []
        try:
            # Protocol 0: the socket receives nothing until bind(), so no packet slips in
            # before the filter is attached.
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                       0)
        except PermissionError:
            raise CaptureError("packet capture needs root (CAP_NET_RAW)") from None
        except OSError as exc:
            raise CaptureError(f"cannot open a packet socket: {exc.strerror}") from None
        self._links: _LinkNames | None = None
        try:
            self._setup(ring, block_size, block_nr, retire_ms, rcvbuf)
        except BaseException:
            self.close()
            raise

    def _setup(self, ring: bool, block_size: int, block_nr: int, retire_ms: int,
               rcvbuf: int) -> None:
        sock = self._sock
        link = LINK_ETHERNET
        if self.iface is not None:
            try:
                sock.bind((self.iface, 0))
            except OSError as exc:
                if exc.errno == errno.ENODEV:
                    raise CaptureError(f"no interface {self.iface!r} here "
                                       "(see `ip link`)") from None
                raise CaptureError(f"cannot capture on {self.iface}: {exc.strerror}") from None
            link = link_of_arphrd(sock.getsockname()[3])
        if self.capture_filter is not None:
            attach_filter(sock, compile_filter(self.capture_filter, link))
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, rcvbuf)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if ring:
            try:
                self._setup_ring(block_size, block_nr, retire_ms)
            except OSError as exc:
                self._ring_error = f"TPACKET_V3 ring unavailable ({exc.strerror}); plain recv"
                self._mm = None
        self._links = _LinkNames()
        self._ifnames = _InterfaceNames(self._links.load)
        if self.iface is not None:
            sock.bind((self.iface, ETH_P_ALL))
        else:
            _bind_all(sock)
        sock.setblocking(False)
        self._buf = bytearray(1 << 16)
        self._stats_now()  # counters from before the bind are not ours

    def _setup_ring(self, block_size: int, block_nr: int, retire_ms: int) -> None:
        sock = self._sock
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        frame_size = 2048
        req = struct.pack("=7I", block_size, block_nr, frame_size,
                          block_size * block_nr // frame_size, retire_ms, 0, 0)
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        self._block_size = block_size
        self._block_nr = block_nr
        self._block = 0
        self._mm = mmap.mmap(sock.fileno(), block_size * block_nr, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE)

    # --- public API ---------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        if self._mm is not None:
            size = self._block_size * self._block_nr
            return f"tpacket_v3 ring {size >> 20} MiB" if size >= 1 << 20 else \
                f"tpacket_v3 ring {size >> 10} KiB"
        return "recv" + (f" ({self._ring_error})" if self._ring_error else "")

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self, max_packets: int = 4096, timeout: float | None = None) -> list[PacketEvent]:
        """Packets captured since the last call: at most about `max_packets` (a ring block is
        never split). With `timeout` None it never blocks; otherwise it waits up to `timeout`
        seconds for the first packet."""
        return [make_packet(*t) for t in self.read_fields(max_packets, timeout)]

    def read_fields(self, max_packets: int = 4096,
                    timeout: float | None = None) -> list[PacketFields]:
        """read() as PacketFields tuples: the hot path (a PacketEvent costs more than the
        decode; build one with make_packet(*fields) only for packets that are shown)."""
        if self._closed:
            return []
        if timeout is not None and timeout > 0 and not self._ready():
            try:
                select.select([self._sock], [], [], timeout)
            except (OSError, ValueError):
                return []
        if self._closed:
            return []
        if self._mm is not None:
            return self._read_ring(max_packets)
        return self._read_recv(max_packets)

    def raw(self, seq: int) -> tuple[bytes, int, str] | None:
        """(frame bytes, length on the wire, link) of a recent packet, if still kept."""
        entry = self._raw[seq & self._raw_mask]
        if entry is None or entry[0] != seq:
            return None
        return entry[1], entry[2], entry[3]

    def stats(self) -> CaptureStats:
        self._stats_now()
        return CaptureStats(
            running=not self._closed, received=self._received, decoded=self._decoded,
            skipped=self._skipped, not_ip=self._not_ip, kernel_packets=self._kernel_packets,
            kernel_drops=self._kernel_drops, mode=self.mode, interfaces=self.iface or "all",
            capture_filter=self.capture_filter)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._mm is not None:
            try:
                self._mm.close()
            except (BufferError, ValueError):
                pass  # a read on another thread still holds it: the GC unmaps it
        self._sock.close()
        if self._links is not None:
            self._links.close()

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- internals ----------------------------------------------------------------------------

    def _stats_now(self) -> None:
        """PACKET_STATISTICS: the kernel resets the counters on every read, so they add up."""
        if self._closed:
            return
        try:
            data = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS.size)
        except OSError:
            return
        if len(data) >= 8:
            packets, drops = struct.unpack_from("=II", data)
            self._kernel_packets += packets  # the kernel adds tp_drops into tp_packets
            self._kernel_drops += drops

    def _ready(self) -> bool:
        mm = self._mm
        if mm is None:
            return False
        off = self._block * self._block_size + 8
        return bool(_BLOCK_STATUS.unpack_from(mm, off)[0] & TP_STATUS_USER)

    def _ifname(self, index: int) -> str:
        try:
            name = self._ifnames[index]
        except KeyError:
            return str(index)
        self._names[index] = name
        return name

    def _read_ring(self, max_packets: int) -> list[PacketFields]:
        mm = self._mm
        assert mm is not None
        out: list[PacketFields] = []
        bsize, nr = self._block_size, self._block_nr
        sample_at, blind_at = max(1, nr // 2), max(2, nr * 3 // 4)
        unpack_block, unpack_status = _BLOCK.unpack_from, _BLOCK_STATUS.unpack_from
        clock = time.monotonic
        while len(out) < max_packets and not self._closed:
            block = self._block
            boff = block * bsize
            status, num, first = unpack_block(mm, boff + 8)
            if not status & TP_STATUS_USER:
                break
            # How far behind: is the block half (three quarters) of the ring ahead full too?
            ahead_s = unpack_status(mm, ((block + sample_at) % nr) * bsize + 8)[0]
            ahead_b = unpack_status(mm, ((block + blind_at) % nr) * bsize + 8)[0]
            self._received += num
            if ahead_b & TP_STATUS_USER:
                # Far behind: count the block unseen, so the ring keeps room and the kernel
                # drops nothing; flows cannot be trusted meanwhile and are told so.
                self._skipped += num
                self._seq += num
                self.last_skip = self.last_blind = clock()
            else:
                self._walk(mm, boff + first, num, out, sampling=bool(ahead_s & TP_STATUS_USER))
            _BLOCK_STATUS.pack_into(mm, boff + 8, TP_STATUS_KERNEL)
            self._block = (block + 1) % nr
        return out

    def _walk(self, mm: mmap.mmap, pos: int, num: int, out: list[PacketFields],
              sampling: bool) -> None:
        """Decode the `num` packets of one ring block starting at `pos` into `out`."""
        unpack = _HDR3.unpack_from
        names = self._names
        raw, mask, snap = self._raw, self._raw_mask, self._raw_snap
        pcap = self.pcap
        seq = self._seq
        decoded = skipped = not_ip = 0
        wall_offset = time.time() - time.monotonic()
        append = out.append
        decode = decode_l3_fields
        for _ in range(num):
            (nxt, sec, nsec, caplen, wlen, status, mac, _net, tci, ifindex, hatype,
             pkttype) = unpack(mm, pos)
            seq += 1
            start = pos + mac
            if sampling and not _decisive(mm, start, caplen, hatype):
                skipped += 1
                pos += nxt
                continue
            frame = mm[start:start + (caplen if caplen < snap else snap)]
            wall = sec + nsec * 1e-9
            iface = names.get(ifindex) or self._ifname(ifindex)
            direction = "out" if pkttype == PACKET_OUTGOING else "in"
            vlan = tci & 0x0FFF if status & TP_STATUS_VLAN_VALID else None
            link = LINK_ETHERNET if hatype == ARPHRD_ETHER or hatype == ARPHRD_LOOPBACK \
                else LINK_RAW
            raw[seq & mask] = (seq, frame, wlen, link)
            if pcap is not None:
                pcap.write(wall, frame, wlen, link)
            if frame[12:14] == _IPV4_ETH and hatype == ARPHRD_ETHER:
                l3 = frame[14:]
                f = decode(l3)
                if f is not None:
                    icmp_id = embedded = mtu = None
                    if f[10] is not None:
                        icmp_id, embedded, mtu = icmp_details(l3, f)
                    append((wall - wall_offset, wall, seq, iface, direction, f[0], f[5],
                            f[1], f[2], f[8], f[9], f[10], f[11], f[12], f[3], wlen, vlan,
                            icmp_id, embedded, mtu))
                    decoded += 1
                else:
                    not_ip += 1
            else:
                event = decode_fields(frame, link, ts=wall - wall_offset,
                                      wall=wall, seq=seq, iface=iface, direction=direction,
                                      frame_len=wlen, vlan=vlan)
                if event is not None:
                    append(event)
                    decoded += 1
                else:
                    not_ip += 1
            pos += nxt
        self._seq = seq
        self._decoded += decoded
        self._not_ip += not_ip
        if skipped:
            self._skipped += skipped
            self.last_skip = time.monotonic()

    def _read_recv(self, max_packets: int) -> list[PacketFields]:
        sock = self._sock
        buf = self._buf
        recv = sock.recvfrom_into
        out: list[PacketFields] = []
        snap = self._raw_snap
        raw, mask = self._raw, self._raw_mask
        pcap = self.pcap
        monotonic = time.monotonic
        wall_offset = time.time() - monotonic()
        while len(out) < max_packets:
            try:
                n, addr = recv(buf)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as exc:
                if self._closed:
                    break
                raise CaptureError(f"capture: receive failed: {exc.strerror}") from None
            now = monotonic()
            self._received += 1
            self._seq += 1
            seq = self._seq
            frame = bytes(buf[:n if n < snap else snap])
            link = link_of_arphrd(addr[3])
            raw[seq & mask] = (seq, frame, n, link)
            if pcap is not None:
                pcap.write(now + wall_offset, frame, n, link)
            event = decode_fields(frame, link, ts=now, wall=now + wall_offset, seq=seq,
                                  iface=addr[0], direction="out" if addr[2] == PACKET_OUTGOING
                                  else "in", frame_len=n)
            if event is None:
                self._not_ip += 1
                continue
            self._decoded += 1
            out.append(event)
        return out


def _decisive(mm: mmap.mmap, start: int, caplen: int, hatype: int) -> bool:
    """Whether a packet may decide a flow (decode it even while sampling): TCP with SYN, RST or
    FIN, any ICMP, and anything not plain IPv4/IPv6 over Ethernet (not worth guessing)."""
    if hatype != ARPHRD_ETHER or caplen < 54:
        return True
    etype = mm[start + 12:start + 14]
    if etype == _IPV4_ETH:
        ihl = (mm[start + 14] & 0x0F) * 4
        proto = mm[start + 23]
        if proto == 17:
            return False
        if proto == 6:
            at = start + 14 + ihl + 13
            return at >= start + caplen or bool(mm[at] & _DECISIVE_TCP)
        return True
    if etype == b"\x86\xdd":
        proto = mm[start + 20]
        if proto == 17:
            return False
        if proto == 6:
            at = start + 14 + 40 + 13
            return at >= start + caplen or bool(mm[at] & _DECISIVE_TCP)
        return True
    return False  # ARP, LLDP...: not IP, nothing for flows

