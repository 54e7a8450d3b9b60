"""Regression: the rules poller and the drop readers load the ruleset on two threads at once.
python-iptables is not thread-safe (two concurrent walks livelocked in xtables.find_match and
the TUI never showed its first poll); fwtop serialises it. Both loads must finish, and agree."""

from __future__ import annotations

import threading

import pytest

from fwtop.firewall import legacy
from fwtop.firewall.netns import resolve, run_in
from tests.conftest import Namespaces, needs, ns_run

pytestmark = [pytest.mark.kernel, needs("ip", "iptables-legacy-restore")]

RULES = "*filter\n:INPUT DROP [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n" + "".join(
    f'-A INPUT -p tcp -m multiport --dports {p},{p + 1} -m comment --comment "r{p}" -j ACCEPT\n'
    f"-A INPUT -p udp --dport {p} -m limit --limit 5/second -j LOG\n"
    for p in range(1000, 1400, 2)) + "COMMIT\n"


def test_two_threads_load_legacy_tables_at_once(namespaces: Namespaces) -> None:
    ns = namespaces.new("lt")
    ns_run(ns, "iptables-legacy-restore", input=RULES)
    target = resolve(ns)
    results: list[int] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                tables = run_in(target, legacy.load)
                results.append(sum(len(c.rules) for t in tables for c in t.chains))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "legacy loads hung"
    assert not errors, errors
    assert results == [400] * 15
