"""Real kernel: `d` on a rule in the Rules pane previews the edit, enter applies it (the rule
is gone from the kernel), `C` confirms it so the reverter leaves it. (The automatic revert of
unconfirmed edits is proven in tests/kernel/test_edits_kernel.py.)"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fwtop.firewall.netns import resolve
from fwtop.ui.app import build_app
from fwtop.ui.tempallow import AllowScreen
from tests.conftest import Namespaces, needs, ns_run
from tests.kernel.explain_harness import send, topology

pytestmark = [pytest.mark.kernel, needs("ip", "nft", "iptables-nft", "iptables-nft-restore")]


async def until(pilot: Any, cond: Callable[[], bool], what: str, timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.05)


async def preview_and_apply(pilot: Any, expect: str = "") -> AllowScreen:
    """The edit dialog a key opened: wait for its preview (which names `expect`), apply it,
    wait until applied."""
    app = pilot.app
    await until(pilot, lambda: isinstance(app.screen, AllowScreen), "the edit dialog")
    screen = app.screen
    assert isinstance(screen, AllowScreen)
    await until(pilot, lambda: "reverts by itself" in screen.text, "the preview")
    assert expect in screen.text
    await pilot.press("enter")
    await until(pilot, lambda: "applied: edit" in screen.text, "the edit")
    return screen


async def confirm(pilot: Any) -> None:
    """Close the dialog, see the countdown, confirm with C."""
    app = pilot.app
    await pilot.press("escape")
    await until(pilot, lambda: any(r.kind == "edit" for r in app.temp_records), "the countdown")
    await pilot.press("C")
    await until(pilot, lambda: not any(r.kind == "edit" for r in app.temp_records),
                "the confirmation")


async def test_delete_a_rule_then_confirm(namespaces: Namespaces, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FWTOP_STATE_DIR", str(tmp_path / "state"))
    top = topology(namespaces)
    ns_run(top.fw, "iptables-nft-restore", input="*filter\n:INPUT ACCEPT [0:0]\n"
           '-A INPUT -p tcp --dport 7700 -m comment --comment "bad drop" -j DROP\nCOMMIT\n')
    app = build_app(netns=resolve(top.fw), interval=0.5, real_drops=False,
                    real_capture=False)
    async with app.run_test(size=(160, 45)) as pilot:
        await until(pilot, lambda: app.shown is not None, "the first poll")
        rule = next(r for r in app.shown.ruleset.rules() if r.comment == "bad drop")  # type: ignore[union-attr]
        await pilot.press("2")
        assert app.table.select_key(rule.key)
        await pilot.press("d")
        await preview_and_apply(pilot, expect="bad drop")
        assert "bad drop" not in ns_run(top.fw, "iptables-nft-save").stdout
        await confirm(pilot)
    time.sleep(1.5)
    assert "bad drop" not in ns_run(top.fw, "iptables-nft-save").stdout  # stays deleted


async def test_move_an_accept_above_the_drop_that_shadows_it(
        namespaces: Namespaces, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The seed's rule-ordering mistake fixed from the Rules pane: `m` on the ACCEPT, `m` on the
    DROP above it, enter: the kernel's chain has the ACCEPT first, and a real connect passes."""
    monkeypatch.setenv("FWTOP_STATE_DIR", str(tmp_path / "state"))
    top = topology(namespaces)
    ns_run(top.fw, "iptables-nft-restore", input="*filter\n:INPUT ACCEPT [0:0]\n"
           '-A INPUT -p tcp --dport 7701 -m comment --comment "shadowing drop" -j DROP\n'
           '-A INPUT -p tcp --dport 7701 -m comment --comment "wanted accept" -j ACCEPT\n'
           "COMMIT\n")
    app = build_app(netns=resolve(top.fw), interval=0.5, real_drops=False,
                    real_capture=False)
    async with app.run_test(size=(160, 45)) as pilot:
        await until(pilot, lambda: app.shown is not None, "the first poll")
        assert send(top, "tcp", top.fw_ip, 7701, 41001, listen_ns=top.fw).outcome == "timeout"
        rules = {r.comment: r for r in app.shown.ruleset.rules()}  # type: ignore[union-attr]
        await pilot.press("2")
        assert app.table.select_key(rules["wanted accept"].key)
        await pilot.press("m")
        assert "moving INPUT #2" in str(app.query_one("#status").render())
        assert app.table.select_key(rules["shadowing drop"].key)
        await pilot.press("m")
        await preview_and_apply(pilot, expect="wanted accept")
        saved = ns_run(top.fw, "iptables-nft-save").stdout
        assert saved.index("wanted accept") < saved.index("shadowing drop")
        assert send(top, "tcp", top.fw_ip, 7701, 41002, listen_ns=top.fw).outcome == \
            "connected"
        await confirm(pilot)
