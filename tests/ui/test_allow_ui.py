"""Real kernel: `a` on a drop opens its flow (the exact change shown first), the status line
counts down, `r` lists it and reverts it; checked against real packets."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fwtop.firewall.netns import resolve
from fwtop.ui.app import build_app
from fwtop.ui.tempallow import AllowScreen, TempScreen
from tests.conftest import Namespaces, needs, ns_run
from tests.kernel.explain_harness import send, topology

pytestmark = [pytest.mark.kernel, needs("ip", "nft", "iptables-nft", "iptables-nft-restore")]

PORT = 7600


@pytest.fixture(autouse=True)
def no_janitor_left(tmp_path: Path) -> Iterator[None]:
    """An apply starts the detached janitor (it would wait for the 300 s deadline): end the
    one this test started."""
    yield
    pid_file = tmp_path / "state" / "janitor.pid"
    text = pid_file.read_text().strip() if pid_file.exists() else ""
    if text.isdigit():
        try:
            os.kill(int(text), signal.SIGKILL)
        except ProcessLookupError:
            pass


async def test_allow_a_drop_then_revert_it(namespaces: Namespaces, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FWTOP_STATE_DIR", str(tmp_path / "state"))
    top = topology(namespaces)
    ns_run(top.fw, "iptables-nft-restore", input="*filter\n:INPUT DROP [0:0]\n"
           "-A INPUT -j NFLOG --nflog-prefix ui-drop --nflog-group 31\nCOMMIT\n")
    app = build_app(netns=resolve(top.fw), interval=0.5)
    async with app.run_test(size=(160, 45)) as pilot:
        async def until(cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
            deadline = time.monotonic() + timeout
            while not cond():
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                await pilot.pause(0.05)

        await until(lambda: app.shown is not None, "the first poll")
        await until(lambda: any(s.source == "nflog" and s.running for s in app.drop_stats),
                    "the NFLOG reader")
        assert send(top, "udp", top.fw_ip, PORT, 47001, listen_ns=top.fw,
                    wait=0.3).outcome == "none"
        await until(lambda: app.drops_table.row_count >= 1, "the drop")
        await pilot.press("1", "a")
        await until(lambda: isinstance(app.screen, AllowScreen), "the allow dialog")
        screen = app.screen
        assert isinstance(screen, AllowScreen)
        await until(lambda: "fwtop will add" in screen.text, "the preview")
        assert "-m time --datestop" in screen.text and "--dport 7600" in screen.text
        assert "fwtop:" in screen.text
        await pilot.press("enter")  # the default TTL, 300 s
        await until(lambda: "allowed for 300 s" in screen.text, "the allow")
        assert send(top, "udp", top.fw_ip, PORT, 47002, listen_ns=top.fw,
                    wait=1.0).outcome == "got"
        await pilot.press("escape")
        await until(lambda: len(app.temp_records) == 1, "the status line countdown")
        assert "temp: " in str(app.query_one("#status").render())

        await pilot.press("r")
        await until(lambda: isinstance(app.screen, TempScreen), "the temp screen")
        temp = app.screen
        assert isinstance(temp, TempScreen)
        await until(lambda: len(temp.shown) == 1, "the rule listed")
        await pilot.press("r")
        await until(lambda: "fwtop:" not in ns_run(top.fw, "iptables-nft-save").stdout,
                    "the revert")
        assert send(top, "udp", top.fw_ip, PORT, 47003, listen_ns=top.fw,
                    wait=0.3).outcome == "none"
        await pilot.press("escape")


async def test_allow_an_unanswered_packet_from_the_packets_pane(
        namespaces: Namespaces, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`a` in the Packets pane on an incoming SYN nobody answered: the allow is built from the
    packet (its addresses, port and interface) and a real connect then passes."""
    monkeypatch.setenv("FWTOP_STATE_DIR", str(tmp_path / "state"))
    top = topology(namespaces)
    ns_run(top.fw, "iptables-nft-restore", input="*filter\n:INPUT DROP [0:0]\nCOMMIT\n")
    app = build_app(netns=resolve(top.fw), interval=0.5, real_drops=False)
    async with app.run_test(size=(200, 50)) as pilot:
        async def until(cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
            deadline = time.monotonic() + timeout
            while not cond():
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                await pilot.pause(0.05)

        from fwtop.ui.packets import PacketsPane

        pane = app.query_one(PacketsPane)
        await until(lambda: app.shown is not None and pane.stats is not None, "the capture")
        assert send(top, "tcp", top.fw_ip, PORT + 1, 47011, listen_ns=top.fw).outcome == \
            "timeout"
        await until(lambda: any(p.dir == "in" and p.dport == PORT + 1
                                for p in pane.table.events), "the SYN in the Packets pane")
        await pilot.press("3")
        row = next(i for i, p in enumerate(pane.table.events)
                   if p.dir == "in" and p.dport == PORT + 1)
        pane.table.move_cursor(row)
        await pilot.press("a")
        await until(lambda: isinstance(app.screen, AllowScreen), "the allow dialog")
        screen = app.screen
        assert isinstance(screen, AllowScreen)
        await until(lambda: "fwtop will add" in screen.text, "the preview")
        assert f"--dport {PORT + 1}" in screen.text and f"-s {top.client_ip}/32" in screen.text
        assert f"-i {top.fw_if}" in screen.text
        await pilot.press("enter")
        await until(lambda: "allowed for 300 s" in screen.text, "the allow")
        assert send(top, "tcp", top.fw_ip, PORT + 1, 47012, listen_ns=top.fw).outcome == \
            "connected"
        await pilot.press("escape")
