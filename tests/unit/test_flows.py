"""The flow table (fwtop.core.flows) on real frame bytes: what an on-call engineer reads from it
(unanswered, refused, rejected, established, half-open, answered, pmtu), once per change of
state, for IPv4 and IPv6, and bounded whatever comes in."""

from __future__ import annotations

import struct

import pytest

from fwtop.core.capture_events import FlowEvent, PacketEvent
from fwtop.core.flows import FlowTable, icmp_error_text
from fwtop.core.frames import decode_packet
from tests.unit.packets import echo, ether, icmp, ipv4, ipv6, tcp, udp

C, S = "10.0.0.1", "10.0.0.2"
C6, S6 = "fd00::1", "fd00::2"
WALL = 1_800_000_000.0


def pkt(l3: bytes, ts: float) -> PacketEvent:
    p = decode_packet(ether(l3), ts=ts, wall=WALL + ts)
    assert p is not None
    return p


def tcp4(src: str, dst: str, sport: int, dport: int, flags: str, ts: float) -> PacketEvent:
    return pkt(ipv4(src, dst, 6, tcp(sport, dport, flags)), ts)


def udp4(src: str, dst: str, sport: int, dport: int, ts: float) -> PacketEvent:
    return pkt(ipv4(src, dst, 17, udp(sport, dport)), ts)


def run(table: FlowTable, *packets: PacketEvent, until: float | None = None) -> list[FlowEvent]:
    for p in packets:
        table.observe(p)
    if until is not None:
        table.expire(until)
    return table.take()


def states(events: list[FlowEvent]) -> list[str]:
    return [e.state for e in events]


def test_syn_without_answer_is_unanswered_after_the_timeout() -> None:
    t = FlowTable(timeout=3.0)
    assert run(t, tcp4(C, S, 40000, 8081, "SYN", 10.0), until=12.9) == []
    # A retransmitted SYN is the same attempt, not a new flow.
    assert run(t, tcp4(C, S, 40000, 8081, "SYN", 11.0), until=12.99) == []
    [e] = run(t, until=13.0)
    assert (e.state, e.proto, e.src, e.sport, e.dst, e.dport) == (
        "unanswered", "tcp", C, 40000, S, 8081)
    assert (e.ts, e.wall, e.attempts, e.certain) == (13.0, WALL + 13.0, 2, True)
    assert e.reason.startswith("no answer to 2 SYNs within 3 s")
    assert e.to_json()["listener"] is None and e.to_json()["type"] == "flow"
    assert run(t, until=100.0) == []  # decided once


def test_rst_is_refused() -> None:
    t = FlowTable()
    [e] = run(t, tcp4(C, S, 40001, 8081, "SYN", 1.0), tcp4(S, C, 8081, 40001, "RST,ACK", 1.001))
    assert (e.state, e.answered_by, e.reason, e.ts) == ("refused", S, f"RST from {S}", 1.001)
    assert run(t, tcp4(S, C, 8081, 40001, "RST,ACK", 1.002), until=10.0) == []  # once


def test_rst_from_the_client_side_refuses_nothing() -> None:
    t = FlowTable()
    assert run(t, tcp4(C, S, 40001, 8081, "SYN", 1.0), tcp4(C, S, 40001, 8081, "RST", 1.1)) == []


def test_icmp_unreachable_quoting_the_syn_is_rejected() -> None:
    t = FlowTable()
    syn = ipv4(C, S, 6, tcp(40002, 8081, "SYN"))
    err = pkt(ipv4(S, C, 1, icmp(3, 13, body=syn[:28])), 1.01)
    [e] = run(t, pkt(syn, 1.0), err)
    assert (e.state, e.icmp_type, e.icmp_code, e.answered_by) == ("rejected", 3, 13, S)
    assert e.reason == f"ICMP communication administratively prohibited from {S}"


def test_handshake_is_established_once() -> None:
    t = FlowTable()
    events = run(t, tcp4(C, S, 40003, 443, "SYN", 1.0), tcp4(S, C, 443, 40003, "SYN,ACK", 1.01),
                 tcp4(C, S, 40003, 443, "ACK", 1.02), tcp4(C, S, 40003, 443, "PSH,ACK", 1.03),
                 tcp4(S, C, 443, 40003, "ACK", 1.04), until=50.0)
    assert states(events) == ["established"]
    assert (events[0].src, events[0].dport, events[0].answered_by) == (C, 443, S)


def test_syn_ack_without_final_ack_is_half_open_then_late_ack_establishes() -> None:
    t = FlowTable(timeout=2.0)
    [e] = run(t, tcp4(C, S, 40004, 443, "SYN", 1.0), tcp4(S, C, 443, 40004, "SYN,ACK", 1.5),
              until=3.6)
    assert e.state == "half-open" and "may be dropped on its way back" in e.reason
    assert states(run(t, tcp4(C, S, 40004, 443, "ACK", 4.0))) == ["established"]


def test_late_answer_changes_an_unanswered_flow() -> None:
    t = FlowTable(timeout=1.0)
    assert states(run(t, tcp4(C, S, 40005, 22, "SYN", 1.0), until=2.5)) == ["unanswered"]
    events = run(t, tcp4(S, C, 22, 40005, "SYN,ACK", 3.0), tcp4(C, S, 40005, 22, "ACK", 3.1))
    assert states(events) == ["established"]


def test_port_reuse_starts_a_new_flow() -> None:
    t = FlowTable(timeout=1.0)
    first = run(t, tcp4(C, S, 40006, 80, "SYN", 1.0), tcp4(S, C, 80, 40006, "RST,ACK", 1.01))
    second = run(t, tcp4(C, S, 40006, 80, "SYN", 5.0), until=7.0)
    assert states(first) == ["refused"] and states(second) == ["unanswered"]
    assert second[0].attempts == 1


def test_udp_reply_is_answered_and_silence_unanswered() -> None:
    t = FlowTable(timeout=3.0)
    answered = run(t, udp4(C, S, 5353, 53, 1.0), udp4(C, S, 5353, 53, 1.1),
                   udp4(S, C, 53, 5353, 1.2))
    assert states(answered) == ["answered"] and answered[0].attempts == 2
    [e] = run(t, udp4(C, S, 5354, 53, 2.0), udp4(C, S, 5354, 53, 2.5), until=5.0)
    assert (e.state, e.attempts, e.certain) == ("unanswered", 2, True)
    assert e.reason.startswith("no reply within 3 s to 2 datagrams")


def test_udp_port_unreachable_is_rejected() -> None:
    t = FlowTable()
    dgram = ipv4(C, S, 17, udp(40007, 9004))
    [e] = run(t, pkt(dgram, 1.0), pkt(ipv4(S, C, 1, icmp(3, 3, body=dgram)), 1.001), until=9.0)
    assert (e.state, e.dport, e.icmp_code) == ("rejected", 9004, 3)


def test_icmp_echo_answered_unanswered_and_told_apart_by_identifier() -> None:
    t = FlowTable(timeout=1.0)
    events = run(t, pkt(ipv4(C, S, 1, echo(8, 1)), 1.0), pkt(ipv4(C, S, 1, echo(8, 2)), 1.0),
                 pkt(ipv4(S, C, 1, echo(0, 1)), 1.01), until=3.0)
    assert [(e.state, e.icmp_id) for e in events] == [("answered", 1), ("unanswered", 2)]
    assert events[1].reason == "no echo reply within 1 s to 1 echo request"


def test_pmtu_is_noted_once_per_mtu() -> None:
    t = FlowTable()
    syn = tcp4(C, S, 40008, 443, "SYN", 1.0)
    big = ipv4(C, S, 6, tcp(40008, 443, "ACK"))

    def frag_needed(mtu: int, ts: float) -> PacketEvent:
        return pkt(ipv4("10.0.0.254", C, 1, icmp(3, 4, struct.pack("!HH", 0, mtu), big)), ts)

    events = run(t, syn, tcp4(S, C, 443, 40008, "SYN,ACK", 1.01),
                 tcp4(C, S, 40008, 443, "ACK", 1.02), frag_needed(1400, 2.0),
                 frag_needed(1400, 2.1), frag_needed(1280, 2.2))
    assert states(events) == ["established", "pmtu", "pmtu"]
    assert [e.mtu for e in events[1:]] == [1400, 1280]
    assert events[1].answered_by == "10.0.0.254" and "path MTU 1400" in events[1].reason
    # Established stays the flow's state: a PMTU note is not its fate.
    assert run(t, tcp4(C, S, 40008, 443, "ACK", 3.0), until=50.0) == []


def test_pmtu_of_an_unknown_flow_is_still_reported() -> None:
    t = FlowTable()
    big = ipv6(C6, S6, 6, tcp(40009, 443, "ACK"))
    [e] = run(t, pkt(ipv6("fd00::fe", C6, 58, icmp(2, 0, struct.pack("!I", 1280), big)), 1.0))
    assert (e.state, e.mtu, e.src, e.dst, e.dport, e.family) == (
        "pmtu", 1280, C6, S6, 443, "ip6")


def test_ipv6_refused_and_rejected() -> None:
    t = FlowTable()
    syn = ipv6(C6, S6, 6, tcp(40010, 8081, "SYN"))
    rst = ipv6(S6, C6, 6, tcp(8081, 40010, "RST,ACK"))
    dgram = ipv6(C6, S6, 17, udp(40011, 9004))
    unreach = ipv6(S6, C6, 58, icmp(1, 4, body=dgram))
    events = run(t, pkt(syn, 1.0), pkt(rst, 1.01), pkt(dgram, 1.02), pkt(unreach, 1.03))
    assert [(e.state, e.family, e.dport) for e in events] == [
        ("refused", "ip6", 8081), ("rejected", "ip6", 9004)]
    assert events[1].reason == f"ICMP port unreachable from {S6}"


def test_time_exceeded_rejects_only_a_waiting_flow() -> None:
    t = FlowTable()
    syn = ipv4(C, S, 6, tcp(40012, 80, "SYN"))
    err = pkt(ipv4("10.0.0.254", C, 1, icmp(11, 0, body=syn[:28])), 1.1)
    [e] = run(t, pkt(syn, 1.0), err)
    assert e.state == "rejected" and e.reason == "ICMP time exceeded from 10.0.0.254"


def test_error_for_a_flow_seen_before_the_capture_is_reported_once() -> None:
    t = FlowTable()
    dgram = ipv4(C, S, 17, udp(40013, 161))
    err = ipv4(S, C, 1, icmp(3, 3, body=dgram))
    events = run(t, pkt(err, 1.0), pkt(err, 1.1), pkt(err, 1.2))
    assert states(events) == ["rejected"]


def test_sampling_makes_udp_silence_uncertain() -> None:
    t = FlowTable(timeout=1.0)
    t.observe(udp4(C, S, 40014, 53, 1.0))
    t.note_skipped(1.5)  # the capture skipped packets: the reply may be among them
    t.observe(tcp4(C, S, 40015, 80, "SYN", 1.0))
    [u, s] = sorted(run(t, until=3.0), key=lambda e: e.proto, reverse=True)
    assert (u.proto, u.state, u.certain) == ("udp", "unanswered", False)
    assert "sampling" in u.reason
    assert (s.proto, s.certain) == ("tcp", True)  # SYN answers are never sampled out
    t.observe(tcp4(C, S, 40016, 80, "SYN", 4.0))
    t.note_skipped(4.5, blind_ts=4.5)  # whole blocks skipped unseen
    [b] = run(t, until=6.0)
    assert (b.state, b.certain) == ("unanswered", False)


def test_table_is_bounded_and_counts_evictions() -> None:
    t = FlowTable(max_flows=100, timeout=1.0)
    for i in range(1000):
        t.observe(tcp4(C, S, 10000 + i, 80, "SYN", 1.0 + i * 0.001))
    assert len(t) == 100
    stats = t.stats()
    assert (stats.flows, stats.created, stats.evicted, stats.evicted_pending) == (
        100, 1000, 900, 900)
    events = run(t, until=10.0)
    assert len(events) == 100 and {e.sport for e in events} == set(range(10900, 11000))
    assert len(t._pending) <= 2 * t.max_flows


def test_active_flows_survive_eviction_and_idle_ones_expire() -> None:
    t = FlowTable(max_flows=3, idle=10.0)
    run(t, udp4(C, S, 1, 53, 1.0), udp4(C, S, 2, 53, 1.0), udp4(C, S, 3, 53, 1.0))
    run(t, udp4(C, S, 1, 53, 2.0))  # flow 1 is active again
    run(t, udp4(C, S, 4, 53, 3.0))  # the table is full: the least recently active goes
    assert t.stats().evicted == 1
    assert run(t, udp4(S, C, 53, 1, 3.1))[0].state == "answered"  # flow 1 is still there
    t.expire(100.0)
    assert len(t) == 0


def test_icmp_error_words() -> None:
    assert icmp_error_text("ip", 3, 3) == "port unreachable"
    assert icmp_error_text("ip", 3, 10) == "host administratively prohibited"
    assert icmp_error_text("ip6", 1, 1) == "communication administratively prohibited"
    assert icmp_error_text("ip6", 2, 0) == "packet too big"
    assert icmp_error_text("ip", 3, 99) == "destination unreachable (code 99)"


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        FlowTable(timeout=0)
    with pytest.raises(ValueError):
        FlowTable(max_flows=0)
