"""Benchmark: kernel LOG-line parsing, fwtop's parser versus a plain one-regex-per-field parser.

    .venv/bin/python benchmarks/bench_loglines.py [--lines 1000000] [--rounds 3] [--cpu N]

Builds N /dev/kmsg records (default 1,000,000) from the lines recorded from real rules in
tests/fixtures/loglines/: IPv4 TCP SYN / UDP / ICMP echo / ICMP errors with an embedded header,
IPv6 TCP / UDP / ICMPv6, TRACE lines, and ordinary kernel chatter, with the varying fields
(addresses from a pool of 2,000 hosts, ports, IP ids) rewritten per line. Then, pinned to one
CPU, it parses them all with

* fwtop: `fwtop.core.loglines.parse_kmsg_record(bytes)` -- what the /dev/kmsg reader runs on
  every record -- and `parse_message(str)` on the same text without the kmsg header;
* baseline: one `re.search` per field (IN, OUT, SRC, DST, LEN, PROTO, SPT, DPT, TYPE, CODE,
  the flags), written here, building the same DropEvent with its constructor;

in alternating rounds (the best round of each counts), and a last case where every line has a
new source address (a spoofed flood: the parser's address cache misses every time). Rates are
lines per second of CPU time of this thread (time.thread_time), so another process sharing the
machine slows the wall clock but not the figure; wall-clock rates are printed too. Prints a
markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fwtop.core import loglines  # noqa: E402
from fwtop.core.events import DropEvent  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "loglines"

# Share of each kind of line in the generated mix (a busy firewall under a SYN/UDP flood, with
# some v6 and the kernel's usual chatter in between).
MIX = {
    "ipv4 tcp": 40, "ipv4 udp": 20, "ipv4 icmp echo": 6, "ipv4 icmp error": 3, "ipv6 tcp": 6,
    "ipv6 udp": 4, "ipv6 icmpv6": 3, "trace": 3, "not firewall": 15,
}


def fixture_lines(name: str) -> list[str]:
    out: list[str] = []
    for line in (FIXTURES / f"{name}.txt").read_text().splitlines():
        if line.startswith(" ") and out:
            out[-1] += "\n" + line
        else:
            out.append(line)
    return out


def templates() -> dict[str, list[str]]:
    icmpv6 = fixture_lines("icmpv6")
    return {
        "ipv4 tcp": fixture_lines("tcp_syn"),
        "ipv4 udp": (fixture_lines("udp") + fixture_lines("prefixes")
                     + fixture_lines("udp_uid_mark")),
        "ipv4 icmp echo": fixture_lines("icmp_echo"),
        "ipv4 icmp error": fixture_lines("icmp_error"),
        "ipv6 tcp": fixture_lines("ipv6_tcp"),
        "ipv6 udp": [icmpv6[1]],
        "ipv6 icmpv6": [icmpv6[0], icmpv6[2]],
        "trace": fixture_lines("trace"),
        "not firewall": fixture_lines("noise"),
    }


_V4_SRC = re.compile(r"SRC=10\.62\.9\.[12] ")
_V6_SRC = re.compile(r"SRC=fd62:0009:0000:0000:0000:0000:0000:000[12] ")
_SPT = re.compile(r"SPT=\d+ ")
_ID = re.compile(r" ID=\d+ ")
_SEQ = re.compile(r"^(\d+),(\d+),")


def make_lines(n: int, seed: int = 7, distinct_sources: bool = False) -> list[tuple[str, bytes]]:
    """n (kind, kmsg record) pairs following MIX."""
    rng = random.Random(seed)
    tpl = templates()
    kinds = [k for k, w in MIX.items() for _ in range(w)]
    hosts4 = [f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
              for _ in range(2000)]
    hosts6 = [f"2001:0db8:{rng.randrange(65536):04x}:0000:0000:0000:0000:{rng.randrange(65536):04x}"
              for _ in range(2000)]
    out: list[tuple[str, bytes]] = []
    for seq in range(n):
        kind = rng.choice(kinds)
        line = rng.choice(tpl[kind])
        if kind != "not firewall":
            if distinct_sources:
                src4 = f"{1 + (seq >> 24) % 223}.{(seq >> 16) & 255}.{(seq >> 8) & 255}.{seq & 255}"
                src6 = f"2001:0db8:0000:0000:0000:{(seq >> 32) & 0xffff:04x}:" \
                       f"{(seq >> 16) & 0xffff:04x}:{seq & 0xffff:04x}"
            else:
                src4, src6 = rng.choice(hosts4), rng.choice(hosts6)
            # Only the first SRC= (the packet's own) changes; an embedded header keeps its own.
            line = _V4_SRC.sub(f"SRC={src4} ", line, count=1)
            line = _V6_SRC.sub(f"SRC={src6} ", line, count=1)
            line = _SPT.sub(f"SPT={rng.randrange(1024, 65536)} ", line, count=1)
            line = _ID.sub(f" ID={rng.randrange(65536)} ", line, count=1)
        line = _SEQ.sub(rf"\g<1>,{seq},", line, count=1)
        out.append((kind, (line + "\n").encode()))
    return out


# --- the baseline: one regex per field ------------------------------------------------------

_B_IN = re.compile(r"IN=(\S*)")
_B_OUT = re.compile(r"OUT=(\S*)")
_B_SRC = re.compile(r" SRC=(\S+)")
_B_DST = re.compile(r" DST=(\S+)")
_B_LEN = re.compile(r" LEN=(\d+)")
_B_PROTO = re.compile(r" PROTO=(\S+)")
_B_SPT = re.compile(r" SPT=(\d+)")
_B_DPT = re.compile(r" DPT=(\d+)")
_B_TYPE = re.compile(r" TYPE=(\d+)")
_B_CODE = re.compile(r" CODE=(\d+)")
_B_FLAGS = re.compile(r" RES=0x[0-9a-f]+ ((?:[A-Z]{3} )*)URGP=")
_B_PREFIX = re.compile(r"^(.*?)IN=")
_B_HEAD = re.compile(r"^\d+,(\d+),")


def baseline_parse(raw: bytes) -> tuple[int | None, DropEvent | None]:
    text = raw.decode("utf-8", "replace")
    head = _B_HEAD.match(text)
    seq = int(head.group(1)) if head else None
    msg = text.partition(";")[2].partition("\n")[0]
    m_in = _B_IN.search(msg)
    if m_in is None or _B_OUT.search(msg) is None:
        return seq, None
    vals = {name: (m.group(1) if (m := rx.search(msg)) else None) for name, rx in (
        ("IN", _B_IN), ("OUT", _B_OUT), ("SRC", _B_SRC), ("DST", _B_DST), ("LEN", _B_LEN),
        ("PROTO", _B_PROTO), ("SPT", _B_SPT), ("DPT", _B_DPT), ("TYPE", _B_TYPE),
        ("CODE", _B_CODE), ("FLAGS", _B_FLAGS))}
    prefix_m = _B_PREFIX.match(msg)
    src = vals["SRC"]
    proto = vals["PROTO"]
    flags = vals["FLAGS"]
    return seq, DropEvent(
        source="kmsg", ts=0.0, wall=0.0,
        prefix=(prefix_m.group(1).rstrip() or None) if prefix_m else None,
        iif=vals["IN"] or None, oif=vals["OUT"] or None,
        family=("ip6" if src and ":" in src else "ip") if src else None,
        proto=proto.lower() if proto else None, src=src, dst=vals["DST"],
        sport=int(vals["SPT"]) if vals["SPT"] else None,
        dport=int(vals["DPT"]) if vals["DPT"] else None,
        icmp_type=int(vals["TYPE"]) if vals["TYPE"] else None,
        icmp_code=int(vals["CODE"]) if vals["CODE"] else None,
        tcp_flags=",".join(flags.split()) if flags else None,
        len=int(vals["LEN"]) if vals["LEN"] else None)


# --- measuring -------------------------------------------------------------------------------


def run(fn: Callable[[bytes], object], records: list[bytes]) -> tuple[float, float]:
    """(CPU seconds of this thread, wall seconds) to run fn over all records."""
    w0, c0 = time.perf_counter(), time.thread_time()
    for raw in records:
        fn(raw)
    return time.thread_time() - c0, time.perf_counter() - w0


def message_parser(records: list[bytes]) -> tuple[Callable[[str], object], list[str]]:
    msgs = [r.decode().partition(";")[2].partition("\n")[0] for r in records]
    return loglines.parse_message, msgs


def idlest_cpu(cpus: set[int], sample_s: float = 0.5) -> int:
    """The CPU of `cpus` that was idle the most over a short sample (others may be busy)."""
    def idle() -> dict[int, int]:
        out: dict[int, int] = {}
        for line in Path("/proc/stat").read_text().splitlines():
            name, *vals = line.split()
            if name.startswith("cpu") and name != "cpu" and int(name[3:]) in cpus:
                out[int(name[3:])] = int(vals[3])
        return out
    before = idle()
    time.sleep(sample_s)
    after = idle()
    return max(cpus, key=lambda c: after.get(c, 0) - before.get(c, 0))


def calibration() -> float:
    """Seconds for `sum(range(100))`: how fast this CPU runs Python at the moment."""
    best = 1e9
    for _ in range(7):
        t = time.thread_time()
        for _ in range(200_000):
            sum(range(100))
        best = min(best, (time.thread_time() - t) / 200_000)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cpu", type=int, default=None, help="pin to this CPU (default: the idlest)")
    args = ap.parse_args()
    cpu = args.cpu if args.cpu is not None else idlest_cpu(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})

    t0 = time.perf_counter()
    pairs = make_lines(args.lines)
    records = [raw for _, raw in pairs]
    print(f"generated {len(records):,} records in {time.perf_counter() - t0:.1f}s "
          f"(mean {statistics.mean(len(r) for r in records):.0f} bytes); pinned to CPU {cpu}",
          file=sys.stderr)

    # Sanity: fwtop's answers on the mix (every firewall line an event, chatter None).
    sample = pairs[:20000]
    for kind, raw in sample:
        _, ev = loglines.parse_kmsg_record(raw)
        assert (ev is None) == (kind == "not firewall"), (kind, raw, ev)
        assert not isinstance(ev, loglines.LogLineError), (raw, ev)

    parse_message, msgs = message_parser(records)
    results: dict[str, list[tuple[float, float]]] = {"fwtop kmsg": [], "fwtop message": [],
                                                      "baseline": []}
    for _ in range(args.rounds):
        results["fwtop kmsg"].append(run(loglines.parse_kmsg_record, records))
        results["fwtop message"].append(run(parse_message, msgs))  # type: ignore[arg-type]
        results["baseline"].append(run(baseline_parse, records))

    # Per kind and with spoofed sources: timed in the same rounds as a reference slice of the
    # mix, because this machine's speed drifts by tens of percent from minute to minute.
    ref = records[:300_000]
    by_kind: dict[str, list[bytes]] = {}
    for kind, raw in pairs[:300_000]:
        by_kind.setdefault(kind, []).append(raw)
    spoofed = [raw for _, raw in make_lines(len(ref), seed=9, distinct_sources=True)]
    side: dict[str, list[float]] = {"mix": [], "spoofed": [], **{k: [] for k in by_kind}}
    for _ in range(args.rounds):
        side["mix"].append(run(loglines.parse_kmsg_record, ref)[0] / len(ref))
        loglines._addrs.clear()  # a flood of new sources starts from a cold cache
        side["spoofed"].append(run(loglines.parse_kmsg_record, spoofed)[0] / len(spoofed))
        for kind, rs in by_kind.items():
            side[kind].append(run(loglines.parse_kmsg_record, rs)[0] / len(rs))
    per_line = {k: min(v) for k, v in side.items()}

    n = len(records)
    print(f"\nLOG line parsing, {n:,} lines, Python {platform.python_version()}, "
          f"kernel {platform.release()}, {os.cpu_count()} CPUs, one core\n")
    print(f"Machine speed during the run: `sum(range(100))` took {calibration() * 1e6:.2f} µs "
          "(best of 7 x 200,000).\n")
    print("| parser | input | lines/s (CPU time), best round | median round | µs/line (best) "
          "| lines/s (wall), best |")
    print("|---|---|---:|---:|---:|---:|")
    labels = {"fwtop kmsg": ("fwtop `parse_kmsg_record`", "kmsg record bytes"),
              "fwtop message": ("fwtop `parse_message`", "message str"),
              "baseline": ("baseline, one `re` per field", "kmsg record bytes")}
    for key, runs in results.items():
        cpu_s = min(c for c, _ in runs)
        med_s = statistics.median(c for c, _ in runs)
        wall_s = min(w for _, w in runs)
        name, what = labels[key]
        print(f"| {name} | {what} | {n / cpu_s:,.0f} | {n / med_s:,.0f} | "
              f"{cpu_s / n * 1e6:.2f} | {n / wall_s:,.0f} |")
    base = min(c for c, _ in results["baseline"])
    print(f"\nfwtop `parse_kmsg_record` vs the baseline, same rounds: "
          f"{base / min(c for c, _ in results['fwtop kmsg']):.2f}x faster")
    print("\nSide runs (fwtop `parse_kmsg_record`, best of the same rounds as a 300,000-line "
          "slice of the mix):\n")
    print("| lines | share | lines/s (CPU time) | µs/line |")
    print("|---|---:|---:|---:|")
    rows = [("whole mix (reference)", "100%", per_line["mix"]),
            ("every line a new source address (spoofed flood)", "", per_line["spoofed"])]
    rows += [(kind, f"{MIX[kind]}%", per_line[kind]) for kind in MIX if kind in per_line]
    for label, share, sec in rows:
        print(f"| {label} | {share} | {1 / sec:,.0f} | {sec * 1e6:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
