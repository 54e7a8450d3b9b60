"""The recent drops, bounded whatever the rate: the newest events for display, totals per
source, and top-N summaries (by source address, destination port, prefix).

Pure: it only holds DropEvents it is given. Memory is bounded twice over: the event ring has a
fixed capacity, and each top-N counter keeps at most `max_keys` keys (when a spoofed flood makes
it overflow, the least frequent half is forgotten and counted in `forgotten`, so a top list may
under-count the tail but never the heavy hitters that matter).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Iterator

from fwtop.core.events import DropEvent
from fwtop.core.filterexpr import Filter, FilterError
from fwtop.core.filterexpr import parse as parse_filter

SUMMARY_FIELDS = ("src", "dport", "prefix")


class TopCounter:
    """A Counter with a cap on distinct keys."""

    __slots__ = ("counts", "forgotten", "max_keys")

    def __init__(self, max_keys: int = 4096) -> None:
        self.counts: Counter[object] = Counter()
        self.max_keys = max_keys
        self.forgotten = 0

    def add(self, key: object) -> None:
        self.counts[key] += 1
        if len(self.counts) > self.max_keys:
            keep = self.counts.most_common(self.max_keys // 2)
            self.forgotten += sum(self.counts.values()) - sum(n for _, n in keep)
            self.counts = Counter(dict(keep))

    def top(self, n: int) -> list[tuple[object, int]]:
        return self.counts.most_common(n)


def event_text(e: DropEvent) -> str:
    """One searchable line per event (what the `/` filter matches against)."""
    parts = [e.source, e.prefix or "", e.hook or "", e.iif or "", e.oif or "", e.proto or "",
             e.src or "", e.dst or "", e.tcp_flags or ""]
    if e.sport is not None:
        parts.append(f"sport {e.sport}")
    if e.dport is not None:
        parts.append(f"dport {e.dport} :{e.dport}")
    return " ".join(parts).lower()


def event_item(e: DropEvent) -> dict[str, object]:
    """The event's fields for the filter language (fwtop.core.filterexpr)."""
    return {"src": e.src, "dst": e.dst, "sport": e.sport, "dport": e.dport, "proto": e.proto,
            "iif": e.iif, "oif": e.oif, "prefix": e.prefix, "source": e.source,
            "verdict": "drop", "text": event_text(e)}


_compiled: dict[str, Filter | None] = {}


def compile_filter(needle: str) -> Filter | None:
    """The needle as an expression (`src 10.0.0.0/8 and dport 443`), or None when it does not
    parse (then it is matched as plain words)."""
    if needle not in _compiled:
        if len(_compiled) > 64:
            _compiled.clear()
        try:
            _compiled[needle] = parse_filter(needle)
        except FilterError:
            _compiled[needle] = None
    return _compiled[needle]


def matches(e: DropEvent, needle: str) -> bool:
    """The filter expression holds for the event; a needle that is not a valid expression
    matches when every whitespace-separated word occurs in the event's text."""
    if not needle:
        return True
    f = compile_filter(needle)
    if f is not None:
        return f(event_item(e))
    text = event_text(e)
    return all(word in text for word in needle.lower().split())


class DropLog:
    def __init__(self, capacity: int = 5000, max_keys: int = 4096) -> None:
        self.recent: deque[DropEvent] = deque(maxlen=capacity)
        self.total = 0
        self.by_source: Counter[str] = Counter()
        self.tops = {name: TopCounter(max_keys) for name in SUMMARY_FIELDS}

    def add(self, events: Iterable[DropEvent]) -> int:
        n = 0
        tops = self.tops
        for e in events:
            self.recent.append(e)
            self.by_source[e.source] += 1
            if e.src is not None:
                tops["src"].add(e.src)
            if e.dport is not None:
                tops["dport"].add((e.proto, e.dport))
            if e.prefix:
                tops["prefix"].add(e.prefix)
            n += 1
        self.total += n
        return n

    def newest(self, limit: int, needle: str = "") -> list[DropEvent]:
        """Up to `limit` events, newest first, that match the filter."""
        out: list[DropEvent] = []
        it: Iterator[DropEvent] = reversed(self.recent)
        for e in it:
            if matches(e, needle):
                out.append(e)
                if len(out) >= limit:
                    break
        return out

    def top(self, name: str, n: int = 3) -> list[tuple[object, int]]:
        return self.tops[name].top(n)
