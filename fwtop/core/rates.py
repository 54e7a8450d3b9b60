"""Counter snapshots to per-second rates: pure functions, tested on two snapshots."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fwtop.core.model import Counters


@dataclass(frozen=True, slots=True)
class CounterSnapshot:
    """Counters of every rule and policy (by key) at one monotonic instant."""

    ts: float
    counters: Mapping[str, Counters]


@dataclass(frozen=True, slots=True)
class Rate:
    packets: int  # delta since the previous snapshot
    bytes: int
    pps: float
    bps: float  # bytes per second


ZERO_RATE = Rate(0, 0, 0.0, 0.0)


def rates(prev: CounterSnapshot | None, cur: CounterSnapshot) -> dict[str, Rate]:
    """Deltas per key between two snapshots. A key new in `cur` or whose counters went backwards
    (rule replaced, counters zeroed) has no trustworthy delta and reads as zero, not negative."""
    if prev is None:
        return {key: ZERO_RATE for key in cur.counters}
    dt = cur.ts - prev.ts
    out: dict[str, Rate] = {}
    before = prev.counters
    for key, now in cur.counters.items():
        old = before.get(key)
        if old is None or now.packets < old.packets or now.bytes < old.bytes or dt <= 0:
            out[key] = ZERO_RATE
            continue
        dp = now.packets - old.packets
        db = now.bytes - old.bytes
        out[key] = Rate(dp, db, dp / dt, db / dt) if (dp or db) else ZERO_RATE
    return out


def hottest(rate_by_key: Mapping[str, Rate], n: int = 10) -> list[tuple[str, Rate]]:
    """The `n` most active keys by packets per second, busiest first (ties by key for stability)."""
    active = [(k, r) for k, r in rate_by_key.items() if r.packets > 0]
    active.sort(key=lambda kr: (-kr[1].pps, kr[0]))
    return active[:n]
