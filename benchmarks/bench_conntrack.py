"""Benchmark: the conntrack watch's two costs, beside the conntrack tool.

Run as root:

    .venv/bin/python benchmarks/bench_conntrack.py [--count-entries 262144]
        [--breakdown-entries 200000] [--ticks 2000] [--runs 3] [--pyroute2]

1. Count + per-CPU statistics (the every-tick path): a throwaway namespace is filled with
   `--count-entries` entries (default 262,144, capped at the host's nf_conntrack_max, which is
   read, never written: it is global) and a fresh Python that entered the namespace times
   ConntrackReader.stats() `--ticks` times (median, 99th percentile), plus `conntrack -C`.
2. Breakdown: a new namespace with `--breakdown-entries` entries; a fresh Python per run
   times ConntrackReader.breakdown() (the full dump, no sampling) and reports its wall and CPU
   time and the extra peak RSS over the process before the dump; `conntrack -L | wc -l` is
   timed in the same run. With --pyroute2 (pyroute2 importable), its NFCTSocket.dump() is
   timed over the first 20,000 entries for comparison.

Entries are inserted with `conntrack -I` lines fed to one `conntrack -R` process (udp and tcp
ESTABLISHED/TIME_WAIT, 600 s timeouts). Prints a markdown table. The namespaces are always
deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FILE = Path("/proc/sys/net/netfilter/nf_conntrack_max")

STATS_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from fwtop.firewall.netns import enter, resolve
enter(resolve(sys.argv[2]))
from fwtop.sources.conntrack import ConntrackReader
ticks = int(sys.argv[3])
out = {}
with ConntrackReader() as r:
    r.stats()
    times = []
    for _ in range(ticks):
        t = time.perf_counter()
        s = r.stats()
        times.append(time.perf_counter() - t)
    times.sort()
    t = time.perf_counter()
    timeouts = r.read_timeouts()
    out["timeouts_us"] = (time.perf_counter() - t) * 1e6
    out["count"] = s.count
    out["max"] = s.max
    out["median_us"] = times[len(times) // 2] * 1e6
    out["p99_us"] = times[int(len(times) * 0.99)] * 1e6
    out["max_us"] = times[-1] * 1e6
print(json.dumps(out))
"""

BREAKDOWN_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from fwtop.firewall.netns import enter, resolve
enter(resolve(sys.argv[2]))
import psutil
from fwtop.sources.conntrack import ConntrackReader
proc = psutil.Process()
with ConntrackReader() as r:
    timeouts = r.read_timeouts()
    rss0 = proc.memory_info().rss
    peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t, c = time.perf_counter(), time.process_time()
    b = r.breakdown(timeouts, limit=None)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"wall_s": wall, "cpu_s": cpu, "dumped": b.dumped,
                  "extra_peak_mb": (max(peak, peak0) - rss0) / 1e6,
                  "top_source": b.top_sources[0] if b.top_sources else None}))
"""

PYROUTE2_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from fwtop.firewall.netns import enter, resolve
enter(resolve(sys.argv[2]))
from pyroute2 import NFCTSocket
n, limit = 0, int(sys.argv[3])
t = time.perf_counter()
with NFCTSocket() as s:
    for _ in s.dump():
        n += 1
        if n >= limit:
            break
print(json.dumps({"entries": n, "wall_s": time.perf_counter() - t}))
"""


def insert_text(n: int) -> str:
    lines = []
    for i in range(n):
        src = f"10.{100 + i // 60000}.{(i // 250) % 240}.{i % 250 + 1}"
        if i % 3 == 0:
            state = "ESTABLISHED" if i % 2 else "TIME_WAIT"
            lines.append(f"-I -s {src} -d 10.99.0.{i % 7 + 1} -p tcp --sport {1024 + i % 60000} "
                         f"--dport {443 + i % 3} --state {state} --timeout 600")
        else:
            lines.append(f"-I -s {src} -d 10.99.0.{i % 7 + 1} -p udp --sport {1024 + i % 60000} "
                         f"--dport 53 --timeout 600")
    return "\n".join(lines) + "\n"


def ns_cmd(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def fill(ns: str, n: int) -> float:
    t = time.perf_counter()
    subprocess.run(ns_cmd(ns, "conntrack", "-R", "-"), input=insert_text(n), text=True,
                   check=True, capture_output=True)
    return time.perf_counter() - t


def child(code: str, *args: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", code, str(ROOT), *args], capture_output=True,
                         text=True, check=True)
    result: dict[str, object] = json.loads(out.stdout)
    return result


def timed(argv: list[str]) -> tuple[float, str]:
    t = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    return time.perf_counter() - t, out.stdout.strip()


def conntrack_l_wc(ns: str) -> tuple[float, int]:
    t = time.perf_counter()
    lister = subprocess.Popen(ns_cmd(ns, "conntrack", "-L"), stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    wc = subprocess.run(["wc", "-l"], stdin=lister.stdout, capture_output=True, text=True,
                        check=True)
    lister.wait()
    return time.perf_counter() - t, int(wc.stdout.strip())


def new_ns() -> str:
    name = f"fwtbench{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    return name


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--count-entries", type=int, default=262_144)
    ap.add_argument("--breakdown-entries", type=int, default=200_000)
    ap.add_argument("--ticks", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pyroute2", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root (it creates network namespaces)", file=sys.stderr)
        return 2
    host_max = int(MAX_FILE.read_text())
    count_n = min(args.count_entries, host_max) if host_max else args.count_entries
    print(f"# conntrack benchmark: {platform.node()}, kernel {platform.release()}, "
          f"{os.cpu_count()} CPUs, python {platform.python_version()}, "
          f"nf_conntrack_max {host_max:,} (host-wide, not changed)")
    if count_n < args.count_entries:
        print(f"# the host's max allows only {count_n:,} entries per namespace: measuring that")
    created: list[str] = []
    try:
        ns = new_ns()
        created.append(ns)
        load_s = fill(ns, count_n)
        stats = child(STATS_CHILD, ns, str(args.ticks))
        c_s, c_out = timed(ns_cmd(ns, "conntrack", "-C"))
        print(f"\n## count + per-CPU stats at {stats['count']:,} entries "
              f"(inserted in {load_s:.2f} s with conntrack -R)\n")
        print("| what | median | p99 | max |")
        print("|---|---|---|---|")
        print(f"| ConntrackReader.stats() (count, max, buckets, /proc/net/stat) | "
              f"{stats['median_us']:.1f} us | {stats['p99_us']:.1f} us | "
              f"{stats['max_us']:.1f} us |")
        print(f"| read_timeouts() (13 sysctls, every 30 s) | {stats['timeouts_us']:.0f} us | | |")
        print(f"| `conntrack -C` (a process) | {c_s * 1000:.1f} ms | | | (says {c_out})")
        subprocess.run(["ip", "netns", "del", ns], check=False)
        created.remove(ns)

        ns = new_ns()
        created.append(ns)
        load_s = fill(ns, args.breakdown_entries)
        runs = [child(BREAKDOWN_CHILD, ns, "") for _ in range(args.runs)]
        walls = [float(r["wall_s"]) for r in runs]  # type: ignore[arg-type]
        cpus = [float(r["cpu_s"]) for r in runs]  # type: ignore[arg-type]
        rss = [float(r["extra_peak_mb"]) for r in runs]  # type: ignore[arg-type]
        wc_s, wc_n = conntrack_l_wc(ns)
        print(f"\n## full breakdown of {args.breakdown_entries:,} entries "
              f"(inserted in {load_s:.2f} s), {args.runs} runs, each in a fresh process\n")
        print("| what | wall | CPU | extra peak RSS | entries |")
        print("|---|---|---|---|---|")
        print(f"| ConntrackReader.breakdown() (raw ctnetlink dump + counting) | "
              f"{statistics.median(walls):.2f} s (max {max(walls):.2f}) | "
              f"{statistics.median(cpus):.2f} s | {max(rss):.0f} MB | {runs[0]['dumped']:,} |")
        print(f"| `conntrack -L \\| wc -l` | {wc_s:.2f} s | | | {wc_n:,} |")
        if args.pyroute2:
            try:
                pr = child(PYROUTE2_CHILD, ns, "20000")
                per = float(pr["wall_s"]) / int(pr["entries"])  # type: ignore[arg-type]
                print(f"| pyroute2 NFCTSocket.dump(), first {pr['entries']:,} entries | "
                      f"{pr['wall_s']:.2f} s ({per * 1e6:.0f} us/entry, "
                      f"{per * args.breakdown_entries:.0f} s for all) | | | |")
            except subprocess.CalledProcessError as exc:
                print(f"| pyroute2 | not measured: {exc.stderr.strip().splitlines()[-1]} | | | |")
        print(f"\ntop source: {runs[0]['top_source']}")
    finally:
        for name in created:
            subprocess.run(["ip", "netns", "del", name], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
