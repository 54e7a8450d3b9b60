"""Packet capture benchmark: fwtop's capture path against `tcpdump -w /dev/null` on the same
UDP blast between two throwaway namespaces, in one run.

    .venv/bin/python benchmarks/bench_capture.py --duration 10 --modes ring,recv
    .venv/bin/python benchmarks/bench_capture.py --duration 60 --modes ring   # RSS after 60 s

Layout: namespaces S (sender) and R (receiver) joined by a veth pair; in R an iptables-nft rule
drops the blast (UDP to port 9), so nothing answers and only the taps see the packets. In R, at
the same time: `tcpdump -i IF -w /dev/null` (count from its exit summary) and fwtop's capture
path as a separate process (CaptureStream: the TPACKET_V3 ring or plain recv, every packet
through the flow table, 200 ms batches handed to a callback that only counts). The sender is
`--senders` processes in S, each a tight `send()` loop on a connected UDP socket, bounded by
`--duration`. Everything is torn down at the end, whatever happens.

Reported: packets sent (sum of the senders' counts) and pps, the receiving interface's own rx
counter, tcpdump's captured / dropped-by-kernel counts, fwtop's received / decoded / sampled
(skipped) / kernel drops, the ratio fwtop received / tcpdump captured, CPU of each receiver as a
share of one CPU, and fwtop's RSS (every 10 s, and at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PORT = 9


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=60)


def ns(name: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", name, *argv, check=check)


# --- children -----------------------------------------------------------------------------


def child_sender(dst: str, duration: float, payload: int, rate: float, flows: int) -> None:
    """Flat out (`rate` 0), or paced: every millisecond, what the schedule says is due.
    `flows` sockets (distinct source ports) take turns, 100 packets each."""
    socks = []
    for _ in range(flows):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        s.connect((dst, PORT))
        socks.append(s)
    data = b"x" * payload
    turn = 0
    send = socks[0].send
    sent = errors = 0
    start = time.monotonic()
    end = start + duration
    burst = 1000
    while (now := time.monotonic()) < end:
        if rate > 0:
            burst = int((now - start) * rate) - sent - errors
            if burst <= 0:
                time.sleep(0.0005)
                continue
        for i in range(burst):
            if flows > 1 and not i % 100:
                turn = (turn + 1) % flows
                send = socks[turn].send
            try:
                send(data)
            except OSError:
                errors += 1
                continue
            sent += 1
    print(json.dumps({"sent": sent, "errors": errors}), flush=True)


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def child_reader(mode: str, capture_filter: str | None, profile: str | None) -> None:
    sys.path.insert(0, str(ROOT))
    from fwtop.service.capture import CaptureBatch, CaptureConfig, CaptureStream

    totals = {"batches": 0, "packets_handed": 0, "flows": 0, "shed": 0}
    last: list[CaptureBatch] = []
    errors: list[str] = []

    def on_batch(b: CaptureBatch) -> None:
        totals["batches"] += 1
        totals["packets_handed"] += len(b.packets)
        totals["flows"] += len(b.flows)
        totals["shed"] += b.shed
        last[:] = [b]

    cfg = CaptureConfig(ring=(mode == "ring"), capture_filter=capture_filter)
    stream = CaptureStream(cfg, on_batch, errors.append)
    if profile:
        import cProfile

        prof = cProfile.Profile()
        run = stream._run

        def profiled() -> None:
            prof.enable()
            try:
                run()
            finally:
                prof.disable()
                prof.dump_stats(profile)

        stream._thread = threading.Thread(target=profiled, daemon=True)
    stream.start()
    while not last and not errors:
        time.sleep(0.05)
    print(json.dumps({"ready": True, "mode": last[0].stats.mode if last else None,
                      "errors": errors}), flush=True)
    rss: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(10.0):
            rss.append(_rss_kb())

    threading.Thread(target=sample, daemon=True).start()
    t0 = time.monotonic()
    sys.stdin.readline()  # the parent says stop
    stop.set()
    stream.stop()
    wall = time.monotonic() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    st = last[0].stats if last else None
    print(json.dumps({
        "stats": st.to_json() if st else None, "totals": totals, "errors": errors,
        "cpu_s": ru.ru_utime + ru.ru_stime, "wall_s": wall, "rss_kb": _rss_kb(),
        "rss_samples_kb": rss, "maxrss_kb": ru.ru_maxrss,
        "flow_table": last[0].flow_stats.flows if last else None,
    }), flush=True)


# --- the run --------------------------------------------------------------------------------


def _proc_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rx_packets(netns: str, iface: str) -> int:
    data = json.loads(ns(netns, "ip", "-j", "-s", "link", "show", iface).stdout)
    return int(data[0]["stats64"]["rx"]["packets"])


def _tcpdump_pid(wrapper: subprocess.Popen[str]) -> int:
    """`ip netns exec` execs tcpdump in place, so the wrapper's pid is tcpdump's."""
    return wrapper.pid


def run_once(mode: str, duration: float, senders: int, payload: int,
             capture_filter: str | None, rate: float, profile: str | None,
             flows: int = 1) -> dict[str, Any]:
    tag = secrets.token_hex(3)
    s_ns, r_ns = f"fwbs{tag}", f"fwbr{tag}"
    s_if, r_if = f"vbs{tag}", f"vbr{tag}"
    net = 10 + secrets.randbelow(200)
    procs: list[subprocess.Popen[str]] = []
    sh("ip", "netns", "add", s_ns)
    sh("ip", "netns", "add", r_ns)
    try:
        ns(s_ns, "ip", "link", "add", s_if, "type", "veth", "peer", "name", r_if,
           "netns", r_ns)
        ns(s_ns, "ip", "addr", "add", f"10.62.{net}.1/24", "dev", s_if)
        ns(r_ns, "ip", "addr", "add", f"10.62.{net}.2/24", "dev", r_if)
        for n, i in ((s_ns, s_if), (r_ns, r_if)):
            ns(n, "ip", "link", "set", i, "up")
            ns(n, "ip", "link", "set", "lo", "up")
        ns(r_ns, "iptables-nft", "-A", "INPUT", "-p", "udp", "--dport", str(PORT), "-j", "DROP")
        dst = f"10.62.{net}.2"
        # Resolve the neighbour first so the blast is all UDP.
        ns(s_ns, "ping", "-c", "1", "-W", "1", dst, check=False)

        tcpdump = subprocess.Popen(["ip", "netns", "exec", r_ns, "tcpdump", "-i", r_if,
                                    "-w", "/dev/null", *( [capture_filter] if capture_filter
                                                           else [])],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(tcpdump)
        reader = subprocess.Popen(["ip", "netns", "exec", r_ns, sys.executable, __file__,
                                   "--child-reader", "--mode", mode,
                                   *(["--filter", capture_filter] if capture_filter else []),
                                   *(["--profile", profile] if profile else [])],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(reader)
        assert reader.stdout is not None and reader.stdin is not None
        ready = json.loads(reader.stdout.readline())
        assert tcpdump.stderr is not None
        line = tcpdump.stderr.readline()  # "listening on ..."
        assert "listening" in line, line
        rx0 = _rx_packets(r_ns, r_if)
        t0 = time.monotonic()
        sender_procs = [subprocess.Popen(
            ["ip", "netns", "exec", s_ns, sys.executable, __file__, "--child-sender",
             "--dst", dst, "--duration", str(duration), "--payload", str(payload),
             "--rate", str(rate / senders), "--flows", str(flows)],
            stdout=subprocess.PIPE, text=True) for _ in range(senders)]
        procs.extend(sender_procs)
        sent = 0
        for p in sender_procs:
            out, _ = p.communicate(timeout=duration + 60)
            sent += json.loads(out.strip().splitlines()[-1])["sent"]
        send_wall = time.monotonic() - t0
        time.sleep(1.0)  # let both readers drain
        rx = _rx_packets(r_ns, r_if) - rx0
        td_cpu = _proc_cpu_s(_tcpdump_pid(tcpdump))
        td_wall = time.monotonic() - t0
        tcpdump.send_signal(signal.SIGINT)
        _, err = tcpdump.communicate(timeout=30)
        summary = line + err
        reader.stdin.write("stop\n")
        reader.stdin.flush()
        result = json.loads(reader.stdout.readline())
        reader.wait(timeout=30)
        td: dict[str, int] = {}
        for ln in summary.splitlines():
            parts = ln.split()
            if len(parts) >= 3 and parts[1] == "packets":
                td[" ".join(parts[2:])] = int(parts[0])
        st = result["stats"]
        return {
            "mode": ready["mode"], "target_pps": rate or "max",
            "duration_s": round(send_wall, 2), "senders": senders,
            "payload": payload, "flows": flows * senders, "sent": sent,
            "pps": round(sent / send_wall),
            "rx_iface": rx, "tcpdump_captured": td.get("captured"),
            "tcpdump_kernel_drops": td.get("dropped by kernel"),
            "tcpdump_cpu": round(td_cpu / td_wall, 3),
            "fwtop_received": st["received"], "fwtop_decoded": st["decoded"],
            "fwtop_skipped": st["skipped"], "fwtop_kernel_drops": st["kernel_drops"],
            "fwtop_kernel_packets": st["kernel_packets"],
            "ratio": round(st["received"] / td["captured"], 4) if td.get("captured") else None,
            "fwtop_cpu": round(result["cpu_s"] / result["wall_s"], 3),
            "fwtop_rss_mb": round(result["rss_kb"] / 1024, 1),
            "fwtop_rss_samples_mb": [round(x / 1024, 1) for x in result["rss_samples_kb"]],
            "fwtop_maxrss_mb": round(result["maxrss_kb"] / 1024, 1),
            "handed_on": result["totals"]["packets_handed"], "shed": result["totals"]["shed"],
            "flow_events": result["totals"]["flows"],
            "errors": result["errors"],
        }
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        sh("ip", "netns", "del", s_ns, check=False)
        sh("ip", "netns", "del", r_ns, check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--senders", type=int, default=1)
    ap.add_argument("--payload", type=int, default=18)
    ap.add_argument("--modes", default="ring")
    ap.add_argument("--filter", default=None)
    ap.add_argument("--rates", default="0",
                    help="comma-separated target rates in packets/s (0: as fast as it goes)")
    ap.add_argument("--profile", default=None, help="cProfile the reader thread to this file")
    ap.add_argument("--flows", type=int, default=1,
                    help="UDP flows (source ports) per sender, taking turns (default 1)")
    ap.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--child-sender", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child-reader", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dst", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="ring", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_sender:
        child_sender(args.dst, args.duration, args.payload, args.rate, args.flows)
        return
    if args.child_reader:
        child_reader(args.mode, args.filter, args.profile)
        return
    if os.geteuid() != 0:
        sys.exit("bench_capture: run as root (namespaces, packet sockets)")
    if args.duration <= 0 or args.duration > 120 or not 1 <= args.senders <= 4 or \
            not 1 <= args.flows <= 10_000:
        sys.exit("bench_capture: --duration 0-120 s, --senders 1-4, --flows 1-10000")
    for _ in range(args.repeat):
        for rate in (float(r) for r in args.rates.split(",")):
            for mode in args.modes.split(","):
                print(json.dumps(run_once(mode, args.duration, args.senders, args.payload,
                                          args.filter, rate, args.profile, args.flows)),
                      flush=True)


if __name__ == "__main__":
    main()
