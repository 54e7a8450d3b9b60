"""Screenshots of the real app on the lab, for screenshots/ and the README.

    sudo .venv/bin/python scripts/screenshots.py [--out screenshots]

Brings up a lab of its own (prefix fwshot), drives the real TUI headless with Textual's test
driver at 100x30 and 200x50 until drops, rule counters and the conntrack gauge are live, saves
SVGs (and PNGs when rsvg-convert is installed) of the main view, the explanation of a drop, the
kernel trace and the conntrack screen, then tears the lab down.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from fwtop import lab
from fwtop.firewall.netns import resolve
from fwtop.ui.app import FwtopApp, build_app
from fwtop.ui.conntrack import ConntrackScreen
from fwtop.ui.screens import ExplainScreen

PREFIX = "fwshot"


async def _until(pilot: object, cond: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"screenshots: timed out waiting for {what}")
        await pilot.pause(0.1)  # type: ignore[attr-defined]


def _save(app: FwtopApp, out: Path, name: str, written: list[Path]) -> None:
    svg = out / f"{name}.svg"
    app.save_screenshot(filename=svg.name, path=str(out))
    written.append(svg)
    if shutil.which("rsvg-convert"):
        png = svg.with_suffix(".png")
        subprocess.run(["rsvg-convert", str(svg), "-o", str(png)], check=True)
        written.append(png)


async def _shoot(fw_ns: str, size: tuple[int, int], out: Path, tag: str,
                 written: list[Path]) -> None:
    app = build_app(netns=resolve(fw_ns), interval=1.0, lab=True)
    async with app.run_test(size=size) as pilot:
        await _until(pilot, lambda: app.drops_table.row_count >= 8, "the lab's drops")
        await _until(pilot, lambda: app.shown is not None and app.shown.reloads >= 1
                     and any(r.pps > 0 for r in app.table._specs.values()),
                     "moving rule counters")
        await pilot.pause(2.5)  # a few ticks: deltas, sparkline
        await pilot.press("1")
        await pilot.pause(0.3)
        _save(app, out, f"main-{tag}", written)
        if tag != "wide":
            return
        await pilot.press("enter")
        await _until(pilot, lambda: isinstance(app.screen, ExplainScreen)
                     and "DROPPED" in app.screen.text, "the explanation")
        await pilot.pause(0.3)
        _save(app, out, "explain", written)
        await pilot.press("escape", "t")
        await _until(pilot, lambda: isinstance(app.screen, ExplainScreen)
                     and "kernel:" in app.screen.text, "the kernel trace", timeout=30)
        await pilot.pause(0.3)
        _save(app, out, "trace", written)
        await pilot.press("escape", "c")
        await _until(pilot, lambda: isinstance(app.screen, ConntrackScreen), "conntrack")
        await pilot.pause(2.5)
        _save(app, out, "conntrack", written)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="screenshots", type=Path)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    state = lab.up(PREFIX, rate=10.0, max_seconds=300)
    try:
        asyncio.run(_shoot(state.fw_ns, (100, 30), args.out, "100x30", written))
        asyncio.run(_shoot(state.fw_ns, (200, 50), args.out, "wide", written))
    finally:
        lab.down(PREFIX)
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
