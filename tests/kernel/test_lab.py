"""The lab, for real: namespaces, the broken firewall's behaviour and counters, and a clean down.

Runs as root in throwaway namespaces with a unique prefix; a fixture always tears them down.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fwtop import lab as fwlab

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="`ip` (iproute2) not installed"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="`nft` (nftables) not installed"),
    pytest.mark.skipif(shutil.which("iptables-nft-restore") is None,
                       reason="`iptables-nft-restore` not installed"),
]

PREFIX = "fwt" + secrets.token_hex(3)


def sh(*args: str, check: bool = True) -> str:
    return subprocess.run(list(args), capture_output=True, text=True, check=check,
                          timeout=20).stdout


def in_ns(ns: str, *args: str) -> str:
    return sh("ip", "netns", "exec", ns, *args)


def netns_names() -> set[str]:
    return {line.split()[0] for line in sh("ip", "netns", "list").splitlines() if line.strip()}


def root_snapshot() -> tuple[str, str, set[str]]:
    """What the lab must never change in the root namespace."""
    links = {line.split()[0] for line in sh("ip", "-br", "link").splitlines() if line.strip()}
    return (sh("nft", "list", "ruleset"), Path("/proc/net/ip_tables_names").read_text(), links)


def ipt_counter(save: str, comment: str) -> int:
    for line in save.splitlines():
        if f'--comment "{comment}"' in line:
            m = re.match(r"\[(\d+):\d+\]", line)
            assert m, line
            return int(m.group(1))
    raise AssertionError(f"no rule with comment {comment!r} in:\n{save}")


def nft_counter(ns: str, family: str, table: str, comment: str) -> int:
    data = json.loads(in_ns(ns, "nft", "-j", "list", "table", family, table))
    for item in data["nftables"]:
        rule = item.get("rule")
        if rule and rule.get("comment") == comment:
            for expr in rule["expr"]:
                if "counter" in expr:
                    return int(expr["counter"]["packets"])
    raise AssertionError(f"no counted rule {comment!r} in {family} {table}")


def wait_for(pred, timeout: float = 6.0, step: float = 0.2) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


@pytest.fixture(scope="module")
def root_before() -> tuple[str, str, set[str]]:
    return root_snapshot()


@pytest.fixture(scope="module")
def lab(root_before: tuple[str, str, set[str]]) -> Iterator[fwlab.Lab]:
    try:
        # A higher rate than the default so the counters move within the test's few seconds.
        yield fwlab.up(PREFIX, rate=40.0, max_seconds=120)
    finally:
        fwlab.down(PREFIX)


def test_up_creates_the_three_namespaces(lab: fwlab.Lab) -> None:
    assert (lab.client_ns, lab.fw_ns, lab.backend_ns) == (
        f"{PREFIX}-client", f"{PREFIX}-fw", f"{PREFIX}-backend")
    assert {lab.client_ns, lab.fw_ns, lab.backend_ns} <= netns_names()
    assert fwlab.is_up(PREFIX)
    assert in_ns(lab.fw_ns, "sysctl", "-n", "net.ipv4.ip_forward").strip() == "1"
    addrs = in_ns(lab.fw_ns, "ip", "-br", "addr")
    assert "10.77.1.1/24" in addrs and "10.77.2.1/24" in addrs
    assert "10.77.1.2/24" in in_ns(lab.client_ns, "ip", "-br", "addr")
    assert "default via 10.77.2.1" in in_ns(lab.backend_ns, "ip", "route")
    state = json.loads(Path(lab.state_file).read_text())
    assert state["prefix"] == PREFIX and len(state["pids"]) == 3
    assert fwlab.current(PREFIX) == lab


def test_firewall_is_loaded_in_the_fw_namespace(lab: fwlab.Lab) -> None:
    ruleset = json.loads(in_ns(lab.fw_ns, "nft", "-j", "list", "ruleset"))["nftables"]
    tables = {(i["table"]["family"], i["table"]["name"]) for i in ruleset if "table" in i}
    assert {("ip", "filter"), ("ip", "fwlab_nat"), ("inet", "fwlab_filter")} <= tables
    chains = {c["name"]: c for i in ruleset if (c := i.get("chain")) and c["table"] == "filter"}
    assert chains["INPUT"]["policy"] == "drop" and chains["FORWARD"]["policy"] == "drop"

    save = in_ns(lab.fw_ns, "iptables-nft-save")
    order = re.findall(r'--comment "([^"]+)"', save)
    assert order.index("block scanners") < order.index("allow app")
    assert "--dport 9091" in save and "--dport 5432" not in save
    assert "NFLOG" in save and "fwlab-input-drop" in save and "fwlab-fwd-drop" in save

    if shutil.which("iptables-legacy-save") is not None:
        assert lab.legacy, lab.legacy_reason
    if lab.legacy:
        assert '"legacy: drop syslog"' in in_ns(lab.fw_ns, "iptables-legacy-save")


def test_broken_firewall_behaves_as_a_user_would_see_it(lab: fwlab.Lab) -> None:
    # The services are really there: from inside the fw host (lo is allowed) they answer.
    local = fwlab.probe(lab.fw_ns, [f"tcp:127.0.0.1:{p}" for p in (22, 8080, 5432, 9090)] + [
        f"tcp:{lab.backend_ip}:80"])
    assert set(local.values()) == {"open"}, local

    fw = lab.fw_client_ip
    seen = fwlab.probe(lab.client_ns, [f"tcp:{fw}:{p}" for p in (22, 8080, 5432, 8081, 9090)]
                       + [f"udp:{fw}:514"], timeout=1.0)
    assert seen == {
        f"tcp:{fw}:22": "open",
        f"tcp:{fw}:8080": "timeout",  # DROP before the ACCEPT
        f"tcp:{fw}:5432": "timeout",  # default DROP, no allow
        f"tcp:{fw}:8081": "timeout",  # DNAT'ed, FORWARD allows the pre-DNAT port only
        f"tcp:{fw}:9090": "timeout",  # allow says 9091
        f"udp:{fw}:514": "timeout" if lab.legacy else "open",  # legacy drop
    }


def test_traffic_moves_the_kernel_counters(lab: fwlab.Lab) -> None:
    def save() -> str:
        return in_ns(lab.fw_ns, "iptables-nft-save", "-c")

    assert wait_for(lambda: ipt_counter(save(), "block scanners") > 0)
    assert wait_for(lambda: nft_counter(lab.fw_ns, "inet", "fwlab_filter", "no ping") > 0)
    assert wait_for(
        lambda: nft_counter(lab.fw_ns, "ip", "fwlab_nat", "port forward to backend web") > 0)
    assert wait_for(lambda: nft_counter(lab.fw_ns, "inet", "fwlab_filter",
                                        "drop icmp unreachable (breaks PMTU discovery)") > 0)
    text = save()
    # The shadowed ACCEPT and the wrong-port allows never see a packet.
    assert ipt_counter(text, "allow app") == 0
    assert ipt_counter(text, "allow metrics") == 0
    assert ipt_counter(text, "allow port forward") == 0
    assert ipt_counter(text, "allow ssh") > 0


def test_root_namespace_untouched_while_up(lab: fwlab.Lab,
                                           root_before: tuple[str, str, set[str]]) -> None:
    assert root_snapshot() == root_before


def test_lab_processes_refuse_to_run_in_the_root_namespace(
        lab: fwlab.Lab, capsys: pytest.CaptureFixture[str]) -> None:
    # Arguments chosen so that, were the guard broken, nothing could be sent or opened anyway.
    assert fwlab.main(["traffic", "--prefix", PREFIX, "--target", lab.fw_client_ip,
                       "--tcp", "", "--udp", "", "--no-icmp"]) == 1
    assert "refusing to run outside the lab namespace" in capsys.readouterr().err
    assert fwlab.main(["serve", "--prefix", PREFIX, "--netns", lab.fw_ns, "--tcp", "",
                       "--max-seconds", "0.5"]) == 1
    assert "refusing to run outside the lab namespace" in capsys.readouterr().err
    assert fwlab.main(["probe", "tcp:not-an-ip:1"]) == 1
    assert "refusing to probe from outside the lab" in capsys.readouterr().err


def test_down_removes_every_trace(lab: fwlab.Lab, root_before: tuple[str, str, set[str]]) -> None:
    pids = json.loads(Path(lab.state_file).read_text())["pids"]
    assert pids and all(fwlab._alive(p) for p in pids)
    assert fwlab.down(PREFIX) is True
    assert not ({lab.client_ns, lab.fw_ns, lab.backend_ns} & netns_names())
    assert not any(fwlab._alive(p) for p in pids)
    assert not Path(lab.state_file).exists()
    assert not fwlab.is_up(PREFIX) and fwlab.current(PREFIX) is None
    assert root_snapshot() == root_before
    assert fwlab.down(PREFIX) is False  # nothing left: a no-op


def test_fixed_scenario_opens_everything(root_before: tuple[str, str, set[str]]) -> None:
    prefix = PREFIX + "f"
    try:
        fixed = fwlab.up(prefix, scenario="fixed", traffic=False)
        assert not fixed.legacy and fixed.traffic_pid is None
        fw = fixed.fw_client_ip
        seen = fwlab.probe(fixed.client_ns, [f"tcp:{fw}:{p}" for p in (22, 8080, 5432, 8081, 9090)]
                           + [f"udp:{fw}:514"])
        assert set(seen.values()) == {"open"}, seen
    finally:
        fwlab.down(prefix)
    assert not fwlab.is_up(prefix)
    assert root_snapshot() == root_before


def test_failed_up_cleans_up_what_it_created(monkeypatch: pytest.MonkeyPatch,
                                             root_before: tuple[str, str, set[str]]) -> None:
    prefix = PREFIX + "x"
    started: list[int] = []

    def fail(lab: fwlab.Lab) -> None:  # runs after the rules and listeners are up
        started.extend(lab.pids)
        raise RuntimeError("boom")

    broken = dataclasses.replace(fwlab.SCENARIOS["default"], name="broken", setup=fail)
    monkeypatch.setitem(fwlab.SCENARIOS, "broken", broken)
    try:
        with pytest.raises(fwlab.LabError, match="boom"):
            fwlab.up(prefix, scenario="broken")
        assert len(started) == 2
        assert not any(fwlab._alive(p) for p in started)
        assert not ({f"{prefix}-client", f"{prefix}-fw", f"{prefix}-backend"} & netns_names())
        assert not (fwlab.STATE_DIR / f"lab-{prefix}.json").exists()
        assert root_snapshot() == root_before
    finally:
        fwlab.down(prefix)


def test_bad_input_fails_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(fwlab.LabError, match="valid scenarios: conntrack-flood, default, fixed"):
        fwlab.up(PREFIX, scenario="nope")
    with pytest.raises(fwlab.LabError, match="rate"):
        fwlab.up(PREFIX, rate=5000)
    with pytest.raises(fwlab.LabError, match="prefix"):
        fwlab.up("Bad Prefix!")
    assert not fwlab.is_up(PREFIX)

    assert fwlab.main(["up", "--prefix", PREFIX, "--scenario", "nope"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown scenario 'nope'" in err


def test_traffic_refuses_targets_outside_the_lab() -> None:
    fwlab._check_target("10.77.1.1", "10.77.0.0/16")
    for target, supernet in (("8.8.8.8", "10.77.0.0/16"), ("10.78.0.1", "10.77.0.0/16"),
                             ("10.77.0.0", "10.77.0.0/16"), ("8.8.8.8", "8.8.0.0/16")):
        with pytest.raises(fwlab.LabError):
            fwlab._check_target(target, supernet)
