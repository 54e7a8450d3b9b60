"""Benchmark: rule counter poll, `nft -j list ruleset` versus fwtop's netlink reader.

Run as root:

    .venv/bin/python benchmarks/bench_counters.py [--sizes 10000,50000] [--ticks 5]
        [--layout chains|single] [--iptables]

For each size N it builds a throwaway network namespace, loads N counted rules in
one `nft -f` batch (table inet bench: base chain `input` jumping to a few regular
chains, or all rules in `input` with --layout single), then measures, each in its
own process so RSS figures are honest:

* `nft -j list ruleset`: wall time, the child's CPU and max RSS (wait4 rusage);
* `json.loads` of that output in a fresh Python: time and RSS growth;
* fwtop's poll, `NftCounterReader.generation()` + `.dump()` per tick, in a fresh
  Python that entered the namespace: CPU per tick (median, max), wall per tick,
  rules returned (must be N; N + the jump rules for iptables-nft, which counts
  every rule) and the process's peak RSS.

With --iptables the same is repeated with N iptables-nft rules (iptables-nft-restore).
Prints a markdown table. The namespace is always deleted.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]
CLONE_NEWNET = 0x40000000
REGULAR_CHAINS = 5


@dataclass(frozen=True, slots=True)
class Row:
    variant: str
    rules: int
    expected: int  # counted rules the poll must return
    load_s: float
    nft_wall_s: float
    nft_cpu_s: float
    nft_maxrss_mb: float
    json_mb: float
    loads_s: float
    loads_rss_mb: float
    poll_cpu_med_s: float
    poll_cpu_max_s: float
    poll_wall_med_s: float
    poll_rules: int
    poll_requests: int
    poll_rss_mb: float
    poll_maxrss_mb: float
    svc_load_cpu_s: float = 0.0  # fwtop's whole path: first poll = structure + counters
    svc_load_child_cpu_s: float = 0.0  # the `nft`/`iptables-nft-save` children it runs
    svc_tick_cpu_med_s: float = 0.0  # RulesPoller.poll(): generation, dump, model, rates
    svc_tick_cpu_max_s: float = 0.0
    svc_maxrss_mb: float = 0.0
    svc_rules: int = 0


def ip_octets(k: int) -> str:
    return f"10.{(k >> 16) & 255}.{(k >> 8) & 255}.{k & 255}"


def nft_ruleset(n: int, layout: str) -> str:
    out = [
        "table inet bench {",
        "chain input {",
        "type filter hook input priority 0; policy accept;",
    ]
    if layout == "single":
        out += [
            f"ip saddr {ip_octets(k)} tcp dport {k % 60000 + 1} counter accept" for k in range(n)
        ]
        out += ["}", "}"]
        return "\n".join(out) + "\n"
    out += [f"jump c{c}" for c in range(REGULAR_CHAINS)]
    out.append("}")
    k = 0
    for c in range(REGULAR_CHAINS):
        out.append(f"chain c{c} {{")
        per = n // REGULAR_CHAINS + (1 if c < n % REGULAR_CHAINS else 0)
        for _ in range(per):
            out.append(f"ip saddr {ip_octets(k)} tcp dport {k % 60000 + 1} counter accept")
            k += 1
        out.append("}")
    out.append("}")
    return "\n".join(out) + "\n"


def iptables_ruleset(n: int, layout: str) -> str:
    out = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    if layout == "single":
        out += [
            f"-A INPUT -s {ip_octets(k)} -p tcp --dport {k % 60000 + 1} -j ACCEPT" for k in range(n)
        ]
    else:
        out += [f":c{c} - [0:0]" for c in range(REGULAR_CHAINS)]
        out += [f"-A INPUT -j c{c}" for c in range(REGULAR_CHAINS)]
        for k in range(n):
            c = k * REGULAR_CHAINS // n
            out.append(f"-A c{c} -s {ip_octets(k)} -p tcp --dport {k % 60000 + 1} -j ACCEPT")
    out.append("COMMIT")
    return "\n".join(out) + "\n"


def in_ns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def enter_netns(name: str) -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
    finally:
        os.close(fd)


# --- child modes (each runs in a fresh interpreter)


def child_poll(ns: str, ticks: int) -> None:
    enter_netns(ns)  # before any thread exists: the whole process is in the namespace
    sys.path.insert(0, str(ROOT))
    from fwtop.sources.nft_counters import NftCounterReader

    cpu: list[float] = []
    wall: list[float] = []
    rules = requests = 0
    with NftCounterReader() as reader:
        for _ in range(ticks):
            c0, w0 = time.process_time(), time.perf_counter()
            reader.generation()
            dump = reader.dump()
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
            rules = len(dump.rules)
            requests = reader.requests
            if dump.malformed or dump.interrupted:
                print(f"warning: {dump}", file=sys.stderr)
        rss = psutil.Process().memory_info().rss
    maxrss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    json.dump(
        {
            "cpu": cpu,
            "wall": wall,
            "rules": rules,
            "requests": requests,
            "rss": rss,
            "maxrss": maxrss_kb * 1024,
        },
        sys.stdout,
    )


def child_service(ns: str, ticks: int) -> None:
    """fwtop's own live path, as the TUI runs it: RulesPoller.poll() per tick."""
    enter_netns(ns)
    sys.path.insert(0, str(ROOT))
    from fwtop.service.rules import RulesPoller

    poller = RulesPoller()
    c0 = time.process_time()
    first = poller.poll()
    load_cpu = time.process_time() - c0
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu: list[float] = []
    for _ in range(ticks):
        view = poller.poll()
        if view.reloaded:
            print("warning: structure reloaded during the ticks", file=sys.stderr)
        cpu.append(view.poll_cpu_s)
    poller.close()
    json.dump(
        {
            "load_cpu": load_cpu,
            "load_child_cpu": children.ru_utime + children.ru_stime,
            "cpu": cpu,
            "rules": len(first.ruleset.rules()),
            "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        },
        sys.stdout,
    )


def child_loads(path: str) -> None:
    text = Path(path).read_text()
    proc = psutil.Process()
    before = proc.memory_info().rss
    t0 = time.perf_counter()
    data = json.loads(text)
    elapsed = time.perf_counter() - t0
    after = proc.memory_info().rss
    assert "nftables" in data
    json.dump({"seconds": elapsed, "growth": after - before}, sys.stdout)


# --- driver


def run_child(*args: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=True
    )
    if out.stderr.strip():
        print(out.stderr.strip(), file=sys.stderr)
    result: dict[str, object] = json.loads(out.stdout)
    return result


def measure(ns: str, variant: str, n: int, expected: int, load_s: float, ticks: int) -> Row:
    with tempfile.NamedTemporaryFile(prefix="fwtop-bench-", suffix=".json", delete=False) as tmp:
        path = tmp.name
    try:
        with open(path, "wb") as out:
            t0 = time.perf_counter()
            proc = subprocess.Popen(in_ns(ns, "nft", "-j", "list", "ruleset"), stdout=out)
            # wait4 gives this child's own rusage (RUSAGE_CHILDREN would only give a
            # running total and the maximum over all children so far).
            _pid, status, usage = os.wait4(proc.pid, 0)
            nft_wall = time.perf_counter() - t0
            proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"nft -j list ruleset failed ({proc.returncode})")
        json_bytes = os.path.getsize(path)
        loads = run_child("--child-loads", path)
    finally:
        os.unlink(path)
    poll = run_child("--child-poll", ns, str(ticks))
    svc = run_child("--child-service", ns, str(ticks))
    svc_cpu = [float(x) for x in svc["cpu"]]  # type: ignore[attr-defined]
    cpu = [float(x) for x in poll["cpu"]]  # type: ignore[attr-defined]
    wall = [float(x) for x in poll["wall"]]  # type: ignore[attr-defined]
    mb = 1024 * 1024
    return Row(
        variant=variant,
        rules=n,
        expected=expected,
        load_s=load_s,
        nft_wall_s=nft_wall,
        nft_cpu_s=usage.ru_utime + usage.ru_stime,
        nft_maxrss_mb=usage.ru_maxrss / 1024,
        json_mb=json_bytes / mb,
        loads_s=float(loads["seconds"]),  # type: ignore[arg-type]
        loads_rss_mb=float(loads["growth"]) / mb,  # type: ignore[arg-type]
        poll_cpu_med_s=statistics.median(cpu),
        poll_cpu_max_s=max(cpu),
        poll_wall_med_s=statistics.median(wall),
        poll_rules=int(poll["rules"]),  # type: ignore[call-overload]
        poll_requests=int(poll["requests"]),  # type: ignore[call-overload]
        poll_rss_mb=float(poll["rss"]) / mb,  # type: ignore[arg-type]
        poll_maxrss_mb=float(poll["maxrss"]) / mb,  # type: ignore[arg-type]
        svc_load_cpu_s=float(svc["load_cpu"]),  # type: ignore[arg-type]
        svc_load_child_cpu_s=float(svc["load_child_cpu"]),  # type: ignore[arg-type]
        svc_tick_cpu_med_s=statistics.median(svc_cpu),
        svc_tick_cpu_max_s=max(svc_cpu),
        svc_maxrss_mb=float(svc["maxrss"]) / mb,  # type: ignore[arg-type]
        svc_rules=int(svc["rules"]),  # type: ignore[call-overload]
    )


def bench_size(n: int, ticks: int, layout: str, iptables: bool) -> list[Row]:
    rows: list[Row] = []
    # iptables-nft gives every rule a counter, the INPUT -> cN jumps included.
    jumps = 0 if layout == "single" else REGULAR_CHAINS
    variants = [("nft", nft_ruleset, ["nft", "-f", "-"], n)]
    if iptables:
        variants.append(("iptables-nft", iptables_ruleset, ["iptables-nft-restore"], n + jumps))
    for variant, build, loader, expected in variants:
        ns = f"fwtbench{secrets.token_hex(3)}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        try:
            text = build(n, layout)
            t0 = time.perf_counter()
            subprocess.run(in_ns(ns, *loader), input=text, text=True, check=True)
            load_s = time.perf_counter() - t0
            rows.append(measure(ns, variant, n, expected, load_s, ticks))
        finally:
            subprocess.run(["ip", "netns", "del", ns], check=False)
    return rows


def table(rows: list[Row]) -> str:
    head = (
        "| ruleset | rules (counted) | `nft -j` wall | `nft -j` CPU | `nft -j` max RSS | JSON size "
        "| `json.loads` | `json.loads` RSS growth | poll CPU/tick median | poll CPU/tick max "
        "| poll wall/tick median | rules returned | requests/tick | poll peak RSS |"
    )
    sep = "|" + "---|" * 14
    lines = [head, sep]
    for r in rows:
        lines.append(
            f"| {r.variant} | {r.rules:,} ({r.expected:,}) "
            f"| {r.nft_wall_s:.2f} s | {r.nft_cpu_s:.2f} s "
            f"| {r.nft_maxrss_mb:.0f} MB | {r.json_mb:.1f} MB | {r.loads_s:.2f} s "
            f"| {r.loads_rss_mb:.0f} MB | {r.poll_cpu_med_s:.3f} s | {r.poll_cpu_max_s:.3f} s "
            f"| {r.poll_wall_med_s:.3f} s | {r.poll_rules:,} | {r.poll_requests} "
            f"| {max(r.poll_rss_mb, r.poll_maxrss_mb):.0f} MB |"
        )
    lines += [
        "",
        "Whole fwtop path (`RulesPoller.poll()`, as the TUI runs it): the first poll reads the",
        "structure (libnftables/`nft` JSON + `iptables-nft-save`), later ticks only the counters;",
        "each tick also updates the rule model and computes the rates.",
        "",
        "| ruleset | rules in model | structure load: fwtop CPU | structure load: child CPU "
        "| tick CPU median | tick CPU max | fwtop peak RSS |",
        "|" + "---|" * 7,
    ]
    for r in rows:
        lines.append(
            f"| {r.variant} | {r.svc_rules:,} | {r.svc_load_cpu_s:.2f} s "
            f"| {r.svc_load_child_cpu_s:.2f} s | {r.svc_tick_cpu_med_s:.3f} s "
            f"| {r.svc_tick_cpu_max_s:.3f} s | {r.svc_maxrss_mb:.0f} MB |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--sizes", default="10000,50000", help="comma-separated rule counts")
    p.add_argument("--ticks", type=int, default=5, help="polls per size")
    p.add_argument(
        "--layout",
        choices=["chains", "single"],
        default="chains",
        help=f"rules spread over {REGULAR_CHAINS} regular chains, or all in the base chain",
    )
    p.add_argument("--iptables", action="store_true", help="also an iptables-nft ruleset")
    p.add_argument("--child-poll", nargs=2, metavar=("NS", "TICKS"), help=argparse.SUPPRESS)
    p.add_argument("--child-loads", metavar="FILE", help=argparse.SUPPRESS)
    p.add_argument("--child-service", nargs=2, metavar=("NS", "TICKS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_service:
        child_service(args.child_service[0], int(args.child_service[1]))
        return 0
    if args.child_poll:
        child_poll(args.child_poll[0], int(args.child_poll[1]))
        return 0
    if args.child_loads:
        child_loads(args.child_loads)
        return 0
    if os.geteuid() != 0:
        print("bench_counters: needs root (network namespaces)", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",") if s]
    print(
        f"# rule counter poll: {time.strftime('%Y-%m-%d %H:%M %Z')}, kernel {platform.release()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, layout {args.layout}, "
        f"{args.ticks} ticks\n",
        flush=True,
    )
    rows: list[Row] = []
    for n in sizes:
        new = bench_size(n, args.ticks, args.layout, args.iptables)
        for r in new:
            if r.poll_rules != r.expected:
                print(
                    f"ERROR: poll returned {r.poll_rules} rules, expected {r.expected}",
                    file=sys.stderr,
                )
            print(f"  {r.variant} {r.rules}: loaded in {r.load_s:.1f} s", file=sys.stderr)
        rows += new
    print(table(rows))
    return 0 if all(r.poll_rules == r.expected for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
