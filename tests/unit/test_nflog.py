"""fwtop.core.nflog on real kernel NFLOG messages (tests/fixtures/nflog, see record.py there),
the config request bytes, the ruleset group finder, and fuzzing: nothing a socket could hand the
parser makes it raise, and what it cannot read is counted."""

from __future__ import annotations

import dataclasses
import errno
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fwtop.core import nflog
from fwtop.core.events import DropEvent
from fwtop.core.model import Chain, Rule, Ruleset, Table
from fwtop.core.nflog import parse_messages

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nflog"
META: dict[str, Any] = json.loads((FIXTURES / "ifnames.json").read_text())
TS, WALL = 123.5, 1_000_000.25


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.bin").read_bytes()


def ifnames(name: str) -> dict[int, str]:
    return {int(k): v for k, v in META[name]["ifnames"].items()}


def parse_fixture(name: str) -> nflog.NflogParse:
    return parse_messages(fixture(name), ifnames(name), TS, WALL)


V4 = {"family": "ip", "src": "10.61.1.1", "dst": "10.61.2.2"}
V6 = {"family": "ip6", "src": "fd61:1::1", "dst": "fd61:2::2"}
UDP41 = {"proto": "udp", "len": 41}
EXPECTED: dict[str, dict[str, Any]] = {
    "ipv4_tcp_syn": {**V4, "prefix": "t-syn", "group": 5, "hook": "input", "iif": "s0",
                     "proto": "tcp", "sport": 40001, "dport": 8080, "tcp_flags": "SYN",
                     "len": 60},
    "ipv4_udp": {**V4, **UDP41, "prefix": "t-drop", "group": 5, "hook": "input", "iif": "s0",
                 "sport": 40002, "dport": 9999},
    "ipv4_icmp_echo": {**V4, "prefix": "n-ping", "group": 6, "hook": "input", "iif": "s0",
                       "proto": "icmp", "icmp_type": 8, "icmp_code": 0, "len": 38},
    "ipv6_tcp_syn": {**V6, "prefix": "n-tcp6", "group": 6, "hook": "input", "iif": "s0",
                     "proto": "tcp", "sport": 40003, "dport": 8443, "tcp_flags": "SYN",
                     "len": 80},
    "ipv6_icmpv6_echo": {**V6, "prefix": "n-ping6", "group": 6, "hook": "input", "iif": "s0",
                         "proto": "icmpv6", "icmp_type": 128, "icmp_code": 0, "len": 59},
    "ipv4_udp_mark": {**V4, **UDP41, "prefix": "n-mark", "group": 6, "hook": "input",
                      "iif": "s0", "sport": 40004, "dport": 7777, "mark": 42},
    "escape_prefix": {**V4, **UDP41, "prefix": "\x1b[31mred\x1b[0m", "group": 6,
                      "hook": "input", "iif": "s0", "sport": 40005, "dport": 7778},
    "invalid_utf8_prefix": {**V4, **UDP41, "prefix": "bad\ufffd\ufffdutf8", "group": 5,
                            "hook": "input", "iif": "s0", "sport": 40008, "dport": 7780},
    "forward_in_out": {**V4, **UDP41, "prefix": "fwd-drop", "group": 7, "hook": "forward",
                       "iif": "r0", "oif": "r1", "sport": 40006, "dport": 5353},
    "output_uid_gid": {**V4, **UDP41, "prefix": "out-drop", "group": 8, "hook": "output",
                       "oif": "c0", "sport": 40007, "dport": 6666, "mark": 42, "uid": 0,
                       "gid": 0},
}
ALL_FIELDS = ("prefix", "group", "hook", "iif", "oif", "family", "proto", "src", "dst", "sport",
              "dport", "icmp_type", "icmp_code", "tcp_flags", "len", "mark", "uid", "gid",
              "reason")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_kernel_message_decodes_exactly(name: str) -> None:
    res = parse_fixture(name)
    assert res.malformed == 0
    assert len(res.events) == 1
    ev = res.events[0]
    got = {f: getattr(ev, f) for f in ALL_FIELDS}
    want = {f: EXPECTED[name].get(f) for f in ALL_FIELDS}
    assert got == want
    assert (ev.source, ev.ts) == ("nflog", TS)


def test_rx_timestamp_sets_wall_and_output_path_keeps_callers() -> None:
    # Received packets carry NFULA_TIMESTAMP (the kernel's wall clock of the packet).
    ev = parse_fixture("ipv4_udp").events[0]
    assert ev.wall != WALL and 1.6e9 < ev.wall < 4.1e9
    # A locally sent packet has no timestamp yet at the output hook.
    assert parse_fixture("output_uid_gid").events[0].wall == WALL


def test_sequence_numbers_per_group() -> None:
    assert parse_fixture("ipv4_tcp_syn").seqs == ((5, 0),)
    assert parse_fixture("ipv4_udp").seqs == ((5, 1),)
    assert parse_fixture("forward_in_out").seqs == ((7, 0),)


def test_batch_of_three_with_nlmsg_done() -> None:
    res = parse_fixture("ipv4_udp_batch3")
    assert res.malformed == 0
    assert [e.sport for e in res.events] == [40010, 40011, 40012]
    assert {e.prefix for e in res.events} == {"batch"}
    assert res.seqs == ((9, 0), (9, 1), (9, 2))
    # Each message carries its own packet timestamp.
    assert res.events[0].wall <= res.events[1].wall <= res.events[2].wall


def test_acks() -> None:
    assert parse_messages(fixture("ack_bind_ok"), {}, TS, WALL).acks == ((100, 0),)
    # A second socket binding a group someone holds: the kernel answers EPERM, not EBUSY.
    eperm = parse_messages(fixture("ack_bind_eperm"), {}, TS, WALL)
    assert (eperm.acks, eperm.events, eperm.malformed) == (((777, errno.EPERM),), (), 0)


def test_unknown_ifindex_becomes_if_n() -> None:
    res = parse_messages(fixture("forward_in_out"), {2: "r0"}, TS, WALL)
    assert (res.events[0].iif, res.events[0].oif) == ("r0", "if3")


def test_ifnames_missing_hook_is_honoured() -> None:
    class Refreshing(dict[int, str]):
        asked: list[int] = []

        def __missing__(self, key: int) -> str:
            self.asked.append(key)
            return f"new{key}"

    names = Refreshing()
    ev = parse_messages(fixture("forward_in_out"), names, TS, WALL).events[0]
    assert (ev.iif, ev.oif, names.asked) == ("new2", "new3", [2, 3])


def test_several_datagrams_concatenated() -> None:
    data = fixture("ipv4_udp") + fixture("ack_bind_ok") + fixture("ipv6_tcp_syn")
    res = parse_messages(data, ifnames("ipv4_udp"), TS, WALL)
    assert [e.proto for e in res.events] == ["udp", "tcp"]
    assert res.acks == ((100, 0),)
    assert res.malformed == 0


# --- synthetic messages for what a kernel would not send ------------------------------------


def nla(atype: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), atype) + payload
    return raw + b"\x00" * (-len(raw) % 4)


def message(attrs: bytes, group: int = 3, family: int = 2, mtype: int = nflog.MSG_PACKET) -> bytes:
    body = struct.pack("=BB", family, 0) + struct.pack(">H", group) + attrs
    return struct.pack("=IHHII", 16 + len(body), mtype, 0, 0, 0) + body


def hdr(hook: int) -> bytes:
    return nla(nflog.NFULA_PACKET_HDR, struct.pack(">HBx", 0x0800, hook))


def payload_of(name: str) -> bytes:
    """The NFULA_PAYLOAD bytes of a fixture (the IP packet the kernel copied)."""
    data = fixture(name)
    pos = 20
    while pos < len(data):
        alen, atype = struct.unpack_from("=HH", data, pos)
        if atype == nflog.NFULA_PAYLOAD:
            return data[pos + 4:pos + alen]
        pos += (alen + 3) & ~3
    raise AssertionError("no payload")


@pytest.mark.parametrize("hook,name", list(enumerate(nflog.INET_HOOKS)))
def test_hook_names(hook: int, name: str) -> None:
    res = parse_messages(message(hdr(hook)), {}, TS, WALL)
    assert res.events[0].hook == name
    assert res.events[0].group == 3


def test_metadata_only_message_keeps_what_it_has() -> None:
    # Copy mode "meta" or a non-IP payload: no 5-tuple, but the drop still counts.
    res = parse_messages(message(hdr(1) + nla(nflog.NFULA_PREFIX, b"meta\x00")
                                 + nla(nflog.NFULA_PAYLOAD, b"\x00\x01junk")), {}, TS, WALL)
    ev = res.events[0]
    assert (ev.prefix, ev.hook, ev.family, ev.src, ev.proto) == ("meta", "input", "ip", None, None)
    assert res.malformed == 0


def test_prefix_trailing_blanks_and_nul() -> None:
    ev = parse_messages(message(nla(nflog.NFULA_PREFIX, b"DROP IN: \x00junk")), {}, TS,
                        WALL).events[0]
    assert ev.prefix == "DROP IN:"


def test_huge_prefix_is_cut_not_fatal() -> None:
    res = parse_messages(message(nla(nflog.NFULA_PREFIX, b"A" * 60000)
                                 + nla(nflog.NFULA_PAYLOAD, payload_of("ipv4_udp"))), {}, TS, WALL)
    assert res.malformed == 0
    assert res.events[0].prefix == "A" * nflog.MAX_PREFIX_BYTES
    assert res.events[0].dport == 9999


def test_arp_and_netdev_hooks_are_their_own() -> None:
    assert parse_messages(message(hdr(1), family=nflog.NFPROTO_ARP), {}, TS,
                          WALL).events[0].hook == "output"
    assert parse_messages(message(hdr(0), family=nflog.NFPROTO_NETDEV), {}, TS,
                          WALL).events[0].hook == "ingress"
    assert parse_messages(message(hdr(9)), {}, TS, WALL).events[0].hook == "9"


def test_timestamp_attribute() -> None:
    ts = nla(nflog.NFULA_TIMESTAMP, struct.pack(">QQ", 1_700_000_000, 250_000))
    assert parse_messages(message(ts), {}, TS, WALL).events[0].wall == 1_700_000_000.25
    bogus = nla(nflog.NFULA_TIMESTAMP, struct.pack(">QQ", 1 << 62, 5_000_000))
    assert parse_messages(message(bogus), {}, TS, WALL).events[0].wall == WALL


def test_malformed_shapes_are_counted() -> None:
    good = fixture("ipv4_udp")
    # An attribute shorter than its header.
    bad_attr = message(struct.pack("=HH", 2, 1) + b"\x00" * 4)
    assert parse_messages(bad_attr, {}, TS, WALL).malformed == 1
    # An attribute running past its message.
    past = message(struct.pack("=HH", 400, nflog.NFULA_PREFIX) + b"abc\x00")
    assert parse_messages(past, {}, TS, WALL).malformed == 1
    # nlmsg_len below the header size: nothing after it can be found.
    res = parse_messages(struct.pack("=IHHII", 8, nflog.MSG_PACKET, 0, 0, 0) + good, {}, TS, WALL)
    assert (len(res.events), res.malformed) == (0, 1)
    # A message cut short, after a good one.
    res = parse_messages(good + good[:-10], ifnames("ipv4_udp"), TS, WALL)
    assert (len(res.events), res.malformed) == (1, 1)
    # Garbage tail too short for a header; zero padding is not garbage.
    assert parse_messages(good + b"\x01\x02", {}, TS, WALL).malformed == 1
    assert parse_messages(good + b"\x00\x00", {}, TS, WALL).malformed == 0
    # A packet message too short for its nfgenmsg.
    tiny = struct.pack("=IHHII", 18, nflog.MSG_PACKET, 0, 0, 0) + b"\x02\x00" + b"\x00\x00"
    assert parse_messages(tiny, {}, TS, WALL).malformed == 1
    # An error message too short for its errno.
    assert parse_messages(struct.pack("=IHHII", 16, 2, 0, 0, 0), {}, TS, WALL).malformed == 1


def test_other_message_types_are_skipped() -> None:
    noise = struct.pack("=IHHII", 20, nflog.NLMSG_NOOP, 0, 0, 0) + b"\x00" * 4
    noise += message(hdr(1), mtype=nflog.MSG_CONFIG)
    res = parse_messages(noise + fixture("ipv4_udp"), {}, TS, WALL)
    assert (len(res.events), res.malformed) == (1, 0)


# --- config requests --------------------------------------------------------------------------


def test_bind_and_configure_bytes() -> None:
    msg = nflog.bind_and_configure(5, 42, copy_range=128, qthresh=1, timeout_cs=1,
                                   flags=nflog.NFULNL_CFG_F_SEQ)
    want = (
        struct.pack("=IHHII", 64, 0x0401, 0x0005, 42, 0)  # NLM_F_REQUEST | NLM_F_ACK
        + b"\x00\x00\x00\x05"  # nfgenmsg: AF_UNSPEC, v0, res_id 5 (big endian)
        + b"\x05\x00\x01\x00" + b"\x01\x00\x00\x00"  # NFULA_CFG_CMD len 5: BIND
        + b"\x0a\x00\x02\x00" + b"\x00\x00\x00\x80\x02\x00" + b"\x00\x00"  # MODE len 10
        + b"\x08\x00\x04\x00" + b"\x00\x00\x00\x01"  # TIMEOUT be32 1
        + b"\x08\x00\x05\x00" + b"\x00\x00\x00\x01"  # QTHRESH be32 1
        + b"\x06\x00\x06\x00" + b"\x00\x01" + b"\x00\x00"  # FLAGS be16 SEQ
    )
    assert msg == want


def test_single_purpose_builders() -> None:
    unbind = nflog.cmd_unbind(300, 1)
    assert unbind[16:] == b"\x00\x00\x01\x2c" + b"\x05\x00\x01\x00\x02\x00\x00\x00"
    pf = nflog.cmd_pf_unbind(2, 1)
    assert pf[16:20] == b"\x02\x00\x00\x00" and pf[24] == nflog.NFULNL_CFG_CMD_PF_UNBIND
    assert nflog.cmd_pf_bind(10, 1)[24] == nflog.NFULNL_CFG_CMD_PF_BIND
    assert nflog.cmd_bind(7, 9)[24] == nflog.NFULNL_CFG_CMD_BIND
    assert nflog.cfg_copy_packet(1, 1, 0xFFFF)[20:] == (
        b"\x0a\x00\x02\x00\x00\x00\xff\xff\x02\x00\x00\x00")
    assert nflog.cfg_qthresh(1, 1, 64)[20:] == b"\x08\x00\x05\x00\x00\x00\x00\x40"
    assert nflog.cfg_timeout(1, 1, 5)[20:] == b"\x08\x00\x04\x00\x00\x00\x00\x05"
    assert nflog.cfg_flags(1, 1, 3)[20:] == b"\x06\x00\x06\x00\x00\x03\x00\x00"
    for msg in (nflog.cmd_bind(1, 1), nflog.cfg_flags(1, 1, 3)):
        assert struct.unpack_from("=I", msg)[0] == len(msg) and len(msg) % 4 == 0


# --- groups a ruleset logs to -----------------------------------------------------------------


def rule(text: str, target: str | None = None, backend: str = "nft") -> Rule:
    return Rule(backend, "ip", "filter", "INPUT", 1, None, text, "continue",  # type: ignore[arg-type]
                target=target)


def test_groups_in_ruleset() -> None:
    rules = (
        rule("-p udp -m udp --dport 9999 -j NFLOG --nflog-prefix t-drop --nflog-group 5",
             "NFLOG --nflog-prefix t-drop --nflog-group 5", "iptables-nft"),
        rule("-p udp -j NFLOG", "NFLOG", "iptables-legacy"),  # no group given: group 0
        rule("-p tcp -j NFLOG --nflog_group 13", None, "iptables-legacy"),
        rule('-j NFLOG --nflog-prefix "x --nflog-group 9" --nflog-group 11', None),
        rule('udp dport 9998 counter log prefix "group 9 x" group 6'),
        rule("icmp type echo-request counter log group 7 prefix \"fwlab-noping\""),
        rule('log prefix "log group 12" drop'),  # syslog LOG, not NFLOG
        rule("log group 70000"),  # not a valid group
        rule("tcp dport 22 accept", "LOG --log-prefix NFLOG"),
    )
    rs = Ruleset(tables=(Table("nft", "ip", "filter", (Chain("nft", "ip", "filter", "INPUT",
                                                               rules),)),))
    assert nflog.groups_in_ruleset(rs) == [0, 5, 6, 7, 11, 13]


def test_groups_from_target_only_take_the_last_group() -> None:
    # A target whose quoting was lost: the real --nflog-group comes after the prefix.
    r = rule("", "NFLOG --nflog-prefix x --nflog-group 9 --nflog-group 4")
    assert nflog.groups_of_rules([r]) == {4}


# --- fuzz -------------------------------------------------------------------------------------

REAL = [fixture(n) for n in sorted(EXPECTED)] + [fixture("ipv4_udp_batch3")]


def _check(res: nflog.NflogParse) -> None:
    assert res.malformed >= 0
    for ev in res.events:
        assert ev.source == "nflog"
        assert ev.prefix is None or len(ev.prefix) <= nflog.MAX_PREFIX_BYTES


@settings(max_examples=1500)
@given(st.binary(max_size=512))
def test_random_bytes_never_raise(data: bytes) -> None:
    _check(parse_messages(data, {}, TS, WALL))


@settings(max_examples=800)
@given(st.binary(max_size=256))
def test_random_attributes_in_a_valid_frame_never_raise(attrs: bytes) -> None:
    _check(parse_messages(message(attrs), {1: "lo"}, TS, WALL))


def test_every_truncation_of_real_messages() -> None:
    for data in REAL:
        ends = []  # where each complete message (and what it yields) ends
        pos = 0
        while pos < len(data):
            mlen, mtype = struct.unpack_from("=IH", data, pos)
            pos += (mlen + 3) & ~3
            ends.append((pos, mtype == nflog.MSG_PACKET))
        for cut in range(len(data) + 1):
            res = parse_messages(data[:cut], {}, TS, WALL)
            _check(res)
            whole = [is_packet for end, is_packet in ends if end <= cut]
            assert len(res.events) == sum(whole)
            # A cut message is reported, never half-decoded; a cut on a boundary is clean.
            on_boundary = cut == 0 or any(end == cut for end, _ in ends)
            assert res.malformed == (0 if on_boundary else 1), cut


@settings(max_examples=1500)
@given(st.sampled_from(REAL), st.data())
def test_mutated_real_messages_never_raise(data: bytes, draw: st.DataObject) -> None:
    buf = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 8))):
        buf[draw.draw(st.integers(0, len(buf) - 1))] = draw.draw(st.integers(0, 255))
    _check(parse_messages(bytes(buf), {2: "s0"}, TS, WALL))
    _check(parse_messages(memoryview(buf), {2: "s0"}, TS, WALL))


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_any_prefix_bytes_become_text(prefix: bytes) -> None:
    res = parse_messages(message(nla(nflog.NFULA_PREFIX, prefix)), {}, TS, WALL)
    assert res.malformed == 0
    text = res.events[0].prefix
    assert isinstance(text, str)
    assert text == prefix[:nflog.MAX_PREFIX_BYTES].split(b"\x00")[0].decode(
        "utf-8", "replace").rstrip()


# --- the layout fast path gives exactly what the attribute walk gives ---------------------------


def cold(data: bytes | bytearray, names: dict[int, str]) -> nflog.NflogParse:
    """Parse with no learned layout: every packet message takes the attribute walk."""
    nflog._LAYOUTS.clear()
    return parse_messages(data, names, TS, WALL)


def test_fast_path_is_taken_and_agrees_on_every_fixture() -> None:
    for name in [*sorted(EXPECTED), "ipv4_udp_batch3"]:
        names = ifnames(name)
        slow = cold(fixture(name), names)
        assert nflog._LAYOUTS, name  # the walk taught a layout
        learned = list(nflog._LAYOUTS)
        fast = parse_messages(fixture(name), names, TS, WALL)
        assert nflog._LAYOUTS[0] is learned[0]  # ...which the second parse used
        assert fast == slow, name


def test_same_layout_other_values_use_the_fast_path() -> None:
    """Another packet through the same rule: different ports, length, seq; same layout."""
    base = fixture("ipv4_udp")
    cold(base, {})
    other = bytearray(base)
    pos = 20
    while pos < len(other):
        alen, atype = struct.unpack_from("=HH", other, pos)
        if atype == nflog.NFULA_SEQ:
            struct.pack_into(">I", other, pos + 4, 77)
        if atype == nflog.NFULA_PAYLOAD:
            struct.pack_into("!HH", other, pos + 4 + 20, 12345, 53)
        pos += (alen + 3) & ~3
    layouts_before = list(nflog._LAYOUTS)
    res = parse_messages(bytes(other), {2: "eth9"}, TS, WALL)
    assert nflog._LAYOUTS == layouts_before  # nothing new learned: the fast path read it
    ev = res.events[0]
    assert (ev.sport, ev.dport, ev.iif, res.seqs) == (12345, 53, "eth9", ((5, 77),))


@settings(max_examples=1500)
@given(st.sampled_from(REAL), st.data())
def test_mutations_parse_the_same_with_or_without_learned_layouts(
        data: bytes, draw: st.DataObject) -> None:
    buf = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 6))):
        buf[draw.draw(st.integers(0, len(buf) - 1))] = draw.draw(st.integers(0, 255))
    names = {1: "lo", 2: "s0"}
    slow = cold(bytes(buf), names)
    cold(data, names)  # learn the real layouts, then meet the mutated bytes
    assert parse_messages(bytes(buf), names, TS, WALL) == slow


def test_fast_event_constructor_builds_the_same_dropevent() -> None:
    values = {"source": "nflog", "ts": 1.0, "wall": 2.0, "prefix": "p", "group": 5,
              "hook": "input", "iif": "eth0", "oif": "eth1", "family": "ip", "proto": "tcp",
              "src": "10.0.0.1", "dst": "10.0.0.2", "sport": 1, "dport": 2, "icmp_type": None,
              "icmp_code": None, "tcp_flags": "SYN", "len": 60, "mark": 7, "uid": 0, "gid": 0}
    made = nflog.make_event(*(values[a] for a in nflog._EVENT_ARGS))
    assert made == DropEvent(**values)
    assert made.reason is None and made.to_json() == DropEvent(**values).to_json()
    assert nflog.make_event is not DropEvent  # the fast constructor is in use
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.prefix = "x"  # type: ignore[misc]
