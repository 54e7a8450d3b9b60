"""fwtop.core.packet: IPv4/IPv6 + TCP/UDP/ICMP/ICMPv6 header decoding, and that no byte string
(truncated, hostile, random) makes it raise."""

from __future__ import annotations

import socket
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from fwtop.core import packet
from fwtop.core.packet import L3Info, decode_l3, decode_l3_fields, tcp_flags_text

SRC4, DST4 = "10.61.0.1", "10.61.0.2"
SRC6, DST6 = "fd61::1", "fd61::2"


def ipv4(proto: int, l4: bytes, *, frag: int = 0, options: bytes = b"",
         total: int | None = None, ihl: int | None = None) -> bytes:
    hl = 20 + len(options)
    ver_ihl = 0x40 | (ihl if ihl is not None else hl // 4)
    tot = total if total is not None else hl + len(l4)
    head = struct.pack("!BBHHHBBH4s4s", ver_ihl, 0, tot, 1, frag, 64, proto, 0,
                       socket.inet_aton(SRC4), socket.inet_aton(DST4))
    return head + options + l4


def ipv6(nexthdr: int, rest: bytes, plen: int | None = None) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(rest) if plen is None else plen, nexthdr,
                       64, socket.inet_pton(socket.AF_INET6, SRC6),
                       socket.inet_pton(socket.AF_INET6, DST6)) + rest


def tcp(sport: int, dport: int, flags: int) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0)


def udp(sport: int, dport: int, payload: bytes = b"hi") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def ext(nexthdr: int, units: int) -> bytes:
    """An option-style IPv6 extension header of (units + 1) * 8 bytes."""
    return struct.pack("!BB", nexthdr, units) + b"\x01\x04\x00\x00\x00\x00" + b"\x00" * 8 * units


def test_ipv4_tcp_syn_ack() -> None:
    info = decode_l3(ipv4(6, tcp(40001, 443, 0x12)))
    assert info == L3Info("ip", SRC4, DST4, 40, 6, "tcp", sport=40001, dport=443,
                          tcp_flags="SYN,ACK")


def test_ipv4_udp_and_icmp() -> None:
    u = decode_l3(ipv4(17, udp(5353, 53)))
    assert u is not None
    assert (u.proto, u.sport, u.dport, u.length, u.truncated) == ("udp", 5353, 53, 30, False)
    i = decode_l3(ipv4(1, struct.pack("!BBHHH", 3, 4, 0, 0, 1400)))
    assert i is not None
    assert (i.proto, i.icmp_type, i.icmp_code, i.sport) == ("icmp", 3, 4, None)


def test_ipv4_header_options_are_skipped_by_ihl() -> None:
    info = decode_l3(ipv4(6, tcp(1, 2, 0x02), options=b"\x01\x01\x01\x00"))
    assert info is not None
    assert (info.sport, info.dport, info.tcp_flags) == (1, 2, "SYN")


def test_ipv4_non_first_fragment_has_no_ports() -> None:
    # Offset 185 * 8 = 1480 bytes: the bytes after the header are the middle of a datagram.
    info = decode_l3(ipv4(17, udp(1111, 2222), frag=185))
    assert info is not None
    assert (info.fragment_offset, info.sport, info.dport, info.proto) == (1480, None, None, "udp")
    assert not info.truncated
    first = decode_l3(ipv4(17, udp(1111, 2222), frag=0x2000))  # MF set, offset 0
    assert first is not None
    assert (first.more_fragments, first.fragment_offset, first.sport) == (True, 0, 1111)


def test_ipv4_bad_ihl_keeps_addresses_only() -> None:
    info = decode_l3(ipv4(6, tcp(1, 2, 2), ihl=2))
    assert info is not None
    assert (info.src, info.dst, info.sport, info.truncated) == (SRC4, DST4, None, True)


def test_ipv4_total_length_bounds_the_transport_header() -> None:
    # Ethernet padding after a short packet must not be read as a TCP header.
    pkt = ipv4(6, b"", total=20) + tcp(1, 2, 2)
    info = decode_l3(pkt)
    assert info is not None
    assert (info.sport, info.truncated) == (None, True)


def test_tcp_cut_after_ports_keeps_ports() -> None:
    info = decode_l3(ipv4(6, tcp(40001, 22, 0x02))[:20 + 8])
    assert info is not None
    assert (info.sport, info.dport, info.tcp_flags, info.truncated) == (40001, 22, None, True)


def test_tcp_flags_text_order_and_no_flags() -> None:
    assert tcp_flags_text(0xFF) == "FIN,SYN,RST,PSH,ACK,URG,ECE,CWR"
    assert tcp_flags_text(0x14) == "RST,ACK"
    assert tcp_flags_text(0x18) == "PSH,ACK"
    assert tcp_flags_text(0) == ""
    info = decode_l3(ipv4(6, tcp(1, 2, 0x00)))
    assert info is not None and info.tcp_flags == ""


def test_ipv6_udp_and_icmpv6() -> None:
    u = decode_l3(ipv6(17, udp(546, 547)))
    assert u == L3Info("ip6", SRC6, DST6, 50, 17, "udp", sport=546, dport=547)
    i = decode_l3(ipv6(58, struct.pack("!BBHHH", 135, 0, 0, 0, 0)))
    assert i is not None
    assert (i.proto, i.icmp_type, i.icmp_code) == ("icmpv6", 135, 0)


def test_ipv6_walks_hop_by_hop_routing_dstopts_and_ah() -> None:
    ah = struct.pack("!BBH", 6, 4, 0) + b"\x00" * 20  # (4 + 2) * 4 = 24 bytes
    rest = ext(43, 0) + ext(60, 1) + ext(51, 0) + ah + tcp(40001, 80, 0x02)
    info = decode_l3(ipv6(0, rest))
    assert info is not None
    assert (info.protocol, info.proto, info.sport, info.dport, info.tcp_flags) == (
        6, "tcp", 40001, 80, "SYN")


def test_ipv6_fragments() -> None:
    first = decode_l3(ipv6(44, struct.pack("!BxHI", 17, 0x0001, 7) + udp(1, 2)))
    assert first is not None
    assert (first.more_fragments, first.sport, first.dport) == (True, 1, 2)
    later = decode_l3(ipv6(44, struct.pack("!BxHI", 17, 1480, 7) + udp(1, 2)))
    assert later is not None
    assert (later.fragment_offset, later.sport, later.proto, later.truncated) == (
        1480, None, "udp", False)


def test_ipv6_truncated_extension_chain() -> None:
    pkt = ipv6(0, ext(6, 4) + tcp(1, 2, 2))
    # Cut inside the hop-by-hop header's first two bytes: what follows is unknown.
    info = decode_l3(pkt[:41])
    assert info is not None
    assert (info.protocol, info.proto, info.truncated, info.src) == (None, None, True, SRC6)
    # Cut after it was read but before its 40 bytes end: TCP comes next, its header is gone.
    info = decode_l3(pkt[:40 + 16])
    assert info is not None
    assert (info.proto, info.sport, info.truncated) == ("tcp", None, True)


def test_ipv6_endless_extension_chain_stops() -> None:
    info = decode_l3(ipv6(60, ext(60, 0) * 200))
    assert info is not None
    assert info.truncated and info.protocol is None


def test_ipv6_esp_and_no_next_header_are_not_truncated() -> None:
    esp = decode_l3(ipv6(50, b"\x00" * 16))
    assert esp is not None and (esp.proto, esp.truncated) == ("esp", False)
    none = decode_l3(ipv6(59, b""))
    assert none is not None and (none.proto, none.protocol) == ("59", 59)


def test_not_ip_or_too_short_is_none() -> None:
    assert decode_l3(b"") is None
    assert decode_l3(b"\x45" + b"\x00" * 18) is None
    assert decode_l3(ipv6(17, b"")[:39]) is None
    assert decode_l3(b"\x00" * 60) is None  # version 0 (e.g. an ARP payload)


def test_version_nibble_beats_the_hint() -> None:
    pkt = ipv4(17, udp(1, 2))
    assert decode_l3(pkt, family_hint=socket.AF_INET6) == decode_l3(pkt)


def test_memoryview_and_bytearray_decode_the_same() -> None:
    pkt = ipv6(0, ext(6, 0) + tcp(9, 10, 0x11))
    assert decode_l3(memoryview(pkt)) == decode_l3(bytearray(pkt)) == decode_l3(pkt)


# --- fuzz -------------------------------------------------------------------------------------

SAMPLES = [
    ipv4(6, tcp(40001, 443, 0x12)), ipv4(17, udp(1, 2)), ipv4(1, b"\x08\x00\x00\x00"),
    ipv6(0, ext(43, 0) + ext(44, 0) + tcp(1, 2, 3)), ipv6(58, b"\x80\x00\x00\x00"),
    ipv6(44, struct.pack("!BxHI", 17, 1, 7) + udp(1, 2)),
]


@settings(max_examples=2000)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise(data: bytes) -> None:
    info = decode_l3(data)
    assert info is None or info.family in ("ip", "ip6")


@settings(max_examples=1000)
@given(st.sampled_from(SAMPLES), st.data())
def test_truncated_and_mutated_packets_never_raise(pkt: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(pkt)))
    info = decode_l3(pkt[:cut])
    if info is not None:
        assert info.src in (SRC4, SRC6)
    buf = bytearray(pkt)
    for _ in range(data.draw(st.integers(1, 6))):
        buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
    decode_l3(bytes(buf))


@settings(max_examples=1500)
@given(st.sampled_from([ipv4(6, tcp(40001, 443, 0x12)), ipv4(17, udp(1, 2)),
                        ipv4(1, b"\x08\x00\x00\x00\x12\x34\x00\x01")]), st.data())
def test_ipv4_fast_path_agrees_with_the_full_decoder(pkt: bytes, data: st.DataObject) -> None:
    """decode_l3 takes a one-unpack shortcut for plain IPv4 TCP/UDP/ICMP; it must answer exactly
    what the general decoder answers, for the real shape and for damaged ones."""
    buf = bytearray(pkt + bytes(data.draw(st.integers(0, 12))))
    for _ in range(data.draw(st.integers(0, 4))):
        buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.sampled_from(
            [0, 1, 6, 17, 20, 28, 33, 34, 0x20, 0x40, 0x45, 0x46, 255]))
    cut = bytes(buf[:data.draw(st.integers(0, len(buf)))])
    general = packet._decode_ipv4(cut) if cut and cut[0] >> 4 == 4 else decode_l3_fields(cut)
    assert decode_l3_fields(cut) == general
