"""Commit-confirmed edits against the kernel, for iptables-nft, native nft and legacy: the edit
takes effect; unconfirmed, the detached reverter restores exactly the touched chain at the
deadline with the terminal's processes gone (SIGKILL, SIGHUP), and if the reverter itself is
SIGKILLed the next fwtop start does it; confirmed, the edit stays; rules added elsewhere survive;
a conflicting change to the touched chain is reported, not clobbered; the impact preview of
recorded drops is what the kernel then does with those packets."""

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
from tests.kernel.explain_harness import SENDER, SERVER, Topology, fwtop, topology
from tests.kernel.explain_harness import connect as connect_to

pytestmark = [pytest.mark.kernel, needs("ip", "nft", "iptables-nft", "iptables-nft-save",
                                        "iptables-nft-restore")]

PORT = 7500
BACKENDS = ["iptables-nft", "nft", "iptables-legacy"]


def legacy_missing() -> bool:
    return not Path("/usr/sbin/iptables-legacy").exists() and \
        not Path("/sbin/iptables-legacy").exists()


@pytest.fixture
def state(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = dict(os.environ, FWTOP_STATE_DIR=str(tmp_path / "state"))
    env.pop("SSH_CONNECTION", None)
    yield env
    kill_reverters(env)


def journal(env: dict[str, str]) -> list[dict[str, Any]]:
    path = Path(env["FWTOP_STATE_DIR"]) / "journal.json"
    if not path.exists():
        return []
    records: list[dict[str, Any]] = json.loads(path.read_text())["records"]
    return records


def _ours(pid: int, env: dict[str, str]) -> bool:
    """A process fwtop started for this test: it carries this test's state directory."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"FWTOP_STATE_DIR={env['FWTOP_STATE_DIR']}".encode() in environ.split(b"\0")


def kill_reverters(env: dict[str, str]) -> None:
    for r in journal(env):
        pid = r.get("pid")
        if pid and _ours(pid, env):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass




def connect(top: Topology, port: int = PORT) -> str:
    return connect_to(top, port)


def server(top: Topology, *ports: int) -> None:
    ports = ports or (PORT,)
    subprocess.Popen(["ip", "netns", "exec", top.fw, sys.executable, "-c", SERVER,
                      *map(str, ports)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not all(f":{p} " in ns_run(top.fw, "ss", "-ltn").stdout for p in ports):
        assert time.monotonic() < deadline
        time.sleep(0.05)


# --- the ruleset the tests edit ---------------------------------------------------------------


def block_port(top: Topology, backend: str, port: int = PORT) -> None:
    """INPUT: accept :1, drop :PORT, accept :2 (the DROP is the edit's target)."""
    if backend == "nft":
        ns_run(top.fw, "nft", "-f", "-", input=(
            "table inet srv {\n chain input {\n  type filter hook input priority 0; "
            "policy accept;\n"
            f"  tcp dport 1 accept\n  tcp dport {port} drop\n  tcp dport 2 accept\n }}\n}}\n"))
        return
    tool = "iptables-legacy" if backend == "iptables-legacy" else "iptables-nft"
    for spec in (["--dport", "1", "-j", "ACCEPT"], ["--dport", str(port), "-j", "DROP"],
                 ["--dport", "2", "-j", "ACCEPT"]):
        ns_run(top.fw, tool, "-A", "INPUT", "-p", "tcp", *spec)


def handles(top: Topology, family: str, table: str, chain: str) -> list[int]:
    data = json.loads(ns_run(top.fw, "nft", "-j", "-a", "list", "chain", family, table,
                             chain).stdout)["nftables"]
    return [item["rule"]["handle"] for item in data if "rule" in item]


def table_chain(backend: str) -> tuple[str, str, str]:
    return ("inet", "srv", "input") if backend == "nft" else ("ip", "filter", "INPUT")


def rule_arg(top: Topology, backend: str, index: int) -> list[str]:
    """RULE (and --expect-text for legacy) for the chain's rule at `index` (0-based)."""
    family, table, chain = table_chain(backend)
    if backend == "iptables-legacy":
        texts = [ln.split(f"-A {chain} ", 1)[1] for ln in chain_text(top, backend).splitlines()
                 if ln.startswith(f"-A {chain} ")]
        return [f"{table}:{chain}:#{index + 1}", "--expect-text", texts[index]]
    return [f"{family}:{table}:{chain}:{handles(top, family, table, chain)[index]}"]


def chain_text(top: Topology, backend: str) -> str:
    """The touched chain, counters and handles aside."""
    if backend == "nft":
        return ns_run(top.fw, "nft", "-s", "list", "chain", "inet", "srv", "input").stdout
    save = "iptables-legacy-save" if backend == "iptables-legacy" else "iptables-nft-save"
    out = ns_run(top.fw, save, "-t", "filter").stdout
    lines = [re.sub(r"\[\d+:\d+\]", "", ln).strip() for ln in out.splitlines()
             if ln.startswith((":INPUT", "-A INPUT"))]
    return "\n".join(lines)


def add_elsewhere(top: Topology, backend: str) -> None:
    """Another tool's rules, added during the window in another chain and another table."""
    if backend == "nft":
        ns_run(top.fw, "nft", "-f", "-", input=(
            "table inet srv {\n chain output {\n  type filter hook output priority 0; "
            "policy accept;\n  tcp dport 4 accept comment \"other-chain\"\n }\n}\n"
            "table inet other {\n chain input {\n  type filter hook input priority 10; "
            "policy accept;\n  tcp dport 5 accept comment \"other-table\"\n }\n}\n"))
        return
    tool = "iptables-legacy" if backend == "iptables-legacy" else "iptables-nft"
    ns_run(top.fw, tool, "-A", "OUTPUT", "-p", "tcp", "--dport", "4", "-m", "comment",
           "--comment", "other-chain", "-j", "ACCEPT")
    ns_run(top.fw, tool, "-t", "mangle", "-A", "PREROUTING", "-p", "tcp", "--dport", "5", "-m",
           "comment", "--comment", "other-table", "-j", "ACCEPT")


def everything(top: Topology) -> str:
    nft = ns_run(top.fw, "nft", "-s", "list", "ruleset").stdout
    legacy = ns_run(top.fw, "iptables-legacy-save", check=False).stdout
    ipt = ns_run(top.fw, "iptables-nft-save", check=False).stdout
    text = "\n".join(ln for ln in (nft + ipt + legacy).splitlines() if not ln.startswith("#"))
    return re.sub(r"\[\d+:\d+\]", "[0:0]", text)


def edit(env: dict[str, str], top: Topology, *args: str,
         session: bool = False) -> dict[str, Any]:
    """`fwtop edit --json`; with `session`, in a session of its own, as from a terminal that is
    then closed (its process group gets SIGHUP and SIGKILL afterwards)."""
    argv = [sys.executable, "-m", "fwtop", "edit", "--netns", top.fw, "--json", *args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=session)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    if session:
        for sig in (signal.SIGHUP, signal.SIGKILL):  # the terminal's session goes away
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
    data: dict[str, Any] = json.loads(out)
    return data


def kill_fwtop_except(env: dict[str, str], keep: int | None) -> int:
    """SIGKILL every process of this test's fwtop (by its state directory) but `keep`."""
    killed = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != keep and int(entry) != os.getpid() \
                and _ours(int(entry), env):
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            if b"fwtop" in cmd:
                try:
                    os.kill(int(entry), signal.SIGKILL)
                    killed += 1
                except ProcessLookupError:
                    pass
    return killed


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status").read_text()
    return "State:\tZ" not in status


def wait_until(deadline: float, extra: float = 2.0) -> None:
    time.sleep(max(0.0, deadline - time.time()) + extra)


def setup(namespaces: Namespaces, backend: str) -> Topology:
    if backend == "iptables-legacy" and legacy_missing():
        pytest.skip("no iptables-legacy")
    top = topology(namespaces)
    server(top)
    block_port(top, backend)
    assert connect(top) == "timeout"
    return top


# --- the proof --------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_unconfirmed_delete_reverts_with_fwtop_gone(namespaces: Namespaces,
                                                    state: dict[str, str], backend: str) -> None:
    top = setup(namespaces, backend)
    before = chain_text(top, backend)
    made = edit(state, top, "--delete", *rule_arg(top, backend, 1), "--confirm-within", "8",
                session=True)
    assert re.fullmatch(r"[0-9a-f]{8}", made["id"]) and made["state"] == "active"
    assert any(line.startswith("- ") and "DROP" in line.upper() for line in made["diff"])
    assert connect(top) == "connected"
    reverter = made["reverter_pid"]
    assert reverter and alive(reverter)
    os.kill(reverter, signal.SIGHUP)  # a hang-up does not stop it
    kill_fwtop_except(state, keep=reverter)  # nothing of the terminal's fwtop is left
    time.sleep(0.3)
    assert alive(reverter)
    add_elsewhere(top, backend)
    elsewhere = everything(top)
    assert "other-chain" in elsewhere and "other-table" in elsewhere

    wait_until(made["deadline"])
    assert chain_text(top, backend) == before  # the touched chain is the snapshot again
    assert connect(top) == "timeout"
    after = everything(top)
    assert "other-chain" in after and "other-table" in after  # untouched elsewhere
    (rec,) = journal(state)
    assert rec["state"] == "reverted" and "unconfirmed" in rec["note"], rec
    assert json.loads(fwtop(state, "temp", "list", "--json").stdout) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_confirmed_edit_stays(namespaces: Namespaces, state: dict[str, str],
                              backend: str) -> None:
    top = setup(namespaces, backend)
    made = edit(state, top, "--delete", *rule_arg(top, backend, 1), "--confirm-within", "6")
    edited = chain_text(top, backend)
    listed = json.loads(fwtop(state, "temp", "list", "--json").stdout)
    assert [r["id"] for r in listed] == [made["id"]] and listed[0]["kind"] == "edit"
    out = fwtop(state, "temp", "confirm", made["id"])
    assert "confirmed" in out.stdout
    wait_until(made["deadline"])
    assert chain_text(top, backend) == edited
    assert connect(top) == "connected"
    assert not alive(made["reverter_pid"])  # it stood down
    assert json.loads(fwtop(state, "temp", "list", "--json").stdout) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigkilled_reverter_next_start_reverts(namespaces: Namespaces, state: dict[str, str],
                                               backend: str) -> None:
    top = setup(namespaces, backend)
    before = chain_text(top, backend)
    made = edit(state, top, "--delete", *rule_arg(top, backend, 1), "--confirm-within", "5")
    os.kill(made["reverter_pid"], signal.SIGKILL)  # every fwtop process is gone now
    wait_until(made["deadline"], extra=3.0)
    assert connect(top) == "connected"  # nothing reverted it: no process was left
    proc = fwtop(state, "temp", "list", "--json")  # the next fwtop start, whatever command
    assert f"edit {made['id']}" in proc.stderr and "reverted" in proc.stderr, proc.stderr
    assert chain_text(top, backend) == before
    assert connect(top) == "timeout"
    (rec,) = journal(state)
    assert rec["state"] == "reverted" and "fwtop start" in rec["note"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_conflicting_change_undoes_only_fwtops_own(namespaces: Namespaces,
                                                   state: dict[str, str], backend: str) -> None:
    """Someone inserts a rule into the touched chain during the window: at the deadline fwtop
    puts its deleted DROP back before the same neighbour and leaves their rule, and says so."""
    top = setup(namespaces, backend)
    made = edit(state, top, "--delete", *rule_arg(top, backend, 1), "--confirm-within", "6")
    if backend == "nft":
        ns_run(top.fw, "nft", "insert", "rule", "inet", "srv", "input", "tcp", "dport", "9",
               "accept", "comment", '"theirs"')
    else:
        tool = "iptables-legacy" if backend == "iptables-legacy" else "iptables-nft"
        ns_run(top.fw, tool, "-I", "INPUT", "1", "-p", "tcp", "--dport", "9", "-m", "comment",
               "--comment", "theirs", "-j", "ACCEPT")
    wait_until(made["deadline"])
    text = chain_text(top, backend)
    assert "theirs" in text  # not clobbered
    order = [ln for ln in text.splitlines() if "dport" in ln]
    assert re.search(r"dport 9\b", order[0]) and re.search(rf"dport {PORT}\b", order[2]), order
    assert len(order) == 4
    assert connect(top) == "timeout"  # the DROP is back
    (rec,) = journal(state)
    assert rec["state"] == "reverted" and "conflict" in rec["note"], rec
    assert "someone else" in rec["note"]


@pytest.mark.parametrize("backend", ["nft", "iptables-nft"])
def test_conflict_that_cannot_be_undone_is_reported_not_clobbered(
        namespaces: Namespaces, state: dict[str, str], backend: str) -> None:
    """Someone puts the DROP back themselves during the window: re-adding fwtop's copy would
    duplicate it, so fwtop touches nothing, records the conflict and says so at every start
    until the user confirms."""
    top = setup(namespaces, backend)
    made = edit(state, top, "--delete", *rule_arg(top, backend, 1), "--confirm-within", "5")
    if backend == "nft":
        ns_run(top.fw, "nft", "add", "rule", "inet", "srv", "input", "tcp", "dport", str(PORT),
               "drop")
    else:
        ns_run(top.fw, "iptables-nft", "-A", "INPUT", "-p", "tcp", "--dport", str(PORT), "-j",
               "DROP")
    theirs = chain_text(top, backend)
    wait_until(made["deadline"])
    assert chain_text(top, backend) == theirs  # left exactly as they made it
    (rec,) = journal(state)
    assert rec["state"] == "conflict" and "again" in rec["note"], rec
    proc = fwtop(state, "temp", "list", "--json")
    assert "conflict" in proc.stderr and made["id"] in proc.stderr
    assert [r["id"] for r in json.loads(proc.stdout)] == [made["id"]]
    fwtop(state, "temp", "confirm", made["id"])
    proc = fwtop(state, "temp", "list", "--json")
    assert json.loads(proc.stdout) == [] and "conflict" not in proc.stderr
    assert chain_text(top, backend) == theirs


@pytest.mark.parametrize(("backend", "kind"), [
    ("nft", "move"), ("nft", "insert"), ("nft", "policy"),
    ("iptables-nft", "move"), ("iptables-nft", "insert"), ("iptables-nft", "policy"),
    ("iptables-legacy", "move"), ("iptables-legacy", "insert"), ("iptables-legacy", "policy"),
])
def test_every_kind_applies_and_reverts_exactly(namespaces: Namespaces, state: dict[str, str],
                                                backend: str, kind: str) -> None:
    top = setup(namespaces, backend)
    family, table, chain = table_chain(backend)
    if kind == "move":  # an ACCEPT for the port at the end, shadowed by the DROP
        if backend == "nft":
            ns_run(top.fw, "nft", "add", "rule", "inet", "srv", "input", "tcp", "dport",
                   str(PORT), "accept")
        else:
            tool = "iptables-legacy" if backend == "iptables-legacy" else "iptables-nft"
            ns_run(top.fw, tool, "-A", "INPUT", "-p", "tcp", "--dport", str(PORT), "-j",
                   "ACCEPT")
    before = chain_text(top, backend)
    assert connect(top, 3) == "refused"  # no rule: the policy accepts, nobody listens
    first = rule_arg(top, backend, 0)
    if kind == "move":  # the shadowed ACCEPT goes before the DROP
        last = rule_arg(top, backend, 3)
        args = ["--move", last[0], *last[1:], "--before", rule_arg(top, backend, 1)[0]]
        expect = "connected"
    elif kind == "insert":  # an ACCEPT for the port before the DROP
        text = f"tcp dport {PORT} accept" if backend == "nft" else \
            f"-p tcp --dport {PORT} -m comment --comment \"fwtop test\" -j ACCEPT"
        args = ["--insert", text, "--chain", f"{family}:{table}:{chain}", "--before", first[0]]
        expect = "connected"
    else:
        args = ["--policy", f"{family}:{table}:{chain}=drop"]
        expect = "timeout"
    made = edit(state, top, *args, "--confirm-within", "60")
    edited = chain_text(top, backend)
    assert edited != before
    if kind == "move":
        lines = [ln for ln in edited.splitlines() if "dport" in ln]
        assert re.search(rf"dport {PORT}\b.*(accept|ACCEPT)", lines[1]), lines
        assert re.search(rf"dport {PORT}\b.*(drop|DROP)", lines[2]), lines
    if kind == "policy":
        assert ":INPUT DROP" in edited or "policy drop" in edited
        assert connect(top, 3) == "timeout"  # the policy decides :3 now
        assert connect(top, 1) == "refused"  # the ACCEPT :1 still lets it in
    assert connect(top) == expect
    out = fwtop(state, "temp", "revert", made["id"])
    assert "reverted" in out.stdout
    assert chain_text(top, backend) == before
    assert connect(top) == "timeout"


# --- the impact preview against the kernel ----------------------------------------------------

SPORTS = {PORT: [41001, 41002, 41003], PORT + 1: [41011, 41012], PORT + 2: [41021]}


def send_syn(top: Topology, dport: int, sport: int) -> str:
    return ns_run(top.client, sys.executable, "-c", SENDER, "tcp", top.fw_ip, str(dport),
                  str(sport), timeout=20).stdout.strip()


@pytest.mark.parametrize("backend", ["iptables-nft", "nft"])
def test_impact_of_recorded_drops_matches_the_kernel(namespaces: Namespaces,
                                                     state: dict[str, str], backend: str,
                                                     tmp_path: Path) -> None:
    """Drops recorded by `fwtop watch --json`; the edit's preview says which of those packets
    would now be accepted; sending the same packets for real after the edit, the kernel
    agrees packet by packet."""
    top = topology(namespaces)
    ports = list(SPORTS)
    server(top, *ports)
    if backend == "nft":
        ns_run(top.fw, "nft", "-f", "-", input=(
            "table inet srv {\n chain input {\n  type filter hook input priority 0; "
            "policy accept;\n"
            f"  tcp dport {{ {ports[0]}, {ports[1]}, {ports[2]} }} log group 7\n"
            f"  tcp dport {{ {ports[0]}, {ports[1]} }} drop\n"
            f"  tcp dport {ports[1]} drop\n  tcp dport {ports[2]} drop\n }}\n}}\n"))
        target = ["--delete", f"inet:srv:input:{handles(top, 'inet', 'srv', 'input')[1]}"]
    else:
        ipt = ["ip", "netns", "exec", top.fw, "iptables-nft", "-A", "INPUT", "-p", "tcp", "-m",
               "multiport"]
        subprocess.run([*ipt, "--dports", f"{ports[0]},{ports[1]},{ports[2]}", "-j", "NFLOG",
                        "--nflog-group", "7"], check=True)
        subprocess.run([*ipt, "--dports", f"{ports[0]},{ports[1]}", "-j", "DROP"], check=True)
        for p in ports[1:]:
            ns_run(top.fw, "iptables-nft", "-A", "INPUT", "-p", "tcp", "--dport", str(p), "-j",
                   "DROP")
        target = ["--delete", f"ip:filter:INPUT:{handles(top, 'ip', 'filter', 'INPUT')[1]}"]

    # Record: fwtop watch while the client's SYNs are dropped (one SYN each: no retransmit).
    record = tmp_path / "drops.jsonl"
    with record.open("w") as out:
        watch = subprocess.Popen([sys.executable, "-m", "fwtop", "watch", "--netns", top.fw,
                                  "--json", "--duration", "30", "--conntrack-interval", "0"],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                 env=state)
        assert watch.stdout is not None
        first = watch.stdout.readline()  # the first line comes once the readers are open
        assert '"type"' in first, first
        out.write(first)
        for dport, sports in SPORTS.items():
            for sport in sports:
                assert send_syn(top, dport, sport) == "timeout"
        time.sleep(1.0)
        watch.send_signal(signal.SIGTERM)
        rest, _ = watch.communicate(timeout=30)
        out.write(rest)
    drops = [json.loads(ln) for ln in record.read_text().splitlines()
             if '"type": "drop"' in ln]
    assert len(drops) == sum(len(s) for s in SPORTS.values()), drops

    made = edit(state, top, *target, "--replay", str(record), "--no-conntrack",
                "--confirm-within", "60")
    imp = made["impact"]
    predicted = {(c["sport"], c["dport"]) for c in imp["changes"] if c["after"] == "accept"}
    assert imp["drops_seen"] == len(drops)
    assert imp["drops_now_accepted"] == len(SPORTS[ports[0]])
    assert imp["drops_still_dropped"] == len(drops) - len(SPORTS[ports[0]])
    assert any(f":{ports[0]}" in line and "accepted" in line for line in imp["summary"])

    kernel = {(sport, dport) for dport, sports in SPORTS.items() for sport in sports
              if send_syn(top, dport, sport) == "connected"}
    assert kernel == predicted
    fwtop(state, "temp", "revert", made["id"])


@pytest.mark.parametrize("backend", ["iptables-nft", "nft"])
def test_impact_names_accepted_flows_and_the_users_ssh_session(
        namespaces: Namespaces, state: dict[str, str], backend: str) -> None:
    """A policy drop with no rule for established traffic: the live connection in conntrack
    would be dropped, and the user's SSH session (SSH_CONNECTION) would be cut. (The ruleset
    uses conntrack, `ct state invalid drop`: without any ct rule the namespace tracks nothing.)"""
    if subprocess.run(["which", "conntrack"], capture_output=True).returncode != 0:
        pytest.skip("conntrack (conntrack-tools) not installed")
    top = topology(namespaces)
    server(top, PORT)
    if backend == "nft":
        ns_run(top.fw, "nft", "-f", "-", input=(
            "table inet srv {\n chain input {\n  type filter hook input priority 0; "
            "policy accept;\n  ct state invalid drop\n  tcp dport 1 accept\n }\n}\n"))
        spec = "inet:srv:input=drop"
    else:
        ns_run(top.fw, "iptables-nft", "-A", "INPUT", "-m", "conntrack", "--ctstate", "INVALID",
               "-j", "DROP")
        ns_run(top.fw, "iptables-nft", "-A", "INPUT", "-p", "tcp", "--dport", "1", "-j",
               "ACCEPT")
        spec = "filter:INPUT=drop"
    assert connect(top) == "connected"  # an accepted flow, in the conntrack table now
    env = dict(state, SSH_CONNECTION=f"{top.client_ip} 50022 {top.fw_ip} 22")
    proc = fwtop(env, "edit", "--netns", top.fw, "--policy", spec, "--confirm-within", "30",
                 "--dry-run", "--json")
    data = json.loads(proc.stdout)
    imp = data["impact"]
    assert data["dry_run"] is True
    assert imp["flows_now_dropped"] >= 1, imp
    assert imp["established_cut"] >= 1, imp
    assert any(g["dport"] == PORT for g in imp["dropped_groups"])
    assert imp["ssh"]["checked"] and imp["ssh"]["cut"], imp["ssh"]
    assert any(line.startswith("WARNING") and "SSH" in line for line in imp["summary"])
    assert journal(state) == []  # a dry run writes nothing
    # From outside the namespace the session is not this firewall's business.
    env = dict(state, SSH_CONNECTION="192.0.2.1 50022 192.0.2.2 22")
    data = json.loads(fwtop(env, "edit", "--netns", top.fw, "--policy", spec, "--dry-run",
                            "--json").stdout)
    assert data["impact"]["ssh"]["checked"] is False


def test_refusals_are_one_line(namespaces: Namespaces, state: dict[str, str]) -> None:
    top = setup(namespaces, "nft")
    ns_run(top.fw, "iptables-nft", "-A", "INPUT", "-p", "tcp", "--dport", "7", "-j", "DROP")
    ns_run(top.fw, "iptables-nft", "-N", "MINE")
    h = handles(top, "inet", "srv", "input")
    base = ["edit", "--netns", top.fw]
    cases = [
        ([*base, "--delete", "srv:input", "--yes"], "TABLE:CHAIN:HANDLE"),
        ([*base, "--delete", "srv:input:999", "--yes"], "no rule with handle 999"),
        ([*base, "--delete", "srv:input:x1", "--yes"], "neither a handle"),
        ([*base, "--delete", f"srv:input:{h[1]}", "--expect-text", "tcp dport 1 accept",
          "--yes"], "the rule moved"),
        ([*base, "--delete", f"srv:input:{h[1]}", "--confirm-within", "4000", "--yes"], "cap"),
        ([*base, "--delete", f"srv:input:{h[1]}", "--confirm-within", "1", "--yes"],
         "at least"),
        ([*base, "--insert", "tcp dport 1 accept; flush ruleset", "--chain", "srv:input",
          "--yes"], "';'"),
        ([*base, "--insert", "tcp dporte 1 accept", "--chain", "srv:input", "--yes"],
         "nft refused"),
        ([*base, "--insert", "-p tcp --dport 8", "--chain", "filter:INPUT", "--yes"],
         "no target"),
        ([*base, "--insert", "-p tcp --dport 8 -j NOWHERE", "--chain", "filter:INPUT",
          "--yes"], "NOWHERE"),
        ([*base, "--insert", "-j ACCEPT", "--chain", "filter:NOPE", "--yes"], "no chain"),
        ([*base, "--policy", "filter:MINE=drop", "--yes"], "not a base chain"),
        ([*base, "--policy", "srv:input=reject", "--yes"], "accept or drop"),
        ([*base, "--move", f"srv:input:{h[0]}", "--yes"], "--before"),
        ([*base, "--delete", "filter:INPUT:#1", "--yes"], "--expect-text"),
        (["temp", "confirm", "0123abcd"], "no edit 0123abcd"),
    ]
    before = everything(top)
    for argv, needle in cases:
        proc = fwtop(state, *argv, check=False)
        assert proc.returncode != 0, argv
        assert needle in proc.stderr and "Traceback" not in proc.stderr, (argv, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert everything(top) == before  # nothing was written
    assert [r for r in journal(state) if r["state"] not in ("removed",)] == []


def test_observe_collects_the_drops_it_previews(namespaces: Namespaces,
                                               state: dict[str, str]) -> None:
    """`--observe S`: drops seen live (NFLOG) for S seconds are what the preview replays."""
    top = topology(namespaces)
    ns_run(top.fw, "nft", "-f", "-", input=(
        "table inet srv {\n chain input {\n  type filter hook input priority 0; "
        f"policy accept;\n  tcp dport {PORT} log group 7\n  tcp dport {PORT} drop\n }}\n}}\n"))
    handle = handles(top, "inet", "srv", "input")[1]
    preview = subprocess.Popen(
        [sys.executable, "-m", "fwtop", "edit", "--netns", top.fw, "--delete",
         f"inet:srv:input:{handle}", "--observe", "4", "--no-conntrack", "--dry-run", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=state)
    time.sleep(1.5)  # the readers are open by then
    for sport in (42001, 42002):
        assert send_syn(top, PORT, sport) == "timeout"
    out, err = preview.communicate(timeout=60)
    assert preview.returncode == 0, err
    imp = json.loads(out)["impact"]
    assert imp["drops_seen"] == 2 and imp["drops_now_accepted"] == 2, imp
    assert any("observed" in s for s in imp["sources"])
