"""firewalld in fwtop's core: which zone and part a chain is, where an allow must go (rich-rule
priority), the rich rule in firewalld's own spelling, the temporary-allow plan (a firewall-cmd
command with --timeout, never an nft write), and the zone changes that edits make."""

from __future__ import annotations

import pytest

from fwtop.core.evaluator import Packet, Verdict
from fwtop.core.firewalld import (
    FirewalldChain,
    FirewalldError,
    ZoneChange,
    allow_priority,
    parse_chain,
    parse_element,
    parse_insert,
    rich_rule,
    shown,
)
from fwtop.core.model import Policy, Rule
from fwtop.core.tempallow import AllowError, AllowRequest, build_plan, persistent_form

PKT = Packet("tcp", "10.0.0.2", "10.0.0.1", None, 8080, iif="eth0")


def reject_in(chain: str, text: str = "reject with icmpx admin-prohibited") -> Verdict:
    rule = Rule("firewalld", "inet", "firewalld", chain, 9, 72, text, "reject")
    return Verdict("reject", True, rule=rule, packet=PKT, original=PKT)


@pytest.mark.parametrize(("chain", "want"), [
    ("filter_IN_public", FirewalldChain("filter", "IN", "zone", "public", None)),
    ("filter_IN_public_deny", FirewalldChain("filter", "IN", "zone", "public", "deny")),
    ("filter_IN_my_zone_pre", FirewalldChain("filter", "IN", "zone", "my_zone", "pre")),
    ("filter_IN_policy_allow-host-ipv6_allow",
     FirewalldChain("filter", "IN", "policy", "allow-host-ipv6", "allow")),
    ("filter_FWD_internal", FirewalldChain("filter", "FWD", "zone", "internal", None)),
    ("filter_INPUT", None),
    ("filter_INPUT_ZONES", None),
])
def test_chain_names(chain: str, want: FirewalldChain | None) -> None:
    assert parse_chain(chain) == want


@pytest.mark.parametrize(("chain", "priority"), [
    ("filter_IN_public", 0),  # the zone's target rejects: _allow runs before it
    ("filter_IN_public_allow", 0),
    ("filter_IN_public_post", 0),
    ("filter_IN_public_deny", -1),  # a reject rich rule: _pre runs before _deny
    ("filter_IN_public_log", -1),
    ("filter_IN_public_pre", -32768),
])
def test_allow_priority_puts_the_accept_first(chain: str, priority: int) -> None:
    where = parse_chain(chain)
    assert where is not None and allow_priority(where) == priority


@pytest.mark.parametrize("chain", ["filter_FWD_public", "filter_IN_policy_allow-host-ipv6",
                                   "nat_PRE_public"])
def test_allow_refused_outside_zone_input(chain: str) -> None:
    where = parse_chain(chain)
    assert where is not None
    with pytest.raises(FirewalldError):
        allow_priority(where)


def test_rich_rule_in_firewalld_spelling() -> None:
    # As `firewall-cmd --list-rich-rules` prints it (firewalld 1.3.3): the timer is keyed by it.
    assert rich_rule("ip", "10.0.0.2", None, "tcp", 8080) == (
        'rule family="ipv4" source address="10.0.0.2/32" port port="8080" protocol="tcp" accept')
    assert rich_rule("ip6", "2001:db8::/64", "2001:db8::1", "udp", 53, priority=-1) == (
        'rule priority="-1" family="ipv6" source address="2001:db8::/64" destination '
        'address="2001:db8::1" port port="53" protocol="udp" accept')
    assert rich_rule("ip", None, None, "icmp", None).endswith('protocol value="icmp" accept')


def test_plan_is_a_firewall_cmd_rich_rule_with_timeout() -> None:
    req = AllowRequest("tcp", "10.0.0.2", None, 8080, ttl=8)
    plan = build_plan(req, reject_in("filter_IN_public"), now=1000.0, allow_id="0123abcd")
    rule = 'rule family="ipv4" source address="10.0.0.2/32" port port="8080" protocol="tcp" accept'
    assert (plan.backend, plan.zone, plan.rich_rule, plan.expires_at) == \
        ("firewalld", "public", rule, 1008.0)
    assert plan.nft_script is None and plan.ipt_argv == []
    assert plan.commands() == [f"firewall-cmd --zone=public --add-rich-rule='{rule}' "
                               "--timeout=8s"]
    assert plan.to_json()["enforced_by"] == "the firewalld daemon"
    assert persistent_form("firewalld", "inet", "firewalld", "filter_IN_public", [],
                           {"zone": "public", "rich_rule": rule})[1] == \
        f"firewall-cmd --zone=public --permanent --add-rich-rule='{rule}'"


def test_plan_before_a_reject_rich_rule() -> None:
    req = AllowRequest("tcp", "10.0.0.2", None, 8080, ttl=8)
    plan = build_plan(req, reject_in("filter_IN_dmz_deny", "ip saddr 10.0.0.2 reject"),
                      now=0.0)
    assert plan.zone == "dmz" and plan.text.startswith('rule priority="-1" family="ipv4"')


def test_plan_refuses_firewalld_base_chains_and_policies() -> None:
    req = AllowRequest("tcp", "10.0.0.2", None, 8080, ttl=8)
    with pytest.raises(AllowError, match="firewalld's own chains"):
        build_plan(req, reject_in("filter_INPUT", "ct state invalid drop"), now=0.0)
    with pytest.raises(AllowError, match="policy"):
        build_plan(req, reject_in("filter_IN_policy_allow-host-ipv6_deny"), now=0.0)
    pol = Policy("firewalld", "inet", "firewalld", "filter_FWD_public", "drop")
    with pytest.raises(AllowError, match="to this host"):
        build_plan(req, Verdict("drop", True, policy=pol, packet=PKT), now=0.0)


def test_zone_changes_and_their_inverse() -> None:
    c = parse_element("firewalld:public:service=ssh", "remove")
    assert c == ZoneChange("public", "remove", "service", "ssh")
    assert c.argv() == ["--zone=public", "--remove-service=ssh"]
    assert c.argv(permanent=True) == ["--zone=public", "--permanent", "--remove-service=ssh"]
    assert c.inverse.argv() == ["--zone=public", "--add-service=ssh"]
    assert c.query_argv() == ["--zone=public", "--query-service=ssh"]
    assert not c.present_after and c.inverse.present_after
    assert ZoneChange.from_json(c.to_json()) == c
    rich = parse_insert("firewalld:dmz", 'rule family="ipv4" source address="10.0.0.9" drop')
    assert (rich.element, rich.op) == ("rich-rule", "add")
    assert shown(rich.argv()) == ("firewall-cmd --zone=dmz --add-rich-rule='rule "
                                  'family="ipv4" source address="10.0.0.9" drop\'')
    assert parse_insert("firewalld:public", "port=8080/tcp").value == "8080/tcp"
    assert parse_insert("firewalld:public", "source=10.1.2.3/24").value == "10.1.2.0/24"


@pytest.mark.parametrize(("spec", "op"), [
    ("firewalld:public:port=70000/tcp", "remove"),
    ("firewalld:public:port=80", "remove"),
    ("firewalld:pub lic:service=ssh", "remove"),
    ("firewalld:public:masquerade=yes", "remove"),
    ("firewalld:public:service=ss h", "remove"),
    ("nft:public:service=ssh", "remove"),
    ("firewalld:public:source=not-an-address", "add"),
])
def test_bad_elements_are_refused(spec: str, op: str) -> None:
    with pytest.raises(FirewalldError):
        parse_element(spec, op)


def test_bad_insert_is_refused() -> None:
    with pytest.raises(FirewalldError):
        parse_insert("firewalld:public", "accept everything")
    with pytest.raises(FirewalldError):
        parse_insert("filter:INPUT", "rule family=ipv4 accept")
