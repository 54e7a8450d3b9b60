"""Builders of real frame bytes for the capture unit tests: Ethernet (with VLAN tags), Linux
cooked SLL/SLL2, raw IP; IPv4/IPv6 with TCP, UDP, ICMP/ICMPv6 (echo, and errors that quote the
packet that caused them)."""

from __future__ import annotations

import socket
import struct

ETH_SRC = bytes.fromhex("020000000001")
ETH_DST = bytes.fromhex("020000000002")
FLAGS = {"FIN": 1, "SYN": 2, "RST": 4, "PSH": 8, "ACK": 16}


def tcp(sport: int, dport: int, flags: str = "SYN") -> bytes:
    bits = 0
    for name in flags.split(","):
        bits |= FLAGS[name]
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, bits, 65535, 0, 0)


def udp(sport: int, dport: int, payload: bytes = b"fwtop") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp(itype: int, code: int, rest: bytes = b"\x00" * 4, body: bytes = b"") -> bytes:
    return struct.pack("!BBH", itype, code, 0) + rest + body


def echo(itype: int, ident: int, seq: int = 1) -> bytes:
    return icmp(itype, 0, struct.pack("!HH", ident, seq), b"ping")


def ipv4(src: str, dst: str, proto: int, l4: bytes, ttl: int = 64) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0x4000, ttl, proto, 0,
                       socket.inet_aton(src), socket.inet_aton(dst)) + l4


def ipv6(src: str, dst: str, nexthdr: int, l4: bytes, ext: bytes = b"") -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(ext) + len(l4), nexthdr, 64,
                       socket.inet_pton(socket.AF_INET6, src),
                       socket.inet_pton(socket.AF_INET6, dst)) + ext + l4


def hop_by_hop(nexthdr: int) -> bytes:
    """An 8-byte hop-by-hop options header (PadN) in front of `nexthdr`."""
    return struct.pack("!BB", nexthdr, 0) + b"\x01\x04\x00\x00\x00\x00"


def ether(l3: bytes, vlans: tuple[int, ...] = (), tpid: int = 0x8100) -> bytes:
    etype = 0x86DD if l3 and l3[0] >> 4 == 6 else 0x0800
    tags = b"".join(struct.pack("!HH", tpid if i == 0 else 0x8100, vid)
                    for i, vid in enumerate(vlans))
    return ETH_DST + ETH_SRC + tags + struct.pack("!H", etype) + l3


def sll(l3: bytes, pkttype: int = 0) -> bytes:
    etype = 0x86DD if l3[0] >> 4 == 6 else 0x0800
    return struct.pack("!HHH8sH", pkttype, 1, 6, ETH_SRC + b"\x00\x00", etype) + l3


def sll2(l3: bytes, ifindex: int = 2) -> bytes:
    etype = 0x86DD if l3[0] >> 4 == 6 else 0x0800
    return struct.pack("!HHIHBB8s", etype, 0, ifindex, 1, 0, 6, ETH_SRC + b"\x00\x00") + l3


def arp() -> bytes:
    return ETH_DST + ETH_SRC + b"\x08\x06" + b"\x00\x01\x08\x00\x06\x04\x00\x01" + b"\x00" * 20
