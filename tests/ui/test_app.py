"""Pilot tests of the TUI fed by a fake monitor with synthetic RulesViews (no root, no kernel).

The views are built from the real model dataclasses and `core.rates`, exactly the objects the
real Monitor hands over; the assertions are what a user would see in the Rules pane.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rich.text import Text
from textual.widgets._footer import FooterKey

from fwtop.core.model import (
    BackendStatus,
    Chain,
    Counters,
    Policy,
    Rule,
    Ruleset,
    Table,
    rule_key,
)
from fwtop.core.rates import CounterSnapshot, rates
from fwtop.service.rules import RulesView
from fwtop.ui import render
from fwtop.ui.app import FwtopApp, build_app
from fwtop.ui.render import RowsBuilder, RowSpec, human_bytes, human_count, rows_for, rule_row, safe
from fwtop.ui.screens import HelpScreen
from fwtop.ui.widgets import FilterInput, FwtopFooter, FwtopHeader, RulesTable, StatusLine

HOSTILE = "\x1b[31m[bold red]x[/]"


# --- synthetic rulesets ---------------------------------------------------------------------------


def _rule(backend: str, family: str, table: str, chain: str, pos: int, handle: int | None,
          text: str, verdict: str, comment: str | None = None) -> Rule:
    key = rule_key((backend, family, table, chain), handle, text)
    return Rule(backend, family, table, chain, pos, handle, text, verdict,  # type: ignore[arg-type]
                comment=comment, counters=Counters(0, 0), key=key)


SSH = _rule("iptables-nft", "ip", "filter", "INPUT", 1, 4,
            "-A INPUT -p tcp --dport 22 -j ACCEPT", "accept", "ssh")
WEB_DROP = _rule("iptables-nft", "ip", "filter", "INPUT", 2, 5,
                 "-A INPUT -p tcp --dport 8080 -j DROP", "drop", "block 8080")
EVIL = _rule("iptables-nft", "ip", "filter", "INPUT", 3, 6,
             "-A INPUT -p udp --dport 9 -j DROP", "drop", HOSTILE)
DNS = _rule("nft", "inet", "filter", "input", 1, 2, "udp dport 53 counter accept", "accept")
HTTP_REJ = _rule("nft", "inet", "filter", "input", 2, 3,
                 "tcp dport 80 counter reject", "reject", "web is down")
LEG = _rule("iptables-legacy", "ip", "filter", "FORWARD", 1, None,
            "-A FORWARD -s 10.0.0.0/8 -j DROP", "drop")

INPUT_POLICY = Policy("iptables-nft", "ip", "filter", "INPUT", "drop", Counters(0, 0))
NFT_POLICY = Policy("nft", "inet", "filter", "input", "accept", Counters(0, 0))
FWD_POLICY = Policy("iptables-legacy", "ip", "filter", "FORWARD", "accept", Counters(0, 0))

BACKENDS = (BackendStatus("nft", True), BackendStatus("iptables-nft", True),
            BackendStatus("iptables-legacy", False, "no ip_tables module"))


def ruleset(extra_nft: tuple[Rule, ...] = (), drop_web: bool = False) -> Ruleset:
    ipt_rules = (SSH, EVIL) if drop_web else (SSH, WEB_DROP, EVIL)
    return Ruleset(
        tables=(
            Table("iptables-nft", "ip", "filter", (
                Chain("iptables-nft", "ip", "filter", "INPUT", ipt_rules, hook="input",
                      priority=0, type="filter", policy=INPUT_POLICY),
            )),
            Table("nft", "inet", "filter", (
                Chain("nft", "inet", "filter", "input", (DNS, HTTP_REJ, *extra_nft),
                      hook="input", priority=0, type="filter", policy=NFT_POLICY),
                Chain("nft", "inet", "filter", "helper", ()),
            )),
            Table("iptables-legacy", "ip", "filter", (
                Chain("iptables-legacy", "ip", "filter", "FORWARD", (LEG,), hook="forward",
                      priority=0, policy=FWD_POLICY),
            )),
        ),
        backends=BACKENDS,
    )


class Views:
    """Successive RulesViews: counters in, rates computed by core.rates from two snapshots."""

    def __init__(self) -> None:
        self.prev: CounterSnapshot | None = None
        self.ts = 100.0
        self.n = 0

    def next(self, packets: dict[str, int], rs: Ruleset | None = None,
             reloaded: bool = False, errors: tuple[str, ...] = ()) -> RulesView:
        rs = rs or ruleset()
        self.ts += 1.0
        self.n += 1
        keys = [r.key for r in rs.rules()] + [p.key for p in rs.policies()]
        counters = {k: Counters(packets.get(k, 0), packets.get(k, 0) * 100) for k in keys}
        snap = CounterSnapshot(self.ts, counters)
        rate = rates(self.prev, snap)
        self.prev = snap
        return RulesView(self.ts, rs, counters, rate, 0.0021, 0.003,
                         reloaded or self.n == 1, 1, errors)


class FakeMonitor:
    """The seam: built by monitor_factory(on_rules, on_error) like the real Monitor."""

    def __init__(self, on_rules: Callable[[RulesView], None],
                 on_error: Callable[[str], None], first: RulesView | None) -> None:
        self.on_rules = on_rules
        self.on_error = on_error
        self.first = first
        self.started = self.stopped = False
        self.polls_requested = 0

    def start(self) -> None:
        self.started = True
        if self.first is not None:
            self.on_rules(self.first)

    def stop(self) -> None:
        self.stopped = True

    def poll_now(self) -> None:
        self.polls_requested += 1


def make_app(first: RulesView | None) -> tuple[FwtopApp, list[FakeMonitor]]:
    made: list[FakeMonitor] = []

    def factory(on_rules: Callable[[RulesView], None],
                on_error: Callable[[str], None]) -> FakeMonitor:
        made.append(FakeMonitor(on_rules, on_error, first))
        return made[-1]

    return build_app(monitor_factory=factory, real_drops=False), made


async def settle(pilot: object, cond: Callable[[], bool], timeout: float = 3.0) -> None:
    """Let the app run until `cond()` holds (renders are throttled to 10/s)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await pilot.pause(0.02)  # type: ignore[attr-defined]


def cell(table: RulesTable, key: str, col: str) -> str:
    value = table.get_cell(key, col)
    assert isinstance(value, Text)  # never a str: DataTable would parse a str as markup
    return value.plain


async def feed(pilot: object, app: FwtopApp, view: RulesView) -> None:
    fake = app._monitor
    assert isinstance(fake, FakeMonitor)
    before = app.renders
    fake.on_rules(view)
    await settle(pilot, lambda: app.renders > before or app.paused)
    await pilot.pause()  # type: ignore[attr-defined]


# --- pure helpers ---------------------------------------------------------------------------------


def test_safe_escapes_controls_and_keeps_markup_literal() -> None:
    assert safe(HOSTILE) == "\\x1b[31m[bold red]x[/]"
    assert safe("a\tb\x9bc\u202ed") == "a\\x09b\\x9bc\\u202ed"
    assert safe(None) == ""


def test_human_numbers_fit_their_columns() -> None:
    assert human_count(999) == "999"
    assert human_count(1234) == "1.2k"
    assert human_count(2.5) == "2.5"
    assert human_count(123_456_789) == "123M"
    assert human_bytes(512) == "512"
    assert human_bytes(1536) == "1.5K"
    for n in (0, 7, 999, 1000, 99_999, 10**6, 10**9, 10**12, 2**64 - 1):
        assert len(human_count(n)) <= 6 and len(human_bytes(n)) <= 6


def test_rows_grouped_by_chain_then_by_activity() -> None:
    v = Views()
    v.next({})
    view = v.next({DNS.key: 5, WEB_DROP.key: 50, INPUT_POLICY.key: 10})
    keys = [r.key for r in rows_for(view)]
    assert keys[0].startswith("chain|iptables-nft|ip|filter|INPUT")
    assert keys[1:4] == [SSH.key, WEB_DROP.key, EVIL.key]
    busy = [r.key for r in rows_for(view, by_activity=True)]
    assert busy[:3] == [WEB_DROP.key, "chain|iptables-nft|ip|filter|INPUT", DNS.key]
    assert "chain|nft|inet|filter|helper" not in busy  # no policy: no row in the flat list


def test_rows_are_reused_across_sort_and_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    # `s` and back, or a filter typed and cleared, formats only the rules whose counters moved
    # meanwhile: the others come back as the very same rows (cells and drawn lines kept).
    v = Views()
    v.next({})
    view = v.next({DNS.key: 5, WEB_DROP.key: 50})
    builder = RowsBuilder()
    chain_order = {r.key: r for r in builder.rows(view)}
    busy = {r.key: r for r in builder.rows(view, by_activity=True)}
    assert busy[SSH.key] is not chain_order[SSH.key]  # the flat layout has its own cells
    later = v.next({DNS.key: 9, WEB_DROP.key: 50})
    again = {r.key: r for r in builder.rows(later)}
    assert again[SSH.key] is chain_order[SSH.key]
    assert again[DNS.key] is not chain_order[DNS.key]  # its counters moved
    assert {r.key: r for r in builder.rows(later, by_activity=True)}[SSH.key] is busy[SSH.key]
    filtered = builder.rows(later, needle="dport 53")
    assert SSH.key not in {r.key for r in filtered}
    cleared = {r.key: r for r in builder.rows(later)}
    assert cleared[SSH.key] is chain_order[SSH.key]
    assert [r.key for r in builder.rows(later)] == [r.key for r in rows_for(later)]
    # Right after `s`, a rule whose counters moved is not formatted again: its row is derived
    # from the other order's current row, and is exactly what formatting it afresh gives.
    for flat in (True, False):
        view = v.next({DNS.key: 20 + flat, WEB_DROP.key: 70 + flat})
        builder.rows(view, by_activity=not flat)
        formatted: list[object] = []

        def counted(*a: Any, formatted: list[object] = formatted) -> RowSpec:
            formatted.append(a)
            return rule_row(*a)

        monkeypatch.setattr(render, "rule_row", counted)
        rows = builder.rows(view, by_activity=flat)
        monkeypatch.undo()
        assert formatted == []
        assert [(r.key, r.cells) for r in rows] == \
            [(r.key, r.cells) for r in rows_for(view, by_activity=flat)]
    # A rule hidden by the filter is kept current on every tick, so clearing the filter
    # formats nothing, and shows the hidden rule's new counters.
    moved = v.next({DNS.key: 30, WEB_DROP.key: 90, SSH.key: 7})
    assert SSH.key not in {r.key for r in builder.rows(moved, needle="dport 53")}
    calls: list[object] = []
    monkeypatch.setattr(render, "rule_row", lambda *a: calls.append(a))
    cleared = {r.key: r for r in builder.rows(moved)}
    monkeypatch.undo()
    assert calls == []
    assert cleared[SSH.key].cells == {r.key: r for r in rows_for(moved)}[SSH.key].cells


# --- the app --------------------------------------------------------------------------------------


async def test_rules_appear_with_counts_and_header() -> None:
    v = Views()
    app, made = make_app(v.next({SSH.key: 3, LEG.key: 1234}))
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.table
        await settle(pilot, lambda: table.row_count > 0)
        assert made[0].started
        # 4 chains + 6 rules
        assert table.row_count == 10
        assert cell(table, SSH.key, "pkts") == "3"
        assert cell(table, LEG.key, "pkts") == "1.2k"
        assert cell(table, SSH.key, "verdict") == "accept"
        assert cell(table, HTTP_REJ.key, "comment") == "web is down"
        assert cell(table, WEB_DROP.key, "rule") == WEB_DROP.text
        chain = cell(table, "chain|iptables-nft|ip|filter|INPUT", "rule")
        assert "iptables-nft ip filter INPUT" in chain and "policy drop" in chain
        assert "hook input prio 0" in chain
        header = app.query_one(FwtopHeader).state
        assert header.rules == 6 and header.netns == "host" and not header.lab
        head = str(app.query_one(FwtopHeader).render())
        assert "nft ✓" in head and "iptables-legacy ✗" in head and "2.1 ms" in head
    assert made[0].stopped


async def test_second_view_updates_deltas_in_place() -> None:
    v = Views()
    app, _ = make_app(v.next({WEB_DROP.key: 100}))
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.table
        await settle(pilot, lambda: table.row_count == 10)
        assert cell(table, WEB_DROP.key, "dpkts") == "·"
        keys_before = table.row_keys
        await feed(pilot, app, v.next({WEB_DROP.key: 130, INPUT_POLICY.key: 7}))
        assert cell(table, WEB_DROP.key, "pkts") == "130"
        assert cell(table, WEB_DROP.key, "dpkts") == "30"  # 30 packets over 1 s
        assert cell(table, WEB_DROP.key, "dbytes") == "2.9K"
        assert cell(table, "chain|iptables-nft|ip|filter|INPUT", "dpkts") == "7"
        # hot drop rule: bold red
        style = str(table.get_cell(WEB_DROP.key, "dpkts").spans[0].style)
        assert "bold" in style and "red" in style
        # no refill: same rows, same order, only cells rewritten
        assert table.row_count == 10 and table.row_keys == keys_before
        assert table.rebuilds == 0


async def test_cursor_stays_on_its_rule_across_structure_change_and_sort() -> None:
    v = Views()
    app, _ = make_app(v.next({}))
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.table
        await settle(pilot, lambda: table.row_count == 10)
        table.move_cursor(row=table.get_row_index(EVIL.key))
        await pilot.pause()
        assert table.cursor_key == EVIL.key
        # a reload removes the rule above the cursor and adds one elsewhere
        extra = _rule("nft", "inet", "filter", "input", 3, 9, "icmp type echo-request accept",
                      "accept")
        await feed(pilot, app, v.next({HTTP_REJ.key: 4}, ruleset((extra,), drop_web=True),
                                      reloaded=True))
        assert WEB_DROP.key not in table.row_keys and extra.key in table.row_keys
        assert table.row_count == 10
        assert table.cursor_key == EVIL.key
        await feed(pilot, app, v.next({HTTP_REJ.key: 40, EVIL.key: 2},
                                      ruleset((extra,), drop_web=True)))
        await pilot.press("s")
        assert table.row_keys[0] == HTTP_REJ.key
        assert table.cursor_key == EVIL.key


async def test_pause_holds_the_display_and_resume_shows_the_newest() -> None:
    v = Views()
    app, _ = make_app(v.next({DNS.key: 10}))
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.table
        await settle(pilot, lambda: table.row_count == 10)
        await feed(pilot, app, v.next({DNS.key: 20}))
        assert cell(table, DNS.key, "pkts") == "20"
        await pilot.press("p")
        assert app.paused and app.query_one(FwtopHeader).state.paused
        assert "PAUSED" in str(app.query_one(FwtopHeader).render())
        fake = app._monitor
        assert isinstance(fake, FakeMonitor)
        fake.on_rules(v.next({DNS.key: 50}))
        fake.on_rules(v.next({DNS.key: 90}))
        await pilot.pause(0.3)
        assert cell(table, DNS.key, "pkts") == "20"  # frozen
        assert cell(table, DNS.key, "dpkts") == "10"
        assert app.query_one(FwtopHeader).state.waiting
        await pilot.press("p")
        await pilot.pause()
        assert not app.paused
        assert cell(table, DNS.key, "pkts") == "90"  # the newest, not the first held one
        assert cell(table, DNS.key, "dpkts") == "40"


async def test_sort_puts_the_busiest_rule_first_and_back() -> None:
    v = Views()
    app, _ = make_app(v.next({}))
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.table
        await settle(pilot, lambda: table.row_count == 10)
        await feed(pilot, app, v.next({DNS.key: 5, HTTP_REJ.key: 80, LEG.key: 20}))
        chain_order = table.row_keys
        await pilot.press("s")
        assert app.by_activity
        assert table.row_keys[:3] == [HTTP_REJ.key, LEG.key, DNS.key]
        assert "›" in cell(table, HTTP_REJ.key, "rule")  # each rule names its chain
        # a later tick with another busiest rule reorders without a refill
        rebuilds = table.rebuilds
        await feed(pilot, app, v.next({DNS.key: 500, HTTP_REJ.key: 81, LEG.key: 20}))
        assert table.row_keys[0] == DNS.key
        assert table.rebuilds == rebuilds
        await pilot.press("s")
        assert table.row_keys == chain_order


async def test_filter_narrows_rows_and_escape_clears() -> None:
    v = Views()
    app, made = make_app(v.next({}))
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.table
        await settle(pilot, lambda: table.row_count == 10)
        footer = app.query_one(FwtopFooter)
        await settle(pilot, lambda: len(footer.query(FooterKey)) > 0)
        keys = [k.key for k in footer.query(FooterKey)]
        assert "s" in keys
        await pilot.press("slash")
        box = app.query_one("#filter", FilterInput)
        assert box.has_focus and box.visible
        # typed letters go into the box: the footer keeps its keys (no recompose)
        assert [k.key for k in footer.query(FooterKey)] == keys
        await pilot.press(*"sport 8080")
        await pilot.press("backspace", "backspace", "backspace", "backspace", "backspace",
                          "backspace", "backspace", "backspace", "backspace", "backspace",
                          *"dport 8080")
        await pilot.pause()
        rules = [k for k in table.row_keys if not k.startswith("chain|")]
        assert rules == [WEB_DROP.key]
        assert table.row_keys[0] == "chain|iptables-nft|ip|filter|INPUT"
        # typing "p", "s", "r" into the filter did not pause, sort or refresh
        assert not app.paused and not app.by_activity and app.is_running
        assert made[0].polls_requested == 0
        await pilot.press("enter")
        assert table.has_focus and app.needle == "dport 8080"
        await feed(pilot, app, v.next({WEB_DROP.key: 3}))
        assert table.row_count == 2
        await pilot.press("slash", "ctrl+a", "ctrl+k", *"forward")
        await pilot.pause()
        assert [k for k in table.row_keys if not k.startswith("chain|")] == [LEG.key]
        await pilot.press("escape")
        await pilot.pause()
        assert app.needle == "" and table.row_count == 10 and not box.visible
        assert table.has_focus
        assert [k.key for k in footer.query(FooterKey)] == keys


async def test_help_opens_and_closes() -> None:
    v = Views()
    app, _ = make_app(v.next({}))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = app.screen.query_one("#help-text").source  # type: ignore[attr-defined]
        assert "Connection timed out" in text and "Connection refused" in text
        assert "REJECT" in text
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("q")  # closes the help, does not quit
        assert not isinstance(app.screen, HelpScreen) and app.is_running


async def test_hostile_comment_is_shown_literally() -> None:
    v = Views()
    app, _ = make_app(v.next({EVIL.key: 1}))
    async with app.run_test(size=(160, 40)) as pilot:
        table = app.table
        await settle(pilot, lambda: table.row_count == 10)
        value = table.get_cell(EVIL.key, "comment")
        assert isinstance(value, Text)
        assert value.plain == "\\x1b[31m[bold red]x[/]"
        assert "\x1b" not in value.plain
        assert all("red" not in str(span.style) for span in value.spans)
        # and on screen: the brackets are there, no red bold "x" was produced by markup
        svg = app.export_screenshot()
        assert "[bold&#160;red]x[/]" in svg or "[bold red]x[/]" in svg.replace("&#160;", " ")


async def test_monitor_error_goes_to_the_status_line() -> None:
    app, made = make_app(None)
    async with app.run_test(size=(100, 30)) as pilot:
        made[0].on_error("netlink: [red]boom[/] \x1b[2J")
        await pilot.pause()
        status = app.query_one(StatusLine)
        shown = str(status.render())
        assert "error:" in shown and "[red]boom[/]" in shown and "\\x1b[2J" in shown
        assert status.has_class("-error")
        assert app.is_running


async def test_refresh_asks_the_monitor_and_q_quits() -> None:
    v = Views()
    app, made = make_app(v.next({}))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("f5")
        assert made[0].polls_requested == 1
        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running


async def test_views_from_a_thread_are_coalesced() -> None:
    """A burst of views from the monitor's thread costs a few renders, and the newest wins."""
    v = Views()
    views = [v.next({DNS.key: i * 10}) for i in range(200)]
    app, made = make_app(None)
    async with app.run_test(size=(100, 30)) as pilot:
        def burst() -> None:
            for view in views:
                made[0].on_rules(view)

        thread = threading.Thread(target=burst)
        thread.start()
        thread.join()
        await settle(pilot, lambda: app.shown is views[-1])
        await pilot.pause(0.2)
        assert app.views_received == 200
        assert app.renders <= 5
        assert cell(app.table, DNS.key, "pkts") == human_count(1990)


async def test_lab_marker_and_namespace_in_header() -> None:
    from fwtop.firewall.netns import NetNamespace

    app = build_app(netns=NetNamespace("fwtlab-fw", "/run/netns/fwtlab-fw"), lab=True,
                    monitor_factory=lambda on_rules, on_error: FakeMonitor(on_rules, on_error,
                                                                          None),
                    real_drops=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        head = str(app.query_one(FwtopHeader).render())
        assert "LAB" in head and "fwtlab-fw" in head


async def test_screenshots_for_review() -> None:
    """SVGs of the synthetic Rules pane at 100x30 and 200x50 (written to /tmp for review)."""
    for size in ((100, 30), (200, 50)):
        v = Views()
        app, _ = make_app(v.next({SSH.key: 100, WEB_DROP.key: 10}))
        async with app.run_test(size=size) as pilot:
            await settle(pilot, lambda app=app: app.table.row_count == 10)  # type: ignore[misc]
            await feed(pilot, app, v.next({SSH.key: 180, WEB_DROP.key: 95, DNS.key: 3,
                                           INPUT_POLICY.key: 12}))
            out = Path("/tmp") / f"fwtop-rules-{size[0]}x{size[1]}.svg"
            app.save_screenshot(str(out.name), path=str(out.parent))
            assert out.exists() and out.stat().st_size > 1000

