"""`fwtop trace`: real packets traced by the kernel (nftrace) beside fwtop's evaluation, and the
trace table gone with fwtop however it ends (the kernel removes an `owner` table with its
socket), SIGKILL included."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import Namespaces, needs, ns_run
from tests.kernel.explain_harness import Topology, send, topology

pytestmark = [pytest.mark.kernel, needs("ip", "nft", "iptables-nft-restore")]


def tables(ns: str) -> str:
    return ns_run(ns, "nft", "list", "tables").stdout


def start_trace(top: Topology, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "fwtop", "trace", "--netns", top.fw,
                             "--json", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 20
    while "fwtop_trace_" not in tables(top.fw):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the trace table never appeared"
        time.sleep(0.05)
    return proc


def finish(proc: subprocess.Popen[str]) -> tuple[int, dict[str, object]]:
    out, err = proc.communicate(timeout=60)
    assert out, err
    return proc.returncode, json.loads(out)


def test_trace_agrees_with_the_evaluator_on_rule_and_policy(namespaces: Namespaces) -> None:
    top = topology(namespaces)
    ns_run(top.fw, "iptables-nft-restore", input="*filter\n:INPUT DROP [0:0]\n"
           "-A INPUT -p udp --dport 7100 -j DROP\n-A INPUT -p udp --dport 7101 -j ACCEPT\n"
           "COMMIT\n")
    for port, kind in ((7100, "rule"), (7102, "policy"), (7101, "rule")):
        proc = start_trace(top, "--proto", "udp", "--src", top.client_ip, "--dst", top.fw_ip,
                           "--dport", str(port), "--timeout", "10")
        send(top, "udp", top.fw_ip, port, 45000 + port % 100, listen_ns=top.fw, wait=0.3)
        rc, report = finish(proc)
        packets = report["packets"]
        assert rc == 0 and isinstance(packets, list) and len(packets) == 1, report
        traced = packets[0]
        assert traced["agree"] is True, traced
        assert traced["kernel"]["decided_by"]["kind"] == kind
        assert traced["kernel"]["decided_by"]["chain"] == "INPUT"
        expected = "accept" if port == 7101 else "drop"
        assert traced["kernel"]["verdict"] == traced["fwtop"]["verdict"] == expected
    assert "fwtop_trace_" not in tables(top.fw)  # removed when each trace ended


def test_no_packet_means_exit_4_and_nothing_left(namespaces: Namespaces) -> None:
    top = topology(namespaces)
    proc = start_trace(top, "--proto", "udp", "--src", top.client_ip, "--dst", top.fw_ip,
                       "--dport", "7200", "--timeout", "1")
    rc, report = finish(proc)
    assert rc == 4 and report["packets"] == []
    assert "fwtop_trace_" not in tables(top.fw)


def test_sigkill_leaves_no_trace_table(namespaces: Namespaces) -> None:
    top = topology(namespaces)
    proc = start_trace(top, "--proto", "udp", "--src", top.client_ip, "--dst", top.fw_ip,
                       "--dport", "7300", "--timeout", "60")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 10
    while "fwtop_trace_" in tables(top.fw):
        assert time.monotonic() < deadline, "the kernel kept fwtop's trace table after SIGKILL"
        time.sleep(0.05)
