"""Attribution of drop events to rules: evaluated, confirmed by the log rule, or uncertain."""

from __future__ import annotations

from fwtop.core.correlate import Correlator, attribute, packet_of
from fwtop.core.evaluator import Evaluator, NetContext
from fwtop.core.events import DropEvent
from fwtop.core.iptables_syntax import parse_rule_args
from fwtop.core.model import Chain, Policy, Rule, Ruleset, Table, rule_key

NET = NetContext(local=(("10.0.0.1", "eth0"),))


def ruleset(lines: list[str], table: str = "filter") -> Ruleset:
    rules = []
    for pos, text in enumerate(lines, 1):
        m, v, t, c = parse_rule_args(text.split())
        cid = ("iptables-nft", "ip", table, "INPUT")
        rules.append(Rule("iptables-nft", "ip", table, "INPUT", pos, pos, text, v, t, m, None,
                          c, None, rule_key(cid, pos, text)))
    pol = Policy("iptables-nft", "ip", table, "INPUT", "drop")
    return Ruleset(tables=(Table("iptables-nft", "ip", table, (
        Chain("iptables-nft", "ip", table, "INPUT", tuple(rules), "input", 0, "filter", pol),)),))


def event(dport: int, prefix: str | None = None, group: int | None = None,
          sport: int = 40000) -> DropEvent:
    return DropEvent("nflog", 0.0, 0.0, prefix=prefix, group=group, hook="input", iif="eth0",
                     proto="tcp", src="10.0.0.9", dst="10.0.0.1", sport=sport, dport=dport)


RULES = ["-p tcp --dport 8080 -j DROP",
         "-j NFLOG --nflog-prefix in-drop --nflog-group 7",
         "-j LOG --log-prefix in-log:"]


def test_policy_drop_confirmed_by_its_log_rule() -> None:
    ev = Evaluator(ruleset(RULES))
    a = attribute(ev, event(5432, "in-drop", 7), NET)
    assert (a.label, a.how, a.certain) == ("INPUT policy", "log-rule", True)
    assert a.key == "iptables-nft:ip:filter:INPUT:policy"
    b = attribute(ev, event(5432, "in-log:"), NET)  # LOG line prefix with its colon
    assert b.how == "log-rule" and b.certain


def test_a_prefix_off_the_path_makes_it_uncertain() -> None:
    ev = Evaluator(ruleset(RULES))
    a = attribute(ev, event(8080, "in-drop", 7), NET)
    assert a.label == "INPUT #1?" and not a.certain
    assert "no rule on the evaluated path logs" in a.summary


def test_accepted_by_the_evaluator_is_never_a_confident_answer() -> None:
    ev = Evaluator(ruleset(["-p tcp -j ACCEPT"]))
    a = attribute(ev, event(22), NET)
    assert a.verdict == "accept" and not a.certain and a.key is None


def test_event_without_addresses() -> None:
    ev = Evaluator(ruleset(RULES))
    e = DropEvent("tracepoint", 0.0, 0.0, reason="NETFILTER_DROP")
    assert packet_of(e) is None
    assert attribute(ev, e, NET).label == "?"


def test_cache_ignores_source_ports_unless_a_rule_uses_them() -> None:
    c = Correlator()
    c.use(ruleset(RULES))
    for sport in range(100):
        c.attribute(event(5432, "in-drop", 7, sport=sport), NET)
    assert (c.misses, c.hits) == (1, 99)
    c.use(ruleset(["-p tcp --sport 1000 -j DROP"]))
    for sport in range(10):
        c.attribute(event(5432, sport=sport), NET)
    assert c.misses == 11


def test_a_drop_without_addresses_is_guessed_from_the_counters_that_moved() -> None:
    from fwtop.core.correlate import attribute_by_counters

    rs = ruleset(RULES)
    rule = rs.rules()[0]
    policy = rs.policies()[0]
    e = DropEvent("tracepoint", 0.0, 0.0, reason="NETFILTER_DROP")
    one = attribute_by_counters(rs, {rule.key: 3}, e)
    assert one is not None and (one.label, one.how, one.certain) == ("INPUT #1?", "counter",
                                                                      False)
    two = attribute_by_counters(rs, {rule.key: 3, policy.key: 1}, e)
    assert two is not None and two.key is None and two.label == "2 candidates?"
    assert attribute_by_counters(rs, {}, e) is None
    # a log rule's counter moving is no candidate
    assert attribute_by_counters(rs, {rs.rules()[1].key: 5}, e) is None
