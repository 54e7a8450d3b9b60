"""Turn nftables JSON (libnftables' schema) into the rule model's predicates and verdicts.

Input is the already-decoded JSON object of one rule; output is (matches, verdict, target,
counters). Expressions fwtop does not model are kept as UnknownMatch with their JSON text.
"""

from __future__ import annotations

import json
from typing import Any

from fwtop.core.model import (
    AddrMatch,
    ConcatMatch,
    Counters,
    CtStateMatch,
    IcmpMatch,
    IfaceMatch,
    Match,
    PortMatch,
    ProtoMatch,
    UnknownMatch,
    Verdict,
)
from fwtop.core.protocols import IP_PROTOCOLS, icmp_type_number

_VERDICT_KEYS: dict[str, Verdict] = {
    "accept": "accept", "drop": "drop", "reject": "reject", "return": "return",
    "queue": "queue", "continue": "continue",
}
_NAT_KEYS = ("dnat", "snat", "masquerade", "redirect")
# Statements that act without deciding (logging, counting, marking).
_PASSIVE_KEYS = frozenset({"counter", "log", "mangle", "notrack", "meta", "ct", "xt", "quota",
                           "set", "flow", "dup", "fwd", "secmark", "synproxy", "tproxy"})
_STATEFUL_KEYS = frozenset({"limit", "quota", "ct count", "numgen", "hash"})
_PORT_FIELDS = {"dport": "dport", "sport": "sport"}
_ADDR_FIELDS = {"saddr": "src", "daddr": "dst"}
_L4_PROTOCOLS = frozenset({"tcp", "udp", "sctp", "dccp", "udplite"})


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


def _values(right: Any) -> tuple[list[Any], str | None]:
    """Flatten a match's right-hand side into a list of values, or a named set reference."""
    if isinstance(right, str) and right.startswith("@"):
        return [], right[1:]
    if isinstance(right, dict) and "set" in right:
        items = right["set"]
        return (list(items) if isinstance(items, list) else [items]), None
    if isinstance(right, list):
        return list(right), None
    return [right], None


def _port_range(v: Any) -> tuple[int, int] | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, dict) and "range" in v:
        lo, hi = v["range"]
        if isinstance(lo, int) and isinstance(hi, int):
            return (lo, hi)
    return None


def _addr_text(v: Any) -> str | None:
    if isinstance(v, str):
        return v
    if isinstance(v, dict):
        if "prefix" in v:
            p = v["prefix"]
            return f"{p.get('addr')}/{p.get('len')}"
        if "range" in v:
            lo, hi = v["range"]
            return f"{lo}-{hi}"
    return None


def match_from_json(m: dict[str, Any]) -> Match:
    """One `{"match": {...}}` expression to a predicate (UnknownMatch when not modelled)."""
    op = m.get("op", "==")
    left = m.get("left")
    right = m.get("right")
    negate = op == "!="
    if op not in ("==", "!=", "in"):
        return UnknownMatch(_compact({"match": m}))
    values, set_name = _values(right)
    if isinstance(left, dict) and "concat" in left:
        return _concat_match(left["concat"], values, set_name, negate) or \
            UnknownMatch(_compact({"match": m}))
    if isinstance(left, dict) and "payload" in left:
        pl = left["payload"]
        proto, fld = pl.get("protocol"), pl.get("field")
        if proto in _L4_PROTOCOLS and fld in _PORT_FIELDS:
            ranges = [r for r in (_port_range(v) for v in values) if r is not None]
            if len(ranges) == len(values):
                return PortMatch(_PORT_FIELDS[fld], tuple(ranges), set_name, proto, negate)
        if proto in ("ip", "ip6") and fld in _ADDR_FIELDS:
            addrs = [a for a in (_addr_text(v) for v in values) if a is not None]
            if len(addrs) == len(values):
                return AddrMatch(_ADDR_FIELDS[fld], tuple(addrs), set_name, negate)
        if proto in ("ip", "ip6") and fld in ("protocol", "nexthdr") and set_name is None:
            return ProtoMatch(tuple(_proto_name(v) for v in values), negate)
        if proto in ("icmp", "icmpv6") and fld == "type" and set_name is None:
            nums = [icmp_type_number(proto, str(v)) for v in values]
            if all(n is not None for n in nums):
                return IcmpMatch(proto, tuple(n for n in nums if n is not None), None, negate)
        if proto in ("icmp", "icmpv6") and fld == "code" and len(values) == 1:
            if isinstance(values[0], int):
                return IcmpMatch(proto, (), values[0], negate)
    if isinstance(left, dict) and "meta" in left and set_name is None:
        key = left["meta"].get("key")
        if key == "l4proto":
            return ProtoMatch(tuple(_proto_name(v) for v in values), negate)
        if key in ("iifname", "oifname", "iif", "oif"):
            fld_if = "iif" if key.startswith("i") else "oif"
            return IfaceMatch(fld_if, tuple(str(v) for v in values), negate)
        if key == "nfproto" and values:
            return ProtoMatch(tuple(f"nfproto:{v}" for v in values), negate)
    if isinstance(left, dict) and "ct" in left and left["ct"].get("key") == "state":
        states: list[str] = []
        for v in values:
            states.extend(v if isinstance(v, list) else [v])
        return CtStateMatch(tuple(str(s) for s in states), negate)
    return UnknownMatch(_compact({"match": m}))


_CONCAT_PAYLOAD = {("ip", "saddr"): "src", ("ip", "daddr"): "dst", ("ip6", "saddr"): "src",
                   ("ip6", "daddr"): "dst"}
_CONCAT_META = {"l4proto": "proto", "iifname": "iif", "oifname": "oif"}


def _concat_field(item: Any) -> str | None:
    if not isinstance(item, dict):
        return None
    if "payload" in item:
        pl = item["payload"]
        proto, fld = pl.get("protocol"), pl.get("field")
        if (proto, fld) in _CONCAT_PAYLOAD:
            return _CONCAT_PAYLOAD[(proto, fld)]
        if proto in (*_L4_PROTOCOLS, "th") and fld in _PORT_FIELDS:
            return str(fld)
    if "meta" in item:
        return _CONCAT_META.get(item["meta"].get("key"))
    return None


def concat_values(value: Any) -> tuple[str, ...] | None:
    """One concatenated element (`{"concat": [...]}`, possibly wrapped in `{"elem": {"val"}}`)
    as text values; None for ranges/prefixes inside it (not modelled)."""
    if isinstance(value, dict) and "elem" in value:
        value = value["elem"].get("val") if isinstance(value["elem"], dict) else None
    if not isinstance(value, dict) or not isinstance(value.get("concat"), list):
        return None
    out = []
    for v in value["concat"]:
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            return None
        out.append(str(v))
    return tuple(out)


def _concat_match(left: Any, values: list[Any], set_name: str | None,
                  negate: bool) -> ConcatMatch | None:
    if not isinstance(left, list):
        return None
    fields = [_concat_field(item) for item in left]
    if any(f is None for f in fields):
        return None
    elements: list[tuple[str, ...]] = []
    if set_name is None:
        for v in values:
            elem = concat_values(v)
            if elem is None or len(elem) != len(fields):
                return None
            elements.append(elem)
    return ConcatMatch(tuple(f for f in fields if f is not None), set_name, tuple(elements),
                       negate)


def _proto_name(v: Any) -> str:
    if isinstance(v, int):
        return IP_PROTOCOLS.get(v, str(v))
    return str(v)


def rule_from_json(exprs: list[dict[str, Any]]) -> tuple[
    tuple[Match, ...], Verdict, str | None, Counters | None
]:
    """A rule's `expr` list to (matches, verdict, target, counters of its first counter)."""
    matches: list[Match] = []
    verdict: Verdict = "continue"
    target: str | None = None
    counters: Counters | None = None
    for expr in exprs:
        if not isinstance(expr, dict) or len(expr) != 1:
            matches.append(UnknownMatch(_compact(expr)))
            continue
        (key, val), = expr.items()
        args: dict[str, Any] = val if isinstance(val, dict) else {}
        if key == "match" and args:
            try:
                matches.append(match_from_json(args))
            except (AttributeError, TypeError, ValueError, KeyError):
                matches.append(UnknownMatch(_compact(expr)))  # malformed: keep, never raise
        elif key == "counter":
            packets, nbytes = args.get("packets"), args.get("bytes")
            if counters is None and isinstance(packets, int) and isinstance(nbytes, int):
                counters = Counters(packets, nbytes)
        elif key in _VERDICT_KEYS:
            verdict = _VERDICT_KEYS[key]
            if key == "reject" and val:
                target = "reject " + _compact(val)
        elif key in ("jump", "goto") and isinstance(args.get("target"), str):
            verdict = "jump" if key == "jump" else "goto"
            target = args["target"]
        elif key in _NAT_KEYS:
            # A nat statement ends its chain with accept, like iptables' DNAT target.
            verdict = "accept"
            target = key + (" " + _compact(val) if val else "")
        elif key == "vmap" or (key == "xt" and args.get("type") == "target"):
            verdict = "unknown"
            target = _compact(expr)
        elif key in _STATEFUL_KEYS:
            matches.append(UnknownMatch(_compact(expr), stateful=True))
        elif key == "xt" and args.get("name") == "comment":
            continue  # comment recovered from iptables-nft-save by the backend
        elif key == "xt":
            matches.append(UnknownMatch(_compact(expr), stateful=args.get("name") in (
                "limit", "recent", "hashlimit", "connmark", "quota", "connlimit", "statistic")))
        elif key in _PASSIVE_KEYS:
            continue
        else:
            matches.append(UnknownMatch(_compact(expr)))
    return tuple(matches), verdict, target, counters
