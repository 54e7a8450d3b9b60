"""Benchmark: NFLOG drop events at a sustained rate, sender to fwtop's reader, in namespaces.

Run as root:

    .venv/bin/python benchmarks/bench_nflog.py [--rate 50000] [--duration 10]
        [--qthresh auto,1,16,64] [--timeout-cs 1] [--rates 1000,20000] [--profile]

For each (rate, qthresh) it builds two throwaway network namespaces joined by a veth pair (always
deleted), loads `udp dport 9000-9015 counter log group 20 prefix "bench" drop` in the receiver,
and starts two processes:

* the sender, in the peer namespace: a raw IPv4 socket that paces UDP datagrams at the rate
  (checked every millisecond), each carrying its sequence number and time.monotonic_ns() in the
  payload, with the sequence number also spelled by its ports (sport 1024-65535, dport
  9000-9015) so the reader can match an event to its send time from the DropEvent alone;
  CLOCK_MONOTONIC is shared by all namespaces;
* the reader, in the receiver namespace: `NflogReader([20], qthresh=Q, timeout_cs=T)` (Q
  `auto` is fwtop's default, qthresh=None: adaptive) in a
  select() loop, `read(max_events=64)`, stamping every returned batch with time.monotonic_ns().

After the run the reader drains its socket, then one marker datagram is sent, so that sequence
numbers reveal losses at the very tail of the burst too (a gap is only seen by the next message
of the group). Reported: packets sent and the achieved rate, events received, lost as
fwtop counted it (NFULA_SEQ gaps plus unexplained ENOBUFS), the kernel's counter of the rule,
unaccounted = counter - (received + lost) (must be 0), latency send -> event decoded
(p50/p99/max over received events), the reader's CPU% (user+system over the run, of one CPU) and
RSS. With --profile the reader also runs under cProfile and the share of time in recv syscalls
versus parsing is printed.
"""

from __future__ import annotations

import argparse
import array
import ctypes
import json
import os
import platform
import secrets
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLONE_NEWNET = 0x40000000
GROUP = 20
PORTS_PER_DPORT = 65536 - 1024
DPORT_BASE = 9000
SRC, DST = "10.61.200.1", "10.61.200.2"
MARKER_SEQ = PORTS_PER_DPORT * 16 - 1  # the last (sport, dport) pair: never a burst packet


def seq_ports(seq: int) -> tuple[int, int]:
    return 1024 + seq % PORTS_PER_DPORT, DPORT_BASE + seq // PORTS_PER_DPORT


def enter_netns(name: str) -> None:
    """Move this (still single-threaded) process into the namespace."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
    finally:
        os.close(fd)


def ns_run(ns: str, *argv: str, stdin: str | None = None) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], input=stdin, text=True,
                          check=True, capture_output=True, timeout=60).stdout


# --- sender process ---------------------------------------------------------------------------


def child_sender(ns: str, rate: int, duration: float, out: str) -> None:
    enter_netns(ns)
    total = int(rate * duration)
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    ip_udp = struct.Struct("!BBHHHBBH4s4sHHHHQQ")
    src, dst = socket.inet_aton(SRC), socket.inet_aton(DST)
    pkt = bytearray(ip_udp.size)
    pack_into = ip_udp.pack_into
    send = sock.sendto
    addr = (DST, 0)
    clock = time.monotonic_ns
    sent_ns = array.array("q", bytes(8 * (total + 1)))
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    sys.stdin.readline()  # the reader is up: go
    start = clock()
    i = 0
    while i < total:
        due = min(total, (clock() - start) * rate // 1_000_000_000 + 1)
        while i < due:
            sport, dport = seq_ports(i)
            now = clock()
            # IPv4 (kernel fills checksum), UDP checksum 0 (none), payload: seq, send time.
            pack_into(pkt, 0, 0x45, 0, ip_udp.size, 0, 0, 64, 17, 0, src, dst, sport, dport,
                      ip_udp.size - 20, 0, i, now)
            try:
                send(pkt, addr)
            except OSError:
                # A full transmit queue: the packet never left, so it is not in any count.
                continue
            sent_ns[i] = now
            i += 1
        if i < total:
            time.sleep(0.001 - ((clock() - start) % 1_000_000) / 1e9)
    elapsed = (clock() - start) / 1e9
    with open(out, "wb") as fh:
        sent_ns[:total].tofile(fh)
    print(json.dumps({"sent": total, "elapsed": elapsed}), flush=True)


def send_marker(ns: str) -> None:
    sport, dport = seq_ports(MARKER_SEQ)
    code = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            f"s.bind(('{SRC}', {sport})); s.sendto(b'marker', ('{DST}', {dport}))")
    subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], check=True,
                   timeout=30)


# --- reader process ---------------------------------------------------------------------------


def child_reader(ns: str, qthresh: int | None, timeout_cs: int, out: str,
                 profile: bool) -> None:
    enter_netns(ns)
    from fwtop.core.events import DropEvent
    from fwtop.sources.nflog import NflogReader

    reader = NflogReader([GROUP], copy_range=128, qthresh=qthresh, timeout_cs=timeout_cs)
    max_q = 0
    seqs = array.array("q")
    done_ns = array.array("q")
    clock = time.monotonic_ns
    stdin = sys.stdin.fileno()
    sys.stdout.write("READY\n")
    sys.stdout.flush()

    def record(events: list[DropEvent]) -> None:
        now = clock()
        for ev in events:
            seqs.append(((ev.dport or 0) - DPORT_BASE) * PORTS_PER_DPORT + (ev.sport or 0) - 1024)
            done_ns.append(now)

    def drain() -> None:
        """Read until the socket has been quiet for 0.2 s."""
        while events := reader.read(max_events=64, timeout=0.2):
            record(events)

    def loop() -> None:
        nonlocal max_q
        read = reader.read
        while True:
            ready, _, _ = select.select([reader, stdin], [], [], 1.0)
            if reader in ready:
                record(read(max_events=64))
                max_q = max(max_q, *reader.queue_thresholds().values())
            elif stdin in ready:
                command = os.read(stdin, 64).decode().strip()
                drain()
                if command == "stop":
                    return
                sys.stdout.write("DRAINED\n")
                sys.stdout.flush()

    prof_text = None
    if profile:
        import cProfile
        import io
        import pstats

        # CPU time, not wall time: time blocked in select() is not work.
        prof = cProfile.Profile(time.process_time)
        prof.runcall(loop)
        buf = io.StringIO()
        stats = pstats.Stats(prof, stream=buf)
        total = stats.total_tt  # type: ignore[attr-defined]
        shares: dict[str, float] = {}
        for (_file, _line, name), row in stats.stats.items():  # type: ignore[attr-defined]
            shares[name] = shares.get(name, 0.0) + row[2]  # tottime
        prof_text = {k: round(v / total * 100, 1) for k, v in
                     sorted(shares.items(), key=lambda kv: -kv[1])[:8]}
    else:
        loop()
    st = reader.stats()
    usage = os.times()
    rss = psutil.Process().memory_info().rss
    with open(out, "wb") as fh:
        seqs.tofile(fh)
        done_ns.tofile(fh)
    print(json.dumps({"received": st.received, "lost": st.lost, "malformed": st.malformed,
                      "detail": st.detail, "events": len(seqs), "max_qthresh": max_q,
                      "cpu": usage.user + usage.system,
                      "rss": rss, "profile": prof_text}), flush=True)
    reader.close()


# --- orchestration ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    rate: int
    qthresh: str
    timeout_cs: int
    sent: int
    send_rate: float
    received: int
    lost: int
    malformed: int
    kernel: int
    unaccounted: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    cpu_pct: float
    cpu_us_per_event: float
    rss_mb: float
    profile: dict[str, float] | None


def percentile(sorted_vals: list[int], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    idx = min(len(sorted_vals) - 1, int(q * len(sorted_vals)))
    return sorted_vals[idx] / 1e6


def run_one(rate: int, duration: float, qthresh: str, timeout_cs: int, profile: bool) -> Row:
    tag = secrets.token_hex(3)
    sender_ns, recv_ns = f"fwtbnfs{tag}", f"fwtbnfr{tag}"
    procs: list[subprocess.Popen[str]] = []
    tmp = tempfile.mkdtemp(prefix="fwtop-bench-nflog-")
    try:
        for ns in (sender_ns, recv_ns):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            ns_run(ns, "ip", "link", "set", "lo", "up")
        ns_run(sender_ns, "ip", "link", "add", "bs0", "type", "veth", "peer", "name", "br0",
               "netns", recv_ns)
        ns_run(sender_ns, "ip", "addr", "add", f"{SRC}/24", "dev", "bs0")
        ns_run(recv_ns, "ip", "addr", "add", f"{DST}/24", "dev", "br0")
        ns_run(sender_ns, "ip", "link", "set", "bs0", "up")
        ns_run(recv_ns, "ip", "link", "set", "br0", "up")
        ns_run(recv_ns, "nft", "-f", "-", stdin=f"""table inet bench {{
            chain input {{
                type filter hook input priority 0; policy accept;
                udp dport {DPORT_BASE}-{DPORT_BASE + 15} counter log group {GROUP} \\
                    prefix "bench" drop
            }}
        }}
        """)
        # Neighbour resolution before the clock starts.
        ns_run(sender_ns, "ip", "neigh", "replace", DST, "lladdr",
               ns_run(recv_ns, "cat", "/sys/class/net/br0/address").strip(), "dev", "bs0")
        me = [sys.executable, str(Path(__file__).resolve())]
        reader = subprocess.Popen(
            [*me, "--_reader", recv_ns, "--qthresh", qthresh, "--timeout-cs",
             str(timeout_cs), "--_out", f"{tmp}/reader.bin",
             *(["--profile"] if profile else [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(reader)
        assert reader.stdout is not None and reader.stdin is not None
        assert reader.stdout.readline().strip() == "READY"
        sender = subprocess.Popen(
            [*me, "--_sender", sender_ns, "--rate", str(rate), "--duration", str(duration),
             "--_out", f"{tmp}/sender.bin"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(sender)
        assert sender.stdout is not None and sender.stdin is not None
        assert sender.stdout.readline().strip() == "READY"
        rproc = psutil.Process(reader.pid)
        cpu0 = rproc.cpu_times()
        t0 = time.monotonic()
        sender.stdin.write("go\n")
        sender.stdin.flush()
        sent_info = json.loads(sender.stdout.readline())
        sender.wait(30)
        # Let the reader catch up before the marker: a marker that meets a full socket is lost
        # itself and then reveals nothing.
        reader.stdin.write("drain\n")
        reader.stdin.flush()
        assert reader.stdout.readline().strip() == "DRAINED"
        cpu1 = rproc.cpu_times()
        wall = time.monotonic() - t0
        send_marker(sender_ns)
        reader.stdin.write("stop\n")
        reader.stdin.flush()
        reader_info = json.loads(reader.stdout.readline())
        reader.wait(30)

        data = json.loads(ns_run(recv_ns, "nft", "-j", "list", "ruleset"))
        kernel = 0
        for item in data["nftables"]:
            for e in item.get("rule", {}).get("expr", []):
                if "counter" in e:
                    kernel += e["counter"]["packets"]

        total = sent_info["sent"]
        sent_ns = array.array("q")
        with open(f"{tmp}/sender.bin", "rb") as fh:
            sent_ns.fromfile(fh, total)
        raw = Path(f"{tmp}/reader.bin").read_bytes()
        n = len(raw) // 16
        seqs, done = array.array("q"), array.array("q")
        seqs.frombytes(raw[:8 * n])
        done.frombytes(raw[8 * n:])
        lat = sorted(done[k] - sent_ns[s] for k, s in enumerate(seqs) if 0 <= s < total)
        cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        received = reader_info["received"]
        lost = reader_info["lost"]
        shown = qthresh if qthresh != "auto" else f"auto (max {reader_info['max_qthresh']})"
        return Row(rate, shown, timeout_cs, total, total / sent_info["elapsed"], received,
                   lost, reader_info["malformed"], kernel, kernel - (received + lost),
                   percentile(lat, 0.50), percentile(lat, 0.99),
                   (lat[-1] / 1e6) if lat else float("nan"), cpu / wall * 100,
                   cpu / max(1, received) * 1e6, reader_info["rss"] / 2**20,
                   reader_info["profile"])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for ns in (sender_ns, recv_ns):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        for f in Path(tmp).glob("*"):
            f.unlink()
        os.rmdir(tmp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=int, default=50_000)
    ap.add_argument("--rates", default="", help="comma-separated rates (overrides --rate)")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--qthresh", default="auto,1,16,64",
                    help="comma-separated: auto (fwtop's default, adaptive) or fixed numbers")
    ap.add_argument("--timeout-cs", type=int, default=1)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--_reader")
    ap.add_argument("--_sender")
    ap.add_argument("--_out")
    args = ap.parse_args()
    if args._reader:
        q = None if args.qthresh == "auto" else int(args.qthresh)
        child_reader(args._reader, q, args.timeout_cs, args._out, args.profile)
        return
    if args._sender:
        child_sender(args._sender, args.rate, args.duration, args._out)
        return
    if os.geteuid() != 0:
        sys.exit("bench_nflog.py needs root (network namespaces)")
    rates = [int(r) for r in args.rates.split(",") if r] or [args.rate]
    rows = [run_one(rate, args.duration, q, args.timeout_cs, args.profile)
            for q in args.qthresh.split(",") for rate in rates]
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
          f"kernel {platform.release()}, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.2f}\n")
    print("| rate target | qthresh | timeout | sent | send rate | received | lost (fwtop) | "
          "malformed | kernel counter | unaccounted | latency p50 | p99 | max | reader CPU | "
          "CPU per event | reader RSS |")
    print("|" + "---|" * 16)
    for r in rows:
        print(f"| {r.rate:,}/s | {r.qthresh} | {r.timeout_cs * 10} ms | {r.sent:,} | "
              f"{r.send_rate:,.0f}/s | {r.received:,} | {r.lost:,} | {r.malformed} | "
              f"{r.kernel:,} | {r.unaccounted} | {r.p50_ms:.2f} ms | {r.p99_ms:.2f} ms | "
              f"{r.max_ms:.1f} ms | {r.cpu_pct:.0f}% | {r.cpu_us_per_event:.1f} µs | "
              f"{r.rss_mb:.0f} MB |")
    for r in rows:
        if r.profile:
            print(f"\nprofile rate {r.rate} qthresh {r.qthresh} (% of reader time, tottime): "
                  + ", ".join(f"{k} {v}%" for k, v in r.profile.items()))


if __name__ == "__main__":
    main()
