"""nft JSON (recorded from a real namespace) to the rule model's predicates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from fwtop.core.model import (
    AddrMatch,
    Counters,
    CtStateMatch,
    IcmpMatch,
    IfaceMatch,
    PortMatch,
    UnknownMatch,
)
from fwtop.core.nftjson import rule_from_json
from fwtop.firewall.nft import iter_json_objects, rule_texts

FIXTURES = Path(__file__).parent.parent / "fixtures" / "nftjson"


def _rules() -> dict[int, dict[str, Any]]:
    text = (FIXTURES / "mixed_ruleset.json").read_text()
    return {o["rule"]["handle"]: o["rule"] for o in iter_json_objects(text)
            if "rule" in o and o["rule"]["table"] == "t"}


def test_incremental_decode_sees_every_object() -> None:
    text = (FIXTURES / "mixed_ruleset.json").read_text()
    assert list(iter_json_objects(text)) == json.loads(text)["nftables"]


def test_port_counter_comment() -> None:
    matches, verdict, target, counters = rule_from_json(_rules()[2]["expr"])
    assert matches == (PortMatch("dport", ((22, 22),), None, "tcp"),)
    assert (verdict, target, counters) == ("accept", None, Counters(0, 0))


def test_anonymous_sets_ranges_and_stateful_limit() -> None:
    matches, verdict, _, counters = rule_from_json(_rules()[5]["expr"])
    assert AddrMatch("src", ("1.2.3.4", "10.0.0.0/8")) in matches
    assert PortMatch("dport", ((80, 80), (8000, 8100)), None, "tcp") in matches
    assert any(isinstance(m, UnknownMatch) and m.stateful for m in matches)
    assert verdict == "drop" and counters is None


def test_ipv6_ct_state_iface_wildcard() -> None:
    matches, verdict, _, _ = rule_from_json(_rules()[6]["expr"])
    assert AddrMatch("dst", ("fd00::/8",)) in matches
    assert PortMatch("sport", ((53, 53),), None, "udp") in matches
    assert CtStateMatch(("established", "related")) in matches
    assert IfaceMatch("iif", ("eth*",)) in matches
    assert verdict == "accept"


def test_icmp_names_named_set_jump() -> None:
    rules = _rules()
    matches, verdict, _, _ = rule_from_json(rules[8]["expr"])
    assert matches == (IcmpMatch("icmp", (3, 8)),) and verdict == "drop"
    matches, verdict, target, _ = rule_from_json(rules[11]["expr"])
    assert matches == (PortMatch("dport", (), "s1", "tcp"),)
    assert (verdict, target) == ("jump", "x")


def test_nat_statement_ends_chain_with_accept() -> None:
    text = (FIXTURES / "mixed_ruleset.json").read_text()
    (nat,) = [o["rule"] for o in iter_json_objects(text)
              if "rule" in o and o["rule"]["table"] == "nat"]
    _, verdict, target, _ = rule_from_json(nat["expr"])
    assert verdict == "accept" and target is not None and target.startswith("dnat")


def test_rule_texts_by_chain_and_handle() -> None:
    texts = rule_texts((FIXTURES / "table_inet_t.txt").read_text())
    assert texts[("c", 2)] == 'tcp dport 22 counter accept comment "hello"'
    assert texts[("c", 12)] == 'iif "lo" accept'
    assert ("c", 1) not in texts and len(texts) == 6


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                              max_size=4),
    max_leaves=20,
)


@given(st.lists(st.dictionaries(st.sampled_from(["match", "counter", "jump", "accept", "xt",
                                                 "limit", "vmap", "dnat"]), json_values,
                                max_size=2), max_size=5))
def test_hostile_json_never_raises(exprs: list[dict[str, Any]]) -> None:
    rule_from_json(exprs)


match_parts = st.fixed_dictionaries({
    "op": st.sampled_from(["==", "!=", "in", "<"]),
    "left": st.sampled_from([{"payload": {"protocol": "tcp", "field": "dport"}},
                             {"payload": {"protocol": "ip", "field": "saddr"}},
                             {"payload": {"protocol": "icmp", "field": "type"}},
                             {"meta": {"key": "iifname"}}, {"ct": {"key": "state"}},
                             {"payload": "x"}, {"meta": 3}, None]),
    "right": json_values,
})


@given(match_parts)
def test_hostile_match_never_raises(match: dict[str, Any]) -> None:
    rule_from_json([{"match": match}, {"counter": {"packets": "x"}}, {"jump": None}])
