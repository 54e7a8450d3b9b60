"""DropLog: bounded ring, exact totals, top-N with a capped key space, word filter."""

from __future__ import annotations

from fwtop.core.droplog import DropLog, TopCounter, matches
from fwtop.core.events import DropEvent


def ev(i: int, src: str = "10.0.0.1", dport: int | None = 80,
       prefix: str | None = "p") -> DropEvent:
    return DropEvent("nflog", float(i), float(i), prefix=prefix, proto="tcp", src=src,
                     dst="10.0.0.2", sport=1000 + i, dport=dport)


def test_ring_keeps_the_newest_and_totals_stay_exact() -> None:
    log = DropLog(capacity=10)
    assert log.add(ev(i) for i in range(25)) == 25
    assert log.total == 25 and log.by_source["nflog"] == 25
    assert [e.sport for e in log.newest(3)] == [1024, 1023, 1022]
    assert len(log.recent) == 10


def test_tops_by_source_port_and_prefix() -> None:
    log = DropLog()
    log.add([ev(1, "a"), ev(2, "b"), ev(3, "b"), ev(4, "b", dport=22, prefix=None)])
    assert log.top("src", 2) == [("b", 3), ("a", 1)]
    assert log.top("dport", 1) == [(("tcp", 80), 3)]
    assert log.top("prefix") == [("p", 3)]


def test_top_counter_forgets_the_tail_not_the_heavy_hitters() -> None:
    top = TopCounter(max_keys=100)
    for _ in range(50):
        top.add("heavy")
    for i in range(1000):  # a spoofed flood: every source new
        top.add(f"spoof{i}")
    assert len(top.counts) <= 100
    assert top.top(1) == [("heavy", 50)]
    assert top.forgotten > 0
    assert sum(top.counts.values()) + top.forgotten == 1050


def test_filter_words_all_present() -> None:
    e = ev(1, "10.77.1.2", dport=8080, prefix="fwlab-input-drop")
    assert matches(e, "")
    assert matches(e, "10.77 dport 8080")
    assert matches(e, "TCP FWLAB")
    assert not matches(e, "udp")
    assert not matches(e, "dport 80 udp")
    log = DropLog()
    log.add([e, ev(2, dport=22)])
    assert [x.dport for x in log.newest(10, "dport 8080")] == [8080]
