"""Off the hot path: captured packets to a pcap file (for Wireshark / tcpdump -r), and the full
dissection of one packet for the details view.

The pcap writer is plain `struct` (classic libpcap format, microsecond timestamps, Ethernet link
type): it runs on the capture thread for every packet with `--pcap`, where scapy would be far
too slow. Frames of headerless devices (tun, WireGuard) get a synthetic Ethernet header so one
file holds every interface. `dissect` uses scapy (imported on first use, ~0.5 s), the one place
where its protocol knowledge pays for its cost; without scapy it falls back to fwtop's own
header summary and a hex dump.
"""

from __future__ import annotations

import importlib
import logging
import os
import struct
from collections.abc import Iterable
from typing import BinaryIO

from fwtop.core.frames import LINK_ETHERNET, LINK_RAW, LINKTYPE_ETHERNET, decode_packet

PCAP_MAGIC_US = 0xA1B2C3D4
_FILE_HEADER = struct.Struct("=IHHiIII")
_RECORD = struct.Struct("=IIII")
DEFAULT_SNAPLEN = 262_144
DEFAULT_LIMIT = 1 << 30  # a pcap file stops growing at 1 GiB (what was not written is counted)
_ETH_V4 = b"\x00" * 12 + b"\x08\x00"
_ETH_V6 = b"\x00" * 12 + b"\x86\xdd"


def _ethernet(frame: bytes, link: str) -> bytes:
    if link == LINK_RAW:
        return (_ETH_V6 if frame and frame[0] >> 4 == 6 else _ETH_V4) + frame
    return frame


class PcapWriter:
    """Appends packets to a new pcap file (mode 0600: packets can carry secrets)."""

    def __init__(self, path: str, snaplen: int = DEFAULT_SNAPLEN,
                 limit_bytes: int = DEFAULT_LIMIT) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self._fh: BinaryIO = os.fdopen(fd, "wb", buffering=1 << 20)
        self._fh.write(_FILE_HEADER.pack(PCAP_MAGIC_US, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET))
        self.path = path
        self.snaplen = snaplen
        self.written = 0
        self.not_written = 0  # beyond the size limit
        self._size = _FILE_HEADER.size
        self._limit = limit_bytes
        self._closed = False

    def write(self, wall: float, frame: bytes, wire_len: int, link: str = LINK_ETHERNET) -> None:
        if self._closed:
            return
        if link != LINK_ETHERNET:
            frame = _ethernet(frame, link)
            wire_len += 14
        data = frame[:self.snaplen]
        size = _RECORD.size + len(data)
        if self._size + size > self._limit:
            self.not_written += 1
            return
        sec = int(wall)
        usec = min(999_999, int((wall - sec) * 1e6))
        self._fh.write(_RECORD.pack(sec, usec, len(data), max(wire_len, len(data))))
        self._fh.write(data)
        self._size += size
        self.written += 1

    def flush(self) -> None:
        if not self._closed:
            self._fh.flush()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._fh.close()


def write_pcap(path: str, packets: Iterable[tuple[float, bytes, int, str]]) -> int:
    """Write (wall time, frame, length on the wire, link) packets to a new pcap file: the
    `w` key's export of selected packets. Returns how many were written."""
    writer = PcapWriter(path)
    try:
        for wall, frame, wire_len, link in packets:
            writer.write(wall, frame, wire_len, link)
    finally:
        writer.close()
    return writer.written


def hexdump(data: bytes, width: int = 16) -> str:
    """Offset, hex bytes and printable ASCII, like tcpdump -X (plain text, terminal-safe)."""
    lines = []
    for off in range(0, len(data), width):
        chunk = data[off:off + width]
        hexpart = " ".join(f"{b:02x}" for b in chunk)
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        lines.append(f"{off:04x}  {hexpart:<{width * 3 - 1}}  {text}")
    return "\n".join(lines)


def _summary(frame: bytes, link: str) -> str:
    p = decode_packet(frame, link)
    if p is None:
        return "not an IP packet fwtop can decode"
    fields = [f"{name} = {getattr(p, name)}" for name in (
        "family", "proto", "src", "dst", "sport", "dport", "tcp_flags", "icmp_type",
        "icmp_code", "len", "vlan", "icmp_id", "embedded", "mtu") if getattr(p, name) is not None]
    return "\n".join(fields)


def dissect(raw: bytes, link: str = LINK_ETHERNET) -> str:
    """Every layer of one frame, field by field (scapy's `show`), then a hex dump."""
    frame = _ethernet(raw, link)
    try:
        logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
        logging.getLogger("scapy").setLevel(logging.ERROR)
        # The inet modules bind IPv4/IPv6, TCP, UDP and ICMP under Ether (scapy.all would too,
        # at four times the import time).
        inet = importlib.import_module("scapy.layers.inet")
        importlib.import_module("scapy.layers.inet6")
        from scapy.config import conf
        from scapy.layers.l2 import Ether

        # Port numbers, not /etc/services names: "dport = 8081", never "dport = tproxy".
        conf.noenum.add(inet.TCP.sport, inet.TCP.dport, inet.UDP.sport, inet.UDP.dport)
    except Exception:  # scapy missing or broken: still useful without it
        return ("(scapy is not installed: fwtop's own decode)\n" + _summary(frame, LINK_ETHERNET)
                + "\n\n" + hexdump(raw))
    try:
        shown = Ether(frame).show(dump=True)
    except Exception as exc:  # scapy on a hostile frame: say so, keep the hex
        shown = f"(scapy could not dissect this frame: {type(exc).__name__})\n" + _summary(
            frame, LINK_ETHERNET)
    return f"{shown}\n{hexdump(raw)}"
