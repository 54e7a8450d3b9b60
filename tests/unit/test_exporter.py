"""`fwtop exporter`: the collector turns the services' latest readings into the metrics a
Prometheus scrape shows (fake readings here; tests/kernel/test_exporter_kernel.py does it for
real), drop label sets stay bounded, --listen is checked, and the alert rules load."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import fwtop.firewall
from fwtop.cli import main
from fwtop.core.conntrack import ConntrackStats, ConntrackView, CpuStatTotals, Growth
from fwtop.core.events import DropEvent, DropSource, SourceStats
from fwtop.core.model import Backend, Chain, Counters, Policy, Rule, Ruleset, Table, Verdict
from fwtop.firewall.netns import NetNamespace
from fwtop.service.drops import DropBatch
from fwtop.service.exporter import (
    OTHER,
    DropTally,
    ListenError,
    Readings,
    drop_labels,
    metrics_registry,
    parse_listen,
)
from fwtop.service.rules import RulesView

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "docs" / "alerts" / "fwtop.rules.yml"
ALERT_TESTS = REPO / "tests" / "fixtures" / "alerts" / "fwtop.rules.test.yml"
LONG = "allow the monitoring network to reach node exporters on every host of the fleet, always"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def rule(backend: Backend, table: str, chain: str, position: int, handle: int | None,
         verdict: Verdict, counters: Counters | None, comment: str | None = None,
         family: str = "ip") -> Rule:
    return Rule(backend=backend, family=family, table=table, chain=chain, position=position,
                handle=handle, text=f"rule {position}", verdict=verdict, counters=counters,
                comment=comment)


def ruleset() -> Ruleset:
    nft_rules = (
        rule("iptables-nft", "filter", "INPUT", 1, 4, "continue", Counters(10, 840)),
        rule("iptables-nft", "filter", "INPUT", 2, 5, "drop", Counters(10, 840), LONG),
    )
    native = (rule("nft", "fw", "in", 1, 3, "accept", Counters(7, 700), "ssh", "inet"),
              rule("nft", "fw", "in", 2, 9, "drop", None, None, "inet"))  # no counter
    legacy = (rule("iptables-legacy", "filter", "FORWARD", 1, None, "drop", Counters(3, 180)),)
    return Ruleset(tables=(
        Table("iptables-nft", "ip", "filter", chains=(Chain(
            "iptables-nft", "ip", "filter", "INPUT", nft_rules, hook="input", priority=0,
            policy=Policy("iptables-nft", "ip", "filter", "INPUT", "accept",
                          Counters(100, 9000))),)),
        Table("nft", "inet", "fw", chains=(Chain(
            "nft", "inet", "fw", "in", native, hook="input", priority=-10,
            policy=Policy("nft", "inet", "fw", "in", "accept", None)),)),
        Table("iptables-legacy", "ip", "filter", chains=(Chain(
            "iptables-legacy", "ip", "filter", "FORWARD", legacy, hook="forward", priority=0,
            policy=Policy("iptables-legacy", "ip", "filter", "FORWARD", "drop",
                          Counters(2, 120))),)),
    ))


def rules_view(poll_wall_s: float = 0.01) -> RulesView:
    return RulesView(ts=1.0, ruleset=ruleset(), counters={}, rates={}, poll_cpu_s=0.01,
                     poll_wall_s=poll_wall_s, reloaded=True, reloads=1)


def drop(source: DropSource = "nflog", sport: int = 1000) -> DropEvent:
    return DropEvent(source, 1.0, 1.0, proto="udp", src="10.0.0.1", dst="10.0.0.2",
                     sport=sport, dport=5555)


RULE_ATTR: dict[str, object] = {
    "rule": {"backend": "iptables-nft", "family": "ip", "table": "filter", "chain": "INPUT",
             "handle": 5, "position": 2, "comment": None, "text": "-j DROP"},
    "policy": None, "attributed": "log-rule", "certain": True}
POLICY_ATTR: dict[str, object] = {
    "rule": None, "policy": {"backend": "iptables-legacy", "family": "ip", "table": "filter",
                             "chain": "FORWARD", "verdict": "drop"},
    "attributed": "evaluated", "certain": False}
NO_ATTR: dict[str, object] = {"rule": None, "policy": None, "attributed": "none",
                              "certain": False, "why": "no ruleset"}


def conntrack_view() -> ConntrackView:
    cpu = CpuStatTotals(insert_failed=3, drop=2, early_drop=1, invalid=40, search_restart=5,
                        clash_resolve=0, cpus=2)
    stats = ConntrackStats(ts=1.0, wall=1.0, count=950, max=1000, cpu=cpu)
    growth = Growth(fill=0.95, rate_per_s=5.0, new_per_s=None, eta_full_s=10.0, deltas={})
    return ConntrackView(ts=1.0, wall=1.0, stats=stats, growth=growth)


def scrape(readings: Readings) -> Samples:
    text = generate_latest(metrics_registry(readings)).decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"duplicate series {key}"
            out[key] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def named(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def full_readings(clock: Clock | None = None) -> Readings:
    r = Readings(NetNamespace("fwlab-fw", "/run/netns/fwlab-fw"), interval=1.0,
                 clock=clock or Clock())
    r.note_rules(rules_view())
    attrs: dict[int, dict[str, object]] = {1: RULE_ATTR, 2: POLICY_ATTR, 3: NO_ATTR}

    def attribute(event: DropEvent) -> dict[str, object]:
        return attrs[event.sport or 0]

    stats = (SourceStats("nflog", True, received=5, lost=1),
             SourceStats("kmsg", False, off_reason="nf_log_all_netns=0: LOG lines of other "
                                                   "namespaces are not logged"),
             SourceStats("tracepoint", False, off_reason="host-wide"),
             SourceStats("tracepoint", False, off_reason="host-wide"))
    r.note_drops(DropBatch((drop(sport=1), drop(sport=1), drop(sport=1), drop("kmsg", 2)),
                           stats, overflow=2), attribute)
    r.note_drops(DropBatch((drop(sport=1), drop(sport=3)), stats), attribute)
    r.note_conntrack(conntrack_view())
    r.note_error("drops", "NflogReader: boom")
    return r


def test_rule_and_policy_counters_are_the_kernels() -> None:
    samples = scrape(full_readings())
    packets = named(samples, "fwtop_rule_packets_total")
    nbytes = named(samples, "fwtop_rule_bytes_total")
    expected = {
        ("iptables-nft", "ip", "filter", "INPUT", "1", "4", "", "continue"): (10, 840),
        ("iptables-nft", "ip", "filter", "INPUT", "2", "5", LONG[:64], "drop"): (10, 840),
        ("nft", "inet", "fw", "in", "1", "3", "ssh", "accept"): (7, 700),
        # Legacy rules have no handle; a rule without a counter is not exported at all.
        ("iptables-legacy", "ip", "filter", "FORWARD", "1", "", "", "drop"): (3, 180),
    }
    names = ("backend", "family", "table", "chain", "position", "handle", "comment", "verdict")
    assert packets == {frozenset(zip(names, k, strict=True)): float(p)
                       for k, (p, _) in expected.items()}
    assert nbytes == {frozenset(zip(names, k, strict=True)): float(b)
                      for k, (_, b) in expected.items()}
    assert len(LONG) > 64
    policies = named(samples, "fwtop_policy_packets_total")
    pnames = ("backend", "family", "table", "chain", "verdict")
    assert policies == {
        frozenset(zip(pnames, ("iptables-nft", "ip", "filter", "INPUT", "accept"),
                      strict=True)): 100.0,
        frozenset(zip(pnames, ("iptables-legacy", "ip", "filter", "FORWARD", "drop"),
                      strict=True)): 2.0,
    }  # the native chain's policy has no counter
    assert value(samples, "fwtop_policy_bytes_total", backend="iptables-nft", family="ip",
                 table="filter", chain="INPUT", verdict="accept") == 9000


def test_drops_by_source_and_attributed_rule() -> None:
    samples = scrape(full_readings())
    drops = named(samples, "fwtop_drops_total")
    rule_labels = dict(source="nflog", backend="iptables-nft", family="ip", table="filter",
                       chain="INPUT", position="2", certain="true")
    assert value(samples, "fwtop_drops_total", **rule_labels) == 4
    assert value(samples, "fwtop_drops_total", source="kmsg", backend="iptables-legacy",
                 family="ip", table="filter", chain="FORWARD", position="policy",
                 certain="false") == 1
    assert value(samples, "fwtop_drops_total", source="nflog", backend="", family="",
                 table="", chain="", position="", certain="false") == 1
    assert sum(drops.values()) == 6
    assert value(samples, "fwtop_drops_shed_total") == 2
    assert value(samples, "fwtop_drops_label_sets") == 3
    assert value(samples, "fwtop_drops_other_total") == 0


def test_sources_conntrack_and_health() -> None:
    samples = scrape(full_readings())
    assert value(samples, "fwtop_source_received_total", source="nflog") == 5
    assert value(samples, "fwtop_source_lost_total", source="nflog") == 1
    assert value(samples, "fwtop_source_up", source="nflog", reason="") == 1
    kmsg_up = [(dict(labels), v) for labels, v in named(samples, "fwtop_source_up").items()
               if dict(labels)["source"] == "kmsg"]
    assert len(kmsg_up) == 1 and kmsg_up[0][1] == 0
    assert kmsg_up[0][0]["reason"].startswith("nf_log_all_netns=0")
    # A source reported twice is one series.
    assert value(samples, "fwtop_source_up", source="tracepoint", reason="host-wide") == 0

    assert value(samples, "fwtop_conntrack_up", reason="") == 1
    assert value(samples, "fwtop_conntrack_entries") == 950
    assert value(samples, "fwtop_conntrack_max") == 1000
    assert value(samples, "fwtop_conntrack_fill_ratio") == pytest.approx(0.95)
    assert value(samples, "fwtop_conntrack_time_to_full_seconds") == 10
    stats = {dict(k)["stat"]: v for k, v in named(samples, "fwtop_conntrack_stat_total").items()}
    assert stats == {"insert_failed": 3, "drop": 2, "early_drop": 1, "invalid": 40,
                     "search_restart": 5, "clash_resolve": 0}

    assert value(samples, "fwtop_up") == 1
    assert value(samples, "fwtop_errors_total", component="drops") == 1
    assert value(samples, "fwtop_info", netns="fwlab-fw", version=_any_version(samples)) == 1
    # prometheus_client's own process metrics, as on its default registry
    assert value(samples, "process_resident_memory_bytes") > 0
    assert value(samples, "process_open_fds") > 0


def _any_version(samples: Samples) -> str:
    (labels,) = named(samples, "fwtop_info")
    return dict(labels)["version"]


def test_before_the_first_readings_and_when_stale() -> None:
    clock = Clock()
    r = Readings(None, interval=1.0, clock=clock)
    samples = scrape(r)
    assert value(samples, "fwtop_up") == 0
    assert value(samples, "fwtop_conntrack_up", reason="no reading yet") == 0
    assert not named(samples, "fwtop_rule_packets_total")
    assert not named(samples, "fwtop_conntrack_entries")
    r.note_rules(rules_view())
    assert value(scrape(r), "fwtop_up") == 1
    clock.now += 60  # no poll for a minute: the rules reader is stuck or dead
    assert value(scrape(r), "fwtop_up") == 0
    r.note_conntrack(ConntrackView(ts=1.0, wall=1.0, stats=None, growth=None,
                                   off_reason="nf_conntrack is not loaded"))
    assert value(scrape(r), "fwtop_conntrack_up", reason="nf_conntrack is not loaded") == 0


def test_drop_label_sets_are_capped() -> None:
    tally = DropTally(max_sets=3)
    for chain in ("A", "B", "C", "D", "E"):
        tally.add(("nflog", "nft", "ip", "t", chain, "1", "true"), 2)
    tally.add(("kmsg", "nft", "ip", "t", "F", "1", "true"))
    tally.add(("nflog", "nft", "ip", "t", "A", "1", "true"))  # a known set still counts
    counts, named_sets, overflow = tally.snapshot()
    assert named_sets == 3 and overflow == 5
    assert counts[("nflog", "nft", "ip", "t", "A", "1", "true")] == 3
    assert counts[("nflog", OTHER, OTHER, OTHER, OTHER, OTHER, OTHER)] == 4
    assert counts[("kmsg", OTHER, OTHER, OTHER, OTHER, OTHER, OTHER)] == 1
    assert sum(counts.values()) == 2 * 5 + 1 + 1  # nothing lost, only aggregated

    r = Readings(None, max_drop_label_sets=2)
    events = tuple(drop(sport=p) for p in range(2000))

    def attribute(event: DropEvent) -> dict[str, object]:
        return {"rule": {"backend": "nft", "family": "ip", "table": "t", "chain": "c",
                         "position": event.sport}, "policy": None, "certain": True}

    r.note_drops(DropBatch(events, ()), attribute)
    samples = scrape(r)
    assert len(named(samples, "fwtop_drops_total")) == 3
    assert value(samples, "fwtop_drops_other_total") == 1998
    assert sum(named(samples, "fwtop_drops_total").values()) == 2000


def test_drop_labels() -> None:
    assert drop_labels("nflog", RULE_ATTR) == (
        "nflog", "iptables-nft", "ip", "filter", "INPUT", "2", "true")
    assert drop_labels("kmsg", POLICY_ATTR) == (
        "kmsg", "iptables-legacy", "ip", "filter", "FORWARD", "policy", "false")
    assert drop_labels("tracepoint", NO_ATTR) == ("tracepoint", "", "", "", "", "", "false")


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:9630", ("127.0.0.1", 9630)),
    ("[::1]:9630", ("::1", 9630)),
    (":9630", ("0.0.0.0", 9630)),
    ("localhost:1", ("localhost", 1)),
])
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["9630", "127.0.0.1", "127.0.0.1:", "127.0.0.1:0",
                                  "127.0.0.1:65536", "h:port", "::1:9630", "[nope]:1",
                                  "a b:1"])
def test_bad_listen(text: str) -> None:
    with pytest.raises(ListenError, match="--listen"):
        parse_listen(text)


def test_cli_errors_are_one_line(monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["exporter", "--listen", "127.0.0.1"]) == 1
    assert capsys.readouterr().err == (
        "fwtop: --listen '127.0.0.1': expected HOST:PORT, e.g. 127.0.0.1:9630\n")
    monkeypatch.setattr(fwtop.firewall.os, "geteuid", lambda: 1000)
    assert main(["exporter", "--listen", "127.0.0.1:9630"]) == 1
    assert capsys.readouterr().err == (
        "fwtop: fwtop reads the kernel's firewall and needs root: run it with sudo\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (fwtop exporter refuses otherwise)")
def test_port_in_use_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["exporter", "--listen", f"127.0.0.1:{port}"]) == 1
    assert capsys.readouterr().err == (
        f"fwtop: cannot listen on 127.0.0.1:{port}: Address already in use\n")


def _alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    (group,) = doc["groups"]
    rules: list[dict[str, Any]] = group["rules"]
    return rules


def test_alert_rules_cover_the_fleet_cases() -> None:
    rules = {r["alert"]: r for r in _alert_rules()}
    assert set(rules) == {"ConntrackTableNearlyFull", "ConntrackInsertFailures",
                          "FirewallRuleDropsRising", "FirewallDropRuleCounterRising",
                          "FwtopDropSourceLosingEvents", "FwtopDown"}
    full = rules["ConntrackTableNearlyFull"]
    assert (full["expr"], full["for"]) == ("fwtop_conntrack_fill_ratio > 0.9", "2m")
    assert "insert_failed|drop" in rules["ConntrackInsertFailures"]["expr"]
    assert "rate(fwtop_drops_total" in rules["FirewallRuleDropsRising"]["expr"]
    for r in rules.values():
        assert r["labels"]["severity"] in ("warning", "critical")
        assert r["annotations"]["summary"]


def _promtool() -> str | None:
    beside = Path(sys.executable).parent / "promtool"  # where install.sh --dev puts it
    return (os.environ.get("FWTOP_PROMTOOL") or shutil.which("promtool")
            or (str(beside) if beside.exists() else None))


def test_alert_rules_pass_promtool() -> None:
    """promtool checks the rules and runs tests/fixtures/alerts (each alert fires on the series
    it is about). install.sh --dev fetches it; FWTOP_PROMTOOL=path points elsewhere."""
    promtool = _promtool()
    if promtool is None:
        pytest.skip("promtool not installed (./install.sh --dev; or set FWTOP_PROMTOOL)")
    for args in (["check", "rules", str(ALERTS)], ["test", "rules", str(ALERT_TESTS)]):
        proc = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60,
                              check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
