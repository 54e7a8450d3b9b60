"""nftrace wire format: synthetic NFT_MSG_TRACE messages decode exactly; hostile bytes never
raise (they are counted)."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from fwtop.core.nftrace import (
    TRACE_MSG_TYPE,
    KernelTrace,
    ParseStats,
    flow_match,
    group_traces,
    parse_trace,
    trace_table,
)


def nla(typ: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), typ) + payload
    return raw + b"\0" * (-len(raw) % 4)


def message(tid: int, kind: int, table: str, chain: str, handle: int | None = None,
            verdict: int | None = None, policy: int | None = None, family: int = 2) -> bytes:
    attrs = nla(1, table.encode() + b"\0") + nla(2, chain.encode() + b"\0")
    if handle is not None:
        attrs += nla(3, struct.pack(">Q", handle))
    attrs += nla(4, struct.pack(">I", kind)) + nla(6, struct.pack(">I", tid))
    if verdict is not None:
        attrs += nla(5 | 0x8000, nla(1, struct.pack(">i", verdict)))
    if policy is not None:
        attrs += nla(16, struct.pack(">I", policy))
    attrs += nla(10, struct.pack(">I", 3)) + nla(15, struct.pack(">I", 2))
    body = bytes([family, 0, 0, 0]) + attrs
    return struct.pack("=IHHII", 16 + len(body), TRACE_MSG_TYPE, 0, 0, 0) + body


def test_rule_jump_and_policy_steps() -> None:
    data = (message(7, 3, "filter", "INPUT", 4, verdict=-3)
            + message(7, 2, "filter", "CHECK", None, verdict=-5)
            + message(7, 3, "filter", "INPUT", 9, verdict=0)
            + message(8, 1, "filter", "INPUT", policy=0))
    stats = ParseStats()
    steps = parse_trace(data, stats)
    assert stats.malformed == 0
    assert [(s.trace_id, s.kind, s.chain, s.handle, s.verdict) for s in steps] == [
        (7, "rule", "INPUT", 4, "jump"), (7, "return", "CHECK", None, "return"),
        (7, "rule", "INPUT", 9, "drop"), (8, "policy", "INPUT", None, "drop")]
    assert steps[0].family == "ip" and steps[0].iif == 3 and steps[0].nfproto == "ip"


def test_marker_steps_split_packets_that_share_an_id() -> None:
    data = (message(5, 3, "fwtop_trace_1", "pre", 2, verdict=-1)
            + message(5, 3, "filter", "INPUT", 4, verdict=1)
            + message(5, 3, "fwtop_trace_1", "pre", 2, verdict=-1)
            + message(5, 1, "filter", "INPUT", policy=0))
    traces: dict[int, KernelTrace] = {}
    done: list[KernelTrace] = []
    group_traces(parse_trace(data), traces, done, "fwtop_trace_")
    done += traces.values()
    assert [t.verdict for t in done] == ["accept", "drop"]
    assert done[1].final is not None and done[1].final.kind == "policy"


def test_trace_table_and_flow_match() -> None:
    match = flow_match("tcp", "10.0.0.2", "10.0.0.1", None, 8080)
    assert match == "ip saddr 10.0.0.2 ip daddr 10.0.0.1 meta l4proto tcp th dport 8080"
    assert flow_match("icmpv6", "fd00::2", None, None, None) == \
        "ip6 saddr fd00::2 meta l4proto icmpv6"
    text = trace_table("fwtop_trace_9", match)
    assert "flags owner" in text and "priority -350" in text and "meta nftrace set 1" in text
    assert "limit rate 5/second" in text


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_random_bytes_never_raise(data: bytes) -> None:
    parse_trace(data, ParseStats())


@settings(max_examples=300)
@given(st.integers(0, 200), st.binary(max_size=8))
def test_truncated_and_mutated_messages_never_raise(cut: int, junk: bytes) -> None:
    good = message(1, 3, "filter", "INPUT", 4, verdict=0)
    parse_trace(good[:cut] + junk, ParseStats())
    mutated = bytearray(good)
    if cut < len(mutated):
        mutated[cut] ^= 0xFF
    parse_trace(bytes(mutated), ParseStats())
