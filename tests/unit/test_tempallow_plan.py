"""Temporary-allow plans: the tightest rule, placed before the deciding rule (or before the
trailing log rules when a policy decides), with the kernel deadline in it; and the refusals."""

from __future__ import annotations

import pytest

from fwtop.core.evaluator import Evaluator, NetContext, Packet
from fwtop.core.iptables_syntax import parse_rule_args
from fwtop.core.model import Chain, Policy, Rule, Ruleset, Table, rule_key
from fwtop.core.tempallow import AllowError, AllowRequest, build_plan, check_request, utc_stamp

NET = NetContext(local=(("10.0.0.1", "eth0"),))


def chain(lines: list[str], backend: str = "iptables-nft") -> Ruleset:
    rules = []
    for pos, text in enumerate(lines, 1):
        m, v, t, c = parse_rule_args(text.split())
        cid = (backend, "ip", "filter", "INPUT")
        rules.append(Rule(backend, "ip", "filter", "INPUT", pos, pos + 10, text, v, t, m,  # type: ignore[arg-type]
                          None, c, None, rule_key(cid, pos + 10, text)))
    pol = Policy(backend, "ip", "filter", "INPUT", "drop")  # type: ignore[arg-type]
    return Ruleset(tables=(Table(backend, "ip", "filter", (  # type: ignore[arg-type]
        Chain(backend, "ip", "filter", "INPUT", tuple(rules), "input", 0, "filter", pol),)),))  # type: ignore[arg-type]


REQ = AllowRequest("tcp", "10.0.0.9", "10.0.0.1", 8080, ttl=300)
PKT = Packet("tcp", "10.0.0.9", "10.0.0.1", None, 8080, iif="eth0")


def test_before_the_deciding_rule_with_a_kernel_deadline() -> None:
    rs = chain(["-p tcp --dport 22 -j ACCEPT", "-p tcp --dport 8080 -j DROP"])
    plan = build_plan(REQ, Evaluator(rs).evaluate(PKT, NET), now=1_800_000_000.0,
                      allow_id="0123abcd")
    assert plan.ipt_position == 2 and plan.before is not None
    assert plan.ipt_argv == ["-s", "10.0.0.9/32", "-d", "10.0.0.1", "-p", "tcp", "-m", "tcp",
                             "--dport", "8080", "-m", "time", "--datestop",
                             utc_stamp(1_800_000_300.0), "-m", "comment", "--comment",
                             "fwtop:0123abcd", "-j", "ACCEPT"]
    assert plan.commands() == ["iptables-nft -t filter -I INPUT 2 " + " ".join(
        plan.ipt_argv)]


def test_policy_drop_goes_before_the_trailing_log_rules() -> None:
    rs = chain(["-p tcp --dport 22 -j ACCEPT", "-j NFLOG --nflog-group 7",
                "-m limit --limit 5/s -j LOG --log-prefix dropped:"])
    plan = build_plan(REQ, Evaluator(rs).evaluate(PKT, NET), now=0.0,
                      chain_rules=rs.tables[0].chains[0].rules)
    assert plan.ipt_position == 2


def test_native_nft_uses_a_timeout_set_in_the_same_table() -> None:
    rs = chain(["-p tcp --dport 8080 -j DROP"], backend="nft")
    plan = build_plan(REQ, Evaluator(rs).evaluate(PKT, NET), now=0.0, allow_id="0123abcd")
    assert plan.nft_script is not None
    lines = plan.nft_script.splitlines()
    assert lines[0].startswith("add set ip filter fwtop_0123abcd { type ipv4_addr . "
                               "inet_proto . inet_service; flags timeout;")
    assert lines[1] == ("add element ip filter fwtop_0123abcd "
                        "{ 10.0.0.9 . tcp . 8080 timeout 300s }")
    assert lines[2].startswith("insert rule ip filter INPUT position 11 ")
    assert lines[2].endswith('@fwtop_0123abcd accept comment "fwtop:0123abcd"')
    assert plan.element == "10.0.0.9 . tcp . 8080"


def test_nothing_to_allow_when_it_is_accepted() -> None:
    rs = chain(["-p tcp --dport 8080 -j ACCEPT"])
    with pytest.raises(AllowError, match="not dropped"):
        build_plan(REQ, Evaluator(rs).evaluate(PKT, NET), now=0.0)


@pytest.mark.parametrize(("req", "needle"), [
    (AllowRequest("tcp", "10.0.0.9", dport=80, ttl=0), "--ttl"),
    (AllowRequest("tcp", "10.0.0.9", dport=80, ttl=7200), "cap"),
    (AllowRequest("tcp", None, dport=80, ttl=60), "--any-source"),
    (AllowRequest("tcp", "0.0.0.0/0", dport=80, ttl=60), "--any-source"),
    (AllowRequest("tcp", "10.0.0.9", ttl=60), "--dport"),
    (AllowRequest("icmp", "10.0.0.9", dport=80, ttl=60), "only goes with"),
    (AllowRequest("gre", "10.0.0.9", ttl=60), "--proto"),
])
def test_refusals(req: AllowRequest, needle: str) -> None:
    with pytest.raises(AllowError, match=needle):
        check_request(req)


def test_any_source_when_asked_and_cap_configurable() -> None:
    check_request(AllowRequest("tcp", None, dport=80, ttl=60, any_source=True))
    check_request(AllowRequest("tcp", "10.0.0.9", dport=80, ttl=7200), ttl_cap=10_000)


def test_persistent_form_drops_the_deadline_and_tag() -> None:
    from fwtop.core.tempallow import persistent_form

    rs = chain(["-p tcp --dport 8080 -j DROP"])
    plan = build_plan(REQ, Evaluator(rs).evaluate(PKT, NET), now=0.0, allow_id="0123abcd")
    lines = persistent_form("iptables-nft", "ip", "filter", "INPUT", plan.ipt_argv, {})
    assert lines[-1] == "-A INPUT -s 10.0.0.9/32 -d 10.0.0.1 -p tcp -m tcp --dport 8080 -j ACCEPT"
    nft = persistent_form("nft", "inet", "t", "input", [],
                          {"src": "10.0.0.9/32", "proto": "tcp", "dport": 8080, "iif": "eth0"})
    assert nft[-1] == 'iifname "eth0" ip saddr 10.0.0.9/32 meta l4proto tcp th dport 8080 accept'
