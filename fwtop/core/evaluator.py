"""Run one packet through the normalized ruleset the way the kernel does, and say why.

The hook path: prerouting (DNAT / REDIRECT applied), then the routing decision from the
namespace's local addresses and routes (input for a local destination, forward otherwise, or
output + postrouting for a locally generated packet). On each hook every base chain of every
backend runs in priority order: an accept ends only its own base chain, a drop or reject is final.
Jumps, gotos, returns and policies behave as in the kernel.

Matching is three-valued. A match that depends on what a single packet does not carry (limit,
recent, connmark, an unknown expression, an unspecified port or interface) is "unknown": the
evaluation goes on as if it did not match, and the answer is marked `certain: False` if that rule
could have changed the outcome. A confident wrong answer is the one thing it must not give.

Pure: stdlib only. The caller supplies the routing context (fwtop.firewall.routing).
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from fwtop.core.model import (
    AddrMatch,
    Chain,
    ConcatMatch,
    CtStateMatch,
    IcmpMatch,
    IfaceMatch,
    Match,
    NamedSet,
    Policy,
    PortMatch,
    ProtoMatch,
    Rule,
    Ruleset,
    TimeMatch,
    UnknownMatch,
)
from fwtop.core.nftjson import concat_values

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Tri = bool | None  # True, False, or None = cannot tell from this packet

HOOK_ORDER = ("prerouting", "input", "forward", "output", "postrouting")
ICMP_FRAG_NEEDED = ("icmp", 3, 4)
ICMPV6_TOO_BIG = ("icmpv6", 2, None)


@dataclass(frozen=True, slots=True)
class Packet:
    """What is known about the packet. `iif`/`oif` None = not given (a match on them is
    unknown); `hook` forces the routing decision (input, forward or output)."""

    proto: str  # tcp, udp, icmp, icmpv6, or a protocol name/number
    src: str
    dst: str
    sport: int | None = None
    dport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    iif: str | None = None
    oif: str | None = None
    hook: str | None = None
    ct_state: str = "new"
    post_nat: bool = False  # seen after prerouting NAT (a logged drop): do not translate again

    @property
    def family(self) -> str:
        return "ip6" if ":" in self.dst or ":" in self.src else "ip"


@dataclass(frozen=True, slots=True)
class Route:
    network: str  # "10.0.0.0/24", "default" = 0.0.0.0/0 or ::/0
    oif: str | None
    metric: int = 0


@dataclass(frozen=True, slots=True)
class NetContext:
    """The namespace's local addresses (every address on an interface, with its interface) and
    its routes, for the routing decision."""

    local: tuple[tuple[str, str], ...] = ()  # (address, interface)
    routes: tuple[Route, ...] = ()

    def is_local(self, addr: str) -> bool:
        ip = _ip(addr)
        if ip.is_loopback:
            return True
        return any(_same_ip(a, ip) for a, _ in self.local)

    def iface_of(self, addr: str) -> str | None:
        ip = _ip(addr)
        for a, dev in self.local:
            if _same_ip(a, ip):
                return dev
        return None

    def route(self, addr: str) -> str | None:
        """The outgoing interface for `addr` (longest prefix, then lowest metric)."""
        ip = _ip(addr)
        best: tuple[int, int, str | None] | None = None
        for r in self.routes:
            net = _network("0.0.0.0/0" if r.network == "default" and ip.version == 4 else
                           "::/0" if r.network == "default" else r.network)
            if net is None or net.version != ip.version or ip not in net:
                continue
            cand = (net.prefixlen, -r.metric, r.oif)
            if best is None or cand[:2] > best[:2]:
                best = cand
        return best[2] if best else None


def _same_ip(text: str, ip: IPAddress) -> bool:
    try:
        return _ip(text) == ip
    except ValueError:
        return False


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """One rule or policy the packet met that mattered (matched, maybe matched, or decided)."""

    backend: str
    family: str
    table: str
    chain: str
    position: int | None  # None for a policy
    handle: int | None
    comment: str | None
    text: str
    effect: str  # accept, drop, reject, jump, goto, return, log, dnat, continue, maybe, policy-*
    hook: str = ""
    rule: Rule | None = None

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.backend, "family": self.family, "table": self.table,
                "chain": self.chain, "position": self.position, "handle": self.handle,
                "comment": self.comment, "text": self.text, "effect": self.effect}


@dataclass(slots=True)
class Verdict:
    verdict: str  # accept, drop, reject, queue, unknown
    certain: bool
    rule: Rule | None = None
    policy: Policy | None = None
    path: list[Step] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)
    maybe: list[tuple[Rule, str]] = field(default_factory=list)  # (rule, why unknown)
    packet: Packet | None = None  # after NAT
    original: Packet | None = None  # as given

    def to_json(self) -> dict[str, Any]:
        rule = None
        if self.rule is not None:
            r = self.rule
            rule = {"backend": r.backend, "family": r.family, "table": r.table, "chain": r.chain,
                    "handle": r.handle, "position": r.position, "comment": r.comment,
                    "text": r.text}
        policy = None
        if self.policy is not None:
            p = self.policy
            policy = {"backend": p.backend, "family": p.family, "table": p.table,
                      "chain": p.chain, "verdict": p.verdict}
        return {"verdict": self.verdict, "certain": self.certain, "rule": rule,
                "policy": policy, "path": [s.to_json() for s in self.path],
                "reasons": list(self.reasons)}


# --- match compilation ------------------------------------------------------------------------

_NET_CACHE: dict[str, IPNetwork | tuple[IPAddress, IPAddress] | None] = {}


_IP_CACHE: dict[str, IPAddress] = {}


def _ip(text: str) -> IPAddress:
    """ipaddress.ip_address, cached (an incident repeats the same addresses; parsing them was
    a fifth of an evaluation). Raises ValueError like ip_address."""
    ip = _IP_CACHE.get(text)
    if ip is None:
        ip = ipaddress.ip_address(text)
        if len(_IP_CACHE) > 100_000:
            _IP_CACHE.clear()
        _IP_CACHE[text] = ip
    return ip


def _network(text: str) -> IPNetwork | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def _addr_value(text: str) -> IPNetwork | tuple[IPAddress, IPAddress] | None:
    """A prefix, a single address, or an inclusive range `a-b` (cached: rulesets repeat)."""
    hit = _NET_CACHE.get(text, False)
    if hit is not False:
        return hit  # type: ignore[return-value]
    value: IPNetwork | tuple[IPAddress, IPAddress] | None
    t = text.strip()
    if t.startswith("{"):
        try:
            obj = json.loads(t)
        except ValueError:
            obj = None
        t = _json_addr(obj) or ""
    if "-" in t and "/" not in t:
        lo_s, _, hi_s = t.partition("-")
        try:
            lo, hi = ipaddress.ip_address(lo_s.strip()), ipaddress.ip_address(hi_s.strip())
            value = (lo, hi) if lo.version == hi.version else None
        except ValueError:
            value = None
    else:
        value = _network(t)
    if len(_NET_CACHE) > 200_000:
        _NET_CACHE.clear()
    _NET_CACHE[text] = value
    return value


def _json_addr(obj: Any) -> str | None:
    if isinstance(obj, str):
        return obj
    if isinstance(obj, dict):
        if "prefix" in obj:
            p = obj["prefix"]
            return f"{p.get('addr')}/{p.get('len')}"
        if "range" in obj and isinstance(obj["range"], list) and len(obj["range"]) == 2:
            return f"{obj['range'][0]}-{obj['range'][1]}"
    return None


def _addr_in(ip: IPAddress, value: IPNetwork | tuple[IPAddress, IPAddress] | None) -> Tri:
    if value is None:
        return None
    if isinstance(value, tuple):
        lo, hi = value
        if lo.version != ip.version:
            return False
        return int(lo) <= int(ip) <= int(hi)
    return value.version == ip.version and ip in value


def _port_ranges_from_set(elements: Iterable[str]) -> list[tuple[int, int]] | None:
    out: list[tuple[int, int]] = []
    for e in elements:
        if e.isdigit():
            out.append((int(e), int(e)))
            continue
        try:
            obj = json.loads(e)
        except ValueError:
            return None
        if isinstance(obj, dict) and isinstance(obj.get("range"), list):
            lo, hi = obj["range"]
            if isinstance(lo, int) and isinstance(hi, int):
                out.append((lo, hi))
                continue
        return None
    return out


@dataclass(slots=True)
class _Ctx:
    """Per-evaluation state: the packet's parsed addresses and the sets of the ruleset."""

    pkt: Packet
    src: IPAddress
    dst: IPAddress
    sets: dict[tuple[str, str, str], NamedSet]
    hook: str
    unknown_why: list[str] = field(default_factory=list)
    now: float = 0.0


def _match(m: Match, rule: Rule, ctx: _Ctx) -> Tri:
    pkt = ctx.pkt
    if isinstance(m, ProtoMatch):
        got = _proto_match(m.protos, pkt, rule.family)
        return None if got is None else got != m.negate
    if isinstance(m, AddrMatch):
        ip = ctx.src if m.field == "src" else ctx.dst
        if m.set_name is not None:
            s = ctx.sets.get((rule.family, rule.table, m.set_name))
            if s is None:
                ctx.unknown_why.append(f"set @{m.set_name} not found")
                return None
            values = s.elements
        else:
            values = m.values
        result: Tri = False
        for v in values:
            r = _addr_in(ip, _addr_value(v))
            if r:
                result = True
                break
            if r is None:
                result = None
        if result is None:
            ctx.unknown_why.append(f"address match {m.values or m.set_name} not understood")
            return None
        return result != m.negate
    if isinstance(m, PortMatch):
        if m.proto is not None and m.proto not in ("all", "") and pkt.proto != m.proto:
            return m.negate if rule.backend == "iptables-legacy" else False
        port = pkt.dport if m.field == "dport" else pkt.sport
        if port is None:
            ctx.unknown_why.append(f"the packet has no {m.field} given")
            return None
        if m.set_name is not None:
            s = ctx.sets.get((rule.family, rule.table, m.set_name))
            ranges = _port_ranges_from_set(s.elements) if s is not None else None
            if ranges is None:
                ctx.unknown_why.append(f"set @{m.set_name} not understood")
                return None
        else:
            ranges = list(m.ranges)
        hit = any(lo <= port <= hi for lo, hi in ranges)
        return hit != m.negate
    if isinstance(m, IfaceMatch):
        name = pkt.iif if m.field == "iif" else pkt.oif
        if name is None:
            if (m.field == "iif" and ctx.hook in ("output",)) or (
                    m.field == "oif" and ctx.hook in ("prerouting", "input")):
                hit = False  # the kernel has no such interface on this hook
                return hit != m.negate
            ctx.unknown_why.append(f"the packet's {m.field} is not known (pass --{m.field})")
            return None
        hit = any(_iface_is(name, pattern) for pattern in m.names)
        return hit != m.negate
    if isinstance(m, IcmpMatch):
        if pkt.proto != m.family:
            return False if not m.negate else True
        if m.types:
            if pkt.icmp_type is None:
                ctx.unknown_why.append("the ICMP type is not given")
                return None
            if pkt.icmp_type not in m.types:
                return m.negate
        if m.code is not None:
            if pkt.icmp_code is None:
                ctx.unknown_why.append("the ICMP code is not given")
                return None
            if pkt.icmp_code != m.code:
                return m.negate
        return not m.negate
    if isinstance(m, CtStateMatch):
        hit = pkt.ct_state in m.states
        return hit != m.negate
    if isinstance(m, ConcatMatch):
        return _concat(m, rule, ctx)
    if isinstance(m, TimeMatch):
        hit = (m.start is None or ctx.now >= m.start) and (m.stop is None or ctx.now < m.stop)
        return hit != m.negate
    if isinstance(m, UnknownMatch):
        ctx.unknown_why.append(
            f"`{_short(m.text)}` depends on state a single packet does not carry"
            if m.stateful else f"`{_short(m.text)}` is not modelled")
        return None
    return None  # pragma: no cover - every Match kind is handled above


_PROTO_NUMBERS = {"1": "icmp", "6": "tcp", "17": "udp", "58": "icmpv6", "132": "sctp"}


def _field_value(name: str, ctx: _Ctx) -> str | None:
    pkt = ctx.pkt
    if name == "src":
        return str(ctx.src)
    if name == "dst":
        return str(ctx.dst)
    if name == "proto":
        return pkt.proto
    if name in ("sport", "dport"):
        port = pkt.sport if name == "sport" else pkt.dport
        return None if port is None else str(port)
    if name in ("iif", "oif"):
        return pkt.iif if name == "iif" else pkt.oif
    return None


def _norm(name: str, value: str) -> str:
    if name in ("src", "dst"):
        try:
            return str(_ip(value))
        except ValueError:
            return value
    if name == "proto":
        return _PROTO_NUMBERS.get(value, value)
    return value


def _concat(m: ConcatMatch, rule: Rule, ctx: _Ctx) -> Tri:
    got = [_field_value(f, ctx) for f in m.fields]
    if any(v is None for v in got):
        missing = [f for f, v in zip(m.fields, got, strict=True) if v is None]
        ctx.unknown_why.append(f"the packet's {', '.join(missing)} is not known")
        return None
    if m.set_name is not None:
        s = ctx.sets.get((rule.family, rule.table, m.set_name))
        if s is None:
            ctx.unknown_why.append(f"set @{m.set_name} not found")
            return None
        elements = []
        for text in s.elements:
            try:
                elem = concat_values(json.loads(text))
            except ValueError:
                elem = None
            if elem is None or len(elem) != len(m.fields):
                ctx.unknown_why.append(f"set @{m.set_name} has elements fwtop does not model")
                return None
            elements.append(elem)
    else:
        elements = list(m.values)
    want = tuple(_norm(f, v) for f, v in zip(m.fields, got, strict=True))  # type: ignore[arg-type]
    hit = any(tuple(_norm(f, v) for f, v in zip(m.fields, e, strict=True)) == want
              for e in elements)
    return hit != m.negate


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _iface_is(name: str, pattern: str) -> bool:
    if pattern.endswith(("+", "*")):
        return name.startswith(pattern[:-1])
    return name == pattern


_NFPROTO = {"ipv4": "ip", "ipv6": "ip6"}


def _proto_match(protos: Sequence[str], pkt: Packet, family: str) -> Tri:
    for p in protos:
        p = p.lower()
        if p in ("all", "0"):
            return True
        if p.startswith("nfproto:"):
            if _NFPROTO.get(p[8:], p[8:]) == pkt.family:
                return True
            continue
        if p == pkt.proto or (p in ("icmp6", "ipv6-icmp") and pkt.proto == "icmpv6"):
            return True
    return False


def rule_matches(rule: Rule, ctx: _Ctx) -> Tri:
    """All matches must hold: any False is False; else any unknown is unknown."""
    result: Tri = True
    for m in rule.matches:
        r = _match(m, rule, ctx)
        if r is False:
            return False
        if r is None:
            result = None
    return result


# --- NAT --------------------------------------------------------------------------------------

_IPT_TO = re.compile(r"--to-(?:destination|ports?)\s+(\S+)")


def nat_target(rule: Rule) -> tuple[str, str | None, int | None] | None:
    """(kind, address, port) of a DNAT/REDIRECT rule's translation, or None if not one."""
    t = rule.target or ""
    word = t.split(" ", 1)[0]
    if word in ("DNAT", "REDIRECT"):
        m = _IPT_TO.search(t)
        if not m:
            return (word.lower(), None, None)
        spec = m.group(1)
        if word == "REDIRECT":
            port = spec.split("-")[0]
            return ("redirect", None, int(port) if port.isdigit() else None)
        addr, port = _split_hostport(spec)
        return ("dnat", addr, port)
    if word in ("dnat", "redirect"):
        try:
            args = json.loads(t[len(word):].strip() or "{}")
        except ValueError:
            return (word, None, None)
        if not isinstance(args, dict):
            return (word, None, None)
        addr = args.get("addr")
        port = args.get("port")
        return (word, addr if isinstance(addr, str) else None,
                port if isinstance(port, int) else None)
    return None


def _split_hostport(spec: str) -> tuple[str | None, int | None]:
    spec = spec.split("-")[0] if spec.count(":") <= 1 else spec
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        port = rest.lstrip(":")
        return host, int(port) if port.isdigit() else None
    if spec.count(":") == 1:
        host, _, port = spec.partition(":")
        port = port.split("-")[0]
        return host or None, int(port) if port.isdigit() else None
    return spec or None, None


# --- the walk ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _ChainResult:
    verdict: str  # accept, drop, reject, queue, return (fell off / returned), unknown
    rule: Rule | None


class Evaluator:
    """Built once per ruleset (indexes chains, sets); `evaluate(packet, ctx)` per packet."""

    def __init__(self, ruleset: Ruleset, clock: Callable[[], float] = time.time) -> None:
        self.ruleset = ruleset
        self.clock = clock  # for `-m time` deadlines (fwtop's own temporary rules use them)
        self.chains: dict[tuple[str, str, str, str], Chain] = {}
        self.sets: dict[tuple[str, str, str], NamedSet] = {}
        self.base: dict[str, list[Chain]] = {}
        for t in ruleset.tables:
            for s in t.sets:
                self.sets[(t.family, t.name, s.name)] = s
            for c in t.chains:
                self.chains[c.id] = c
                if c.hook is not None:
                    self.base.setdefault(c.hook, []).append(c)
        for chains in self.base.values():
            chains.sort(key=lambda c: c.priority if c.priority is not None else 0)
        self._index: dict[tuple[str, str, str, str], _DstIndex | None] = {}

    def matches(self, rule: Rule, pkt: Packet, hook: str) -> Tri:
        """Whether one rule matches `pkt` on `hook` (True, False, or None = cannot tell)."""
        try:
            ctx = _Ctx(pkt, _ip(pkt.src), _ip(pkt.dst),
                       self.sets, hook, now=self.clock())
        except ValueError:
            return None
        return rule_matches(rule, ctx)

    def failing(self, rule: Rule, pkt: Packet, hook: str) -> list[Match]:
        """The rule's matches that are False for `pkt` (for "near miss" explanations)."""
        try:
            ctx = _Ctx(pkt, _ip(pkt.src), _ip(pkt.dst),
                       self.sets, hook, now=self.clock())
        except ValueError:
            return []
        return [m for m in rule.matches if _match(m, rule, ctx) is False]

    # The chains of one hook that see packets of this family.
    def hook_chains(self, hook: str, family: str) -> list[Chain]:
        return [c for c in self.base.get(hook, []) if c.family in (family, "inet")]

    def evaluate(self, pkt: Packet, net: NetContext | None = None) -> Verdict:
        net = net or NetContext()
        original = pkt
        result = Verdict("accept", True, original=original)
        family = pkt.family
        try:
            ctx = _Ctx(pkt, _ip(pkt.src), _ip(pkt.dst),
                       self.sets, "", now=self.clock())
        except ValueError as exc:
            result.verdict, result.certain = "unknown", False
            result.reasons.append(f"bad address: {exc}")
            return result

        # Locally generated: output, postrouting (and, to a local address, input over lo).
        # Otherwise: prerouting, then input or forward by the routing decision after DNAT.
        outbound = pkt.hook == "output" or (
            pkt.hook is None and pkt.iif is None and net.is_local(pkt.src))
        if outbound:
            if pkt.oif is None:
                pkt = replace(pkt, oif="lo" if net.is_local(pkt.dst) else net.route(pkt.dst))
            ctx.pkt = pkt
            stages: list[str] = ["output", "postrouting"]
            if net.is_local(pkt.dst):
                stages.append("input")
            for hook in stages:
                if hook == "input":
                    ctx.pkt = replace(ctx.pkt, iif="lo", oif=None)
                if self._run_hook(hook, family, ctx, result):
                    break
        elif not self._run_hook("prerouting", family, ctx, result):
            pkt = ctx.pkt  # after DNAT
            if pkt.hook in ("input", "forward"):
                nxt = pkt.hook
            else:
                nxt = "input" if net.is_local(pkt.dst) else "forward"
            if nxt == "forward" and pkt.oif is None:
                pkt = replace(pkt, oif=net.route(pkt.dst))
            ctx.pkt = pkt
            for hook in ([nxt] if nxt == "input" else [nxt, "postrouting"]):
                if self._run_hook(hook, family, ctx, result):
                    break
        result.packet = ctx.pkt
        self._settle_maybes(result)
        return result

    @staticmethod
    def _settle_maybes(result: Verdict) -> None:
        """A rule that may have matched makes the answer uncertain when its verdict differs
        from the answer (a jump or an unknown verdict always could)."""
        for rule, why in result.maybe:
            v: str = rule.verdict
            if v == "accept" and nat_target(rule) is not None:
                v = "nat"
            if v != result.verdict or v in ("jump", "goto", "unknown", "return", "nat"):
                result.certain = False
                result.reasons.append(
                    f"{_where(rule)} `{_short(rule.text, 80)}` may match ({why}); "
                    f"if it does, its verdict is {rule.verdict}")
            elif result.rule is not None and rule is not result.rule:
                result.reasons.append(
                    f"the {v} may come from {_where(rule)} instead ({why})")

    def _run_hook(self, hook: str, family: str, ctx: _Ctx, result: Verdict) -> bool:
        """Run every base chain on `hook`; True if the packet was dropped/rejected/queued."""
        ctx.hook = hook
        result.hooks.append(hook)
        chains = [c for c in self.hook_chains(hook, family) if not (
            c.type == "nat" and (ctx.pkt.ct_state != "new" or (
                ctx.pkt.post_nat and hook == "prerouting")))]  # nat: first packet only
        for i, chain in enumerate(chains):
            decided = self._run_base_chain(chain, ctx, result, hook)
            if decided:
                self._same_priority_rivals(chain, chains[i + 1:], ctx, result, hook)
                return True
        return False

    def _run_base_chain(self, chain: Chain, ctx: _Ctx, result: Verdict, hook: str) -> bool:
        """One base chain, its policy included; True if it dropped, rejected or queued."""
        res = self._run_chain(chain, ctx, result, depth=0)
        verdict = res.verdict
        if verdict == "return":  # fell off the base chain: the policy decides
            policy = chain.policy
            pv = policy.verdict if policy is not None else "accept"
            if policy is not None:
                result.path.append(Step(chain.backend, chain.family, chain.table,
                                        chain.name, None, None, None,
                                        f"policy {pv}", f"policy-{pv}", hook))
            if pv in ("drop", "reject", "queue"):
                result.verdict, result.rule, result.policy = pv, None, policy
                return True
            if pv == "unknown":
                result.certain = False
            return False
        if verdict in ("drop", "reject", "queue"):
            result.verdict, result.rule, result.policy = verdict, res.rule, None
            return True
        if verdict == "unknown":
            result.certain = False
            result.reasons.append(f"{_where(res.rule)} has a verdict fwtop cannot follow "
                                  f"(`{_short(res.rule.text if res.rule else '', 80)}`)")
        return False

    def _same_priority_rivals(self, chain: Chain, later: list[Chain], ctx: _Ctx,
                              result: Verdict, hook: str) -> None:
        """Base chains with the same priority on one hook run in an order the kernel does not
        show (the one registered last runs first). If one not yet run would also drop the
        packet, either may be the one that counts it: say so instead of guessing."""
        for rival in later:
            if rival.priority != chain.priority:
                break
            scratch = Verdict("accept", True)
            if self._run_base_chain(rival, ctx, scratch, hook) and scratch.verdict in (
                    "drop", "reject"):
                where = _where(scratch.rule) if scratch.rule else (
                    f"the policy of {rival.backend} {rival.family} {rival.table} {rival.name}")
                result.certain = False
                result.reasons.append(
                    f"{where} would {scratch.verdict} it too, and both base chains have "
                    f"priority {chain.priority} on {hook}: the kernel runs whichever was "
                    f"registered last first, which it does not show, so either may be the one "
                    f"counting these drops")
                return

    def _run_chain(self, chain: Chain, ctx: _Ctx, result: Verdict, depth: int) -> _ChainResult:
        if depth > 32:
            return _ChainResult("unknown", None)
        for rule in self._candidates(chain, ctx):
            ctx.unknown_why.clear()
            hit = rule_matches(rule, ctx)
            if hit is False:
                continue
            if hit is None:
                if rule.verdict != "continue":
                    why = "; ".join(dict.fromkeys(ctx.unknown_why)) or "it cannot be told"
                    result.maybe.append((rule, why))
                    result.path.append(_step(rule, "maybe", ctx.hook))
                continue
            v = rule.verdict
            nat = nat_target(rule) if chain.type == "nat" or v == "accept" else None
            if nat is not None and nat[0] in ("dnat", "redirect"):
                kind, addr, port = nat
                before = ctx.pkt
                new = ctx.pkt
                if kind == "redirect":
                    new = replace(new, dst=_redirect_address(new, ctx))
                elif addr is not None:
                    new = replace(new, dst=addr)
                if port is not None:
                    new = replace(new, dport=port)
                ctx.pkt = new
                try:
                    ctx.dst = _ip(new.dst)
                except ValueError:
                    pass
                result.path.append(_step(rule, "dnat", ctx.hook))
                result.reasons.append(
                    f"{kind.upper()} at {_where(rule)} rewrote {before.dst}:{before.dport} "
                    f"to {new.dst}:{new.dport}")
                return _ChainResult("accept", rule)
            if v == "continue":
                result.path.append(_step(rule, "log" if _is_log(rule) else "continue",
                                         ctx.hook))
                continue
            if v in ("jump", "goto"):
                target = self.chains.get((chain.backend, chain.family, chain.table,
                                          rule.target or ""))
                result.path.append(_step(rule, v, ctx.hook))
                if target is None:
                    result.certain = False
                    result.reasons.append(f"{_where(rule)} jumps to a chain fwtop did not read "
                                          f"({rule.target})")
                    continue
                sub = self._run_chain(target, ctx, result, depth + 1)
                if sub.verdict == "return":
                    if v == "goto":
                        return _ChainResult("return", None)
                    continue
                return _ChainResult(sub.verdict, sub.rule)
            if v == "return":
                result.path.append(_step(rule, "return", ctx.hook))
                return _ChainResult("return", rule)
            result.path.append(_step(rule, v, ctx.hook))
            return _ChainResult(v, rule)
        return _ChainResult("return", None)

    def _candidates(self, chain: Chain, ctx: _Ctx) -> Iterable[Rule]:
        """The chain's rules that can match, in order: all of them for a short chain; for a
        long one, only those whose exact destination address is the packet's, merged with the
        rules that do not pin one (kube-proxy-like chains of thousands of -d IP/32 rules)."""
        if len(chain.rules) < 64:
            return chain.rules
        if chain.id not in self._index:
            self._index[chain.id] = _DstIndex.build(chain)
        idx = self._index[chain.id]
        if idx is None:
            return chain.rules
        return idx.candidates(ctx.dst)


def _redirect_address(pkt: Packet, ctx: _Ctx) -> str:
    """REDIRECT sends to the host itself: the loopback address for locally generated packets,
    else the incoming interface's primary address (the same host either way)."""
    return "::1" if pkt.family == "ip6" else "127.0.0.1"


def _is_log(rule: Rule) -> bool:
    t = (rule.target or "").split(" ", 1)[0].lower()
    return t in ("log", "nflog", "ulog") or " log " in f" {rule.text} "


def _where(rule: Rule | None) -> str:
    if rule is None:
        return "?"
    return f"{rule.backend} {rule.family} {rule.table} {rule.chain} #{rule.position}"


def _step(rule: Rule, effect: str, hook: str) -> Step:
    return Step(rule.backend, rule.family, rule.table, rule.chain, rule.position, rule.handle,
                rule.comment, rule.text, effect, hook, rule)


class _DstIndex:
    """Rules of a long chain by exact destination address, plus the wildcard ones."""

    __slots__ = ("by_dst", "rules", "wild")

    def __init__(self, rules: tuple[Rule, ...]) -> None:
        self.rules = rules
        self.by_dst: dict[IPAddress, list[int]] = {}
        self.wild: list[int] = []

    @classmethod
    def build(cls, chain: Chain) -> _DstIndex | None:
        idx = cls(chain.rules)
        pinned = 0
        for i, rule in enumerate(chain.rules):
            addr = _exact_dst(rule)
            if addr is None:
                idx.wild.append(i)
            else:
                idx.by_dst.setdefault(addr, []).append(i)
                pinned += 1
        return idx if pinned >= len(chain.rules) // 2 else None

    def candidates(self, dst: IPAddress) -> list[Rule]:
        hits = self.by_dst.get(dst)
        if not hits:
            return [self.rules[i] for i in self.wild]
        merged = sorted(hits + self.wild) if self.wild else hits
        return [self.rules[i] for i in merged]


def _exact_dst(rule: Rule) -> IPAddress | None:
    found: IPAddress | None = None
    for m in rule.matches:
        if isinstance(m, AddrMatch) and m.field == "dst":
            if m.negate or m.set_name is not None or len(m.values) != 1:
                return None
            value = _addr_value(m.values[0])
            if not isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)) or \
                    value.prefixlen != value.max_prefixlen:
                return None
            found = value.network_address
    return found


def evaluate(ruleset: Ruleset, pkt: Packet, net: NetContext | None = None) -> Verdict:
    """One-shot evaluation (builds the indexes each time: use Evaluator for many packets)."""
    return Evaluator(ruleset).evaluate(pkt, net)


Explainer = Callable[[Packet], Verdict]
