"""Frame decoding for the capture (fwtop.core.frames): link headers (Ethernet, VLAN/QinQ, Linux
cooked SLL and SLL2, raw IP), ICMP details, and never raising on hostile bytes. Also the
filter-program parser and the pcap writer, which are pure byte work."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fwtop.core.capture_events import Embedded, packet_fields
from fwtop.core.flows import FlowTable
from fwtop.core.frames import (
    LINK_ETHERNET,
    LINK_RAW,
    LINK_SLL,
    LINK_SLL2,
    decode_fields,
    decode_packet,
    l3_offset,
    link_of_arphrd,
    link_of_pcap,
    make_packet,
)
from tests.unit.packets import (
    arp,
    echo,
    ether,
    hop_by_hop,
    icmp,
    ipv4,
    ipv6,
    sll,
    sll2,
    tcp,
    udp,
)

SYN4 = ipv4("10.0.0.1", "10.0.0.2", 6, tcp(40000, 8081, "SYN"))
UDP6 = ipv6("fd00::1", "fd00::2", 17, udp(5353, 53))


def test_ethernet_ipv4_tcp() -> None:
    p = decode_packet(ether(SYN4), ts=5.0, wall=1000.5, seq=7, iface="eth0", direction="in")
    assert p is not None
    assert (p.ts, p.wall, p.seq, p.iface, p.dir) == (5.0, 1000.5, 7, "eth0", "in")
    assert (p.family, p.proto, p.src, p.dst, p.sport, p.dport, p.tcp_flags) == (
        "ip", "tcp", "10.0.0.1", "10.0.0.2", 40000, 8081, "SYN")
    assert (p.len, p.frame_len, p.vlan) == (40, 54, None)
    assert p.to_json()["type"] == "packet" and p.to_json()["tcp_flags"] == "SYN"


def test_vlan_and_qinq_tags_are_stripped() -> None:
    p = decode_packet(ether(SYN4, vlans=(42,)))
    assert p is not None and (p.vlan, p.sport, p.dport) == (42, 40000, 8081)
    q = decode_packet(ether(UDP6, vlans=(100, 200), tpid=0x88A8))
    assert q is not None and (q.vlan, q.family, q.dport) == (100, "ip6", 53)
    # A tag the kernel already took out (TP_STATUS_VLAN_VALID) is reported as given.
    r = decode_packet(ether(SYN4), vlan=7)
    assert r is not None and r.vlan == 7


def test_too_many_tags_or_not_ip_is_none() -> None:
    assert decode_packet(ether(SYN4, vlans=(1, 2, 3, 4, 5))) is None
    assert decode_packet(arp()) is None
    assert decode_packet(b"") is None
    assert decode_packet(ether(b"")) is None
    assert l3_offset(ether(SYN4)[:13]) is None


@pytest.mark.parametrize("link,frame", [
    (LINK_SLL, sll(SYN4)), (LINK_SLL2, sll2(SYN4)), (LINK_RAW, SYN4),
    (LINK_SLL, sll(SYN4)[:14] + struct.pack("!HHH", 0x8100, 5, 0x0800) + SYN4),
])
def test_cooked_and_raw_links(link: str, frame: bytes) -> None:
    p = decode_packet(frame, link)
    assert p is not None and (p.src, p.dport, p.tcp_flags) == ("10.0.0.1", 8081, "SYN")


def test_link_types() -> None:
    assert link_of_arphrd(1) == link_of_arphrd(772) == LINK_ETHERNET  # ether, loopback
    assert link_of_arphrd(0xFFFE) == link_of_arphrd(519) == LINK_RAW  # tun, rawip
    assert link_of_pcap(113) == LINK_SLL and link_of_pcap(276) == LINK_SLL2
    assert link_of_pcap(1) == LINK_ETHERNET and link_of_pcap(999) is None
    assert decode_packet(SYN4, "no-such-link") is None


def test_ipv6_extension_headers_and_udp() -> None:
    frame = ether(ipv6("fd00::1", "fd00::2", 0, tcp(1234, 443, "SYN,ACK"), hop_by_hop(6)))
    p = decode_packet(frame)
    assert p is not None
    assert (p.family, p.proto, p.sport, p.dport, p.tcp_flags, p.len) == (
        "ip6", "tcp", 1234, 443, "SYN,ACK", 40 + 8 + 20)


def test_icmp_echo_identifier() -> None:
    p = decode_packet(ether(ipv4("10.0.0.1", "10.0.0.2", 1, echo(8, 0x4657))))
    assert p is not None and (p.icmp_type, p.icmp_id, p.embedded) == (8, 0x4657, None)
    q = decode_packet(ether(ipv6("fd00::1", "fd00::2", 58, echo(129, 77))))
    assert q is not None and (q.proto, q.icmp_type, q.icmp_id) == ("icmpv6", 129, 77)


def test_icmp_error_quotes_the_packet() -> None:
    quoted = ipv4("10.0.0.1", "10.0.0.2", 17, udp(40000, 53))
    err = ipv4("10.0.0.2", "10.0.0.1", 1, icmp(3, 3, body=quoted[:28]))
    p = decode_packet(ether(err))
    assert p is not None and (p.icmp_type, p.icmp_code, p.mtu) == (3, 3, None)
    assert p.embedded == Embedded("udp", "10.0.0.1", "10.0.0.2", 40000, 53)
    # An echo quoted in an error keeps its identifier (to find its flow).
    ping = ipv4("10.0.0.1", "10.0.0.9", 1, echo(8, 99))
    q = decode_packet(ether(ipv4("10.0.0.254", "10.0.0.1", 1, icmp(11, 0, body=ping))))
    assert q is not None and q.embedded is not None and q.embedded.icmp_id == 99


def test_fragmentation_needed_and_packet_too_big() -> None:
    big = ipv4("10.0.0.1", "10.0.0.2", 6, tcp(40000, 443, "ACK"))
    p = decode_packet(ether(ipv4("10.0.0.254", "10.0.0.1", 1,
                                 icmp(3, 4, struct.pack("!HH", 0, 1400), big))))
    assert p is not None and p.mtu == 1400
    assert p.embedded is not None and (p.embedded.proto, p.embedded.dport) == ("tcp", 443)
    big6 = ipv6("fd00::1", "fd00::2", 6, tcp(40000, 443, "ACK"))
    q = decode_packet(ether(ipv6("fd00::fe", "fd00::1", 58,
                                 icmp(2, 0, struct.pack("!I", 1280), big6))))
    assert q is not None and (q.mtu, q.embedded and q.embedded.src) == (1280, "fd00::1")


def test_fields_and_event_agree() -> None:
    for frame in (ether(SYN4), ether(UDP6, vlans=(3,)), arp()):
        fields = decode_fields(frame, seq=3, iface="x")
        event = decode_packet(frame, seq=3, iface="x")
        assert (fields is None) == (event is None)
        if fields is not None and event is not None:
            assert make_packet(*fields) == event and packet_fields(event) == fields


FRAMES = [ether(SYN4), ether(UDP6, vlans=(5, 6)), sll(SYN4), sll2(UDP6),
          ether(ipv4("10.0.0.2", "10.0.0.1", 1, icmp(3, 3, body=SYN4[:28])))]


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=200), link=st.sampled_from([LINK_ETHERNET, LINK_RAW, LINK_SLL,
                                                           LINK_SLL2]))
def test_random_bytes_never_raise(data: bytes, link: str) -> None:
    p = decode_packet(data, link)
    table = FlowTable(max_flows=8)
    if p is not None:
        table.observe(p)
        table.expire(p.ts + 10)


@settings(max_examples=400, deadline=None)
@given(index=st.integers(0, len(FRAMES) - 1), cut=st.integers(0, 200),
       flips=st.lists(st.tuples(st.integers(0, 199), st.integers(0, 255)), max_size=6))
def test_mutated_frames_never_raise(index: int, cut: int, flips: list[tuple[int, int]]) -> None:
    frame = bytearray(FRAMES[index][:cut])
    for pos, value in flips:
        if pos < len(frame):
            frame[pos] = value
    for link in (LINK_ETHERNET, LINK_SLL, LINK_SLL2, LINK_RAW):
        p = decode_packet(bytes(frame), link)
        if p is not None:
            table = FlowTable(max_flows=4)
            table.observe(p)
            table.expire(100.0)
            table.take()


# --- filter programs and pcap files ---------------------------------------------------------


def test_parse_ddd() -> None:
    from fwtop.sources.capture import CaptureError, parse_ddd

    assert parse_ddd("2\n40 0 0 12\n6 0 0 262144\n") == [(40, 0, 0, 12), (6, 0, 0, 262144)]
    for bad in ("", "3\n40 0 0 12\n", "x\n", "1\n40 0 0\n", "0\n"):
        with pytest.raises(CaptureError):
            parse_ddd(bad)


def _read_pcap(path: Path) -> tuple[tuple[int, ...], list[tuple[int, int, int, int, bytes]]]:
    data = path.read_bytes()
    header = struct.unpack_from("=IHHiIII", data)
    pos, records = 24, []
    while pos < len(data):
        sec, usec, incl, orig = struct.unpack_from("=IIII", data, pos)
        records.append((sec, usec, incl, orig, data[pos + 16:pos + 16 + incl]))
        pos += 16 + incl
    return header, records


def test_pcap_writer(tmp_path: Path) -> None:
    from fwtop.service.pcap import PcapWriter, write_pcap

    path = tmp_path / "out.pcap"
    n = write_pcap(str(path), [(1000.25, ether(SYN4), 54, LINK_ETHERNET),
                               (1001.5, SYN4, 40, LINK_RAW)])
    assert n == 2 and path.stat().st_mode & 0o777 == 0o600
    header, records = _read_pcap(path)
    assert header == (0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)
    assert records[0] == (1000, 250000, 54, 54, ether(SYN4))
    # A raw-IP frame gets an Ethernet header so one file holds every interface.
    assert records[1][:4] == (1001, 500000, 54, 54) and records[1][4][12:14] == b"\x08\x00"
    assert decode_packet(records[1][4]) == decode_packet(ether(SYN4))
    capped = PcapWriter(str(tmp_path / "capped.pcap"), limit_bytes=24 + 16 + 54)
    for _ in range(3):
        capped.write(1.0, ether(SYN4), 54)
    capped.close()
    assert (capped.written, capped.not_written) == (1, 2)


def test_dissect_without_scapy(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from fwtop.service import pcap

    def no_scapy(name: str) -> object:
        raise ImportError(name)

    monkeypatch.setattr(importlib, "import_module", no_scapy)
    text = pcap.dissect(ether(SYN4))
    assert "scapy is not installed" in text and "dport = 8081" in text
    assert text.splitlines()[-1].startswith("0030  ")
