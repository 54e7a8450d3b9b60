"""Temporary allows against the kernel: the hole opens, the kernel closes it at the deadline even
after every fwtop process was SIGKILLed, the next start removes the leftovers; revert removes
exactly fwtop's objects whatever was added around them; extend; the refusals."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Namespaces, needs, ns_run
from tests.kernel.explain_harness import SERVER, Topology, fwtop, topology
from tests.kernel.explain_harness import connect as connect_to

pytestmark = [pytest.mark.kernel, needs("ip", "nft", "iptables-nft", "iptables-nft-save")]

PORT = 7400


@pytest.fixture
def state(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = dict(os.environ, FWTOP_STATE_DIR=str(tmp_path / "state"))
    yield env
    pid_file = tmp_path / "state" / "janitor.pid"
    if pid_file.exists():  # a janitor this test started
        text = pid_file.read_text().strip()
        if text.isdigit():
            try:
                os.kill(int(text), signal.SIGKILL)
            except ProcessLookupError:
                pass




def connect(top: Topology, port: int = PORT) -> str:
    return connect_to(top, port)


def server(top: Topology, port: int = PORT) -> None:
    subprocess.Popen(["ip", "netns", "exec", top.fw, sys.executable, "-c", SERVER, str(port)],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while str(port) not in ns_run(top.fw, "ss", "-ltn").stdout:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def close_port(top: Topology, backend: str) -> None:
    if backend == "iptables-nft":
        ns_run(top.fw, "iptables-nft", "-P", "INPUT", "DROP")
    elif backend == "iptables-legacy":
        ns_run(top.fw, "iptables-legacy", "-P", "INPUT", "DROP")
    else:
        ns_run(top.fw, "nft", "-f", "-", input="table inet srv {\nchain input {\n"
               "type filter hook input priority 0; policy drop;\n}\n}\n")


def ruleset_text(top: Topology) -> str:
    """Every rule of the namespace, without counters or handles (nft + both iptables)."""
    nft = ns_run(top.fw, "nft", "-s", "list", "ruleset").stdout
    ipt = ns_run(top.fw, "iptables-nft-save", check=False).stdout  # keeps iptables comments
    legacy = ns_run(top.fw, "iptables-legacy-save", check=False).stdout
    text = "\n".join(ln for ln in (nft + ipt + legacy).splitlines() if not ln.startswith("#"))
    return re.sub(r"\[\d+:\d+\]", "[0:0]", text)  # policy counters move with traffic


def allow(env: dict[str, str], top: Topology, ttl: int, *extra: str) -> dict[str, Any]:
    out = fwtop(env, "allow", "--netns", top.fw, "--proto", "tcp", "--src", top.client_ip,
                "--dst", top.fw_ip, "--dport", str(PORT), "--ttl", str(ttl), "--json", *extra)
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def kill_janitor(env: dict[str, str]) -> None:
    pid_file = Path(env["FWTOP_STATE_DIR"]) / "janitor.pid"
    deadline = time.monotonic() + 5
    while not (pid_file.exists() and pid_file.read_text().strip()):
        assert time.monotonic() < deadline, "allow did not start its janitor"
        time.sleep(0.05)
    try:
        os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
    except ProcessLookupError:
        pass


BACKENDS = ["iptables-nft", "nft", "iptables-legacy"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_kernel_closes_the_hole_after_sigkill(namespaces: Namespaces, state: dict[str, str],
                                                  backend: str) -> None:
    if backend == "iptables-legacy" and not Path("/usr/sbin/iptables-legacy").exists():
        pytest.skip("no iptables-legacy")
    top = topology(namespaces)
    server(top)
    close_port(top, backend)
    assert connect(top) == "timeout"
    before = ruleset_text(top)

    made = allow(state, top, 8)
    assert made["backend"] == backend and re.fullmatch(r"[0-9a-f]{8}", made["id"])
    assert connect(top) == "connected"
    kill_janitor(state)  # every fwtop process is now dead: only the kernel is left
    time.sleep(max(0.0, made["expires_at"] - time.time()) + 2)
    assert connect(top) == "timeout"  # closed by the kernel itself
    assert f"fwtop:{made['id']}" in ruleset_text(top)  # the inert leftover is still there

    listed = json.loads(fwtop(state, "temp", "list", "--json").stdout)  # the next start
    assert listed == []
    assert ruleset_text(top) == before  # exactly fwtop's objects are gone


@pytest.mark.parametrize("backend", ["iptables-nft", "nft"])
def test_revert_removes_exactly_fwtops_objects(namespaces: Namespaces, state: dict[str, str],
                                               backend: str) -> None:
    top = topology(namespaces)
    server(top)
    close_port(top, backend)
    before = ruleset_text(top)
    made = allow(state, top, 120)
    assert connect(top) == "connected"
    # Other tools add rules above and below fwtop's meanwhile.
    if backend == "nft":
        ns_run(top.fw, "nft", "insert", "rule", "inet", "srv", "input", "tcp", "dport", "1",
               "accept", "comment", "other-above")
        ns_run(top.fw, "nft", "add", "rule", "inet", "srv", "input", "tcp", "dport", "2",
               "accept", "comment", "other-below")
    else:
        ns_run(top.fw, "iptables-nft", "-I", "INPUT", "1", "-p", "tcp", "--dport", "1", "-j",
               "ACCEPT")
        ns_run(top.fw, "iptables-nft", "-A", "INPUT", "-p", "tcp", "--dport", "2", "-j",
               "ACCEPT")
    assert f"fwtop:{made['id']}" in ruleset_text(top)
    fwtop(state, "temp", "revert", made["id"])
    assert connect(top) == "timeout"
    after_revert = ruleset_text(top)
    assert "fwtop" not in after_revert
    assert "dport 1 " in after_revert + " " and "dport 2 " in after_revert + " "
    # Taking the other tools' rules out again gives exactly the ruleset from before.
    if backend == "nft":
        listing = json.loads(ns_run(top.fw, "nft", "-j", "-a", "list", "chain", "inet", "srv",
                                    "input").stdout)["nftables"]
        for item in listing:
            rule = item.get("rule")
            if rule and rule.get("comment") in ("other-above", "other-below"):
                ns_run(top.fw, "nft", "delete", "rule", "inet", "srv", "input", "handle",
                       str(rule["handle"]))
    else:
        ns_run(top.fw, "iptables-nft", "-D", "INPUT", "-p", "tcp", "--dport", "1", "-j",
               "ACCEPT")
        ns_run(top.fw, "iptables-nft", "-D", "INPUT", "-p", "tcp", "--dport", "2", "-j",
               "ACCEPT")
    assert _squash(ruleset_text(top)) == _squash(before)
    assert json.loads(fwtop(state, "temp", "list", "--json").stdout) == []


def _squash(text: str) -> str:
    return "\n".join(ln.rstrip() for ln in text.splitlines() if ln.strip())


@pytest.mark.parametrize("backend", ["iptables-nft", "nft"])
def test_extend(namespaces: Namespaces, state: dict[str, str], backend: str) -> None:
    top = topology(namespaces)
    server(top)
    close_port(top, backend)
    made = allow(state, top, 4)
    extended = json.loads(fwtop(state, "temp", "extend", made["id"], "30", "--json").stdout)
    assert extended["expires_at"] > made["expires_at"] + 20
    time.sleep(max(0.0, made["expires_at"] - time.time()) + 2)
    assert connect(top) == "connected"  # past the first deadline, still open
    listed = json.loads(fwtop(state, "temp", "list", "--json").stdout)
    assert [r["id"] for r in listed] == [made["id"]]
    assert ruleset_text(top).count(f"fwtop:{made['id']}") >= 1


def test_refusals_are_one_line(namespaces: Namespaces, state: dict[str, str]) -> None:
    top = topology(namespaces)
    close_port(top, "iptables-nft")
    base = ["allow", "--netns", top.fw, "--proto", "tcp", "--dst", top.fw_ip]
    cases = [
        ([*base, "--src", top.client_ip, "--dport", "80", "--ttl", "4000", "--yes"], "cap"),
        ([*base, "--dport", "80", "--ttl", "60", "--yes"], "--any-source"),
        ([*base, "--src", top.client_ip, "--ttl", "60", "--yes"], "--dport"),
        ([*base, "--src", "nonsense", "--dport", "80", "--ttl", "60", "--yes"], "nonsense"),
        (["temp", "revert", "0123abcd"], "no active temporary rule"),
        (["temp", "extend", "nothex"], "needs an id"),
    ]
    for argv, needle in cases:
        proc = fwtop(state, *argv, check=False)
        assert proc.returncode != 0, argv
        assert needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    capped = dict(state, FWTOP_TTL_CAP="5000")
    ok = fwtop(capped, *base, "--src", top.client_ip, "--dport", "80", "--ttl", "4000",
               "--dry-run", "--json")
    assert json.loads(ok.stdout)["dry_run"] is True
    assert "fwtop:" not in ruleset_text(top)  # a dry run writes nothing
