"""Randomized differential check of the evaluator against the kernel.

For each seed: a random ruleset over iptables-nft (INPUT with a user chain, jumps and RETURNs,
multiport, ranges, negations, interfaces), native nft (its own base chain on the same hook, a
set) and sometimes iptables-legacy, loaded into a throwaway namespace; then one real UDP packet
per probe port, and the evaluator's verdict and deciding rule must be the kernel's (rule
counters, delivery). A small seed set runs in CI (tests/kernel/test_explain_differential.py);
`python -m tests.kernel.differential --seeds 200` is the long run (benchmarks/README).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import time
from dataclasses import dataclass

from fwtop.core.evaluator import Evaluator, Packet
from fwtop.firewall import load_ruleset
from fwtop.firewall.netns import resolve, run_in
from fwtop.firewall.routing import net_context
from tests.conftest import Namespaces, ns_run
from tests.kernel.explain_harness import Topology, agree, send, topology

PORTS = list(range(5001, 5007))


@dataclass
class Generated:
    iptables: str
    nft: str
    legacy: str | None


def _ports(rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        return f"--dport {rng.choice(PORTS)}"
    if kind == 1:
        a = rng.choice(PORTS)
        return f"--dport {a}:{min(a + rng.randrange(3), PORTS[-1])}"
    picks = sorted(rng.sample(PORTS, rng.randrange(2, 4)))
    return "-m multiport --dports " + ",".join(map(str, picks))


def _ipt_rule(rng: random.Random, chain: str, top: Topology, can_jump: bool) -> str:
    parts = [f"-A {chain}", "-p udp"]
    if rng.random() < 0.8:
        parts.append(_ports(rng))
    r = rng.random()
    if r < 0.2:
        parts.append(f"-s {top.client_ip}/32")
    elif r < 0.3:
        parts.append(f"! -s {top.client_ip}/32")
    elif r < 0.4:
        parts.append("-s 192.0.2.0/24")
    r = rng.random()
    if r < 0.15:
        parts.append(f"-i {top.fw_if[:3]}+")
    elif r < 0.25:
        parts.append("! -i lo")
    elif r < 0.3:
        parts.append("-i lo")
    targets = ["ACCEPT", "DROP", "REJECT", "LOG --log-prefix diff"]
    if chain == "U":
        targets.append("RETURN")
    if can_jump:
        targets += ["U", "U"]
    parts.append("-j " + rng.choice(targets))
    return " ".join(parts)


def generate(seed: int, top: Topology, legacy_ok: bool) -> Generated:
    rng = random.Random(seed)
    lines = ["*filter", f":INPUT {rng.choice(['ACCEPT', 'DROP'])} [0:0]", ":U - [0:0]"]
    lines += [_ipt_rule(rng, "INPUT", top, True) for _ in range(rng.randrange(2, 7))]
    lines += [_ipt_rule(rng, "U", top, False) for _ in range(rng.randrange(1, 5))]
    lines.append("COMMIT")
    prio = rng.choice([-5, 5])
    policy = rng.choice(["accept", "accept", "drop"])
    nft_rules = []
    for _ in range(rng.randrange(0, 4)):
        verdict = rng.choice(["accept", "drop", "reject"])
        if rng.random() < 0.5:
            ports = ", ".join(map(str, sorted(rng.sample(PORTS, rng.randrange(1, 4)))))
            nft_rules.append(f"udp dport {{ {ports} }} counter {verdict}")
        else:
            nft_rules.append(f"udp dport @probe counter {verdict}")
    elements = ", ".join(map(str, sorted(rng.sample(PORTS, 2))))
    nft = ("table inet diff {\n"
           f"  set probe {{ type inet_service; elements = {{ {elements} }}\n  }}\n"
           f"  chain input {{ type filter hook input priority {prio}; policy {policy};\n"
           + "".join(f"    {r}\n" for r in nft_rules) + "  }\n}\n")
    legacy = None
    if legacy_ok and rng.random() < 0.4:
        rules = [f"-A INPUT -p udp --dport {rng.choice(PORTS)} -j {rng.choice(['DROP', 'ACCEPT'])}"
                 for _ in range(rng.randrange(1, 3))]
        legacy = "\n".join(["*filter", ":INPUT ACCEPT [0:0]", *rules, "COMMIT"]) + "\n"
    return Generated("\n".join(lines) + "\n", nft, legacy)


def run_seed(namespaces: Namespaces, seed: int, probes: list[int] | None = None) -> int:
    """Load one random ruleset and check every probe; returns the number of probes checked.
    Raises AssertionError (with the ruleset) on the first disagreement."""
    top = topology(namespaces)
    legacy_ok = shutil.which("iptables-legacy-restore") is not None
    gen = generate(seed, top, legacy_ok)
    ns_run(top.fw, "iptables-nft-restore", input=gen.iptables)
    ns_run(top.fw, "nft", "-f", "-", input=gen.nft)
    if gen.legacy:
        ns_run(top.fw, "iptables-legacy-restore", input=gen.legacy)
    target = resolve(top.fw)
    ruleset = run_in(target, load_ruleset)
    net = run_in(target, net_context)
    ev = Evaluator(ruleset)
    checked = 0
    for i, port in enumerate(probes or PORTS):
        sport = 30000 + i
        pkt = Packet("udp", top.client_ip, top.fw_ip, sport, port, iif=top.fw_if)
        verdict = ev.evaluate(pkt, net)
        result = verdict.to_json()
        if not verdict.certain:
            continue  # an honest "cannot tell" is allowed; a confident wrong answer is not
        kernel = send(top, "udp", top.fw_ip, port, sport, listen_ns=top.fw, wait=0.3)
        try:
            agree(result, kernel)
        except AssertionError as exc:
            raise AssertionError(
                f"seed {seed} port {port}: fwtop {result['verdict']} "
                f"rule={result['rule']} policy={result['policy']}\nkernel {kernel}\n"
                f"--- iptables-nft\n{gen.iptables}--- nft\n{gen.nft}--- legacy\n{gen.legacy}"
            ) from exc
        checked += 1
    return checked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--first", type=int, default=1000)
    args = parser.parse_args(argv)
    start = time.monotonic()
    probes = 0
    for seed in range(args.first, args.first + args.seeds):
        nss = Namespaces()
        try:
            probes += run_seed(nss, seed)
        finally:
            nss.close()
    took = time.monotonic() - start
    print(f"{args.seeds} random rulesets, {probes} probes checked against the kernel, "
          f"0 disagreements, {took:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
