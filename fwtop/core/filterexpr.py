"""The `/` filter's small expression language: `src 10.0.0.0/8 and dport 443 and verdict drop`.

    expr   := term (("and" | "or") term)*      and binds tighter than or
    term   := ["not"] FIELD VALUE | ["not"] WORD
    FIELD  := src | dst | host | sport | dport | port | proto | iif | oif | prefix | verdict
              | source | state

Addresses take a prefix (`10.0.0.0/8`) or an address; ports a number or a range (`1000-2000`);
the other fields a word, matched as a substring. A bare word matches anywhere in the item's
text, so plain words keep working as before (`udp 10.77` = `udp and 10.77`). Pure; a text that
does not parse is an error the UI shows, never a crash.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass

ADDRESS_FIELDS = {"src": ("src",), "dst": ("dst",), "host": ("src", "dst")}
PORT_FIELDS = {"sport": ("sport",), "dport": ("dport",), "port": ("sport", "dport")}
WORD_FIELDS = {"proto", "iif", "oif", "prefix", "verdict", "source", "state", "rule"}
FIELDS = set(ADDRESS_FIELDS) | set(PORT_FIELDS) | WORD_FIELDS

Item = Mapping[str, object]  # field name -> value, plus "text": the item's searchable text
Predicate = Callable[[Item], bool]


class FilterError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Filter:
    text: str
    predicate: Predicate

    def __call__(self, item: Item) -> bool:
        return self.predicate(item)


def _address(field: str, value: str) -> Predicate:
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise FilterError(f"{field} {value}: not an address or prefix") from None
    keys = ADDRESS_FIELDS[field]

    def pred(item: Item) -> bool:
        for key in keys:
            raw = item.get(key)
            if isinstance(raw, str):
                try:
                    if ipaddress.ip_address(raw) in net:
                        return True
                except ValueError:
                    continue
        return False

    return pred


def _port(field: str, value: str) -> Predicate:
    lo_s, _, hi_s = value.partition("-")
    if not lo_s.isdigit() or (hi_s and not hi_s.isdigit()):
        raise FilterError(f"{field} {value}: a port or a range like 1000-2000")
    lo, hi = int(lo_s), int(hi_s or lo_s)
    keys = PORT_FIELDS[field]

    def pred(item: Item) -> bool:
        return any(isinstance(item.get(k), int) and lo <= item[k] <= hi  # type: ignore[operator]
                   for k in keys)

    return pred


def _word_field(field: str, value: str) -> Predicate:
    needle = value.lower()

    def pred(item: Item) -> bool:
        raw = item.get(field)
        return raw is not None and needle in str(raw).lower()

    return pred


def _word(word: str) -> Predicate:
    needle = word.lower()

    def pred(item: Item) -> bool:
        return needle in str(item.get("text", "")).lower()

    return pred


def parse(text: str) -> Filter:
    tokens = text.split()
    if not tokens:
        return Filter(text, lambda item: True)
    pos = 0

    def term() -> Predicate:
        nonlocal pos
        negate = False
        while pos < len(tokens) and tokens[pos].lower() == "not":
            negate = not negate
            pos += 1
        if pos >= len(tokens):
            raise FilterError("a condition is missing at the end")
        tok = tokens[pos]
        low = tok.lower()
        pos += 1
        if low in FIELDS and pos < len(tokens) and tokens[pos].lower() not in ("and", "or"):
            value = tokens[pos]
            pos += 1
            if low in ADDRESS_FIELDS:
                pred = _address(low, value)
            elif low in PORT_FIELDS:
                pred = _port(low, value)
            else:
                pred = _word_field(low, value)
        else:
            pred = _word(tok)
        if negate:
            inner = pred
            return lambda item: not inner(item)
        return pred

    def conjunction() -> Predicate:
        nonlocal pos
        parts = [term()]
        while pos < len(tokens) and tokens[pos].lower() != "or":
            if tokens[pos].lower() == "and":
                pos += 1
            parts.append(term())
        return lambda item: all(p(item) for p in parts)

    alternatives = [conjunction()]
    while pos < len(tokens) and tokens[pos].lower() == "or":
        pos += 1
        alternatives.append(conjunction())
    return Filter(text, lambda item: any(a(item) for a in alternatives))
