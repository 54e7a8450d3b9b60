"""The evaluator on synthetic rulesets built with the real parsers (iptables-save text and nft
JSON expressions), so the unit tests exercise exactly what the backends produce. The kernel
itself is the judge in tests/kernel/test_explain*.py; these pin the semantics and edge cases."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fwtop.core.evaluator import Evaluator, NetContext, Packet, Route, nat_target
from fwtop.core.explain import explain
from fwtop.core.iptables_syntax import parse_rule_args
from fwtop.core.model import Chain, NamedSet, Policy, Rule, Ruleset, Table, rule_key
from fwtop.core.nftjson import rule_from_json

NET = NetContext(local=(("10.0.0.1", "eth0"), ("fd00::1", "eth0")),
                 routes=(Route("10.0.0.0/24", "eth0"), Route("10.1.0.0/24", "eth1"),
                         Route("default", "eth0")))


def ipt_chain(name: str, lines: list[str], policy: str | None = "accept", hook: str | None = None,
              table: str = "filter", backend: str = "iptables-nft", prio: int = 0,
              user: frozenset[str] = frozenset({"U", "V"})) -> Chain:
    rules = []
    for pos, line in enumerate(lines, 1):
        matches, verdict, target, comment = parse_rule_args(line.split(), user)
        cid = (backend, "ip", table, name)
        rules.append(Rule(backend, "ip", table, name, pos, pos + 100, line, verdict,  # type: ignore[arg-type]
                          target, matches, None, comment, None, rule_key(cid, pos + 100, line)))
    pol = Policy(backend, "ip", table, name, policy) if hook else None  # type: ignore[arg-type]
    return Chain(backend, "ip", table, name, tuple(rules), hook, prio if hook else None,  # type: ignore[arg-type]
                 "nat" if table == "nat" else "filter", pol)


def nft_chain(table: str, name: str, exprs: list[list[dict[str, Any]]], hook: str | None,
              prio: int = 0, policy: str = "accept", family: str = "inet",
              ctype: str = "filter") -> Chain:
    rules = []
    for pos, e in enumerate(exprs, 1):
        matches, verdict, target, _ = rule_from_json(e)
        rules.append(Rule("nft", family, table, name, pos, pos, f"rule{pos}", verdict, target,
                          matches, key=f"nft:{family}:{table}:{name}:{pos}"))
    pol = Policy("nft", family, table, name, policy) if hook else None  # type: ignore[arg-type]
    return Chain("nft", family, table, name, tuple(rules), hook, prio if hook else None, ctype,
                 pol)


def rs(*tables: Table) -> Ruleset:
    return Ruleset(tables=tables)


def ipt_table(*chains: Chain, backend: str = "iptables-nft", name: str = "filter") -> Table:
    return Table(backend, "ip", name, chains)  # type: ignore[arg-type]


def udp(dport: int, src: str = "10.0.0.9", dst: str = "10.0.0.1", iif: str | None = "eth0",
        **kw: Any) -> Packet:
    return Packet("udp", src, dst, 40000, dport, iif=iif, **kw)


def payload(proto: str, fld: str, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": {"payload": {"protocol": proto, "field": fld}},
                      "right": right}}


def test_first_match_wins_and_shadowing_is_explained() -> None:
    ev = Evaluator(rs(ipt_table(ipt_chain("INPUT", [
        "-p udp --dport 53 -j DROP", "-p udp --dport 53 -j ACCEPT"], hook="input"))))
    v = ev.evaluate(udp(53), NET)
    assert (v.verdict, v.certain, v.rule.position if v.rule else None) == ("drop", True, 1)
    assert any("rule ordering" in r for r in explain(ev, v))


def test_policy_decides_when_nothing_matches() -> None:
    ev = Evaluator(rs(ipt_table(ipt_chain("INPUT", ["-p tcp --dport 22 -j ACCEPT"],
                                          policy="drop", hook="input"))))
    v = ev.evaluate(udp(53), NET)
    assert v.verdict == "drop" and v.rule is None and v.policy is not None
    assert v.path[-1].effect == "policy-drop"


def test_jump_return_goto() -> None:
    ev = Evaluator(rs(ipt_table(
        ipt_chain("INPUT", ["-p udp -j U", "-p udp --dport 1 -j DROP", "-p udp -g V",
                            "-p udp -j DROP"], hook="input"),
        ipt_chain("U", ["-s 10.0.0.9 -j RETURN", "-j DROP"]),
        ipt_chain("V", ["-p udp --dport 2 -j ACCEPT"]),
    )))
    assert ev.evaluate(udp(1), NET).rule.position == 2  # type: ignore[union-attr]
    other = ev.evaluate(udp(1, src="10.0.0.8"), NET)
    assert (other.rule.chain, other.rule.position) == ("U", 2)  # type: ignore[union-attr]
    assert ev.evaluate(udp(2), NET).verdict == "accept"  # goto V, accept
    # goto V, falls off V: returns to INPUT's caller = the end of INPUT -> policy accept,
    # not INPUT #4
    v = ev.evaluate(udp(3), NET)
    assert v.verdict == "accept" and v.rule is None


def test_negation_interfaces_multiport_ranges_iprange() -> None:
    ev = Evaluator(rs(ipt_table(ipt_chain("INPUT", [
        "! -i lo -p udp -m multiport --dports 1000:2000,3000 -j DROP",
        "-i eth+ -p udp -m iprange --src-range 10.0.0.5-10.0.0.10 --dport 4000 -j DROP",
        "-p udp ! --dport 4001 -j REJECT",
    ], hook="input"))))
    assert ev.evaluate(udp(1500), NET).rule.position == 1  # type: ignore[union-attr]
    assert ev.evaluate(udp(1500, iif="lo"), NET).rule.position == 3  # type: ignore[union-attr]
    assert ev.evaluate(udp(4000), NET).rule.position == 2  # type: ignore[union-attr]
    assert ev.evaluate(udp(4000, src="10.0.0.11"), NET).rule.position == 3  # type: ignore[union-attr]
    assert ev.evaluate(udp(4001), NET).verdict == "accept"


def test_unknown_interface_makes_it_uncertain_not_wrong() -> None:
    ev = Evaluator(rs(ipt_table(ipt_chain("INPUT", ["-i eth0 -p udp -j DROP"], hook="input"))))
    v = ev.evaluate(udp(53, iif=None), NET)
    assert v.certain is False and v.verdict == "accept"
    assert any("iif" in r for r in v.reasons)


def test_stateful_match_is_uncertain() -> None:
    ev = Evaluator(rs(ipt_table(ipt_chain("INPUT", [
        "-p udp -m limit --limit 1/s -j ACCEPT", "-p udp -j DROP"], hook="input"))))
    v = ev.evaluate(udp(53), NET)
    assert v.verdict == "drop" and v.certain is False
    assert any("limit" in r for r in v.reasons)


def test_same_verdict_maybe_keeps_the_verdict_certain() -> None:
    ev = Evaluator(rs(ipt_table(ipt_chain("INPUT", [
        "-p udp -m recent --rcheck -j DROP", "-p udp -j DROP"], hook="input"))))
    v = ev.evaluate(udp(53), NET)
    assert v.verdict == "drop" and v.certain is True
    assert any("instead" in r for r in v.reasons)


def test_ct_state_and_established_hint() -> None:
    ev = Evaluator(rs(ipt_table(ipt_chain("INPUT", ["-p tcp --dport 22 -j ACCEPT"],
                                          policy="drop", hook="input"))))
    v = ev.evaluate(Packet("tcp", "10.0.0.9", "10.0.0.1", 22, 5555, iif="eth0",
                           ct_state="established"), NET)
    assert v.verdict == "drop"
    assert any("return traffic" in r for r in explain(ev, v))


def test_nft_sets_icmp_and_several_base_chains() -> None:
    t = Table("nft", "inet", "t", (
        nft_chain("t", "early", [[payload("udp", "dport", "@ports"), {"accept": None}]],
                  "input", prio=-10),
        nft_chain("t", "late", [[payload("udp", "dport", {"set": [53, {"range": [60, 70]}]}),
                                 {"drop": None}],
                                [payload("icmp", "type", "echo-request"), {"drop": None}]],
                  "input", prio=10),
    ), (NamedSet("inet", "t", "ports", "set:inet_service", ("53", "65")),))
    ev = Evaluator(rs(t))
    v = ev.evaluate(udp(65), NET)
    assert v.verdict == "drop" and v.rule.chain == "late"  # type: ignore[union-attr]
    assert any("every base chain" in r for r in explain(ev, v))
    assert ev.evaluate(udp(80), NET).verdict == "accept"
    ping = Packet("icmp", "10.0.0.9", "10.0.0.1", icmp_type=8, icmp_code=0, iif="eth0")
    assert ev.evaluate(ping, NET).verdict == "drop"
    pong = Packet("icmp", "10.0.0.9", "10.0.0.1", icmp_type=0, icmp_code=0, iif="eth0")
    assert ev.evaluate(pong, NET).verdict == "accept"


def test_dnat_sends_the_packet_to_forward_and_spots_the_pre_dnat_allow() -> None:
    nat = ipt_table(ipt_chain("PREROUTING", [
        "-p tcp --dport 8081 -j DNAT --to-destination 10.1.0.2:80"], hook="prerouting",
        table="nat", prio=-100), name="nat")
    filt = ipt_table(ipt_chain("FORWARD", ["-p tcp --dport 8081 -j ACCEPT"], policy="drop",
                               hook="forward"))
    ev = Evaluator(rs(nat, filt))
    v = ev.evaluate(Packet("tcp", "10.0.0.9", "10.0.0.1", 40000, 8081, iif="eth0"), NET)
    assert v.verdict == "drop" and v.policy is not None and v.policy.chain == "FORWARD"
    assert v.packet is not None and (v.packet.dst, v.packet.dport, v.packet.oif) == (
        "10.1.0.2", 80, "eth1")
    assert any("pre-DNAT" in r for r in explain(ev, v))
    # A logged drop is seen after DNAT: it must not be translated again.
    seen = Packet("tcp", "10.0.0.9", "10.1.0.2", 40000, 80, iif="eth0", hook="forward",
                  post_nat=True)
    assert ev.evaluate(seen, NET).policy is not None


def test_nat_target_parsing() -> None:
    def rule(target: str) -> Rule:
        return Rule("nft", "ip", "t", "c", 1, 1, "", "accept", target)

    assert nat_target(rule("DNAT --to-destination 10.1.0.2:80")) == ("dnat", "10.1.0.2", 80)
    assert nat_target(rule("DNAT --to-destination [fd00::2]:8080")) == ("dnat", "fd00::2", 8080)
    assert nat_target(rule('dnat {"addr":"10.1.0.2","port":80}')) == ("dnat", "10.1.0.2", 80)
    assert nat_target(rule("REDIRECT --to-ports 3128")) == ("redirect", None, 3128)
    assert nat_target(rule("MASQUERADE")) is None


def test_locally_generated_traffic_takes_output() -> None:
    ev = Evaluator(rs(ipt_table(ipt_chain("OUTPUT", ["-o eth1 -p udp -j DROP"],
                                          hook="output"))))
    v = ev.evaluate(Packet("udp", "10.0.0.1", "10.1.0.7", 1, 53, iif=None), NET)
    assert v.hooks[0] == "output" and v.verdict == "drop"
    assert ev.evaluate(Packet("udp", "10.0.0.1", "8.8.8.8", 1, 53, iif=None), NET).verdict \
        == "accept"


def test_ipv6_packets_skip_ipv4_tables() -> None:
    ev = Evaluator(rs(ipt_table(ipt_chain("INPUT", ["-p udp -j DROP"], hook="input"))))
    v = ev.evaluate(Packet("udp", "fd00::9", "fd00::1", 1, 53, iif="eth0"), NET)
    assert v.verdict == "accept" and v.hooks == ["prerouting", "input"]


def test_bad_address_is_unknown_not_a_crash() -> None:
    ev = Evaluator(rs())
    v = ev.evaluate(Packet("udp", "not-an-ip", "10.0.0.1", 1, 2), NET)
    assert v.verdict == "unknown" and v.certain is False


# --- the destination index must not change any answer ---------------------------------------


def _kube_like(n: int, seed: int) -> tuple[Ruleset, list[str]]:
    rng = random.Random(seed)
    ips = [f"10.96.{i // 250}.{i % 250 + 1}" for i in range(n)]
    lines = []
    for ip in ips:
        kind = rng.randrange(10)
        if kind == 0:
            lines.append(f"-p tcp --dport {rng.randrange(1, 5)} -j DROP")  # wildcard rule
        elif kind == 1:
            lines.append(f"-d {ip}/32 -p tcp --dport {rng.randrange(1, 5)} -j REJECT")
        else:
            lines.append(f"-d {ip}/32 -p tcp --dport {rng.randrange(1, 5)} -j ACCEPT")
    return rs(ipt_table(ipt_chain("INPUT", lines, hook="input"))), ips


class _Linear(Evaluator):
    def _candidates(self, chain: Chain, ctx: Any) -> Any:
        return chain.rules


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), dport=st.integers(1, 5), pick=st.integers(0, 399))
def test_destination_index_agrees_with_a_linear_scan(seed: int, dport: int, pick: int) -> None:
    ruleset, ips = _kube_like(400, seed)
    dst = ips[pick] if pick % 7 else "10.200.0.1"
    pkt = Packet("tcp", "10.0.0.9", dst, 1, dport, iif="eth0", hook="input")
    a, b = Evaluator(ruleset).evaluate(pkt, NET), _Linear(ruleset).evaluate(pkt, NET)
    assert (a.verdict, a.certain, a.rule) == (b.verdict, b.certain, b.rule)


def test_time_match_deadline_and_concat_set_of_a_temporary_allow() -> None:
    rules = ["-p tcp --dport 22 -m time --datestop 2030-01-01T00:00:00 -j ACCEPT"]
    chain = ipt_chain("INPUT", rules, policy="drop", hook="input")
    before = Evaluator(rs(ipt_table(chain)), clock=lambda: 1_800_000_000.0)  # 2027
    after = Evaluator(rs(ipt_table(chain)), clock=lambda: 1_900_000_000.0)  # 2030-03
    ssh = Packet("tcp", "10.0.0.9", "10.0.0.1", 1, 22, iif="eth0")
    assert before.evaluate(ssh, NET).verdict == "accept"
    v = after.evaluate(ssh, NET)
    assert v.verdict == "drop" and v.certain

    concat = {"match": {"op": "==", "left": {"concat": [
        {"payload": {"protocol": "ip", "field": "saddr"}}, {"meta": {"key": "l4proto"}},
        {"payload": {"protocol": "th", "field": "dport"}}]}, "right": "@allow"}}
    elem = '{"elem":{"val":{"concat":["10.0.0.9","tcp",8080]},"timeout":300,"expires":290}}'
    t = Table("nft", "inet", "t", (nft_chain("t", "input", [[concat, {"accept": None}]],
                                             "input", policy="drop"),),
              (NamedSet("inet", "t", "allow", "set:ipv4_addr . inet_proto . inet_service",
                        (elem,), ("timeout",)),))
    ev = Evaluator(rs(t))
    assert ev.evaluate(Packet("tcp", "10.0.0.9", "10.0.0.1", 1, 8080, iif="eth0"),
                       NET).verdict == "accept"
    other = ev.evaluate(Packet("tcp", "10.0.0.8", "10.0.0.1", 1, 8080, iif="eth0"), NET)
    assert other.verdict == "drop" and other.certain
