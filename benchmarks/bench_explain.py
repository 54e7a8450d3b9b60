"""Benchmark: explaining packets on a kube-proxy-like ruleset, indexed evaluator vs a naive scan.

Run as root:

    .venv/bin/python benchmarks/bench_explain.py [--rules 50000] [--flows 20000]
        [--naive-flows 200] [--check 500] [--backend nft|legacy] [--seed 1]

Generates a kube-proxy-like filter table as iptables-restore text (INPUT -j KUBE-SERVICES;
KUBE-SERVICES holds one `-d 10.96.x.y/32 -p tcp --dport N -j KUBE-SVC-<hash>` jump per service
port and a few hundred `-j REJECT` rules for services without endpoints; each KUBE-SVC chain jumps
to 1-3 KUBE-SEP chains, all but the last behind `-m statistic --mode random --probability`, as
kube-proxy writes them; each KUBE-SEP chain marks hairpin traffic and accepts), exactly --rules
rules in all. It loads that into a throwaway network namespace with iptables-nft-restore (or
iptables-legacy-restore with --backend legacy), times the backend's own save tool on it for
reference, then, in a fresh Python so the memory figures are fwtop's alone, measures:

* load: `fwtop.firewall.load_ruleset()` inside the namespace: wall, CPU of the process and of
  the `nft` / `iptables-nft-save` children it runs, RSS (psutil) and peak RSS (ru_maxrss);
* index: `Evaluator(ruleset)` plus the destination index of every long chain, built the way
  `evaluate` builds it (`Evaluator._candidates` on each chain);
* evaluations of distinct flows (random client, random source port, a service port's cluster IP
  and port, plus 10% to unused cluster IPs), single thread, as packets the node receives (hook
  input): indexed over all of them; a naive evaluator (the same walk, every rule of every chain)
  on --naive-flows of them, its rate per second extrapolated from those;
* a cross-check: on --check flows (the naive ones among them) both evaluators must give the same
  verdict, rule and certainty, and every answer must be the one the generator intended;
  otherwise the script says so and exits 1.

Prints markdown tables. The namespace is always deleted, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import ipaddress
import json
import os
import platform
import random
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_NET = ipaddress.IPv4Network("10.96.0.0/12")  # kube-apiserver's default service range
POD_NET = ipaddress.IPv4Network("10.244.0.0/16")  # flannel's default pod range
# Endpoints per service port: mostly single replicas; the mean, 4/3, makes a 50,000-rule table
# hold about 10,000 service ports (1 + 3 rules per endpoint each).
ENDPOINTS = {1: 72, 2: 23, 3: 5}
TWO_PORT_SERVICES = 0.2  # share of cluster IPs with two service ports (http + https, ...)
PORTS = {80: "http", 443: "https", 8080: "http-alt", 8443: "https-alt", 9090: "metrics",
         9100: "node-metrics", 3306: "mysql", 5432: "postgres", 6379: "redis", 53: "dns-tcp",
         5672: "amqp", 9200: "es"}
NAMESPACES = ("default", "kube-system", "monitoring", "payments", "shop", "ingress", "data")
MISS_SHARE = 0.1
SAVE_TOOLS = {"nft": ("iptables-nft-restore", "iptables-nft-save"),
              "legacy": ("iptables-legacy-restore", "iptables-legacy-save")}
MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServicePort:
    """One `ns/svc:port` as kube-proxy sees it; no endpoints = a REJECT rule in KUBE-SERVICES."""

    name: str
    ip: str
    port: int
    endpoints: tuple[str, ...]

    @property
    def rule_count(self) -> int:
        return 1 + 3 * len(self.endpoints)


def _hash16(text: str) -> str:
    # kube-proxy's chain names: the first 16 base32 characters of a SHA-256.
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def svc_chain(sp: ServicePort) -> str:
    return f"KUBE-SVC-{_hash16(sp.name + 'tcp')}"


def sep_chain(sp: ServicePort, endpoint: str) -> str:
    return f"KUBE-SEP-{_hash16(sp.name + 'tcp' + endpoint)}"


def generate(rules: int, seed: int) -> list[ServicePort]:
    """Service ports in KUBE-SERVICES order, holding exactly `rules` rules with the INPUT jump."""
    rng = random.Random(seed)
    rejects = max(1, rules // 160)
    budget = rules - 1 - rejects
    if budget < 4:
        raise ValueError("--rules too small for a kube-proxy-like ruleset (at least 5)")
    hosts = iter(rng.sample(range(1, CLUSTER_NET.num_addresses - 1), min(
        CLUSTER_NET.num_addresses - 2, rules)))
    base = int(CLUSTER_NET.network_address)
    counts, weights = list(ENDPOINTS), list(ENDPOINTS.values())
    out: list[ServicePort] = []
    pending: list[tuple[str, int, str]] = []  # (ip, port, name) not yet given endpoints
    while budget >= 4:
        if not pending:
            ip = str(ipaddress.IPv4Address(base + next(hosts)))
            svc = f"{rng.choice(NAMESPACES)}/svc-{len(out):05d}"
            nports = 2 if rng.random() < TWO_PORT_SERVICES else 1
            for port in rng.sample(sorted(PORTS), nports):
                pending.append((ip, port, f"{svc}:{PORTS[port]}"))
        ip, port, name = pending.pop(0)
        n = rng.choices(counts, weights)[0]
        while 1 + 3 * n > budget:
            n -= 1
        pods = tuple(str(ipaddress.IPv4Address(int(POD_NET.network_address)
                                               + rng.randrange(2, POD_NET.num_addresses - 1)))
                     for _ in range(n))
        out.append(ServicePort(name, ip, port, pods))
        budget -= 1 + 3 * n
    rejects += budget  # the 0-3 rules left over
    for k in range(rejects):
        ip = str(ipaddress.IPv4Address(base + next(hosts)))
        port = rng.choice(sorted(PORTS))
        svc = f"{rng.choice(NAMESPACES)}/idle-{k:04d}:{PORTS[port]}"
        out.insert(rng.randrange(len(out) + 1), ServicePort(svc, ip, port, ()))
    assert 1 + sum(sp.rule_count for sp in out) == rules
    return out


def restore_text(services: list[ServicePort]) -> str:
    chains: list[str] = ["KUBE-SERVICES"]
    lines = ["-A INPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"]
    for sp in services:
        cip = f"-A KUBE-SERVICES -d {sp.ip}/32 -p tcp -m comment --comment"
        if not sp.endpoints:
            lines.append(f"{cip} \"{sp.name} has no endpoints\" -m tcp --dport {sp.port} "
                         "-j REJECT --reject-with icmp-port-unreachable")
            continue
        svc = svc_chain(sp)
        lines.append(f"{cip} \"{sp.name} cluster IP\" -m tcp --dport {sp.port} -j {svc}")
        chains.append(svc)
        n = len(sp.endpoints)
        for i, pod in enumerate(sp.endpoints):
            sep = sep_chain(sp, pod)
            chains.append(sep)
            stat = (f" -m statistic --mode random --probability {1.0 / (n - i):.11f}"
                    if i < n - 1 else "")
            lines.append(f"-A {svc} -m comment --comment \"{sp.name} -> {pod}:{sp.port}\"{stat} "
                         f"-j {sep}")
            lines.append(f"-A {sep} -s {pod}/32 -m comment --comment \"{sp.name}\" "
                         "-j MARK --set-xmark 0x4000/0x4000")
            lines.append(f"-A {sep} -p tcp -m comment --comment \"{sp.name}\" -m tcp -j ACCEPT")
    head = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    head += [f":{c} - [0:0]" for c in chains]
    return "\n".join([*head, *lines, "COMMIT"]) + "\n"


@dataclass(frozen=True, slots=True)
class Flow:
    src: str
    sport: int
    dst: str
    dport: int
    service: ServicePort | None  # None = a miss (no rule pins this address)


def make_flows(services: list[ServicePort], hits: int, seed: int) -> list[Flow]:
    """`hits` distinct flows to service ports plus MISS_SHARE of that to unused cluster IPs."""
    rng = random.Random(seed + 1)
    used = {sp.ip for sp in services}
    base, size = int(CLUSTER_NET.network_address), CLUSTER_NET.num_addresses
    seen: set[tuple[str, int, str, int]] = set()
    out: list[Flow] = []
    misses = round(hits * MISS_SHARE)
    while len(out) < hits + misses:
        src = str(ipaddress.IPv4Address(int(POD_NET.network_address)
                                        + rng.randrange(2, POD_NET.num_addresses - 1)))
        sport = rng.randrange(32768, 61000)
        if len(out) < hits:
            sp: ServicePort | None = rng.choice(services)
            assert sp is not None
            dst, dport = sp.ip, sp.port
        else:
            sp = None
            dst = str(ipaddress.IPv4Address(base + rng.randrange(1, size - 1)))
            if dst in used:
                continue
            dport = rng.choice(sorted(PORTS))
        key = (src, sport, dst, dport)
        if key in seen:
            continue
        seen.add(key)
        out.append(Flow(src, sport, dst, dport, sp))
    rng.shuffle(out)
    return out


def expected(flow: Flow) -> tuple[str, bool, str, str]:
    """(verdict, certain, chain, effect) of the last step the generator intended for a flow."""
    sp = flow.service
    if sp is None:
        return ("accept", True, "INPUT", "policy-accept")  # falls through KUBE-SERVICES
    if not sp.endpoints:
        return ("reject", True, "KUBE-SERVICES", "reject")
    # `-m statistic` is unknown to a one-packet model: fwtop follows the last (unconditional)
    # endpoint and says the answer is uncertain when there was more than one.
    return ("accept", len(sp.endpoints) == 1, sep_chain(sp, sp.endpoints[-1]), "accept")


def kind(flow: Flow) -> str:
    sp = flow.service
    if sp is None:
        return "miss (unused cluster IP)"
    if not sp.endpoints:
        return "service without endpoints (REJECT)"
    return f"service, {len(sp.endpoints)} endpoint{'s' if len(sp.endpoints) > 1 else ''}"


# --- child: everything fwtop does, in a fresh interpreter --------------------------------------


def _cpu() -> tuple[float, float, float, int]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (time.perf_counter(), me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime,
            me.ru_maxrss * 1024)


def child(ns_name: str, args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    import psutil  # type: ignore[import-untyped]

    from fwtop.core.evaluator import Evaluator, Packet, _Ctx
    from fwtop.firewall import load_ruleset, netns
    from fwtop.firewall.routing import net_context

    class NaiveEvaluator(Evaluator):
        """The same walk without the destination index: every rule of every chain, in order."""

        def _candidates(self, chain: Any, ctx: Any) -> Any:
            return chain.rules

    proc = psutil.Process()
    out: dict[str, Any] = {"baseline_rss": proc.memory_info().rss}
    ns = netns.resolve(ns_name)

    def phase(name: str, before: tuple[float, float, float, int]) -> None:
        after = _cpu()
        out[name] = {"wall": after[0] - before[0], "cpu": after[1] - before[1],
                     "child_cpu": after[2] - before[2], "maxrss": after[3],
                     "rss": proc.memory_info().rss}

    t = _cpu()
    ruleset = netns.run_in(ns, load_ruleset)
    phase("load", t)
    out["child_maxrss"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    out["rules_loaded"] = len(ruleset.rules())
    out["chains_loaded"] = len(ruleset.chains())
    out["backends"] = sorted({r.backend for r in ruleset.rules()})
    out["warnings"] = list(ruleset.warnings)

    t = _cpu()
    net = netns.run_in(ns, net_context)
    phase("net_context", t)

    t = _cpu()
    ev = Evaluator(ruleset)
    probe = Packet("tcp", "10.244.0.2", "10.96.0.1", 40000, 80, iif="eth0", hook="input")
    ctx = _Ctx(probe, ipaddress.ip_address(probe.src), ipaddress.ip_address(probe.dst),
               ev.sets, "input")
    for chain in ruleset.chains():
        ev._candidates(chain, ctx)  # builds and keeps the index of every long chain
    phase("index", t)
    indexes = [i for i in ev._index.values() if i is not None]
    out["indexed_chains"] = len(indexes)
    out["unindexed_long_chains"] = sum(1 for i in ev._index.values() if i is None)
    out["index_keys"] = sum(len(i.by_dst) for i in indexes)
    out["index_wild"] = sum(len(i.wild) for i in indexes)

    services = generate(args.rules, args.seed)
    flows = make_flows(services, args.flows, args.seed)
    packets = [Packet("tcp", f.src, f.dst, f.sport, f.dport, iif="eth0", hook="input")
               for f in flows]

    def run(evaluator: Evaluator, pkts: list[Packet]) -> tuple[list[tuple[Any, ...]], float,
                                                               float]:
        c0, w0 = time.process_time(), time.perf_counter()
        answers = []
        for p in pkts:
            v = evaluator.evaluate(p, net)
            # The Rule and Policy objects themselves: both evaluators share them, so identity
            # is the strictest "same rule"; the path as (chain, position, effect) steps.
            answers.append((v.verdict, v.rule, v.certain, v.policy,
                            tuple((s.chain, s.position, s.effect) for s in v.path)))
        return answers, time.process_time() - c0, time.perf_counter() - w0

    answers, cpu, wall = run(ev, packets)
    out["indexed"] = {"flows": len(packets), "cpu": cpu, "wall": wall,
                      "rss": proc.memory_info().rss,
                      "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}

    by_kind: dict[str, Counter[str]] = {}
    wrong: list[str] = []
    for f, (verdict, _rule, certain, _policy, path) in zip(flows, answers, strict=True):
        c = by_kind.setdefault(kind(f), Counter())
        c["flows"] += 1
        c[verdict] += 1
        c["certain"] += certain
        want = expected(f)
        got = (verdict, certain, *(path[-1][::2] if path else ("", "")))
        if got == want:
            c["expected"] += 1
        elif len(wrong) < 5:
            wrong.append(f"{f.src}:{f.sport} -> {f.dst}:{f.dport}: got {got}, intended {want}")
    out["kinds"] = {k: dict(v) for k, v in sorted(by_kind.items())}
    out["unexpected"] = wrong

    # Cross-check on a random sample; the naive rate is timed on its first --naive-flows.
    rng = random.Random(args.seed + 2)
    pick = rng.sample(range(len(packets)), min(args.check, len(packets)))
    sample = [packets[i] for i in pick]
    timed = sample[: args.naive_flows]
    naive = NaiveEvaluator(ruleset)
    naive_timed, ncpu, nwall = run(naive, timed)
    naive_rest, _, _ = run(naive, sample[len(timed):])
    same_timed, scpu, swall = run(ev, timed)
    indexed_rest, _, _ = run(ev, sample[len(timed):])
    out["naive"] = {"flows": len(timed), "cpu": ncpu, "wall": nwall}
    out["indexed_same"] = {"flows": len(timed), "cpu": scpu, "wall": swall}
    diffs: list[str] = []
    for p, a, b in zip(sample, same_timed + indexed_rest, naive_timed + naive_rest, strict=True):
        # The same Rule objects: identity is the strictest test of "the same rule".
        if a[0] != b[0] or a[1] is not b[1] or a[2] != b[2] or a[3] is not b[3] or a[4] != b[4]:
            diffs.append(f"{p.src}:{p.sport} -> {p.dst}:{p.dport}: indexed "
                         f"{a[0]}/{a[2]}/{a[1].text if a[1] else a[3]}, naive "
                         f"{b[0]}/{b[2]}/{b[1].text if b[1] else b[3]}")
    out["check"] = {"flows": len(sample), "differ": len(diffs), "examples": diffs[:5],
                    "agree_with_full_run": sum(
                        1 for i, a in zip(pick, same_timed + indexed_rest, strict=True)
                        if a == answers[i])}
    out["final_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


# --- driver ------------------------------------------------------------------------------------


def in_ns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def timed_child(argv: list[str], stdin: str | None = None) -> tuple[float, Any, bytes]:
    """Run one process to the end: (wall, its own rusage from wait4, its stdout)."""
    with tempfile.TemporaryFile() as inp, tempfile.TemporaryFile() as outp:
        if stdin is not None:
            inp.write(stdin.encode())
            inp.seek(0)
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=inp, stdout=outp)
        # wait4 gives this child's own rusage (RUSAGE_CHILDREN only a running total).
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode})")
        outp.seek(0)
        return wall, usage, outp.read()


def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def bench(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    restore, save = SAVE_TOOLS[args.backend]
    services = generate(args.rules, args.seed)
    text = restore_text(services)
    ref: dict[str, Any] = {
        "service_ports": len(services),
        "with_endpoints": sum(1 for s in services if s.endpoints),
        "endpoints": sum(len(s.endpoints) for s in services),
        "kube_services": sum(1 for _ in services),
        "chains": 4 + sum(1 + len(s.endpoints) for s in services if s.endpoints),
        "cluster_ips": len({s.ip for s in services}),
    }
    ns = f"fwtexpl{os.getpid()}{secrets.token_hex(2)}"
    signal.signal(signal.SIGTERM, _terminate)
    created = False
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        created = True
        wall, usage, _ = timed_child(in_ns(ns, restore), text)
        ref["restore_wall"] = wall
        ref["restore_cpu"] = usage.ru_utime + usage.ru_stime
        del text
        wall, usage, data = timed_child(in_ns(ns, save))
        ref["save_wall"] = wall
        ref["save_cpu"] = usage.ru_utime + usage.ru_stime
        ref["save_maxrss"] = usage.ru_maxrss * 1024
        ref["save_rules"] = sum(1 for ln in data.splitlines() if ln.startswith(b"-A "))
        print(f"  loaded {args.rules:,} rules with {restore} in {ref['restore_wall']:.1f} s; "
              "measuring fwtop in a fresh process", file=sys.stderr, flush=True)
        cmd = [sys.executable, __file__, "--child", ns, "--rules", str(args.rules),
               "--flows", str(args.flows), "--naive-flows", str(args.naive_flows),
               "--check", str(args.check), "--seed", str(args.seed)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.stderr.strip():
            print(res.stderr.strip(), file=sys.stderr)
        if res.returncode != 0:
            raise RuntimeError(f"the measuring process failed ({res.returncode})")
        return ref, json.loads(res.stdout)
    finally:
        if created:
            subprocess.run(["ip", "netns", "del", ns], check=False)


def report(args: argparse.Namespace, ref: dict[str, Any], m: dict[str, Any]) -> tuple[str, bool]:
    restore, save = SAVE_TOOLS[args.backend]
    ok = True
    lines = [
        f"Ruleset: {args.rules:,} rules in {ref['chains']:,} chains: {ref['kube_services']:,} "
        f"KUBE-SERVICES rules for {ref['service_ports']:,} service ports on "
        f"{ref['cluster_ips']:,} cluster IPs ({ref['with_endpoints']:,} with "
        f"{ref['endpoints']:,} endpoints, {ref['service_ports'] - ref['with_endpoints']:,} "
        f"REJECT without). fwtop read {m['rules_loaded']:,} rules in {m['chains_loaded']:,} "
        f"chains ({', '.join(m['backends'])}); {save} printed {ref['save_rules']:,}.",
        "",
        "| step | wall | CPU (fwtop) | CPU (children) | RSS after | peak RSS (ru_maxrss) |",
        "|---|---:|---:|---:|---:|---:|",
        f"| Python + fwtop imported |  |  |  | {m['baseline_rss'] / MB:.0f} MB |  |",
    ]
    names = {"load": "`load_ruleset()` in the namespace", "net_context": "`net_context()`",
             "index": f"`Evaluator(ruleset)` + indexes ({m['indexed_chains']} chain, "
                      f"{m['index_keys']:,} addresses, {m['index_wild']} unpinned rules)"}
    for key, label in names.items():
        p = m[key]
        lines.append(f"| {label} | {p['wall']:.2f} s | {p['cpu']:.2f} s | {p['child_cpu']:.2f} s "
                     f"| {p['rss'] / MB:.0f} MB | {p['maxrss'] / MB:.0f} MB |")
    total_wall = sum(m[k]["wall"] for k in names)
    total_cpu = sum(m[k]["cpu"] + m[k]["child_cpu"] for k in names)
    peak = m["index"]["maxrss"]
    lines += [
        f"| **load + index** | **{total_wall:.2f} s** | {total_cpu:.2f} s (with children) |  "
        f"| {m['index']['rss'] / MB:.0f} MB | **{peak / MB:.0f} MB** |",
        "",
        f"Largest child process the load ran (`nft`, `iptables-nft-save`, ...): peak RSS "
        f"{m['child_maxrss'] / MB:.0f} MB (a child's ru_maxrss includes the RSS it inherited "
        f"at fork). Reference tools on the same namespace: "
        f"`{restore}` {ref['restore_wall']:.2f} s wall, {ref['restore_cpu']:.2f} s CPU; "
        f"`{save}` {ref['save_wall']:.2f} s wall, {ref['save_cpu']:.2f} s CPU, peak RSS "
        f"{ref['save_maxrss'] / MB:.0f} MB.",
        "",
        "| evaluator | flows | CPU | wall | evaluations/s (CPU) | evaluations/s (wall) "
        "| CPU per evaluation |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [("indexed, all flows", m["indexed"]), ("indexed, the naive flows", m["indexed_same"]),
            ("naive linear scan (extrapolated)", m["naive"])]
    for label, r in rows:
        lines.append(f"| {label} | {r['flows']:,} | {r['cpu']:.2f} s | {r['wall']:.2f} s "
                     f"| {r['flows'] / r['cpu']:,.0f} | {r['flows'] / r['wall']:,.0f} "
                     f"| {r['cpu'] / r['flows'] * 1e6:,.0f} µs |")
    speedup = (m["naive"]["cpu"] / m["naive"]["flows"]) / (
        m["indexed_same"]["cpu"] / m["indexed_same"]["flows"])
    rate = m["indexed"]["flows"] / m["indexed"]["cpu"]
    lines += [
        "",
        f"Indexed / naive on the same flows: {speedup:,.0f}x. Peak RSS after the evaluations "
        f"{m['final_maxrss'] / MB:.0f} MB.",
        "",
        "| flows | count | accept | reject | certain | as intended |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for k, c in m["kinds"].items():
        lines.append(f"| {k} | {c['flows']:,} | {c.get('accept', 0):,} | {c.get('reject', 0):,} "
                     f"| {c.get('certain', 0):,} | {c.get('expected', 0):,} |")
    total = sum(c["flows"] for c in m["kinds"].values())
    certain = sum(c.get("certain", 0) for c in m["kinds"].values())
    intended = sum(c.get("expected", 0) for c in m["kinds"].values())
    lines.append(f"| all | {total:,} | | | {certain:,} ({certain / total:.0%}) | {intended:,} |")
    chk = m["check"]
    lines += [
        "",
        f"Cross-check: {chk['flows']} flows, indexed and naive differ on {chk['differ']} "
        "(verdict, rule, certain, policy, path); the indexed answers equal those of the full "
        f"indexed run for {chk['agree_with_full_run']} of them.",
    ]
    if chk["differ"] or chk["agree_with_full_run"] != chk["flows"]:
        ok = False
        lines += ["", "**FAILED: the indexed and the naive evaluator disagree:**",
                  *[f"- {d}" for d in chk["examples"]]]
    if intended != total:
        ok = False
        lines += ["", f"**FAILED: {total - intended} answers are not the intended ones:**",
                  *[f"- {d}" for d in m["unexpected"]]]
    if m["rules_loaded"] != args.rules:
        ok = False
        lines += ["", f"**FAILED: fwtop read {m['rules_loaded']} rules, not {args.rules}**"]
    if m["warnings"]:
        lines += ["", "Loader warnings: " + "; ".join(m["warnings"][:3])]
    lines += [
        "",
        "Targets: "
        f"evaluations/s (CPU) {rate:,.0f} (target ≥ 10,000: "
        f"{'met' if rate >= 10_000 else 'MISSED'}); load + index {total_wall:.2f} s "
        f"(target < 3 s: {'met' if total_wall < 3 else 'MISSED'}); peak RSS {peak / MB:.0f} MB "
        f"(target < 300 MB: {'met' if peak < 300 * MB else 'MISSED'}).",
    ]
    return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--rules", type=int, default=50_000, help="rules in all (default 50,000)")
    p.add_argument("--flows", type=int, default=20_000,
                   help=f"distinct flows to services (plus {MISS_SHARE:.0%}% misses)")
    p.add_argument("--naive-flows", type=int, default=200, help="flows timed on the naive scan")
    p.add_argument("--check", type=int, default=500, help="flows cross-checked, naive vs indexed")
    p.add_argument("--backend", choices=sorted(SAVE_TOOLS), default="nft",
                   help="load with iptables-nft-restore or iptables-legacy-restore")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--child", metavar="NS", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.naive_flows = min(args.naive_flows, args.check)
    if args.child:
        json.dump(child(args.child, args), sys.stdout)
        return 0
    if os.geteuid() != 0:
        print("bench_explain: needs root (network namespaces)", file=sys.stderr)
        return 2
    print(f"# explain: {time.strftime('%Y-%m-%d %H:%M %Z')}, kernel {platform.release()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, backend {args.backend}, "
          f"seed {args.seed}\n", flush=True)
    try:
        ref, measured = bench(args)
    except KeyboardInterrupt:
        print("bench_explain: interrupted (namespace deleted)", file=sys.stderr)
        return 130
    text, ok = report(args, ref, measured)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
