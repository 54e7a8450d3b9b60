"""Snapshot tests (pytest-textual-snapshot) of the main view, the explanation of a drop, the
allow dialog and the help screen, on fixed synthetic data (no kernel, pinned clock and zone).
Update them with `pytest tests/ui/test_snapshots.py --snapshot-update` after a deliberate
change, and look at the SVGs in tests/ui/__snapshots__/ before committing."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from textual.widgets import Input

from fwtop.core.events import DropEvent
from fwtop.ui.app import FwtopApp
from fwtop.ui.tempallow import AllowScreen
from tests.ui.test_drops_pane import correlated_app

WALL = 1_796_100_000.0  # 2026-12-01 04:40:00 UTC


@pytest.fixture(autouse=True)
def utc() -> Iterator[None]:
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def event(i: int, dport: int, prefix: str | None) -> DropEvent:
    return DropEvent("nflog", 0.0, WALL + i, prefix=prefix, group=7 if prefix else None,
                     hook="input", iif="to-client", family="ip", proto="tcp",
                     src=f"10.77.1.{2 + i % 3}", dst="10.77.1.1", sport=40000 + i, dport=dport,
                     tcp_flags="SYN", len=60)


def app_with_drops() -> FwtopApp:
    app, made = correlated_app()
    app.clock = lambda: WALL + 60
    app._header = app._header.__class__(host="lab-host", netns="fwlab-fw", lab=True)
    app._test_drops = made  # type: ignore[attr-defined]
    return app


async def settle(pilot: Any) -> None:
    app = pilot.app
    deadline = time.monotonic() + 30
    while app.shown is None:
        assert time.monotonic() < deadline
        await pilot.pause(0.05)
    app._test_drops[0].send([event(i, (5432, 8080, 9090)[i % 3],
                                   "fwlab-input-drop" if i % 3 != 1 else None)
                             for i in range(9)])
    while app.drops_table.row_count != 9:
        assert time.monotonic() < deadline
        await pilot.pause(0.05)
    # Rules are attributed on a worker thread ("…" until it answers).
    while any(app.drops_table.cell_text(i, "rule") == "…" for i in range(9)) or \
            "finding" in str(app.query_one("#drop-detail").render()):
        assert time.monotonic() < deadline
        await pilot.pause(0.05)
    await pilot.pause(0.3)


def test_main_view(snap_compare: Callable[..., bool]) -> None:
    assert snap_compare(app_with_drops(), terminal_size=(160, 36), run_before=settle)


def test_main_view_100x30(snap_compare: Callable[..., bool]) -> None:
    assert snap_compare(app_with_drops(), terminal_size=(100, 30), run_before=settle)


def test_explanation_of_a_drop(snap_compare: Callable[..., bool]) -> None:
    """The explanation screen with the real evaluator's text for the selected drop (computed
    here rather than on the app's worker thread, so the snapshot never races it)."""
    from fwtop.core.correlate import packet_of
    from fwtop.service.explain import explain_in_namespace
    from fwtop.ui.render_drops import flow_text
    from fwtop.ui.screens import ExplainScreen

    async def before(pilot: Any) -> None:
        await settle(pilot)
        app = pilot.app
        await pilot.press("1")
        e = app.drops_table.selected
        pkt = packet_of(e)
        assert pkt is not None and app.correlator.evaluator is not None
        text = explain_in_namespace(pkt, net=app._net_context(),
                                    evaluator=app.correlator.evaluator).text()
        assert text.startswith("DROPPED")
        app.push_screen(ExplainScreen(flow_text(e), initial=text))
        await pilot.pause(0.5)

    assert snap_compare(app_with_drops(), terminal_size=(160, 36), run_before=before)


def test_allow_dialog(snap_compare: Callable[..., bool]) -> None:
    async def before(pilot: Any) -> None:
        await settle(pilot)
        preview = ("dropped now by iptables-nft ip filter INPUT #2 `-A INPUT -p tcp --dport "
                   "8080 -j DROP`\nfwtop will add, in iptables-nft ip filter INPUT before #2, "
                   "expiring in 300 s (the kernel enforces it):\n  iptables-nft -t filter -I "
                   "INPUT 2 -s 10.77.1.2/32 -d 10.77.1.1 -p tcp -m tcp --dport 8080 -m time "
                   "--datestop 2026-12-01T04:46:00 -m comment --comment fwtop:0123abcd -j "
                   "ACCEPT\n\nenter: apply · esc: cancel")
        pilot.app.push_screen(AllowScreen("tcp 10.77.1.2:40001 → 10.77.1.1:8080",
                                          lambda ttl: preview, lambda ttl: "applied"))
        deadline = time.monotonic() + 30
        while "fwtop will add" not in getattr(pilot.app.screen, "text", "") or \
                "fwtop will add" not in str(pilot.app.screen.query_one("#allow-text").render()):
            assert time.monotonic() < deadline
            await pilot.pause(0.05)
        # A blinking cursor would make the picture depend on when it is taken (on a loaded CI
        # machine the blink timer fires between frames): pin it visible.
        ttl = pilot.app.screen.query_one("#allow-ttl", Input)
        ttl.cursor_blink = False
        await pilot.pause(0.5)

    assert snap_compare(app_with_drops(), terminal_size=(160, 36), run_before=before)


def test_help(snap_compare: Callable[..., bool]) -> None:
    async def before(pilot: Any) -> None:
        await settle(pilot)
        await pilot.press("question_mark")
        await pilot.pause(0.3)

    assert snap_compare(app_with_drops(), terminal_size=(120, 40), run_before=before)
