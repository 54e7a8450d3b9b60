"""Packet capture against the real kernel: `fwtop watch --json --packets` on a firewall namespace
says which SYN went unanswered and which was refused (and why), its pcap opens in tcpdump, and
the capture socket's own PACKET_STATISTICS drops are reported, never hidden.

Two throwaway namespaces (client and fw, joined by a veth pair: tests/kernel/explain_harness);
all traffic stays between them and is a handful of packets, or a bounded burst.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fwtop.firewall.netns import resolve, run_in
from tests.conftest import Namespaces, needs, ns_run
from tests.kernel.explain_harness import SENDER, topology

pytestmark = [pytest.mark.kernel, needs("ip", "iptables-nft", "tcpdump")]

DROPPED, RESET, CLOSED, PROHIBITED = 8081, 8082, 8083, 8084

LISTENER = """
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(5)
print("ready", flush=True)
time.sleep(float(sys.argv[2]))
"""

UDP_BURST = """
import socket, sys
dst, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(count):
    s.sendto(b"fwtop-capture-burst", (dst, port))
"""


def watch_packets(fw: str, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fwtop", "watch", "--json", "--packets", "--netns", fw,
         "--stats-interval", "0.5", "--conntrack-interval", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = json.loads(proc.stdout.readline() or "null")
    assert first and first["type"] == "stats", proc.stderr.read() if proc.stderr else first
    capture = next(s for s in first["sources"] if s["source"] == "capture")
    assert capture["running"] and capture["mode"].startswith("tpacket_v3"), capture
    return proc


def stop(proc: subprocess.Popen[str]) -> list[dict[str, Any]]:
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout is not None and proc.stderr is not None
    # Not communicate(): it reads the raw pipe and would miss what readline() already buffered
    # (the capture's first lines come right behind the first stats line).
    out = proc.stdout.read()
    err = proc.stderr.read()
    proc.wait(timeout=30)
    assert proc.returncode == 0, err
    return [json.loads(line) for line in out.splitlines()]


def connect(client: str, dst: str, port: int, sport: int) -> str:
    """One SYN (the sender gives up before the first retransmission)."""
    return ns_run(client, sys.executable, "-c", SENDER, "tcp", dst, str(port), str(sport),
                  timeout=20).stdout.strip()


def test_watch_packets_says_unanswered_refused_and_why(namespaces: Namespaces,
                                                       tmp_path: Path) -> None:
    top = topology(namespaces)
    fw = top.fw
    ns_run(fw, "iptables-nft", "-A", "INPUT", "-p", "tcp", "--dport", str(DROPPED), "-j", "DROP")
    ns_run(fw, "iptables-nft", "-A", "INPUT", "-p", "tcp", "--dport", str(RESET), "-j",
           "REJECT", "--reject-with", "tcp-reset")
    ns_run(fw, "iptables-nft", "-A", "INPUT", "-p", "tcp", "--dport", str(PROHIBITED), "-j",
           "REJECT", "--reject-with", "icmp-admin-prohibited")
    # Something does listen behind the tcp-reset rule: the RST can only be the rule's.
    listener = subprocess.Popen(["ip", "netns", "exec", fw, sys.executable, "-c", LISTENER,
                                 str(RESET), "60"], stdout=subprocess.PIPE, text=True)
    assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
    pcap = tmp_path / "capture.pcap"
    proc = watch_packets(fw, "--flow-timeout", "1.5", "--pcap", str(pcap))
    try:
        assert connect(top.client, top.fw_ip, DROPPED, 41001) == "timeout"
        assert connect(top.client, top.fw_ip, RESET, 41002) == "refused"
        assert connect(top.client, top.fw_ip, CLOSED, 41003) == "refused"
        outcome = connect(top.client, top.fw_ip, PROHIBITED, 41004)
        assert "timeout" not in outcome, outcome  # the ICMP error ends the connect at once
        time.sleep(2.5)  # past the 1.5 s flow timeout, plus a batch
    finally:
        lines = stop(proc)
        listener.kill()
        listener.wait()

    flows = {f["dport"]: f for f in lines if f["type"] == "flow" and f["src"] == top.client_ip}
    dropped, reset, closed, prohibited = (flows[p] for p in (DROPPED, RESET, CLOSED, PROHIBITED))

    assert (dropped["state"], dropped["sport"], dropped["dst"]) == (
        "unanswered", 41001, top.fw_ip)
    assert "no answer to 1 SYN within 1.5 s" in dropped["reason"]
    assert dropped["listener"] is None

    assert reset["state"] == "refused"
    assert reset["listener"] is not None and reset["listener"]["pid"] == listener.pid
    assert reset["reason"].startswith(f"refused by a REJECT rule: {reset['listener']['name']}")
    assert f"listens on {RESET}, yet RST from {top.fw_ip} came back" in reset["reason"]

    assert closed["state"] == "refused" and closed["listener"] is None
    assert closed["reason"] == f"refused: nothing listens on {CLOSED} (RST from {top.fw_ip})"

    assert prohibited["state"] == "rejected"
    assert prohibited["reason"] == (f"rejected by a REJECT rule (ICMP communication "
                                    f"administratively prohibited from {top.fw_ip})")
    # Each flow is reported once.
    assert sorted(f["dport"] for f in lines if f["type"] == "flow"
                  and f["src"] == top.client_ip) == [DROPPED, RESET, CLOSED, PROHIBITED]

    packets = [p for p in lines if p["type"] == "packet"]
    syn = next(p for p in packets if p["dport"] == DROPPED)
    assert (syn["iface"], syn["dir"], syn["proto"], syn["src"], syn["tcp_flags"], syn["len"]) == (
        top.fw_if, "in", "tcp", top.client_ip, "SYN", 60)
    rst = next(p for p in packets if p["sport"] == CLOSED)
    assert (rst["dir"], rst["dst"], rst["dport"], rst["tcp_flags"]) == (
        "out", top.client_ip, 41003, "RST,ACK")
    assert not any(p["dport"] == DROPPED and p["dir"] == "out" for p in packets)

    final = next(s for s in lines[-1]["sources"] if s["source"] == "capture")
    assert lines[-1]["type"] == "stats"
    assert final["kernel_drops"] == 0 and final["skipped"] == 0 and final["shed"] == 0
    # The kernel's count may run a packet or two ahead (link-local chatter after the last read).
    assert 0 <= final["kernel_packets"] - final["received"] <= 3
    assert final["decoded"] == len(packets)

    # The pcap opens in tcpdump and holds every packet the capture read.
    read = subprocess.run(["tcpdump", "-n", "-r", str(pcap)], capture_output=True, text=True,
                          timeout=30)
    assert read.returncode == 0, read.stderr
    assert len(read.stdout.splitlines()) == final["pcap_written"] == final["received"]
    assert f"{top.client_ip}.41001 > {top.fw_ip}.{DROPPED}: Flags [S]" in read.stdout


def test_capture_filter_keeps_only_matching_packets(namespaces: Namespaces) -> None:
    top = topology(namespaces)
    proc = watch_packets(top.fw, "--capture-filter", f"tcp port {CLOSED}", "--flow-timeout", "1")
    try:
        connect(top.client, top.fw_ip, CLOSED, 42001)
        connect(top.client, top.fw_ip, CLOSED + 10, 42002)
        time.sleep(0.6)
    finally:
        lines = stop(proc)
    packets = [p for p in lines if p["type"] == "packet"]
    assert {(p["sport"], p["dport"]) for p in packets} == {(42001, CLOSED), (CLOSED, 42001)}
    final = next(s for s in lines[-1]["sources"] if s["source"] == "capture")
    assert final["capture_filter"] == f"tcp port {CLOSED}" and final["received"] == 2


def test_bad_capture_filter_is_one_line() -> None:
    proc = subprocess.run([sys.executable, "-m", "fwtop", "watch", "--json", "--packets",
                           "--capture-filter", "tcp port banana"], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "bad capture filter" in proc.stderr


def test_kernel_drops_are_reported_not_hidden(namespaces: Namespaces) -> None:
    """A reader that does not keep up (a 16 KiB ring nobody reads) loses packets in the kernel:
    PACKET_STATISTICS says how many, and every packet is either received or counted dropped."""
    from fwtop.sources.capture import CaptureReader

    top = topology(namespaces)
    ns = resolve(top.fw)
    reader = run_in(ns, lambda: CaptureReader(iface=top.fw_if, capture_filter="udp port 9999",
                                              block_size=4096, block_nr=4, retire_ms=1000))
    try:
        ns_run(top.client, sys.executable, "-c", UDP_BURST, top.fw_ip, "9999", "3000")
        time.sleep(0.3)
        received = 0
        for _ in range(50):
            got = reader.read_fields()
            received += len(got)
            if not got and received:
                break
            time.sleep(0.05)
        stats = reader.stats()
    finally:
        reader.close()
    assert stats.kernel_drops > 0, stats
    # Reading a full ring, the reader was behind too: what it did not decode it counted.
    assert stats.decoded == received
    assert stats.received == stats.decoded + stats.skipped + stats.not_ip
    assert stats.received + stats.kernel_drops == stats.kernel_packets == 3000, stats


def test_recv_mode_counts_the_same(namespaces: Namespaces) -> None:
    from fwtop.sources.capture import CaptureReader

    top = topology(namespaces)
    reader = run_in(resolve(top.fw), lambda: CaptureReader(
        iface=top.fw_if, capture_filter="udp port 9999", ring=False))
    try:
        assert reader.mode == "recv"
        ns_run(top.client, sys.executable, "-c", UDP_BURST, top.fw_ip, "9999", "500")
        time.sleep(0.2)
        events = reader.read(max_packets=10_000)
        stats = reader.stats()
    finally:
        reader.close()
    assert len(events) == stats.received == stats.kernel_packets == 500
    assert {(e.proto, e.dst, e.dport, e.iface, e.dir) for e in events} == {
        ("udp", top.fw_ip, 9999, top.fw_if, "in")}
    assert stats.kernel_drops == 0


def test_raw_bytes_of_recent_packets_are_kept(namespaces: Namespaces) -> None:
    from fwtop.service.pcap import dissect
    from fwtop.sources.capture import CaptureReader

    top = topology(namespaces)
    reader = run_in(resolve(top.fw), lambda: CaptureReader(iface=top.fw_if,
                                                           capture_filter="udp port 9999"))
    try:
        ns_run(top.client, sys.executable, "-c", UDP_BURST, top.fw_ip, "9999", "3")
        deadline = time.monotonic() + 5
        events = []
        while len(events) < 3 and time.monotonic() < deadline:
            events += reader.read(timeout=0.2)
        raw = reader.raw(events[-1].seq)
    finally:
        reader.close()
    assert raw is not None
    frame, wire_len, link = raw
    assert wire_len == len(frame) == 14 + 20 + 8 + len("fwtop-capture-burst")
    text = dissect(frame, link)
    assert "###[ UDP ]###" in text and "dport     = 9999" in text
    assert socket.inet_aton(top.fw_ip).hex(" ")[:5] in text  # the hex dump is there too


def test_capture_that_cannot_start_says_why(namespaces: Namespaces) -> None:
    fw = namespaces.new("cf")
    proc = subprocess.run([sys.executable, "-m", "fwtop", "watch", "--json", "--packets",
                           "--netns", fw, "--iface", "nosuch0", "--duration", "1",
                           "--conntrack-interval", "0"], capture_output=True, text=True,
                          timeout=60)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 1  # packets were asked for and the capture never ran
    assert lines[0]["type"] == "stats" and lines[-1]["type"] == "stats"
    capture = next(s for s in lines[0]["sources"] if s["source"] == "capture")
    assert not capture["running"]
    assert capture["off_reason"] == "packet capture: no interface 'nosuch0' here (see `ip link`)"
    assert [x["message"] for x in lines if x["type"] == "error"] == [capture["off_reason"]]


def test_ipv6_and_udp_flows(namespaces: Namespaces) -> None:
    top = topology(namespaces, ipv6=True)
    assert top.client_ip6 is not None and top.fw_ip6 is not None
    ns_run(top.fw, "iptables-nft", "-A", "INPUT", "-p", "udp", "--dport", "9101", "-j", "DROP")
    proc = watch_packets(top.fw, "--flow-timeout", "1")
    try:
        assert connect(top.client, top.fw_ip6, CLOSED, 43001) == "refused"
        for port, sport in ((9101, 43002), (9102, 43003)):
            ns_run(top.client, sys.executable, "-c", SENDER, "udp", top.fw_ip, str(port),
                   str(sport))
        time.sleep(1.8)
    finally:
        lines = stop(proc)
    flows = {f["sport"]: f for f in lines if f["type"] == "flow"}
    v6 = flows[43001]
    assert (v6["family"], v6["state"], v6["src"], v6["dst"], v6["listener"]) == (
        "ip6", "refused", top.client_ip6, top.fw_ip6, None)
    assert v6["reason"] == f"refused: nothing listens on {CLOSED} (RST from {top.fw_ip6})"
    dropped, closed = flows[43002], flows[43003]
    assert (dropped["state"], dropped["dport"]) == ("unanswered", 9101)
    assert dropped["reason"].startswith("no reply within 1 s to 1 datagram")
    assert (closed["state"], closed["icmp_type"], closed["icmp_code"]) == ("rejected", 3, 3)
    assert closed["reason"] == (f"rejected: nothing listens on 9102 (ICMP port unreachable "
                                f"from {top.fw_ip})")
