"""Pilot tests of the Packets pane and the packet details screen, in a small app of their own
(the pane is wired into the main app by its owner), fed from another thread with the same
CaptureBatch objects the real CaptureStream hands over. What is asserted is what a user sees."""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.app import App, ComposeResult

from fwtop.core.capture_events import CaptureStats, FlowEvent, PacketEvent
from fwtop.core.flows import FlowTable, FlowTableStats
from fwtop.core.frames import decode_packet
from fwtop.service.capture import CaptureBatch
from fwtop.ui import packets as packets_ui
from fwtop.ui.packets import PacketDetailScreen, PacketsPane, PacketsTable
from tests.unit.packets import ether, ipv4, tcp

C, S = "10.64.1.1", "10.64.1.2"
HOSTILE = "\x1b[31m[bold red]x[/]"
NO_FLOWS = FlowTableStats(0, 0, 0, 0, 0, 0)


class PacketsApp(App[None]):
    def __init__(self, raws: dict[int, tuple[bytes, int, str]] | None = None,
                 pcap_dir: str = ".") -> None:
        super().__init__()
        self.raws = raws if raws is not None else {}
        self.pcap_dir = pcap_dir
        self.written: list[tuple[str, int]] = []
        self.failed: list[str] = []

    def compose(self) -> ComposeResult:
        yield PacketsPane(raw_of=self.raws.get, pcap_dir=self.pcap_dir, id="packets-pane")

    @property
    def pane(self) -> PacketsPane:
        return self.query_one(PacketsPane)

    def on_packets_pane_pcap_written(self, message: PacketsPane.PcapWritten) -> None:
        self.written.append((message.path, message.count))

    def on_packets_pane_failed(self, message: PacketsPane.Failed) -> None:
        self.failed.append(message.error)


class Wire:
    """Packets and the flows a FlowTable decides from them, numbered like a capture."""

    def __init__(self) -> None:
        self.seq = 0
        self.table = FlowTable(timeout=1.0)
        self.raws: dict[int, tuple[bytes, int, str]] = {}
        self.received = 0

    def tcp(self, src: str, dst: str, sport: int, dport: int, flags: str,
            iface: str = "veth-fw", direction: str = "in") -> PacketEvent:
        self.seq += 1
        frame = ether(ipv4(src, dst, 6, tcp(sport, dport, flags)))
        now = time.monotonic()
        p = decode_packet(frame, ts=now, wall=time.time(), seq=self.seq, iface=iface,
                          direction=direction)  # type: ignore[arg-type]
        assert p is not None
        self.raws[self.seq] = (frame, len(frame), "ethernet")
        self.table.observe(p)
        return p

    def batch(self, packets: list[PacketEvent], expire_at: float | None = None,
              shed: int = 0) -> CaptureBatch:
        if expire_at is not None:
            self.table.expire(expire_at)
        self.received += len(packets) + shed
        stats = CaptureStats(True, received=self.received, decoded=self.received,
                             kernel_packets=self.received, kernel_drops=3, skipped=0,
                             mode="tpacket_v3 ring 16 MiB", interfaces="all")
        return CaptureBatch(tuple(packets), tuple(self.table.take()), stats, NO_FLOWS, shed)


def feed(app: PacketsApp, batch: CaptureBatch) -> None:
    """From another thread, as the capture stream does."""
    t = threading.Thread(target=app.pane.feed, args=(batch,))
    t.start()
    t.join()


async def settle(pilot: object, cond: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await pilot.pause(0.05)  # type: ignore[attr-defined]


def body(app: App[None]) -> str:
    """The details screen's body once it is mounted ("" before)."""
    found = app.screen.query("#pkt-body")
    return str(found.first().render()) if found else ""


def column(table: PacketsTable, key: str) -> list[str]:
    return [table.cell_text(i, key) for i in range(table.row_count)]


def scenario(wire: Wire) -> list[CaptureBatch]:
    """A SYN nobody answers (8081) and a SYN answered by a RST (8083)."""
    first = [wire.tcp(C, S, 41001, 8081, "SYN"), wire.tcp(C, S, 41003, 8083, "SYN"),
             wire.tcp(S, C, 8083, 41003, "RST,ACK", direction="out")]
    return [wire.batch(first), wire.batch([], expire_at=time.monotonic() + 5)]


async def test_newest_first_with_flow_colours_and_counts() -> None:
    wire = Wire()
    app = PacketsApp(wire.raws)
    async with app.run_test(size=(140, 30)) as pilot:
        for b in scenario(wire):
            feed(app, b)
        table = app.pane.table
        await settle(pilot, lambda: app.pane.counts.get("unanswered") == 1
                     and table.row_count == 3 and column(table, "flow")[2] == "unanswered")
        assert column(table, "from") == [f"{S}:8083", f"{C}:41003", f"{C}:41001"]
        assert column(table, "dir") == ["→", "←", "←"]
        assert column(table, "info") == ["RST,ACK", "SYN", "SYN"]
        assert column(table, "flow") == ["refused", "refused", "unanswered"]
        assert table.cell_style(2, "to") == "bold red" and table.cell_style(0, "flow") == \
            "bold yellow"
        assert app.pane.border_title == "Packets · 3 rcvd · 3 kernel drops"
        summary = str(app.query_one("#packet-summary").render())
        assert "unanswered 1" in summary and "refused 1" in summary
        assert f"unanswered: tcp {C}:41001 → {S}:8081: no answer to 1 SYN" in summary


async def test_filter_pause_and_resume() -> None:
    wire = Wire()
    app = PacketsApp(wire.raws)
    async with app.run_test(size=(140, 30)) as pilot:
        for b in scenario(wire):
            feed(app, b)
        pane, table = app.pane, app.pane.table
        await settle(pilot, lambda: table.row_count == 3 and pane.counts.get("refused") == 1)
        pane.set_filter("refused")
        assert column(table, "to") == [f"{C}:41003", f"{S}:8083"]
        pane.set_filter("dport 8081")
        assert column(table, "to") == [f"{S}:8081"]
        pane.set_filter("")
        pane.set_paused(True)
        assert pane.border_title.endswith("PAUSED")
        feed(app, wire.batch([wire.tcp(C, S, 41009, 22, "SYN")]))
        await settle(pilot, lambda: len(pane.packet_log) == 4)
        await pilot.pause(0.2)
        assert table.row_count == 3  # paused: rows hold still, nothing is lost
        pane.set_paused(False)
        assert table.row_count == 4 and column(table, "to")[0] == f"{S}:22"


async def test_hostile_names_are_shown_literally() -> None:
    wire = Wire()
    app = PacketsApp(wire.raws)
    async with app.run_test(size=(140, 30)) as pilot:
        feed(app, wire.batch([wire.tcp(C, S, 41001, 80, "SYN", iface=HOSTILE)]))
        await settle(pilot, lambda: app.pane.table.row_count == 1)
        cell = app.pane.table.cell_text(0, "iface")
        assert "\x1b" not in cell and cell.startswith("\\x1b[31m[bold red]")


async def test_enter_shows_the_dissection_and_hex() -> None:
    pytest.importorskip("scapy")
    wire = Wire()
    app = PacketsApp(wire.raws)
    async with app.run_test(size=(140, 40)) as pilot:
        feed(app, wire.batch([wire.tcp(C, S, 41001, 8081, "SYN")]))
        await settle(pilot, lambda: app.pane.table.row_count == 1)
        app.pane.table.focus()
        await pilot.press("enter")
        await settle(pilot, lambda: isinstance(app.screen, PacketDetailScreen))
        screen = app.screen
        assert isinstance(screen, PacketDetailScreen)
        await settle(pilot, lambda: screen.dissection is not None, timeout=15)
        assert screen.dissection is not None
        assert "###[ TCP ]###" in screen.dissection and "dport     = 8081" in screen.dissection
        assert "\n0000  02 00 00 00 00 02" in screen.dissection
        await settle(pilot, lambda: "###[ IP ]###" in body(app))
        await pilot.press("escape")
        await settle(pilot, lambda: not isinstance(app.screen, PacketDetailScreen))


async def test_detail_without_bytes_says_so() -> None:
    wire = Wire()
    app = PacketsApp({})  # bytes no longer kept
    async with app.run_test(size=(140, 30)) as pilot:
        feed(app, wire.batch([wire.tcp(C, S, 41001, 8081, "SYN")]))
        await settle(pilot, lambda: app.pane.table.row_count == 1)
        app.pane.open_detail()
        await settle(pilot, lambda: "no longer kept" in body(app))
        assert isinstance(app.screen, PacketDetailScreen)


async def test_w_writes_the_listed_packets_to_a_pcap(tmp_path: Path) -> None:
    wire = Wire()
    app = PacketsApp(wire.raws, pcap_dir=str(tmp_path))
    async with app.run_test(size=(140, 30)) as pilot:
        for b in scenario(wire):
            feed(app, b)
        await settle(pilot, lambda: app.pane.table.row_count == 3)
        app.pane.table.focus()
        await pilot.press("w")
        await settle(pilot, lambda: bool(app.written))
    path, count = app.written[0]
    assert count == 3 and Path(path).parent == tmp_path
    data = Path(path).read_bytes()
    assert struct.unpack_from("=I", data)[0] == 0xA1B2C3D4
    # Oldest first, as captured: the first record is the SYN to 8081.
    first = data[24 + 16:24 + 16 + 54]
    assert first == wire.raws[1][0]


async def test_renders_are_bounded_and_overflow_is_counted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packets_ui, "MAX_PENDING", 50)
    wire = Wire()
    app = PacketsApp(wire.raws)
    async with app.run_test(size=(140, 30)) as pilot:
        batches = [wire.batch([wire.tcp(C, S, 20000 + i * 10 + j, 80, "SYN")
                               for j in range(10)], shed=5) for i in range(60)]
        start = time.monotonic()

        def blast() -> None:
            for b in batches:
                app.pane.feed(b)

        t = threading.Thread(target=blast)
        t.start()
        t.join()
        pane = app.pane
        # Every packet is either in the pane's log or counted as shed (by the stream: 5 per
        # batch; by the pane's bounded buffer: the rest).
        await settle(pilot, lambda: len(pane.packet_log) + pane.shed == 60 * 15)
        elapsed = time.monotonic() - start
        assert pane.renders <= 2 + elapsed / packets_ui.RENDER_INTERVAL
        assert "display sampled" in str(app.query_one("#packet-summary").render())


def test_flow_line_words() -> None:
    e = FlowEvent(0.0, 0.0, "ip", "tcp", C, S, 41001, 8081, "refused",
                  "refused: nothing listens on 8081 (RST from 10.64.1.2)", certain=True)
    assert packets_ui.flow_line(e) == (
        f"refused: tcp {C}:41001 → {S}:8081: refused: nothing listens on 8081 "
        "(RST from 10.64.1.2)")
