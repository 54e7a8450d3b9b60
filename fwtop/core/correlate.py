"""Tie a drop event to the rule or policy that dropped it, and say how sure that is.

The evaluator names the deciding rule; the event's own LOG prefix / NFLOG group confirms it when
the log rule that produced the event lies on the evaluated path (`log-rule`), or contradicts it
when it does not (then the answer is marked uncertain). Pure; results are cached per flow, since
an incident repeats the same few flows thousands of times.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from fwtop.core.evaluator import Evaluator, NetContext, Packet, Verdict
from fwtop.core.events import DropEvent
from fwtop.core.model import Policy, PortMatch, Rule, Ruleset


@dataclass(frozen=True, slots=True)
class Attribution:
    verdict: str  # drop, reject, accept (the evaluator disagrees with the drop), unknown
    key: str | None  # the deciding rule's or policy's key (Rule.key / Policy.key)
    label: str  # short: "INPUT #4", "INPUT policy", "?"
    how: str  # evaluated, log-rule, none
    certain: bool
    summary: str  # one line in plain words
    rule: Rule | None = None
    policy: Policy | None = None

    def to_json(self) -> dict[str, object]:
        """The fields `fwtop watch` adds to a drop line."""
        rule = policy = None
        if self.rule is not None:
            r = self.rule
            rule = {"backend": r.backend, "family": r.family, "table": r.table,
                    "chain": r.chain, "handle": r.handle, "position": r.position,
                    "comment": r.comment, "text": r.text}
        if self.policy is not None:
            p = self.policy
            policy = {"backend": p.backend, "family": p.family, "table": p.table,
                      "chain": p.chain, "verdict": p.verdict}
        return {"rule": rule, "policy": policy, "attributed": self.how,
                "certain": self.certain, "why": self.summary}


def packet_of(event: DropEvent) -> Packet | None:
    """The evaluator's packet for a logged drop (None when the event lacks addresses). The hook
    and interfaces are where the log rule saw it, i.e. after prerouting NAT."""
    if event.src is None or event.dst is None or event.proto is None:
        return None
    hook = event.hook if event.hook in ("input", "forward", "output") else None
    return Packet(proto=event.proto, src=event.src, dst=event.dst, sport=event.sport,
                  dport=event.dport, icmp_type=event.icmp_type, icmp_code=event.icmp_code,
                  iif=event.iif, oif=event.oif, hook=hook, post_nat=hook is not None)


def _log_rule_on_path(v: Verdict, event: DropEvent) -> Rule | bool | None:
    """The log rule on the evaluated path that produced this event; False if the event names a
    prefix/group that no rule on the path logs with; None if the event carries neither."""
    prefix = (event.prefix or "").strip().rstrip(":").strip()
    if not prefix and event.group is None:
        return None
    for step in v.path:
        if step.effect != "log" or step.rule is None:
            continue
        text = step.rule.text + " " + (step.rule.target or "")
        if prefix and prefix in text:
            return step.rule
        if not prefix and event.group is not None and f"group {event.group}" in text:
            return step.rule
    return False


def _where(backend: str, table: str, chain: str) -> str:
    """Short but unambiguous: iptables' filter chains by name alone (INPUT), other iptables
    tables with the table (nat PREROUTING), nft chains with their table (fwlab_filter input)."""
    if backend == "iptables-legacy":
        return f"legacy {chain}" if table == "filter" else f"legacy {table} {chain}"
    if backend in ("iptables-nft", "firewalld") and table == "filter":
        return chain
    return f"{table} {chain}"


def _label(v: Verdict) -> tuple[str | None, str]:
    if v.rule is not None:
        r = v.rule
        return r.key, f"{_where(r.backend, r.table, r.chain)} #{r.position}"
    if v.policy is not None:
        p = v.policy
        return p.key, f"{_where(p.backend, p.table, p.chain)} policy"
    return None, "?"


def attribute(ev: Evaluator, event: DropEvent, net: NetContext | None = None) -> Attribution:
    pkt = packet_of(event)
    if pkt is None:
        return Attribution("unknown", None, "?", "none", False,
                           "the event does not carry the packet's addresses")
    v = ev.evaluate(pkt, net)
    key, label = _label(v)
    certain = v.certain
    how = "evaluated"
    log = _log_rule_on_path(v, event)
    note = ""
    if isinstance(log, Rule):
        how = "log-rule"
        note = f"; logged by {_where(log.backend, log.table, log.chain)} #{log.position}"
    elif log is False:
        certain = False
        note = "; but no rule on the evaluated path logs with this prefix"
    if v.verdict in ("drop", "reject"):
        what = f"{v.verdict} by {label}" if v.rule else f"dropped by the {label}"
        summary = what + note
    elif v.verdict == "accept":
        certain = False
        summary = ("fwtop's evaluation says this packet is accepted: the drop came from "
                   "somewhere fwtop does not see (routing, rp_filter, another hook)" + note)
        key, label = None, "?"
    else:
        summary = "cannot tell" + note
    if not certain and label != "?":
        label += "?"
    decided = v.verdict in ("drop", "reject")
    return Attribution(v.verdict, key, label, how, certain, summary,
                       v.rule if decided else None, v.policy if decided else None)


def attribute_by_counters(ruleset: Ruleset, moved: dict[str, int],
                          event: DropEvent) -> Attribution | None:
    """For a drop that carries no addresses (the drop-reason tracepoint): the drop/reject rules
    and drop policies whose counters moved in the same tick. One of them is a good guess,
    never a certain answer; several are listed."""
    candidates: list[tuple[str, str, Rule | None, Policy | None]] = []
    for rule in ruleset.rules():
        if rule.verdict in ("drop", "reject") and moved.get(rule.key, 0) > 0:
            label = f"{_where(rule.backend, rule.table, rule.chain)} #{rule.position}"
            candidates.append((rule.key, label, rule, None))
    for p in ruleset.policies():
        if p.verdict == "drop" and moved.get(p.key, 0) > 0:
            candidates.append((p.key, f"{_where(p.backend, p.table, p.chain)} policy", None, p))
    if not candidates:
        return None
    if len(candidates) == 1:
        key, label, only_rule, only_policy = candidates[0]
        return Attribution("drop", key, label + "?", "counter", False,
                           f"probably {label}: the only dropping rule or policy whose counter "
                           f"moved in the same tick ({event.reason or 'no addresses'})",
                           only_rule, only_policy)
    labels = ", ".join(c[1] for c in candidates[:3])
    return Attribution("drop", None, f"{len(candidates)} candidates?", "counter", False,
                       f"one of {labels}{'…' if len(candidates) > 3 else ''}: their counters "
                       "moved in the same tick", None, None)


class Correlator:
    """Attribution with a per-flow cache for one ruleset; rebuilt when the ruleset changes."""

    def __init__(self, capacity: int = 4096) -> None:
        self._ruleset: Ruleset | None = None
        self._ev: Evaluator | None = None
        self._cache: OrderedDict[tuple[object, ...], Attribution] = OrderedDict()
        self._capacity = capacity
        self._uses_sport = True
        self.hits = self.misses = 0

    @property
    def evaluator(self) -> Evaluator | None:
        return self._ev

    def use(self, ruleset: Ruleset) -> None:
        if ruleset is not self._ruleset:
            self._ruleset = ruleset
            self._ev = Evaluator(ruleset)
            self._cache.clear()
            # Clients pick a new source port per connection: leave it out of the cache key
            # unless some rule looks at it.
            self._uses_sport = any(isinstance(m, PortMatch) and m.field == "sport"
                                   for r in ruleset.rules() for m in r.matches)

    def _key(self, event: DropEvent) -> tuple[object, ...]:
        sport = event.sport if self._uses_sport else None
        return (event.proto, event.src, event.dst, sport, event.dport, event.icmp_type,
                event.icmp_code, event.iif, event.oif, event.hook, event.prefix, event.group)

    def peek(self, event: DropEvent) -> tuple[bool, Attribution | None]:
        """(known, attribution) from the per-flow cache only: never evaluates, so another
        thread may call it while one thread evaluates (one dict look-up)."""
        if self._ev is None:
            return False, None
        hit = self._cache.get(self._key(event))
        return hit is not None, hit

    def attribute(self, event: DropEvent, net: NetContext | None = None) -> Attribution | None:
        if self._ev is None:
            return None
        key = self._key(event)
        hit = self._cache.get(key)
        if hit is not None:
            self.hits += 1
            self._cache.move_to_end(key)
            return hit
        self.misses += 1
        result = attribute(self._ev, event, net)
        self._cache[key] = result
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        return result
