"""Real kernel: the live poller keeps each rule's identity and its delta across inserts, and
re-reads the structure only when the ruleset changed."""

from __future__ import annotations

import sys

import pytest

from fwtop.firewall.netns import resolve, run_in
from fwtop.service.rules import RulesPoller, RulesView
from tests.conftest import Namespaces, needs, ns_run

pytestmark = [pytest.mark.kernel, needs("ip", "nft", "iptables-nft", "iptables-legacy")]


def send_udp(ns: str, port: int, count: int) -> None:
    ns_run(ns, sys.executable, "-c",
           "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
           f"for _ in range({count}): s.sendto(b'y' * 10, ('10.98.0.1', {port}))\n")


def by_comment(view: RulesView) -> dict[str, str]:
    return {r.comment: r.key for r in view.ruleset.rules() if r.comment}


def test_identity_and_deltas_survive_inserts(namespaces: Namespaces) -> None:
    server, client = namespaces.new("srv"), namespaces.new("cli")
    namespaces.veth(server, client, "10.98.0.1/24", "10.98.0.2/24")
    ns_run(server, "nft", "-f", "-", input="""
table inet app {
  chain input {
    type filter hook input priority 0; policy accept;
    udp dport 6001 counter accept comment "native six"
  }
}
""")
    ns_run(server, "iptables-nft", "-A", "INPUT", "-p", "udp", "--dport", "6002",
           "-m", "comment", "--comment", "xt six", "-j", "ACCEPT")
    ns_run(server, "iptables-legacy", "-A", "INPUT", "-p", "udp", "--dport", "6003",
           "-m", "comment", "--comment", "legacy six", "-j", "ACCEPT")
    ns = resolve(server)
    poller = run_in(ns, RulesPoller)  # the netlink socket is opened inside the namespace

    def poll() -> RulesView:
        return run_in(ns, poller.poll)

    first = poll()
    assert first.reloaded
    keys = by_comment(first)
    assert set(keys) == {"native six", "xt six", "legacy six"}

    idle = poll()
    assert not idle.reloaded and idle.reloads == 1  # nothing changed: counters only

    send_udp(client, 6001, 17)
    send_udp(client, 6002, 9)
    send_udp(client, 6003, 4)
    moving = poll()
    assert not moving.reloaded
    assert moving.rates[keys["native six"]].packets == 17
    assert moving.rates[keys["xt six"]].packets == 9
    assert moving.rates[keys["legacy six"]].packets == 4

    # Other tools insert rules above ours: same identities, deltas continue, one reload.
    ns_run(server, "nft", "insert", "rule", "inet", "app", "input", "udp", "dport", "6100",
           "counter", "accept")
    ns_run(server, "iptables-nft", "-I", "INPUT", "-p", "udp", "--dport", "6101", "-j", "ACCEPT")
    ns_run(server, "iptables-legacy", "-I", "INPUT", "-p", "udp", "--dport", "6102",
           "-j", "ACCEPT")
    send_udp(client, 6001, 5)
    send_udp(client, 6003, 3)
    after = poll()
    assert after.reloaded and after.reloads == 2
    assert by_comment(after) == keys
    assert after.rates[keys["native six"]].packets == 5
    assert after.rates[keys["legacy six"]].packets == 3
    positions = {r.comment: r.position for r in after.ruleset.rules() if r.comment}
    assert positions == {"native six": 2, "xt six": 2, "legacy six": 2}
    run_in(ns, poller.close)
