from __future__ import annotations

from fwtop.core.model import Counters
from fwtop.core.rates import ZERO_RATE, CounterSnapshot, Rate, hottest, rates


def test_rates_between_two_snapshots() -> None:
    a = CounterSnapshot(10.0, {"r1": Counters(100, 10_000), "r2": Counters(5, 500)})
    b = CounterSnapshot(12.0, {"r1": Counters(300, 30_000), "r2": Counters(5, 500),
                               "r3": Counters(7, 700)})
    out = rates(a, b)
    assert out["r1"] == Rate(200, 20_000, 100.0, 10_000.0)
    assert out["r2"] == ZERO_RATE
    assert out["r3"] == ZERO_RATE  # new rule: no trustworthy delta yet


def test_counter_reset_is_not_negative() -> None:
    a = CounterSnapshot(1.0, {"r": Counters(50, 5000)})
    b = CounterSnapshot(2.0, {"r": Counters(3, 300)})
    assert rates(a, b)["r"] == ZERO_RATE


def test_first_snapshot_and_hottest_order() -> None:
    snap = CounterSnapshot(1.0, {"x": Counters(1, 1)})
    assert rates(None, snap) == {"x": ZERO_RATE}
    r = {"a": Rate(1, 1, 1.0, 1.0), "b": Rate(9, 9, 9.0, 9.0), "c": ZERO_RATE}
    assert [k for k, _ in hottest(r)] == ["b", "a"]
