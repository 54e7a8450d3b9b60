"""Real kernel: one namespace holding iptables-nft, iptables-legacy and native nft rules, real
packets from a peer namespace, and `fwtop rules --json` checked against the kernel's own numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import Namespaces, needs, ns_run

pytestmark = [pytest.mark.kernel, needs("ip", "nft", "iptables-nft", "iptables-legacy")]

SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for port, count in ((7001, 37), (7002, 23), (7003, 11), (7009, 5)):
    for _ in range(count):
        s.sendto(b"x" * 20, ("10.99.0.1", port))
"""


def fwtop_json(*args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "fwtop", *args], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def save_counters(ns: str, cmd: str, comment: str) -> tuple[int, int]:
    for line in ns_run(ns, cmd, "-c").stdout.splitlines():
        if comment in line:
            packets, nbytes = line.split("]", 1)[0].strip("[").split(":")
            return int(packets), int(nbytes)
    raise AssertionError(f"{comment!r} not in {cmd} output")


def save_policy(ns: str, cmd: str, chain: str) -> tuple[int, int]:
    for line in ns_run(ns, cmd, "-c").stdout.splitlines():
        if line.startswith(f":{chain} "):
            packets, nbytes = line.rsplit("[", 1)[1].rstrip("]").split(":")
            return int(packets), int(nbytes)
    raise AssertionError(f"no policy line for {chain}")


@pytest.fixture
def three_backends(namespaces: Namespaces) -> str:
    server, client = namespaces.new("srv"), namespaces.new("cli")
    namespaces.veth(server, client, "10.99.0.1/24", "10.99.0.2/24")
    ns_run(server, "iptables-nft", "-A", "INPUT", "-p", "udp", "--dport", "7001",
           "-m", "comment", "--comment", "nft-side rule", "-j", "ACCEPT")
    # the policy drops what no rule accepts: 7009 lands here
    ns_run(server, "iptables-nft", "-P", "INPUT", "DROP")
    ns_run(server, "iptables-nft", "-I", "INPUT", "-i", "lo", "-j", "ACCEPT")
    ns_run(server, "iptables-nft", "-I", "INPUT", "-p", "udp", "--dport", "7003", "-j", "ACCEPT")
    ns_run(server, "iptables-nft", "-I", "INPUT", "-p", "udp", "--dport", "7002", "-j", "ACCEPT")
    ns_run(server, "iptables-legacy", "-A", "INPUT", "-p", "udp", "--dport", "7002",
           "-m", "comment", "--comment", "legacy rule", "-j", "ACCEPT")
    ns_run(server, "nft", "-f", "-", input="""
table inet native {
  chain c {
    type filter hook input priority 10; policy accept;
    udp dport 7003 counter accept comment "native rule"
  }
}
""")
    ns_run(client, sys.executable, "-c", SEND)
    return server


def test_rules_json_lists_all_three_backends_with_kernel_counters(three_backends: str) -> None:
    ns = three_backends
    data = fwtop_json("rules", "--netns", ns, "--json")
    assert data["netns"] == ns
    by_comment = {r["comment"]: r for r in data["rules"] if r["comment"]}
    assert set(by_comment) == {"nft-side rule", "legacy rule", "native rule"}

    ipt = by_comment["nft-side rule"]
    assert (ipt["backend"], ipt["family"], ipt["table"], ipt["chain"]) == (
        "iptables-nft", "ip", "filter", "INPUT")
    assert isinstance(ipt["handle"], int) and ipt["position"] == 4
    assert ipt["verdict"] == "accept" and "--dport 7001" in ipt["text"]
    assert ipt["counters"]["packets"] == 37
    assert (ipt["counters"]["packets"], ipt["counters"]["bytes"]) == save_counters(
        ns, "iptables-nft-save", "nft-side rule")

    leg = by_comment["legacy rule"]
    assert (leg["backend"], leg["table"], leg["chain"], leg["handle"], leg["position"]) == (
        "iptables-legacy", "filter", "INPUT", None, 1)
    assert leg["counters"]["packets"] == 23
    assert (leg["counters"]["packets"], leg["counters"]["bytes"]) == save_counters(
        ns, "iptables-legacy-save", "legacy rule")

    nat = by_comment["native rule"]
    assert (nat["backend"], nat["family"], nat["table"], nat["chain"]) == (
        "nft", "inet", "native", "c")
    assert nat["text"] == 'udp dport 7003 counter accept comment "native rule"'
    kernel = json.loads(ns_run(ns, "nft", "-j", "list", "table", "inet", "native").stdout)
    (krule,) = [o["rule"] for o in kernel["nftables"] if "rule" in o]
    kcounter = next(e["counter"] for e in krule["expr"] if "counter" in e)
    assert nat["handle"] == krule["handle"]
    assert nat["counters"] == {"packets": kcounter["packets"], "bytes": kcounter["bytes"]} \
        == {"packets": 11, "bytes": 11 * 48}


def test_policies_carry_the_kernel_policy_counters(three_backends: str) -> None:
    ns = three_backends
    data = fwtop_json("rules", "--netns", ns, "--json")
    pol = {(p["backend"], p["table"], p["chain"]): p for p in data["policies"]}
    inp = pol[("iptables-nft", "filter", "INPUT")]
    assert inp["verdict"] == "drop"
    assert inp["counters"]["packets"] >= 5  # the 7009 datagrams (plus any IPv6 noise)
    assert (inp["counters"]["packets"], inp["counters"]["bytes"]) == save_policy(
        ns, "iptables-nft-save", "INPUT")
    assert pol[("nft", "native", "c")]["verdict"] == "accept"
    assert pol[("iptables-legacy", "filter", "INPUT")]["verdict"] == "accept"


def test_legacy_tables_are_not_created_by_reading(namespaces: Namespaces) -> None:
    ns = namespaces.new("ro")
    before = ns_run(ns, "cat", "/proc/net/ip_tables_names", check=False).stdout
    data = fwtop_json("rules", "--netns", ns, "--json")
    after = ns_run(ns, "cat", "/proc/net/ip_tables_names", check=False).stdout
    assert data["rules"] == [] and before == after == ""


def test_missing_namespace_and_bad_input_are_one_line_errors() -> None:
    out = subprocess.run([sys.executable, "-m", "fwtop", "rules", "--netns", "no-such-ns-xyz",
                          "--json"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert out.stderr.strip() == ("fwtop: network namespace 'no-such-ns-xyz' not found "
                                  "(see `ip netns list`)")
    assert "Traceback" not in out.stderr

