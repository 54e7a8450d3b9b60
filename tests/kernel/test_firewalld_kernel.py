"""Temporary allows and commit-confirmed edits through a real, confined firewalld: the zone
rejects a port, `fwtop explain` names firewalld's chain, `fwtop allow` asks firewalld for a timed
rich rule (a real TCP connect then passes, and fails again when firewalld's own timer fires),
revert and extend; a runtime edit reverted by the detached reverter, and a confirmed one written
to firewalld's permanent configuration. fwtop never writes firewalld's tables."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Namespaces, ns_run
from tests.kernel.explain_harness import CONNECT, SERVER, fwtop
from tests.kernel.firewalld_harness import ConfinedFirewalld, missing

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(missing() is not None, reason=missing() or "")]

PORTS = (8080, 8081, 8082, 8083)
FW_IP, CLIENT_IP = "10.88.0.1", "10.88.0.2"


@dataclass
class Lab:
    fwd: ConfinedFirewalld
    ns: str  # firewalld's namespace (the server)
    client: str
    iface: str  # the server's veth end

    def connect(self, port: int) -> str:
        return ns_run(self.client, sys.executable, "-c", CONNECT, FW_IP,
                      str(port)).stdout.strip()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    nss = Namespaces()
    fwd = ConfinedFirewalld(nss, tmp_path_factory.mktemp("firewalld"))
    server = None
    try:
        ns = fwd.start()
        client = nss.new("fwc")
        iface, _ = nss.veth(ns, client, f"{FW_IP}/24", f"{CLIENT_IP}/24")
        server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER,
                                   *map(str, PORTS)], stdin=subprocess.DEVNULL)
        time.sleep(0.3)
        yield Lab(fwd, ns, client, iface)
    finally:
        if server is not None and server.poll() is None:
            server.kill()
            server.wait(timeout=5)
        fwd.stop()
        nss.close()


@pytest.fixture
def env(lab: Lab, tmp_path: Path) -> Iterator[dict[str, str]]:
    state = tmp_path / "state"
    yield lab.fwd.env(dict(os.environ, FWTOP_STATE_DIR=str(state)))
    _kill_helpers(state)


def _kill_helpers(state: Path) -> None:
    """End this test's janitor and reverters (by pid from its own journal, checked)."""
    pids: list[int] = []
    pid_file = state / "janitor.pid"
    if pid_file.exists() and pid_file.read_text().strip().isdigit():
        pids.append(int(pid_file.read_text().strip()))
    journal = state / "journal.json"
    if journal.exists():
        pids += [r["pid"] for r in json.loads(journal.read_text())["records"] if r.get("pid")]
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if b"fwtop.service" in cmd:
            os.kill(pid, signal.SIGKILL)




def _journal(env: dict[str, str]) -> list[dict[str, object]]:
    path = Path(env["FWTOP_STATE_DIR"]) / "journal.json"
    records: list[dict[str, object]] = json.loads(path.read_text())["records"]
    return records


def _wait_for(what: str, ok: object, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ok():  # type: ignore[operator]
            return
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout} s")


def test_allow_through_firewalld_closes_by_firewalld_timeout(lab: Lab,
                                                             env: dict[str, str]) -> None:
    port = PORTS[0]
    assert lab.connect(port) == "rejected"  # the zone's target: reject
    ex = json.loads(fwtop(env, "explain", "--netns", lab.ns, "--proto", "tcp", "--src",
                          CLIENT_IP, "--dst", FW_IP, "--dport", str(port), "--iif", lab.iface,
                          "--json").stdout)
    assert ex["verdict"] == "reject"
    assert ex["rule"]["backend"] == "firewalld" and ex["rule"]["chain"] == "filter_IN_public"

    nft_before = ns_run(lab.ns, "nft", "list", "ruleset").stdout
    out = json.loads(fwtop(env, "allow", "--netns", lab.ns, "--proto", "tcp", "--src",
                           CLIENT_IP, "--dport", str(port), "--ttl", "8", "--json").stdout)
    assert out["backend"] == "firewalld" and out["zone"] == "public"
    rule = (f'rule family="ipv4" source address="{CLIENT_IP}/32" port port="{port}" '
            'protocol="tcp" accept')
    assert out["text"] == rule
    assert out["commands"] == [f"firewall-cmd --zone=public --add-rich-rule='{rule}' "
                               "--timeout=8s"]
    assert lab.fwd.cmd("--zone=public", "--list-rich-rules").stdout.split("\n")[0] == rule
    assert lab.connect(port) == "connected"
    # The only change in the kernel is firewalld's own rendering of the rich rule.
    nft_after = ns_run(lab.ns, "nft", "list", "ruleset").stdout
    assert "fwtop" not in nft_after and len(nft_after) > len(nft_before)
    listed = json.loads(fwtop(env, "temp", "list", "--json").stdout)
    assert [r["id"] for r in listed] == [out["id"]]
    # Nothing of fwtop's is needed for the hole to close: end its janitor now.
    _kill_helpers(Path(env["FWTOP_STATE_DIR"]))

    _wait_for("firewalld's timeout removes the rich rule",
              lambda: rule not in lab.fwd.cmd("--zone=public", "--list-rich-rules").stdout,
              out["expires_at"] - time.time() + 4)
    assert time.time() >= out["expires_at"] - 0.5
    assert lab.connect(port) == "rejected"
    assert json.loads(fwtop(env, "temp", "list", "--json").stdout) == []
    (rec,) = _journal(env)
    assert rec["state"] == "removed" and "firewalld had already removed it" in str(rec["note"])


def test_revert_and_extend_through_firewalld(lab: Lab, env: dict[str, str]) -> None:
    port = PORTS[1]
    out = json.loads(fwtop(env, "allow", "--netns", lab.ns, "--proto", "tcp", "--src",
                           CLIENT_IP, "--dport", str(port), "--ttl", "3", "--json").stdout)
    assert lab.connect(port) == "connected"
    ext = json.loads(fwtop(env, "temp", "extend", out["id"], "30", "--json").stdout)
    assert ext["expires_at"] > out["expires_at"] + 20
    time.sleep(max(0.0, out["expires_at"] - time.time()) + 1.5)
    assert lab.connect(port) == "connected"  # firewalld's first timer was cancelled
    fwtop(env, "temp", "revert", out["id"])
    assert out["text"] not in lab.fwd.cmd("--zone=public", "--list-rich-rules").stdout
    assert lab.connect(port) == "rejected"
    assert json.loads(fwtop(env, "temp", "list", "--json").stdout) == []


def test_allow_goes_before_a_reject_rich_rule_and_revert_keeps_it(lab: Lab,
                                                                   env: dict[str, str]) -> None:
    """A user's reject rich rule sits in the zone's _deny part: the allow gets a negative
    priority (the _pre part runs first); revert removes fwtop's rule only."""
    port = PORTS[3]
    rule = (f'rule family="ipv4" source address="{CLIENT_IP}/32" port port="{port}" '
            'protocol="tcp" reject')
    lab.fwd.cmd("--zone=public", f"--add-rich-rule={rule}")
    try:
        ex = json.loads(fwtop(env, "explain", "--netns", lab.ns, "--proto", "tcp", "--src",
                              CLIENT_IP, "--dst", FW_IP, "--dport", str(port), "--json").stdout)
        assert ex["rule"]["chain"] == "filter_IN_public_deny"
        out = json.loads(fwtop(env, "allow", "--netns", lab.ns, "--proto", "tcp", "--src",
                               CLIENT_IP, "--dport", str(port), "--ttl", "20",
                               "--json").stdout)
        assert out["text"].startswith('rule priority="-1" family="ipv4"')
        assert lab.connect(port) == "connected"
        again = fwtop(env, "allow", "--netns", lab.ns, "--proto", "tcp", "--src", CLIENT_IP,
                      "--dport", str(port), "--ttl", "20", check=False)
        assert again.returncode != 0 and "not dropped" in again.stderr
        fwtop(env, "temp", "revert", out["id"])
        # The user's rich rule rejects with port-unreachable (the zone itself with
        # admin-prohibited, "rejected"): the client sees connection refused again.
        assert lab.connect(port) == "refused"
        rich = lab.fwd.cmd("--zone=public", "--list-rich-rules").stdout.splitlines()
        assert rich == [rule]
    finally:
        lab.fwd.cmd("--zone=public", f"--remove-rich-rule={rule}", check=False)


def test_edit_reverted_by_the_detached_reverter(lab: Lab, env: dict[str, str]) -> None:
    port = PORTS[2]
    assert lab.connect(port) == "rejected"
    out = json.loads(fwtop(env, "edit", "--netns", lab.ns, "--insert", f"port={port}/tcp",
                           "--chain", "firewalld:public", "--confirm-within", "4",
                           "--json").stdout)
    assert out["state"] == "active" and out["backend"] == "firewalld"
    assert out["commands"] == [f"firewall-cmd --zone=public --add-port={port}/tcp"]
    assert lab.connect(port) == "connected"
    assert f"{port}/tcp" in lab.fwd.cmd("--zone=public", "--list-ports").stdout
    assert f"{port}/tcp" not in lab.fwd.cmd("--permanent", "--zone=public",
                                            "--list-ports").stdout
    # The journal is written once the reverter has made and checked the inverse change.
    _wait_for("the reverter reverts the edit",
              lambda: _journal(env)[0]["state"] != "active", out["deadline"] - time.time() + 6)
    (rec,) = _journal(env)
    assert rec["state"] == "reverted" and "deadline passed unconfirmed" in str(rec["note"])
    assert time.time() >= out["deadline"]
    assert f"{port}/tcp" not in lab.fwd.cmd("--zone=public", "--list-ports").stdout
    assert lab.connect(port) == "rejected"


def test_confirmed_edit_is_made_permanent(lab: Lab, env: dict[str, str]) -> None:
    assert "ssh" in lab.fwd.cmd("--permanent", "--zone=public", "--list-services").stdout
    out = json.loads(fwtop(env, "edit", "--netns", lab.ns, "--delete",
                           "firewalld:public:service=ssh", "--confirm-within", "20",
                           "--json").stdout)
    assert any("SSH" in w for w in out["warnings"])
    assert "ssh" not in lab.fwd.cmd("--zone=public", "--list-services").stdout
    fwtop(env, "temp", "confirm", out["id"])
    (rec,) = _journal(env)
    assert rec["state"] == "confirmed" and "--permanent --remove-service=ssh" in str(rec["note"])
    assert "ssh" not in lab.fwd.cmd("--permanent", "--zone=public", "--list-services").stdout
    # firewalld wrote it to its permanent configuration, in the private directory.
    xml = (lab.fwd.etc / "zones" / "public.xml").read_text()
    assert '<service name="dhcpv6-client"/>' in xml and 'name="ssh"' not in xml
    assert "ssh" not in lab.fwd.cmd("--zone=public", "--list-services").stdout


def test_refuses_a_firewalld_of_another_namespace(lab: Lab, env: dict[str, str]) -> None:
    """The bus reaches firewalld of lab.ns; editing the client's namespace through it would
    change the wrong firewall."""
    proc = fwtop(env, "edit", "--netns", lab.client, "--insert", "port=9/tcp", "--chain",
                 "firewalld:public", "--confirm-within", "5", "--json", check=False)
    assert proc.returncode != 0
    assert "another network namespace" in proc.stderr
    assert "9/tcp" not in lab.fwd.cmd("--zone=public", "--list-ports").stdout


def test_a_firewalld_reload_undoes_runtime_changes_and_fwtop_says_so(lab: Lab,
                                                                     env: dict[str, str]) -> None:
    """A reload puts the permanent configuration back: the edit and the temporary allow are
    gone early (the safe direction); fwtop's revert then finds nothing to undo and says why."""
    port = PORTS[2]
    edit = json.loads(fwtop(env, "edit", "--netns", lab.ns, "--insert", f"port={port}/tcp",
                            "--chain", "firewalld:public", "--confirm-within", "30",
                            "--json").stdout)
    allow = json.loads(fwtop(env, "allow", "--netns", lab.ns, "--proto", "tcp", "--src",
                             CLIENT_IP, "--dport", str(PORTS[1]), "--ttl", "30",
                             "--json").stdout)
    assert lab.connect(port) == "connected" and lab.connect(PORTS[1]) == "connected"
    lab.fwd.cmd("--reload")
    assert lab.connect(port) == "rejected" and lab.connect(PORTS[1]) == "rejected"
    fwtop(env, "temp", "revert", edit["id"])
    fwtop(env, "temp", "revert", allow["id"])
    notes = {r["id"]: (r["state"], str(r["note"])) for r in _journal(env)}
    assert notes[edit["id"]][0] == "reverted" and "already undone" in notes[edit["id"]][1]
    assert notes[allow["id"]] == ("removed", "firewalld had already removed it (its timeout, "
                                             "or a reload)")
    assert json.loads(fwtop(env, "temp", "list", "--json").stdout) == []


def test_firewalld_killed_the_hole_stays_and_fwtop_says_so(lab: Lab,
                                                           env: dict[str, str]) -> None:
    """The limit of firewalld's timeout, shown rather than hidden: the timer lives in the
    daemon, so a SIGKILLed firewalld leaves the rule in the kernel past its deadline; and
    firewalld 1.3, started again, does not flush the table it left (it lists no such rule,
    the kernel still has it) until a `--reload`. fwtop keeps it in `temp list` as a leftover
    saying so, and drops it once the kernel no longer accepts the flow. Last in the file: it
    kills and restarts the module's firewalld."""
    port, edited = PORTS[1], PORTS[2]
    edit = json.loads(fwtop(env, "edit", "--netns", lab.ns, "--insert", f"port={edited}/tcp",
                            "--chain", "firewalld:public", "--confirm-within", "60",
                            "--json").stdout)
    out = json.loads(fwtop(env, "allow", "--netns", lab.ns, "--proto", "tcp", "--src",
                           CLIENT_IP, "--dport", str(port), "--ttl", "3", "--json").stdout)
    _kill_helpers(Path(env["FWTOP_STATE_DIR"]))
    lab.fwd.kill_firewalld()
    time.sleep(max(0.0, out["expires_at"] - time.time()) + 1.0)
    assert lab.connect(port) == "connected"  # no daemon, no timer
    listed = json.loads(fwtop(env, "temp", "list", "--json").stdout)
    assert [(r["id"], r["state"]) for r in listed] == [(edit["id"], "active"),
                                                       (out["id"], "leftover")]
    assert "its rule stays in the kernel" in listed[1]["note"]

    lab.fwd.start_firewalld()
    assert out["text"] not in lab.fwd.cmd("--zone=public", "--list-rich-rules").stdout
    assert lab.connect(port) == "connected"  # the orphan in firewalld's old table
    (left,) = [r for r in json.loads(fwtop(env, "temp", "list", "--json").stdout)
               if r["id"] == out["id"]]
    assert left["state"] == "leftover" and "firewall-cmd --reload" in left["note"]
    assert "filter_IN_public_allow" in left["note"]
    revert = fwtop(env, "temp", "revert", out["id"], check=False)
    assert revert.returncode != 0 and "not reverted" in revert.stderr
    # The edit's port is gone from firewalld's runtime, not from the kernel: fwtop says so.
    assert lab.connect(edited) == "connected"
    fwtop(env, "temp", "revert", edit["id"])
    note = {r["id"]: str(r["note"]) for r in _journal(env)}[edit["id"]]
    assert "restarted since the edit" in note and "firewall-cmd --reload" in note

    lab.fwd.cmd("--reload")
    assert lab.connect(port) == "rejected" and lab.connect(edited) == "rejected"
    assert json.loads(fwtop(env, "temp", "list", "--json").stdout) == []
    assert {r["id"]: r["state"] for r in _journal(env)} == {edit["id"]: "reverted",
                                                            out["id"]: "removed"}
