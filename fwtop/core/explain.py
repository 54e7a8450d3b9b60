"""Plain-words explanations of an evaluator verdict, recognising the classic mistakes of the
troubleshooting guide: a DROP shadowing a later ACCEPT (rule ordering), a default DROP policy
with a near-miss allow (wrong port or address), an allow for the pre-DNAT port in FORWARD,
return traffic with no ESTABLISHED rule, ICMP needed for path-MTU discovery blocked, several
base chains on one hook, and the symptom a client sees (timed out vs refused).

Pure: the caller supplies the listener (who, if anyone, listens on the destination port).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fwtop.core.evaluator import Evaluator, Packet, Step, Verdict
from fwtop.core.model import AddrMatch, CtStateMatch, Match, PortMatch, Rule


@dataclass(frozen=True, slots=True)
class ListenerInfo:
    pid: int | None
    name: str | None


def _rule_ref(rule: Rule) -> str:
    ref = f"{rule.chain} #{rule.position}"
    if rule.backend != "iptables-nft" or rule.table != "filter":
        ref = f"{rule.backend} {rule.family} {rule.table} {ref}"
    return ref


def _rule_words(rule: Rule) -> str:
    text = f"`{rule.text}`" if rule.text else f"({rule.verdict})"
    if rule.comment:
        text += f' ("{rule.comment}")'
    return text


def _flow(pkt: Packet) -> str:
    if pkt.proto in ("tcp", "udp") and pkt.dport is not None:
        return f"{pkt.proto} {pkt.src} → {pkt.dst}:{pkt.dport}"
    if pkt.proto in ("icmp", "icmpv6") and pkt.icmp_type is not None:
        return f"{pkt.proto} type {pkt.icmp_type} {pkt.src} → {pkt.dst}"
    return f"{pkt.proto} {pkt.src} → {pkt.dst}"


def _describe_match(m: Match) -> str:
    if isinstance(m, PortMatch):
        ports = ",".join(str(a) if a == b else f"{a}-{b}" for a, b in m.ranges) or \
            f"@{m.set_name}"
        return f"{m.field} {'!= ' if m.negate else ''}{ports}"
    if isinstance(m, AddrMatch):
        return f"{m.field} {'!= ' if m.negate else ''}{','.join(m.values) or '@' + str(m.set_name)}"
    return type(m).__name__


def _deciding_hook(v: Verdict) -> str:
    for step in reversed(v.path):
        if step.effect in ("drop", "reject", "queue") or step.effect.startswith("policy-"):
            return step.hook
    return v.hooks[-1] if v.hooks else ""


def explain(ev: Evaluator, v: Verdict, listener: ListenerInfo | None = None,
            listener_checked: bool = False) -> list[str]:
    """Reasons, most important first (the evaluator's own uncertainty reasons follow)."""
    reasons: list[str] = []
    pkt = v.packet or v.original
    orig = v.original or pkt
    if pkt is None or orig is None:
        return list(v.reasons)
    hook = _deciding_hook(v)
    flow = _flow(orig)
    nat_reasons = [r for r in v.reasons if r.startswith(("DNAT ", "REDIRECT "))]

    if v.verdict in ("drop", "reject"):
        if v.rule is not None:
            reasons.append(f"{flow} matched {v.verdict.upper()} at {_rule_ref(v.rule)} "
                           f"{_rule_words(v.rule)}")
            reasons += _shadowed_accepts(ev, v.rule, pkt, hook)
        elif v.policy is not None:
            p = v.policy
            reasons.append(f"{flow}: no rule in {p.backend} {p.family} {p.table} {p.chain} "
                           f"accepted it, so the chain's policy {p.verdict.upper()} decided "
                           f"(default deny)")
        reasons += nat_reasons
        pre_dnat = _pre_dnat_allow(ev, v, orig, pkt, hook)
        reasons += pre_dnat
        if v.policy is not None and not pre_dnat:
            reasons += _near_misses(ev, v, pkt, hook)
        reasons += _other_base_chain_accepted(v)
        if pkt.ct_state in ("established", "related"):
            reasons += _no_established_rule(ev, pkt, hook)
        if (pkt.proto, pkt.icmp_type) in (("icmp", 3), ("icmpv6", 2)) and (
                pkt.proto == "icmpv6" or pkt.icmp_code == 4):
            reasons.append("this is the ICMP 'fragmentation needed' / 'packet too big' message "
                           "that path-MTU discovery depends on: dropping it makes large "
                           "transfers hang while small requests work (PMTU black hole)")
        if v.verdict == "drop":
            reasons.append("symptom: the client sees a timeout (DROP sends nothing back)")
        else:
            reasons.append("symptom: the client sees 'connection refused' or 'unreachable' at "
                           "once (REJECT answers)")
    elif v.verdict == "accept":
        reasons.append(f"{flow} is accepted by every base chain on its path "
                       f"({' → '.join(v.hooks)})")
        reasons += nat_reasons
        nat = [s for s in v.path if s.effect == "dnat"]
        if nat and (orig.dst, orig.dport) != (pkt.dst, pkt.dport):
            reasons.append(f"after DNAT it goes to {pkt.dst}:{pkt.dport}")
        if listener_checked and "input" in v.hooks and pkt.proto in ("tcp", "udp"):
            if listener is None:
                reasons.append(f"but nothing listens on {pkt.proto}/{pkt.dport} here: the "
                               "client sees 'connection refused' (the firewall is not the "
                               "problem)" if pkt.proto == "tcp" else
                               f"but nothing listens on udp/{pkt.dport} here: the kernel "
                               "answers ICMP port unreachable")
            else:
                who = f"{listener.name} (pid {listener.pid})" if listener.pid else "a socket"
                reasons.append(f"{who} listens on {pkt.proto}/{pkt.dport}")
    elif v.verdict == "queue":
        reasons.append("the packet is handed to a userspace queue (NFQUEUE): that program "
                       "decides")
    return reasons + [r for r in v.reasons if r not in reasons]


def _shadowed_accepts(ev: Evaluator, rule: Rule, pkt: Packet, hook: str) -> list[str]:
    chain = ev.chains.get(rule.chain_id)
    if chain is None:
        return []
    out = []
    for later in chain.rules[rule.position:]:
        if later.verdict == "accept" and ev.matches(later, pkt, hook) is True:
            out.append(f"rule ordering: the ACCEPT at {_rule_ref(later)} {_rule_words(later)} "
                       f"would let it in, but #{rule.position} drops it first: move the "
                       f"ACCEPT above #{rule.position}")
            break
    return out


def _near_misses(ev: Evaluator, v: Verdict, pkt: Packet, hook: str) -> list[str]:
    """Accept rules in the deciding chain that miss by one port or address: often a typo."""
    if v.policy is None:
        return []
    p = v.policy
    chain = ev.chains.get((p.backend, p.family, p.table, p.chain))
    if chain is None:
        return []
    out = []
    for rule in chain.rules:
        if rule.verdict != "accept":
            continue
        failing = ev.failing(rule, pkt, hook)
        if len(failing) == 1 and _close(failing[0], pkt):
            out.append(f"near miss: the ACCEPT at {_rule_ref(rule)} {_rule_words(rule)} is for "
                       f"{_describe_match(failing[0])}, not this packet's: a typo?")
    return out[:3]


def _one_edit(a: str, b: str) -> bool:
    """Same length with one character different, or one character inserted or dropped."""
    if a == b:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b, strict=True)) == 1
    if abs(len(a) - len(b)) != 1:
        return False
    short, long_ = sorted((a, b), key=len)
    return any(long_[:i] + long_[i + 1:] == short for i in range(len(long_)))


def _close(m: Match, pkt: Packet) -> bool:
    """A port or address that looks like a typo of the packet's (9091 for 9090)."""
    if isinstance(m, PortMatch) and not m.negate and m.set_name is None:
        port = pkt.dport if m.field == "dport" else pkt.sport
        if port is None:
            return False
        return any(lo == hi and (abs(lo - port) == 1 or _one_edit(str(lo), str(port)))
                   for lo, hi in m.ranges)
    if isinstance(m, AddrMatch) and not m.negate and m.set_name is None:
        addr = pkt.src if m.field == "src" else pkt.dst
        return any(_one_edit(v.split("/")[0], addr) for v in m.values)
    return False


def _pre_dnat_allow(ev: Evaluator, v: Verdict, orig: Packet, pkt: Packet,
                    hook: str) -> list[str]:
    if hook != "forward" or (orig.dst, orig.dport) == (pkt.dst, pkt.dport):
        return []
    out = []
    for chain in ev.hook_chains("forward", pkt.family):
        for rule in chain.rules:
            if rule.verdict != "accept":
                continue
            pre = Packet(**{**_fields(pkt), "dst": orig.dst, "dport": orig.dport})
            if ev.matches(rule, pre, "forward") is True and \
                    ev.matches(rule, pkt, "forward") is not True:
                out.append(f"the ACCEPT at {_rule_ref(rule)} {_rule_words(rule)} allows the "
                           f"pre-DNAT destination {orig.dst}:{orig.dport}, but FORWARD sees "
                           f"the packet after DNAT as {pkt.dst}:{pkt.dport}: allow the "
                           f"translated address and port")
    return out[:2]


def _fields(pkt: Packet) -> dict[str, Any]:
    return {name: getattr(pkt, name) for name in Packet.__dataclass_fields__}


def _other_base_chain_accepted(v: Verdict) -> list[str]:
    decided = v.rule.chain_id if v.rule is not None else (
        (v.policy.backend, v.policy.family, v.policy.table, v.policy.chain) if v.policy else None)
    accepted: list[Step] = []
    for s in v.path:
        if s.effect == "accept" and (s.backend, s.family, s.table, s.chain) != decided:
            accepted.append(s)
    if not accepted:
        return []
    s = accepted[-1]
    return [f"{s.backend} {s.family} {s.table} {s.chain} accepted it, but every base chain on "
            f"a hook runs: an accept in one does not stop a drop in the next"]


def _no_established_rule(ev: Evaluator, pkt: Packet, hook: str) -> list[str]:
    for chain in ev.hook_chains(hook, pkt.family):
        for rule in chain.rules:
            for m in rule.matches:
                if isinstance(m, CtStateMatch) and not m.negate and \
                        ("established" in m.states or "related" in m.states):
                    return []
    return [f"this is return traffic (ct state {pkt.ct_state}) and no rule on {hook} accepts "
            "established/related packets: replies are dropped (add `ct state "
            "established,related accept` / `-m conntrack --ctstate ESTABLISHED,RELATED -j "
            "ACCEPT`)"]


def summary_line(v: Verdict) -> str:
    word = {"accept": "ACCEPTED", "drop": "DROPPED", "reject": "REJECTED",
            "queue": "QUEUED"}.get(v.verdict, "UNKNOWN")
    by = ""
    if v.rule is not None:
        by = f" by {_rule_ref(v.rule)}"
    elif v.policy is not None:
        p = v.policy
        by = f" by the policy of {p.backend} {p.family} {p.table} {p.chain}"
    sure = "" if v.certain else " (not certain: see below)"
    return f"{word}{by}{sure}"
