"""Real-kernel tests of fwtop.sources.nft_counters in throwaway network namespaces.

Each test builds its own namespace (unique name, always deleted), loads rules into
it, sends UDP over that namespace's loopback, and checks the reader's numbers
against the kernel's own tools run in the same namespace. Nothing touches the
root namespace.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from fwtop.core.nftnl import RuleKey
from fwtop.sources.nft_counters import NftCounterReader, NftNetlinkError

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
U64 = (1 << 64) - 1

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="nft not installed"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 not installed"),
]


def in_netns(name: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` on a fresh thread that entered namespace ``name``.

    setns() moves only the calling thread, and sockets keep the namespace they were
    created in, so a reader built here keeps reading that namespace afterwards.
    """
    box: dict[str, object] = {}

    def worker() -> None:
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


def run(ns: str, *argv: str, stdin: str | None = None) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv],
        input=stdin,
        text=True,
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"fwtnc{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        run(name, "ip", "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def send_udp(ns: str, counts: dict[int, int], payload: bytes = b"x" * 100) -> None:
    """Send counts[port] datagrams to 127.0.0.1:port inside ``ns``; receivers are bound
    so no ICMP errors add packets of their own."""

    def go() -> None:
        rx = []
        try:
            for port in counts:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind(("127.0.0.1", port))
                rx.append(s)
            tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with tx:
                for port, n in counts.items():
                    for _ in range(n):
                        tx.sendto(payload, ("127.0.0.1", port))
            for s, n in zip(rx, counts.values(), strict=True):
                s.settimeout(5)
                for _ in range(n):
                    s.recv(2048)
        finally:
            for s in rx:
                s.close()

    in_netns(ns, go)


def nft_json_counters(ns: str) -> dict[RuleKey, tuple[int, int]]:
    data = json.loads(run(ns, "nft", "-j", "list", "ruleset"))
    out: dict[RuleKey, tuple[int, int]] = {}
    for item in data["nftables"]:
        rule = item.get("rule")
        if rule is None:
            continue
        for e in rule["expr"]:
            if "counter" in e:
                c = e["counter"]
                if isinstance(c, dict):
                    key = (rule["family"], rule["table"], rule["chain"], rule["handle"])
                    out[key] = (c["packets"] & U64, c["bytes"] & U64)
                break
    return out


def iptables_save_policies(ns: str, tool: str = "iptables-nft-save") -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    table = ""
    for line in run(ns, tool, "-c").splitlines():
        if line.startswith("*"):
            table = line[1:]
        m = re.match(r":(\S+) (ACCEPT|DROP) \[(\d+):(\d+)\]", line)
        if m and table == "filter":
            out[m[1]] = (int(m[3]), int(m[4]))
    return out


NATIVE = """
table inet t {
    chain input {
        type filter hook input priority 0; policy accept;
        udp dport 9999 counter accept
        udp dport 9998 accept
        meta l4proto udp counter
    }
}
"""


def test_counters_equal_kernel_tools(netns: str) -> None:
    if shutil.which("iptables-nft") is None:
        pytest.skip("iptables-nft not installed")
    run(netns, "nft", "-f", "-", stdin=NATIVE)
    # -P gives the base chain kernel counters (a plain -A would create it without).
    run(netns, "iptables-nft", "-P", "INPUT", "ACCEPT")
    run(netns, "iptables-nft", "-A", "INPUT", "-p", "udp", "--dport", "9997", "-j", "ACCEPT")

    reader = in_netns(netns, NftCounterReader)
    with reader:
        before = reader.dump()
        assert before.malformed == 0 and not before.interrupted
        assert all(v == (0, 0) for v in before.rules.values())

        send_udp(netns, {9999: 7, 9998: 3, 9997: 5})

        gen = reader.generation()
        dump = reader.dump()
        kernel = nft_json_counters(netns)
        policies = iptables_save_policies(netns)

    assert dump.generation == gen == before.generation
    assert dump.rules == kernel
    ip_packet = 20 + 8 + 100
    nine = [k for k in dump.rules if k[:3] == ("inet", "t", "input")]
    assert len(nine) == 2
    assert dump.rules[nine[0]] == (7, 7 * ip_packet)  # udp dport 9999 counter accept
    assert dump.rules[nine[1]] == (5, 5 * ip_packet)  # 9998 was accepted before the catch-all
    ipt = [k for k in dump.rules if k[:2] == ("ip", "filter")]
    assert dump.rules[ipt[0]] == (5, 5 * ip_packet)
    # iptables-nft's INPUT policy accepted the 10 datagrams its rule did not match.
    assert dump.chains[("ip", "filter", "INPUT")] == policies["INPUT"] == (10, 10 * ip_packet)
    for chain, counters in policies.items():
        if ("ip", "filter", chain) in dump.chains:
            assert dump.chains[("ip", "filter", chain)] == counters


def test_generation_changes_only_on_commit(netns: str) -> None:
    run(netns, "nft", "-f", "-", stdin=NATIVE)
    with in_netns(netns, NftCounterReader) as reader:
        g1 = reader.generation()
        send_udp(netns, {9999: 2})
        assert reader.generation() == g1  # traffic is not a ruleset change
        run(netns, "nft", "add", "rule", "inet", "t", "input", "tcp", "dport", "1", "counter")
        g2 = reader.generation()
        assert g1 is not None and g2 is not None and g2 != g1
        dump = reader.dump()
        assert dump.generation == g2
        assert len(dump.rules) == 3


def test_family_and_table_filters(netns: str) -> None:
    run(netns, "nft", "-f", "-", stdin=NATIVE)
    # nft 1.0.6 wants a newline, not "; }", after a rule's last statement.
    run(netns, "nft", "-f", "-", stdin="table ip other {\nchain c {\ncounter\n}\n}\n")
    run(netns, "nft", "-f", "-", stdin="table ip6 t {\nchain c {\ncounter\ncounter\n}\n}\n")
    with in_netns(netns, NftCounterReader) as reader:
        everything = reader.dump()
        assert {k[:2] for k in everything.rules} == {("inet", "t"), ("ip", "other"), ("ip6", "t")}
        assert {k[:2] for k in reader.dump(table="t").rules} == {("inet", "t"), ("ip6", "t")}
        assert {k[:2] for k in reader.dump(family="ip").rules} == {("ip", "other")}
        only = reader.dump(family="inet", table="t")
        assert only.rules == {k: v for k, v in everything.rules.items() if k[:2] == ("inet", "t")}
        assert reader.dump(family="ip", table="nope").rules == {}
        with pytest.raises(ValueError):
            reader.dump(family="ipx")


def test_empty_ruleset_and_closed_reader(netns: str) -> None:
    reader = in_netns(netns, NftCounterReader)
    dump = reader.dump()
    assert (dump.rules, dump.chains, dump.malformed) == ({}, {}, 0)
    reader.close()
    reader.close()  # idempotent
    with pytest.raises(NftNetlinkError):
        reader.generation()


def test_many_rules_and_concurrent_commits(netns: str) -> None:
    """A multi-datagram dump while another process commits: each returned dump is
    either consistent (all rules of one generation) or flagged interrupted."""
    n = 4000
    lines = ["table inet big {", "chain c {"]
    lines += [
        f"ip saddr 10.0.{i // 250}.{i % 250 + 1} udp dport {i % 60000 + 1} counter"
        for i in range(n)
    ]
    lines += ["}", "chain x {", "}", "}"]
    run(netns, "nft", "-f", "-", stdin="\n".join(lines) + "\n")
    stop = time.monotonic() + 4.0
    # A commit every ~200 ms: often enough to interrupt dumps, rarely enough that a
    # retry usually gets through.
    churn = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            netns,
            "sh",
            "-c",
            "while :; do nft add rule inet big x counter; sleep 0.2;"
            " nft flush chain inet big x; sleep 0.2; done",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with in_netns(netns, NftCounterReader) as reader:
            results = []
            while time.monotonic() < stop:
                results.append(reader.dump(table="big"))
    finally:
        churn.terminate()
        churn.wait()
    assert results
    assert any(d.retries for d in results), "no dump noticed the concurrent commits"
    assert any(not d.interrupted for d in results), "retries never got a consistent dump"
    for d in results:
        assert d.malformed == 0
        if not d.interrupted:
            big = sum(1 for k in d.rules if k[2] == "c")
            assert big == n
            assert sum(1 for k in d.rules if k[2] == "x") <= 1
    print(
        f"{len(results)} dumps, {sum(d.retries for d in results)} retries,"
        f" {sum(d.interrupted for d in results)} gave up",
        file=sys.stderr,
    )


def test_non_root_gets_clear_error(netns: str) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv not installed")
    code = (
        "from fwtop.sources.nft_counters import NftCounterReader, NftNetlinkError\n"
        "try:\n"
        "    NftCounterReader().generation()\n"
        "except NftNetlinkError as e:\n"
        "    print(e)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            netns,
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            sys.executable,
            "-c",
            code,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
        env={"PYTHONPATH": root, "PATH": os.environ.get("PATH", "")},
    )
    assert "need root (CAP_NET_ADMIN)" in out.stdout, out.stderr


PLANNED = """
table inet p {
    chain input {
        type filter hook input priority 0; policy accept;
        jump a
        jump b
        jump quiet
    }
    chain a {
        udp dport 9999 counter
        udp dport 9998 counter
    }
    chain b {
        udp dport 9999 counter
    }
    chain quiet {
        udp dport 1 accept
    }
}
table ip p {
    chain c {
        counter
    }
}
"""


def test_per_chain_and_whole_table_dumps_agree(netns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    run(netns, "nft", "-f", "-", stdin=PLANNED)
    send_udp(netns, {9999: 3, 9998: 2})
    with in_netns(netns, NftCounterReader) as reader:
        monkeypatch.setattr(reader, "_split", lambda *a: False)
        whole = reader.dump()
        whole_requests = reader.requests
        monkeypatch.setattr(reader, "_split", lambda *a: True)
        reader._sizes_gen = None  # forget what was learned, dump every chain
        split = reader.dump()
        split_requests = reader.requests
    assert whole.rules == split.rules == nft_json_counters(netns)
    assert len(whole.rules) == 4
    assert whole_requests == 1 + 2  # chains + one per table
    assert split_requests == 1 + 5  # chains + one per chain (input, a, b, quiet, c)


def test_chains_without_counters_skipped_while_generation_holds(
    netns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(netns, "nft", "-f", "-", stdin=PLANNED)
    with in_netns(netns, NftCounterReader) as reader:
        monkeypatch.setattr(reader, "_split", lambda f, t, cnames: len(cnames) > 1)
        first = reader.dump()
        first_requests = reader.requests
        second = reader.dump()
        second_requests = reader.requests
        assert second.rules == first.rules and len(first.rules) == 4
        # input (only jumps) and quiet (no counter) are not asked for again.
        assert second_requests == first_requests - 2
        run(netns, "nft", "add", "rule", "inet", "p", "quiet", "udp", "dport", "2", "counter")
        third = reader.dump()
        assert third.generation != second.generation
        assert len(third.rules) == 5
        assert any(k[2] == "quiet" for k in third.rules)


def test_single_chain_dump(netns: str) -> None:
    run(netns, "nft", "-f", "-", stdin=PLANNED)
    with in_netns(netns, NftCounterReader) as reader:
        one = reader.dump("inet", "p", "a")
        assert {k[:3] for k in one.rules} == {("inet", "p", "a")} and len(one.rules) == 2
        assert reader.dump("inet", "p", "missing").rules == {}
        with pytest.raises(ValueError):
            reader.dump(table="p", chain="a")


def test_many_chains_first_dump_is_per_table(netns: str) -> None:
    lines = ["table inet m {"]
    lines += [f"chain c{i} {{\ncounter\n}}" for i in range(40)]
    lines += ["}"]
    run(netns, "nft", "-f", "-", stdin="\n".join(lines) + "\n")
    with in_netns(netns, NftCounterReader) as reader:
        dump = reader.dump()
        assert reader.requests == 2  # more chains than the blind-split limit
        assert len(dump.rules) == 40
        assert dump.rules == nft_json_counters(netns)
