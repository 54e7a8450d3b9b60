"""`fwtop exporter` end to end: the real command watching a throwaway namespace, real packets,
and every number a scrape shows checked against the kernel's own counters.

Two namespaces joined by a veth pair; the receiver has an iptables-nft NFLOG + DROP pair and a
native nft counter rule in front of them. The exporter's HTTP server must listen in fwtop's own
namespace (the test scrapes it from here), while its readers watch the receiver.
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Namespaces, needs, ns_run

pytestmark = [pytest.mark.kernel, needs("ip", "nft", "iptables-nft", "iptables-nft-save", "ss")]

COUNT = 300
DPORT = 5656
GROUP = 31
NATIVE_TABLE = "fwtexp"
PAYLOAD = b"fwtop-exporter"

# The first datagram waits for ARP; the rest follow once the neighbour is known, so none is
# lost in the neighbour queue and the kernel's counters are exactly COUNT.
SENDER = """
import socket, sys, time
dst, dport, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.sendto(b"fwtop-exporter", (dst, dport))
    time.sleep(0.3)
    for _ in range(count - 1):
        s.sendto(b"fwtop-exporter", (dst, dport))
"""

Series = dict[str, list[tuple[dict[str, str], float]]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def scrape(url: str) -> Series:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out: Series = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def pick(series: Series, name: str, **labels: str) -> list[float]:
    return [v for have, v in series.get(name, [])
            if all(have.get(k) == want for k, want in labels.items())]


def wait_for(url: str, ready: Callable[[Series], bool], proc: subprocess.Popen[str],
             timeout: float = 20.0) -> Series:
    deadline = time.monotonic() + timeout
    last: Series = {}
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"exporter exited with {proc.returncode}: {err}")
        try:
            last = scrape(url)
        except OSError:
            last = {}
        if last and ready(last):
            return last
        time.sleep(0.2)
    raise AssertionError(f"not ready after {timeout} s: {sorted(last)}")


def iptables_counters(ns: str, needle: str) -> tuple[int, int]:
    for line in ns_run(ns, "iptables-nft-save", "-c").stdout.splitlines():
        if needle in line:
            m = re.match(r"\[(\d+):(\d+)\]", line)
            assert m, line
            return int(m.group(1)), int(m.group(2))
    raise AssertionError(f"no rule with {needle!r}")


def nft_counter(ns: str, table: str) -> tuple[int, int, int]:
    """(handle, packets, bytes) of the one counter rule of a native table."""
    data = json.loads(ns_run(ns, "nft", "-j", "list", "table", "inet", table).stdout)
    for item in data["nftables"]:
        rule = item.get("rule")
        if rule is None:
            continue
        for expr in rule["expr"]:
            if "counter" in expr:
                return rule["handle"], expr["counter"]["packets"], expr["counter"]["bytes"]
    raise AssertionError(f"no counter rule in inet {table}")


@pytest.fixture
def firewall(namespaces: Namespaces) -> tuple[str, str, str]:
    sender, receiver = namespaces.new("x"), namespaces.new("x")
    net = 10 + secrets.randbelow(200)
    src, dst = f"10.64.{net}.1", f"10.64.{net}.2"
    namespaces.veth(sender, receiver, f"{src}/24", f"{dst}/24")
    ns_run(receiver, "iptables-nft", "-A", "INPUT", "-p", "udp", "--dport", str(DPORT),
           "-j", "NFLOG", "--nflog-group", str(GROUP), "--nflog-prefix", "fwtop-exporter")
    ns_run(receiver, "iptables-nft", "-A", "INPUT", "-p", "udp", "--dport", str(DPORT),
           "-m", "comment", "--comment", "exporter test drop", "-j", "DROP")
    # Before iptables' chain (priority 0): it sees every packet the DROP will take.
    ns_run(receiver, "nft", "-f", "-", input=(
        f"table inet {NATIVE_TABLE} {{\n"
        "  chain count_in { type filter hook input priority -10; policy accept;\n"
        f'    udp dport {DPORT} counter comment "native count"\n'
        "  }\n}\n"))
    return sender, receiver, dst


@pytest.fixture
def exporter(firewall: tuple[str, str, str]) -> Iterator[tuple[subprocess.Popen[str], str]]:
    _, receiver, _ = firewall
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fwtop", "exporter", "--netns", receiver,
         "--listen", f"127.0.0.1:{port}", "--interval", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc, f"http://127.0.0.1:{port}/metrics"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def test_exporter_metrics_match_the_kernel(
        firewall: tuple[str, str, str],
        exporter: tuple[subprocess.Popen[str], str]) -> None:
    sender, receiver, dst = firewall
    proc, url = exporter
    wait_for(url, lambda s: pick(s, "fwtop_up") == [1.0]
             and pick(s, "fwtop_source_up", source="nflog") == [1.0]
             and bool(pick(s, "fwtop_rule_packets_total", table=NATIVE_TABLE)), proc)

    # The server listens here, in fwtop's own namespace, not in the one it watches.
    port = url.split(":")[2].split("/")[0]
    listening = ns_run(receiver, "ss", "-Hltn").stdout
    assert f":{port} " not in listening, listening

    ns_run(sender, sys.executable, "-c", SENDER, dst, str(DPORT), str(COUNT), timeout=60)
    drop_labels = dict(source="nflog", backend="iptables-nft", family="ip", table="filter",
                       chain="INPUT", position="2", certain="true")

    def settled(s: Series) -> bool:
        return (sum(pick(s, "fwtop_drops_total")) >= COUNT
                and pick(s, "fwtop_rule_packets_total", table=NATIVE_TABLE) == [COUNT]
                and pick(s, "fwtop_rule_packets_total", backend="iptables-nft",
                         position="2") == [COUNT])

    series = wait_for(url, settled, proc)

    # Rule counters are the kernel's.
    drop_packets, drop_bytes = iptables_counters(receiver, "exporter test drop")
    assert drop_packets == COUNT
    (labels, value), = [(lb, v) for lb, v in series["fwtop_rule_packets_total"]
                        if lb["backend"] == "iptables-nft" and lb["position"] == "2"]
    assert value == drop_packets
    assert (labels["family"], labels["table"], labels["chain"], labels["comment"],
            labels["verdict"]) == ("ip", "filter", "INPUT", "exporter test drop", "drop")
    assert pick(series, "fwtop_rule_bytes_total", backend="iptables-nft",
                position="2") == [drop_bytes]
    assert drop_bytes == COUNT * (20 + 8 + len(PAYLOAD))
    nflog_packets, _ = iptables_counters(receiver, f"--nflog-group {GROUP}")
    assert pick(series, "fwtop_rule_packets_total", backend="iptables-nft",
                position="1") == [nflog_packets] == [COUNT]

    handle, packets, nbytes = nft_counter(receiver, NATIVE_TABLE)
    native = dict(backend="nft", family="inet", table=NATIVE_TABLE, chain="count_in",
                  position="1", handle=str(handle), comment="native count", verdict="continue")
    assert pick(series, "fwtop_rule_packets_total", **native) == [packets] == [COUNT]
    assert pick(series, "fwtop_rule_bytes_total", **native) == [nbytes]

    # Every drop fwtop received is counted once, under the DROP rule that took it.
    assert sum(pick(series, "fwtop_drops_total")) == COUNT
    assert pick(series, "fwtop_drops_total", **drop_labels) == [COUNT]
    assert pick(series, "fwtop_source_received_total", source="nflog") == [COUNT]
    assert pick(series, "fwtop_source_lost_total", source="nflog") == [0]
    assert pick(series, "fwtop_drops_shed_total") == [0]

    # Conntrack of the watched namespace.
    assert pick(series, "fwtop_conntrack_up", reason="") == [1]
    assert pick(series, "fwtop_conntrack_max")[0] > 0
    assert len(pick(series, "fwtop_conntrack_entries")) == 1
    assert len(pick(series, "fwtop_conntrack_fill_ratio")) == 1
    assert {lb["stat"] for lb, _ in series["fwtop_conntrack_stat_total"]} >= {
        "insert_failed", "drop", "early_drop", "invalid", "search_restart"}
    assert pick(series, "fwtop_info", netns=receiver) == [1]
    assert pick(series, "process_resident_memory_bytes")[0] > 0

    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert err.strip().splitlines() == [
        f"fwtop exporter: serving {url} for namespace {receiver}"]
