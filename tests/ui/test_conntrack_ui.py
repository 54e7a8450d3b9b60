"""Pilot tests of the conntrack gauge and screen in a small app wired exactly as the module
docstring of fwtop.ui.conntrack tells the main app to wire them (views arrive as posted
ConntrackUpdated messages). What is asserted is what a user sees: numbers, red, rows."""

from __future__ import annotations

import time
from collections.abc import Callable

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable, Sparkline, Static

from fwtop.core.conntrack import (
    BreakdownCounter,
    ConntrackStats,
    ConntrackView,
    CpuStatTotals,
    GrowthTracker,
)
from fwtop.ui.conntrack import (
    ConntrackBreakdownRequested,
    ConntrackGauge,
    ConntrackScreen,
    ConntrackUpdated,
    gauge_segments,
    human_duration,
)

TIMEOUTS = {"tcp_timeout_time_wait": 120, "udp_timeout": 30, "tcp_timeout_established": 432000}


class CtApp(App[None]):
    BINDINGS = [Binding("c", "conntrack", "Conntrack", id="conntrack")]

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0

    def compose(self) -> ComposeResult:
        yield ConntrackGauge(id="ct-gauge")

    def on_conntrack_updated(self, message: ConntrackUpdated) -> None:
        self.query_one(ConntrackGauge).update_view(message.view)
        if isinstance(self.screen, ConntrackScreen):
            self.screen.update_view(message.view)

    def action_conntrack(self) -> None:
        self.push_screen(ConntrackScreen(self.query_one(ConntrackGauge).view))

    def on_conntrack_breakdown_requested(self, _: ConntrackBreakdownRequested) -> None:
        self.requests += 1


def ip(a: int, b: int) -> bytes:
    return bytes([10, 0, a, b])


class Feed:
    """Builds views the way the monitor does: one tracker over successive stats."""

    def __init__(self, max_: int = 10_000) -> None:
        self.tracker = GrowthTracker(tau_s=2.0)
        self.max = max_
        self.t = 0.0
        self.history: list[int] = []

    def view(self, count: int, breakdown_of: list[tuple[bytes, int, int]] | None = None,
             **cpu: int) -> ConntrackView:
        self.t += 1.0
        stats = ConntrackStats(ts=self.t, wall=1.8e9 + self.t, count=count, max=self.max,
                               buckets=1024, cpu=CpuStatTotals(cpus=2, **cpu),
                               timeouts=TIMEOUTS)
        self.history.append(count)
        b = None
        if breakdown_of is not None:
            acc = BreakdownCounter(TIMEOUTS)
            for src, state, n in breakdown_of:
                for i in range(n):
                    acc.add(src, ip(99, 1), 6, 1000 + i, 443, state, 0, 100, None)
            b = acc.finish(self.t, stats.wall, 0.01, total=count, min_hint_entries=10)
        return ConntrackView(ts=self.t, wall=stats.wall, stats=stats,
                             growth=self.tracker.update(stats), breakdown=b,
                             breakdown_fresh=b is not None, history=tuple(self.history))


async def settle(pilot: object, cond: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await pilot.pause(0.05)  # type: ignore[attr-defined]


def label(app: App[None]) -> str:
    return str(app.query_one("#ct-gauge .ct-label", Static).render())


def rows(table: DataTable[str]) -> list[list[str]]:
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


async def test_gauge_shows_count_fill_growth_and_eta() -> None:
    app = CtApp()
    feed = Feed()
    async with app.run_test(size=(120, 10)) as pilot:
        assert "ct" in label(app)
        for count in (1000, 1200, 1400, 1600):
            app.post_message(ConntrackUpdated(feed.view(count)))
        await settle(pilot, lambda: "1600" in label(app))
        text = label(app)
        assert "1600/10.0k" in text and "16.0%" in text
        assert "+" in text and "/s" in text and "full in" in text
        gauge = app.query_one(ConntrackGauge)
        assert not gauge.has_class("-alarm")
        assert app.query_one(Sparkline).data == [1000.0, 1200.0, 1400.0, 1600.0]
        assert "time to full" in str(gauge.tooltip)


async def test_gauge_turns_red_on_an_alarm_and_says_why() -> None:
    app = CtApp()
    feed = Feed()
    async with app.run_test(size=(120, 10)) as pilot:
        app.post_message(ConntrackUpdated(feed.view(5000, insert_failed=0)))
        await settle(pilot, lambda: "5000" in label(app))
        assert not app.query_one(ConntrackGauge).has_class("-alarm")
        app.post_message(ConntrackUpdated(feed.view(5001, insert_failed=3)))
        gauge = app.query_one(ConntrackGauge)
        await settle(pilot, lambda: gauge.has_class("-alarm"))
        assert "⚠" in label(app)
        assert "insert_failed +3" in str(gauge.tooltip)
        app.post_message(ConntrackUpdated(feed.view(9500, insert_failed=3)))
        await settle(pilot, lambda: "95.0%" in label(app))
        assert "95% full" in str(gauge.tooltip)


async def test_gauge_off_says_why() -> None:
    app = CtApp()
    async with app.run_test(size=(120, 10)) as pilot:
        off = ConntrackView(ts=1.0, wall=1.0, stats=None, growth=None,
                            off_reason="connection tracking is off: the nf_conntrack module is "
                                       "not loaded")
        app.post_message(ConntrackUpdated(off))
        gauge = app.query_one(ConntrackGauge)
        await settle(pilot, lambda: gauge.has_class("-off"))
        assert "off" in label(app)
        assert "nf_conntrack module is not loaded" in str(gauge.tooltip)


async def test_conntrack_screen_tables_update_in_place_and_refresh_posts() -> None:
    app = CtApp()
    feed = Feed()
    posted: list[Message] = []
    a, b, c = ip(1, 1), ip(1, 2), ip(1, 3)
    async with app.run_test(size=(160, 50), message_hook=posted.append) as pilot:
        app.post_message(ConntrackUpdated(feed.view(90, [(a, 7, 60), (b, 3, 30)])))
        await settle(pilot, lambda: app.query_one(ConntrackGauge).view is not None)
        await pilot.press("c")
        await settle(pilot, lambda: isinstance(app.screen, ConntrackScreen))
        screen = app.screen
        assert isinstance(screen, ConntrackScreen)
        sources = screen.table("sources")
        await settle(pilot, lambda: sources.row_count == 2)
        assert rows(sources) == [["10.0.1.1", "60", "66.7%"], ["10.0.1.2", "30", "33.3%"]]
        assert rows(screen.table("states")) == [["TIME_WAIT", "60", "66.7%"],
                                                ["ESTABLISHED", "30", "33.3%"]]
        assert rows(screen.table("dports"))[0][:2] == ["tcp/443", "90"]
        hint = str(screen.query_one("#ct-hint", Static).render())
        assert "net.netfilter.nf_conntrack_tcp_timeout_time_wait" in hint
        first_row_key = next(iter(sources.rows))

        # The next breakdown: b overtakes a, c appears; rows are updated, not rebuilt.
        app.post_message(ConntrackUpdated(feed.view(130, [(a, 7, 20), (b, 3, 80), (c, 3, 30)])))
        await settle(pilot, lambda: sources.row_count == 3)
        assert rows(sources)[0][:2] == ["10.0.1.2", "80"]
        assert [r[0] for r in rows(sources)] == ["10.0.1.2", "10.0.1.3", "10.0.1.1"]
        assert first_row_key in sources.rows  # the same row object, updated in place
        assert "ESTABLISHED" in str(screen.query_one("#ct-hint", Static).render())

        # A tick without a new breakdown keeps the tables; the summary follows the count.
        app.post_message(ConntrackUpdated(ConntrackView(
            ts=99.0, wall=1.8e9, stats=feed.view(131).stats, growth=feed.view(131).growth,
            breakdown=screen.view.breakdown if screen.view else None)))
        await pilot.pause(0.2)
        assert sources.row_count == 3

        await pilot.press("r")
        await settle(pilot, lambda: app.requests == 1)
        assert any(isinstance(m, ConntrackBreakdownRequested) for m in posted)
        await pilot.press("escape")
        await settle(pilot, lambda: not isinstance(app.screen, ConntrackScreen))


async def test_screen_before_the_first_breakdown_says_it_is_dumping() -> None:
    app = CtApp()
    feed = Feed()
    async with app.run_test(size=(160, 50)) as pilot:
        app.post_message(ConntrackUpdated(feed.view(10)))
        await settle(pilot, lambda: app.query_one(ConntrackGauge).view is not None)
        await pilot.press("c")
        await settle(pilot, lambda: isinstance(app.screen, ConntrackScreen))
        summary = str(app.screen.query_one("#ct-summary", Static).render())
        assert "dumping the table" in summary
        await pilot.press("c")
        await settle(pilot, lambda: not isinstance(app.screen, ConntrackScreen))


def test_text_helpers() -> None:
    assert human_duration(59) == "59s"
    assert human_duration(3599) == "59m59s"
    assert human_duration(432000) == "5d00h"
    assert gauge_segments(None)[0][0] == "ct "
