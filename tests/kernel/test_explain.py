"""`fwtop explain` against the kernel, one seed cause per test: real rulesets in throwaway
namespaces, one real packet each, and fwtop's answer checked against the kernel's counters and
against what the sender saw (see explain_harness)."""

from __future__ import annotations

import pytest

from tests.conftest import Namespaces, needs, ns_run
from tests.kernel.explain_harness import agree, explain, nft_counters, send, topology
from tests.kernel.explain_harness import ping as send_ping

pytestmark = [pytest.mark.kernel, needs("ip", "nft", "iptables-nft-restore")]


def ipt(ns: str, rules: str, tool: str = "iptables-nft-restore") -> None:
    ns_run(ns, tool, input=rules)


def nft(ns: str, rules: str) -> None:
    ns_run(ns, "nft", "-f", "-", input=rules)


def args(top_src: str, dst: str, proto: str, dport: int, sport: int, iif: str) -> list[str]:
    return ["--proto", proto, "--src", top_src, "--dst", dst, "--sport", str(sport),
            "--dport", str(dport), "--iif", iif]


def test_rule_ordering_drop_shadows_a_later_accept(namespaces: Namespaces) -> None:
    top = topology(namespaces)
    ipt(top.fw, "*filter\n:INPUT ACCEPT [0:0]\n"
        '-A INPUT -p tcp --dport 8080 -m comment --comment "block scanners" -j DROP\n'
        '-A INPUT -p tcp --dport 8080 -m comment --comment "allow app" -j ACCEPT\nCOMMIT\n')
    result = explain(top, *args(top.client_ip, top.fw_ip, "tcp", 8080, 41000, top.fw_if))
    kernel = send(top, "tcp", top.fw_ip, 8080, 41000, listen_ns=top.fw)
    agree(result, kernel)
    assert result["verdict"] == "drop" and result["certain"] is True
    assert result["rule"]["comment"] == "block scanners" and result["rule"]["position"] == 1
    assert any("rule ordering" in r and "#2" in r for r in result["reasons"])


def test_default_drop_policy_with_a_typo_port(namespaces: Namespaces) -> None:
    top = topology(namespaces)
    nft(top.fw, "table inet t { chain input { type filter hook input priority 0; policy drop;\n"
        "  ct state established,related counter accept\n"
        "  tcp dport 9091 counter accept comment \"metrics\"\n}\n}\n")
    result = explain(top, *args(top.client_ip, top.fw_ip, "tcp", 9090, 41001, top.fw_if))
    kernel = send(top, "tcp", top.fw_ip, 9090, 41001, listen_ns=top.fw)
    agree(result, kernel)
    assert result["rule"] is None
    assert result["policy"] == {"backend": "nft", "family": "inet", "table": "t",
                                "chain": "input", "verdict": "drop"}
    assert any("near miss" in r and "9091" in r for r in result["reasons"])
    assert result["path"][-1]["effect"] == "policy-drop"


def test_user_chain_with_return(namespaces: Namespaces) -> None:
    top = topology(namespaces)
    ipt(top.fw, "*filter\n:INPUT ACCEPT [0:0]\n:CHECK - [0:0]\n"
        "-A INPUT -p udp -j CHECK\n"
        "-A INPUT -p udp --dport 5353 -j DROP\n"
        f"-A CHECK -s {top.client_ip}/32 -j RETURN\n"
        "-A CHECK -j DROP\nCOMMIT\n")
    result = explain(top, *args(top.client_ip, top.fw_ip, "udp", 5353, 41002, top.fw_if))
    kernel = send(top, "udp", top.fw_ip, 5353, 41002, listen_ns=top.fw)
    agree(result, kernel)
    assert result["rule"]["chain"] == "INPUT" and result["rule"]["position"] == 2
    effects = [(s["chain"], s["effect"]) for s in result["path"]]
    assert ("INPUT", "jump") in effects and ("CHECK", "return") in effects
    # A different source takes the DROP inside the user chain.
    other = explain(top, *args("10.9.9.9", top.fw_ip, "udp", 5353, 41002, top.fw_if))
    assert other["rule"]["chain"] == "CHECK" and other["rule"]["position"] == 2


def test_reject_versus_drop(namespaces: Namespaces) -> None:
    top = topology(namespaces)
    ipt(top.fw, "*filter\n:INPUT ACCEPT [0:0]\n"
        "-A INPUT -p tcp --dport 7001 -j REJECT --reject-with tcp-reset\n"
        "-A INPUT -p tcp --dport 7002 -j DROP\nCOMMIT\n")
    rej = explain(top, *args(top.client_ip, top.fw_ip, "tcp", 7001, 41003, top.fw_if))
    kernel = send(top, "tcp", top.fw_ip, 7001, 41003)
    agree(rej, kernel)
    assert rej["verdict"] == "reject" and kernel.outcome == "refused"
    assert any("refused" in r for r in rej["reasons"])
    drop = explain(top, *args(top.client_ip, top.fw_ip, "tcp", 7002, 41004, top.fw_if))
    kernel = send(top, "tcp", top.fw_ip, 7002, 41004)
    agree(drop, kernel)
    assert drop["verdict"] == "drop" and kernel.outcome == "timeout"
    assert any("timeout" in r for r in drop["reasons"])


def test_interface_negation_multiport_and_ranges(namespaces: Namespaces) -> None:
    top = topology(namespaces)
    ipt(top.fw, "*filter\n:INPUT ACCEPT [0:0]\n"
        "-A INPUT ! -i lo -p udp -m multiport --dports 1000:2000,3000 -j DROP\n"
        f"-A INPUT -i {top.fw_if[:3]}+ -p udp -m iprange --src-range "
        f"{top.client_ip}-{top.client_ip} --dport 4000 -j DROP\n"
        "-A INPUT -p udp ! --dport 4001 -j ACCEPT\n"
        "-A INPUT -p udp -j DROP\nCOMMIT\n")
    cases = [(1500, 1), (3000, 1), (2500, None), (4000, 2), (4001, 4)]
    for i, (port, position) in enumerate(cases):
        result = explain(top, *args(top.client_ip, top.fw_ip, "udp", port, 42000 + i, top.fw_if))
        kernel = send(top, "udp", top.fw_ip, port, 42000 + i, listen_ns=top.fw)
        agree(result, kernel)
        if position is None:
            assert result["verdict"] == "accept"
        else:
            assert result["rule"]["position"] == position, (port, result)
    # The negated interface: the same packet arriving on lo is not dropped by rule 1.
    lo = explain(top, "--proto", "udp", "--src", top.client_ip, "--dst", top.fw_ip,
                 "--dport", "1500", "--iif", "lo")
    assert lo["verdict"] == "accept"


def test_dnat_then_forward_allows_the_pre_dnat_port(namespaces: Namespaces) -> None:
    top = topology(namespaces, backend=True)
    assert top.backend is not None and top.backend_ip is not None
    nft(top.fw, "table ip nat { chain prerouting { type nat hook prerouting priority -100;\n"
        f"  tcp dport 8081 counter dnat to {top.backend_ip}:80\n}}\n}}\n")
    ipt(top.fw, "*filter\n:FORWARD DROP [0:0]\n"
        "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
        '-A FORWARD -p tcp --dport 8081 -m comment --comment "allow port forward" -j ACCEPT\n'
        "COMMIT\n")
    result = explain(top, *args(top.client_ip, top.fw_ip, "tcp", 8081, 41005, top.fw_if))
    kernel = send(top, "tcp", top.fw_ip, 8081, 41005, listen_ns=top.backend, listen_port=80)
    agree(result, kernel)
    assert result["verdict"] == "drop" and result["policy"]["chain"] == "FORWARD"
    assert any("pre-DNAT" in r and f"{top.backend_ip}:80" in r for r in result["reasons"])
    dnat = [s for s in result["path"] if s["effect"] == "dnat"]
    assert dnat and dnat[0]["table"] == "nat"
    # The fix: allow the translated port, and the same packet passes (kernel agrees).
    ns_run(top.fw, "iptables-nft", "-I", "FORWARD", "2", "-p", "tcp", "-d", top.backend_ip,
           "--dport", "80", "-j", "ACCEPT")
    fixed = explain(top, *args(top.client_ip, top.fw_ip, "tcp", 8081, 41006, top.fw_if))
    kernel = send(top, "tcp", top.fw_ip, 8081, 41006, listen_ns=top.backend, listen_port=80)
    agree(fixed, kernel)
    assert fixed["verdict"] == "accept" and kernel.outcome == "connected"


def test_icmp_types(namespaces: Namespaces) -> None:
    top = topology(namespaces)
    nft(top.fw, "table inet t { chain input { type filter hook input priority 0;\n"
        "  icmp type echo-request counter drop comment \"no ping\"\n"
        "  icmp type destination-unreachable counter drop\n}\n}\n")
    ping = explain(top, "--proto", "icmp", "--icmp-type", "8", "--icmp-code", "0", "--src",
                   top.client_ip, "--dst", top.fw_ip, "--iif", top.fw_if)
    assert ping["verdict"] == "drop" and ping["rule"]["comment"] == "no ping"
    assert send_ping(top, top.fw_ip) == "timeout"
    moved = [k for k, (n, _) in nft_counters(top.fw).items() if n > 0]
    assert moved == [("inet", "t", "input", ping["rule"]["handle"])]
    pmtu = explain(top, "--proto", "icmp", "--icmp-type", "3", "--icmp-code", "4", "--src",
                   top.client_ip, "--dst", top.fw_ip, "--iif", top.fw_if)
    assert pmtu["verdict"] == "drop"
    assert any("path-MTU" in r for r in pmtu["reasons"])
    # Without the rules the same echo is answered: the probe itself works.
    ns_run(top.fw, "nft", "flush", "ruleset")
    assert send_ping(top, top.fw_ip) == "reply"


def test_ipv6_with_neighbour_discovery(namespaces: Namespaces) -> None:
    top = topology(namespaces, ipv6=True)
    assert top.client_ip6 and top.fw_ip6
    nft(top.fw, "table inet t { chain input { type filter hook input priority 0; policy drop;\n"
        "  icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } counter accept\n"
        "  tcp dport 80 counter drop\n"
        "  udp dport 5000 counter accept\n}\n}\n")
    for i, (proto, port, verdict) in enumerate([("udp", 5000, "accept"), ("tcp", 80, "drop"),
                                                ("udp", 5001, "drop")]):
        result = explain(top, *args(top.client_ip6, top.fw_ip6, proto, port, 43000 + i,
                                    top.fw_if))
        kernel = send(top, proto, top.fw_ip6, port, 43000 + i, listen_ns=top.fw)
        agree(result, kernel)
        assert result["verdict"] == verdict, (proto, port, result)
    nd = explain(top, "--proto", "icmpv6", "--icmp-type", "135", "--src", top.client_ip6,
                 "--dst", top.fw_ip6, "--iif", top.fw_if)
    assert nd["verdict"] == "accept"


def test_several_base_chains_on_one_hook(namespaces: Namespaces) -> None:
    top = topology(namespaces)
    nft(top.fw, "table inet first { chain input { type filter hook input priority -10;\n"
        "  udp dport 6000 counter accept\n}\n}\n"
        "table inet second { chain input { type filter hook input priority 10;\n"
        "  udp dport 6000 counter drop comment \"late drop\"\n}\n}\n")
    result = explain(top, *args(top.client_ip, top.fw_ip, "udp", 6000, 41007, top.fw_if))
    kernel = send(top, "udp", top.fw_ip, 6000, 41007, listen_ns=top.fw)
    agree(result, kernel)
    assert result["rule"]["table"] == "second"
    assert any("every base chain on a hook runs" in r for r in result["reasons"])


def test_iptables_nft_beside_native_nft(namespaces: Namespaces) -> None:
    top = topology(namespaces)
    ipt(top.fw, "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p udp --dport 6100 -j ACCEPT\nCOMMIT\n")
    nft(top.fw, "table ip native { chain input { type filter hook input priority 5;\n"
        "  udp dport 6100 counter drop\n}\n}\n")
    result = explain(top, *args(top.client_ip, top.fw_ip, "udp", 6100, 41008, top.fw_if))
    kernel = send(top, "udp", top.fw_ip, 6100, 41008, listen_ns=top.fw)
    agree(result, kernel)
    assert result["rule"]["backend"] == "nft" and result["rule"]["table"] == "native"


@needs("iptables-legacy-restore", "iptables-legacy-save")
def test_legacy_beside_nft(namespaces: Namespaces) -> None:
    top = topology(namespaces)
    nft(top.fw, "table inet t { chain input { type filter hook input priority 0;\n"
        "  udp dport 514 counter accept\n}\n}\n")
    ipt(top.fw, "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p udp --dport 514 -j DROP\nCOMMIT\n",
        tool="iptables-legacy-restore")
    result = explain(top, *args(top.client_ip, top.fw_ip, "udp", 514, 41009, top.fw_if))
    kernel = send(top, "udp", top.fw_ip, 514, 41009, listen_ns=top.fw)
    agree(result, kernel)
    assert result["rule"]["backend"] == "iptables-legacy" and result["verdict"] == "drop"


def test_stateful_match_makes_the_answer_uncertain(namespaces: Namespaces) -> None:
    top = topology(namespaces)
    ipt(top.fw, "*filter\n:INPUT ACCEPT [0:0]\n"
        "-A INPUT -p udp --dport 6200 -m limit --limit 1/hour --limit-burst 1 -j ACCEPT\n"
        "-A INPUT -p udp --dport 6200 -j DROP\nCOMMIT\n")
    result = explain(top, *args(top.client_ip, top.fw_ip, "udp", 6200, 41010, top.fw_if))
    assert result["certain"] is False
    assert any("limit" in r for r in result["reasons"])


def test_accepted_but_nothing_listens(namespaces: Namespaces) -> None:
    top = topology(namespaces)
    result = explain(top, *args(top.client_ip, top.fw_ip, "tcp", 6300, 41011, top.fw_if))
    kernel = send(top, "tcp", top.fw_ip, 6300, 41011)
    agree(result, kernel)
    assert kernel.outcome == "refused" and result["listener"] is None
    assert any("nothing listens on tcp/6300" in r for r in result["reasons"])
