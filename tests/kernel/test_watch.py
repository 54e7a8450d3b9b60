"""`fwtop watch --json` end to end: the real command, a real firewall in a throwaway namespace,
real packets, and the answer checked against the kernel's own rule counter.

Two namespaces joined by a veth pair (10.63.x.0/24); fwtop watches the receiver with --netns.
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Namespaces, needs, ns_run

pytestmark = [pytest.mark.kernel, needs("ip", "iptables-nft", "iptables-nft-save")]

COUNT = 400
DPORT = 5555
SYSCTL = Path("/proc/sys/net/netfilter/nf_log_all_netns")

SENDER = """
import socket, sys
dst, dport, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for sport in range(first, first + count):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("", sport))
        s.sendto(b"fwtop-watch", (dst, dport))
"""


class Watch:
    """`fwtop watch` as a child process; lines are read once it has ended."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fwtop", "watch", "--json", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.first = self._wait_for_first_stats()

    def _wait_for_first_stats(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the first stats line: readers are open
        assert line, f"watch ended early: {self.proc.stderr.read() if self.proc.stderr else ''}"
        first: dict[str, Any] = json.loads(line)
        assert first["type"] == "stats", first
        return first

    def stop(self) -> tuple[list[dict[str, Any]], str]:
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err
        return [json.loads(line) for line in out.splitlines()], err


@pytest.fixture
def pair(namespaces: Namespaces) -> tuple[str, str, str, str, str]:
    a, b = namespaces.new("w"), namespaces.new("w")
    net = 10 + secrets.randbelow(200)
    src, dst = f"10.63.{net}.1", f"10.63.{net}.2"
    _ia, ib = namespaces.veth(a, b, f"{src}/24", f"{dst}/24")
    return a, b, ib, src, dst


@pytest.fixture
def log_all_netns() -> Iterator[None]:
    if not SYSCTL.exists():
        pytest.skip("kernel has no net.netfilter.nf_log_all_netns")
    old = SYSCTL.read_text().strip()
    try:
        SYSCTL.write_text("1")
        yield
    finally:
        SYSCTL.write_text(old)


def kernel_packets(ns: str, needle: str) -> int:
    for line in ns_run(ns, "iptables-nft-save", "-c").stdout.splitlines():
        if needle in line:
            m = re.match(r"\[(\d+):\d+\]", line)
            assert m, line
            return int(m.group(1))
    raise AssertionError(f"no rule with {needle!r}")


def send(sender: str, dst: str, first_sport: int) -> None:
    ns_run(sender, sys.executable, "-c", SENDER, dst, str(DPORT), str(first_sport), str(COUNT),
           timeout=60)


def drops_of(lines: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    return [x for x in lines if x["type"] == "drop" and x["source"] == source]


def check_drops(drops: list[dict[str, Any]], *, src: str, dst: str, first: int, prefix: str,
                iif: str, hook: str | None) -> None:
    assert sorted(d["sport"] for d in drops) == list(range(first, first + COUNT))
    for d in drops:
        assert (d["proto"], d["src"], d["dst"], d["dport"], d["iif"], d["oif"]) == (
            "udp", src, dst, DPORT, iif, None)
        assert d["prefix"] == prefix
        assert d["hook"] == hook  # a LOG line does not name its hook
        assert d["len"] == 20 + 8 + len("fwtop-watch")
        for key in ("ts", "group", "icmp_type", "icmp_code", "tcp_flags"):
            assert key in d


def test_nflog_drops_in_watch_match_the_kernel_counter(
        pair: tuple[str, str, str, str, str]) -> None:
    sender, receiver, iif, src, dst = pair
    ns_run(receiver, "iptables-nft", "-A", "INPUT", "-p", "udp", "--dport", str(DPORT),
           "-j", "NFLOG", "--nflog-group", "23", "--nflog-prefix", "fwtop-watch")
    ns_run(receiver, "iptables-nft", "-A", "INPUT", "-p", "udp", "--dport", str(DPORT),
           "-j", "DROP")
    watch = Watch("--netns", receiver, "--stats-interval", "0.5")
    nflog = [s for s in watch.first["sources"] if s["source"] == "nflog"]
    assert nflog and nflog[0]["running"], watch.first  # group 23 found in the ruleset itself
    send(sender, dst, 20000)
    time.sleep(1.0)
    lines, _ = watch.stop()

    drops = drops_of(lines, "nflog")
    assert len(drops) == kernel_packets(receiver, "--nflog-group 23") == COUNT
    check_drops(drops, src=src, dst=dst, first=20000, prefix="fwtop-watch", iif=iif,
                hook="input")
    assert all(d["group"] == 23 for d in drops)
    # Each drop names its rule: the DROP after the NFLOG rule, confirmed by the NFLOG rule.
    for d in drops:
        assert (d["rule"]["chain"], d["rule"]["position"], d["rule"]["text"]) == (
            "INPUT", 2, "-p udp -m udp --dport 5555 -j DROP"), d
        assert (d["attributed"], d["certain"], d["policy"]) == ("log-rule", True, None)
    final = next(s for s in lines[-1]["sources"] if s["source"] == "nflog")
    assert lines[-1]["type"] == "stats"
    assert (final["received"], final["lost"]) == (COUNT, 0)


def test_log_lines_in_watch_match_the_kernel_counter(
        pair: tuple[str, str, str, str, str], log_all_netns: None) -> None:
    sender, receiver, iif, src, dst = pair
    ns_run(receiver, "iptables-nft", "-A", "INPUT", "-p", "udp", "--dport", str(DPORT),
           "-j", "LOG", "--log-prefix", "fwtop-watch-log: ")
    ns_run(receiver, "iptables-nft", "-A", "INPUT", "-p", "udp", "--dport", str(DPORT),
           "-j", "DROP")
    watch = Watch("--netns", receiver, "--stats-interval", "0.5")
    send(sender, dst, 30000)
    time.sleep(1.0)
    lines, _ = watch.stop()

    drops = drops_of(lines, "kmsg")
    assert len(drops) == kernel_packets(receiver, "fwtop-watch-log") == COUNT
    check_drops(drops, src=src, dst=dst, first=30000, prefix="fwtop-watch-log:", iif=iif,
                hook=None)


def test_log_source_off_says_why(pair: tuple[str, str, str, str, str]) -> None:
    if not SYSCTL.exists():
        pytest.skip("kernel has no net.netfilter.nf_log_all_netns")
    if SYSCTL.read_text().strip() != "0":
        pytest.skip("nf_log_all_netns is on on this host")
    _, receiver, *_ = pair
    watch = Watch("--netns", receiver)
    lines, _ = watch.stop()
    sources = {s["source"]: s for s in lines[-1]["sources"]}
    assert not sources["kmsg"]["running"]
    assert "nf_log_all_netns" in sources["kmsg"]["off_reason"]
    assert not sources["nflog"]["running"]
    assert "NFLOG" in sources["nflog"]["off_reason"]


def test_watch_errors_are_one_line() -> None:
    proc = subprocess.run([sys.executable, "-m", "fwtop", "watch", "--json", "--netns",
                           "fwtop-no-such-ns"], capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "fwtop-no-such-ns" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_counters_lines_name_the_rules_that_moved(
        pair: tuple[str, str, str, str, str]) -> None:
    sender, receiver, _iif, _src, dst = pair
    ns_run(receiver, "iptables-nft", "-A", "INPUT", "-p", "udp", "--dport", str(DPORT),
           "-m", "comment", "--comment", "counted drop", "-j", "DROP")
    watch = Watch("--netns", receiver, "--counters", "0.5", "--conntrack-interval", "0")
    time.sleep(1.2)  # a first tick to have a baseline
    send(sender, dst, 21000)
    time.sleep(1.5)
    lines, _ = watch.stop()
    moved = [m for x in lines if x["type"] == "counters" for m in x["moved"]
             if m.get("comment") == "counted drop"]
    assert sum(m["delta_packets"] for m in moved) == COUNT == kernel_packets(receiver,
                                                                             "counted drop")
    assert moved[-1]["packets"] == COUNT and moved[-1]["kind"] == "rule"
    assert moved[-1]["verdict"] == "drop" and moved[-1]["chain"] == "INPUT"
