"""The Packets pane: what actually arrives and leaves, newest first, each packet coloured by what
became of its flow (red: unanswered or rejected, yellow: refused or half-open, green: answered or
established), the capture's own counts in the title (received, kernel drops, sampled), the latest
flow verdicts in plain words below; and the packet details screen (scapy's dissection and a hex
dump) on enter. It only displays what the capture stream hands it.

Wiring (fwtop/ui/app.py and app.tcss; nothing else needs to change):

    from fwtop.ui.packets import PacketsPane, PacketDetailScreen, default_capture_factory

    # build_app()/FwtopApp.__init__: like drops_factory, injectable for tests:
    #   capture_factory: CaptureFactory | None
    #   default: default_capture_factory(netns, iface=args.iface,
    #                                      capture_filter=args.capture_filter)
    # CaptureFactory = Callable[[on_batch: Callable[[CaptureBatch], None],
    #                            on_error: Callable[[str], None]], CaptureHandle]
    # CaptureHandle has start(), stop() and raw(seq) -> (frame, wire_len, link) | None
    # (fwtop.service.capture.CaptureStream is one).

    # compose(): beside the Drops and Rules panes (it is a Vertical with its own border title,
    # height 1fr; give it the same pane CSS as #drops-pane, e.g. `#packets-pane { ... }`):
    yield PacketsPane(id="packets-pane")

    # on_mount(): the stream's batches go straight to the pane. PacketsPane.feed is thread-safe:
    # it buffers (bounded, overflow counted) and posts itself one message; the pane renders at
    # most 10 times a second and not at all while paused (it keeps collecting).
    pane = self.query_one(PacketsPane)
    self._capture = self._capture_factory(pane.feed, self._on_error)
    pane.raw_of = self._capture.raw          # bytes for the details screen and `w`
    self._capture.start()
    # on_unmount(): await asyncio.to_thread(self._capture.stop)

    # p (pause):     pane.set_paused(self.paused)
    # / (filter):    pane.set_filter(text)   when the Packets pane has focus (words, all must
    #                match: "tcp 8081", "refused", "unanswered", an address, an interface)
    # 3 (focus):     Binding("3", "focus_pane('packets')", "Packets", id="pane-packets")
    #                -> pane.table.focus()
    # enter on a row opens PacketDetailScreen by itself (PacketsTable posts RowSelected, the pane
    # handles it); `w` in the pane writes the listed packets to ./fwtop-<time>.pcap (pane's
    # `pcap_dir`), and the app may also call pane.open_detail() / pane.write_pcap().
    # Messages the pane posts (bubble to the app): PacketsPane.PcapWritten(path, count) (notify
    # the user), PacketsPane.Failed(error) (the status line). Capture errors come through
    # on_error like the drop stream's.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Protocol

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Static

from fwtop.core.capture_events import CaptureStats, FlowEvent, PacketEvent
from fwtop.core.flows import flow_event_key, packet_flow_key
from fwtop.firewall.netns import NetNamespace
from fwtop.service.capture import CaptureBatch
from fwtop.ui.render import DIM, Segment, clip, human_count, safe
from fwtop.ui.rowlist import ColumnSpec, EventList, RowList
from fwtop.ui.widgets import set_border, set_text

RENDER_INTERVAL = 0.1  # at most 10 renders a second, whatever the packet rate
MAX_PENDING = 20_000  # packets received but not yet taken by the UI thread
LOG_SIZE = 5_000  # packets the pane keeps for filtering and scrolling back
FLOW_MEMORY = 20_000  # flow states remembered for colouring

# Flow state -> (style of the flow cell and the addresses, one-word label)
STATE_STYLE: dict[str, str] = {
    "unanswered": "bold red", "rejected": "bold red", "refused": "bold yellow",
    "half-open": "yellow", "pmtu": "bold cyan", "answered": "green", "established": "green",
}
PACKET_COLUMNS: tuple[tuple[str, str, int | None], ...] = (
    ("time", "time", 12),
    ("iface", "if", None),
    ("dir", "dir", 3),
    ("proto", "proto", 6),
    ("from", "from", None),
    ("to", "to", None),
    ("info", "flags", None),
    ("len", "len", 5),
    ("flow", "flow", 11),  # "established"
)

Raw = tuple[bytes, int, str]


class CaptureHandle(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def raw(self, seq: int) -> Raw | None: ...


CaptureFactory = Callable[[Callable[[CaptureBatch], None], Callable[[str], None]],
                          CaptureHandle]


def default_capture_factory(netns: NetNamespace | None, iface: str | None = None,
                            capture_filter: str | None = None) -> CaptureFactory:
    def factory(on_batch: Callable[[CaptureBatch], None],
                on_error: Callable[[str], None]) -> CaptureHandle:
        from fwtop.service.capture import CaptureConfig, CaptureStream

        cfg = CaptureConfig(netns=netns, iface=iface, capture_filter=capture_filter)
        return CaptureStream(cfg, on_batch, on_error)

    return factory


# --- plain text of a packet (what the filter matches and the cells show) ---------------------


def _endpoint(addr: str | None, port: int | None) -> str:
    if addr is None:
        return "?"
    host = f"[{addr}]" if ":" in addr and port is not None else addr
    return f"{host}:{port}" if port is not None else host


def _info(p: PacketEvent) -> str:
    if p.tcp_flags is not None:
        return p.tcp_flags or "·"
    if p.icmp_type is not None:
        text = f"type {p.icmp_type}/{p.icmp_code}"
        if p.mtu is not None:
            text += f" mtu {p.mtu}"
        if p.embedded is not None:
            e = p.embedded
            text += f" re {e.proto} {_endpoint(e.src, e.sport)}→{_endpoint(e.dst, e.dport)}"
        return text
    return ""


def packet_text(p: PacketEvent, state: str | None) -> str:
    """One searchable line per packet (what the `/` filter matches against)."""
    parts = [p.iface or "", p.dir, p.family or "", p.proto or "", p.src or "", p.dst or "",
             _info(p), state or ""]
    if p.sport is not None:
        parts.append(f"sport {p.sport} :{p.sport}")
    if p.dport is not None:
        parts.append(f"dport {p.dport} :{p.dport}")
    if p.vlan is not None:
        parts.append(f"vlan {p.vlan}")
    return " ".join(parts).lower()


def packet_cells(p: PacketEvent, state: str | None) -> tuple[tuple[Segment, ...], ...]:
    """The row of one packet as (terminal-safe text, style) segments, one cell per column."""
    stamp = time.strftime("%H:%M:%S", time.localtime(p.wall)) + f".{int(p.wall * 1000) % 1000:03d}"
    style = STATE_STYLE.get(state or "", "")
    arrow = "→" if p.dir == "out" else "←"
    return (
        ((stamp, DIM),),
        ((safe(p.iface or "?"), ""),),
        ((arrow, "bold" if p.dir == "in" else DIM),),
        ((safe(p.proto or "?"), "bold"),),
        ((safe(_endpoint(p.src, p.sport)), style),),
        ((safe(_endpoint(p.dst, p.dport)), style or "bold"),),
        ((safe(clip(_info(p), 40)), ""),),
        ((str(p.len if p.len is not None else p.frame_len), DIM),),
        ((state or "", style),),
    )


def packets_title(stats: CaptureStats | None, paused: bool) -> str:
    if stats is None:
        title = "Packets · starting"
    elif not stats.running and stats.off_reason:
        title = "Packets · off"
    else:
        title = f"Packets · {human_count(stats.received)} rcvd"
        if stats.kernel_drops:
            title += f" · {human_count(stats.kernel_drops)} kernel drops"
        if stats.skipped:
            title += f" · {human_count(stats.skipped)} sampled out"
        if stats.capture_filter:
            title += f" · filter {clip(stats.capture_filter, 30)}"
    return safe(title + (" · PAUSED" if paused else ""))


def flow_line(e: FlowEvent) -> str:
    who = f"{e.proto} {_endpoint(e.src, e.sport)} → {_endpoint(e.dst, e.dport)}"
    doubt = "" if e.certain else " (uncertain)"
    return f"{e.state}{doubt}: {who}: {e.reason}"


# --- widgets ---------------------------------------------------------------------------------


class PacketsTable(EventList[PacketEvent]):
    """The newest packets first, each coloured by what became of its flow."""

    COLUMNS = tuple(ColumnSpec(key, label, width) for key, label, width in PACKET_COLUMNS)
    MAX_ROWS = 200
    CACHE_ROWS = 800

    def cell_style(self, row: int, column: str) -> str:
        cell = self.cells_of(row)[self.column_index(column)]
        return cell[0][1] if cell else ""

    def row_key(self, event: PacketEvent) -> int:
        return event.seq  # numbers packets in capture order: unique and stable

    def show(self, events: Sequence[PacketEvent],
             state_of: Callable[[PacketEvent], str | None] = lambda _: None) -> None:
        """Show `events` (newest first); `state_of` says what became of each one's flow."""
        self.show_events(events, state_of, packet_cells)  # type: ignore[arg-type]


class PacketsPane(Vertical):
    """The pane: PacketsTable plus a summary line of the latest flow verdicts. `feed(batch)`
    may be called from any thread."""

    DEFAULT_CSS = """
    PacketsPane { height: 1fr; border: round $primary-darken-2; }
    PacketsPane:focus-within { border: round $accent; }
    PacketsPane > PacketsTable { height: 1fr; }
    PacketsPane > #packet-summary { height: 3; color: $text-muted; }
    """

    BINDINGS = [
        Binding("w", "write_pcap", "Write pcap", id="packets-pcap",
                tooltip="Write the packets listed in the Packets pane to a pcap file"),
    ]

    class Ready(Message):
        """New batches are waiting in the pane's buffer (posted from the capture thread)."""

    class PcapWritten(Message):
        def __init__(self, path: str, count: int) -> None:
            super().__init__()
            self.path = path
            self.count = count

    class Failed(Message):
        def __init__(self, error: str) -> None:
            super().__init__()
            self.error = error

    def __init__(self, raw_of: Callable[[int], Raw | None] | None = None,
                 pcap_dir: str = ".", **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.raw_of = raw_of
        self.pcap_dir = pcap_dir
        self._lock = threading.Lock()
        self._pending: list[CaptureBatch] = []
        self._pending_packets = 0
        self._posted = False
        self.shed = 0  # packets shed by the stream (display sampling) or by this buffer
        self.packet_log: deque[PacketEvent] = deque(maxlen=LOG_SIZE)
        self.flows: deque[FlowEvent] = deque(maxlen=50)
        self._states: OrderedDict[tuple[object, ...], str] = OrderedDict()
        self.stats: CaptureStats | None = None
        self.counts: dict[str, int] = {}
        self.paused = False
        self.needle = ""
        self._last_render = 0.0
        self._timer_armed = False
        self._render_cost = 0.0
        self.renders = 0
        # Set by the app: called (UI thread) when there is something new; the app then calls
        # _take() in its next render tick. Unset, the pane paces its own renders.
        self.on_dirty: Callable[[], None] | None = None

    def compose(self) -> ComposeResult:
        yield PacketsTable(id="packets")
        yield Static(id="packet-summary")

    @property
    def table(self) -> PacketsTable:
        return self.query_one(PacketsTable)

    def on_mount(self) -> None:
        self._frame()

    # --- any thread -------------------------------------------------------------------------

    def feed(self, batch: CaptureBatch) -> None:
        """Take a batch from the capture thread: buffered (at most MAX_PENDING packets: the
        oldest undisplayed ones are shed and counted) and one Ready message per render."""
        with self._lock:
            self._pending.append(batch)
            self._pending_packets += len(batch.packets)
            while self._pending_packets > MAX_PENDING and len(self._pending) > 1:
                old = self._pending.pop(0)
                self._pending_packets -= len(old.packets)
                self.shed += len(old.packets)
                # Keep the old batch's flows: they are few and they are the verdicts.
                self._pending[0] = _merge_flows(old, self._pending[0])
            posted, self._posted = self._posted, True
        if not posted:
            try:
                self.post_message(self.Ready())
            except RuntimeError:  # the app is exiting
                pass

    # --- UI thread --------------------------------------------------------------------------

    def on_packets_pane_ready(self, message: Ready) -> None:
        message.stop()
        if self.on_dirty is not None:  # the app's render tick takes it (with the other panes)
            self.on_dirty()
            return
        # Under a flood the pane renders less often (at most a quarter of the UI's time), so
        # key presses stay responsive.
        interval = max(RENDER_INTERVAL, 4 * self._render_cost)
        wait = self._last_render + interval - time.monotonic()
        if wait > 0:
            if not self._timer_armed:
                self._timer_armed = True
                self.set_timer(wait, self._take)
            return
        self._take()

    def _take(self) -> None:
        started = time.perf_counter()
        try:
            self._take_now()
        finally:
            self._render_cost = time.perf_counter() - started

    def _take_now(self) -> None:
        self._timer_armed = False
        with self._lock:
            batches, self._pending = self._pending, []
            self._pending_packets = 0
            self._posted = False
        for b in batches:
            self.packet_log.extend(b.packets)
            self.shed += b.shed
            self.stats = b.stats
            for f in b.flows:
                self._note_flow(f)
        self._last_render = time.monotonic()
        if any(b.packets or b.flows for b in batches) and not self.paused:
            self._rows()
        self._frame()

    def _note_flow(self, f: FlowEvent) -> None:
        self.flows.append(f)
        self.counts[f.state] = self.counts.get(f.state, 0) + 1
        key = flow_event_key(f)
        if key is None or f.state == "pmtu":
            return
        states = self._states
        states[key] = f.state
        states.move_to_end(key)
        if len(states) > FLOW_MEMORY:
            states.popitem(last=False)

    def state_of(self, p: PacketEvent) -> str | None:
        key = packet_flow_key(p)
        return None if key is None else self._states.get(key)

    def newest(self, limit: int) -> list[PacketEvent]:
        words = self.needle.lower().split()
        out: list[PacketEvent] = []
        for p in reversed(self.packet_log):
            if words:
                text = packet_text(p, self.state_of(p))
                if not all(w in text for w in words):
                    continue
            out.append(p)
            if len(out) >= limit:
                break
        return out

    def _rows(self) -> None:
        self.renders += 1
        self.table.show(self.newest(PacketsTable.MAX_ROWS), self.state_of)

    def _frame(self) -> None:
        set_border(self, packets_title(self.stats, self.paused), "enter details · w pcap")
        parts: list[Segment] = []
        for state in ("unanswered", "refused", "rejected", "half-open", "pmtu"):
            n = self.counts.get(state, 0)
            if n:
                parts.append((f"{state} {n}", STATE_STYLE[state]))
                parts.append(("  ", ""))
        if self.needle:
            parts.append((f"filter: {safe(self.needle)}  ", "italic"))
        if self.shed:
            parts.append((f"display sampled: {human_count(self.shed)} not listed  ", DIM))
        if self.stats is not None and self.stats.off_reason:
            parts.append((safe(self.stats.off_reason), "bold red"))
        lines = [parts] if parts else []
        latest = next((f for f in reversed(self.flows)
                       if f.state not in ("established", "answered")), None)
        if latest is not None:
            lines.append([(safe(clip(flow_line(latest), 300)), STATE_STYLE.get(latest.state,
                                                                                ""))])
        text = Text(no_wrap=True, end="")
        for i, line in enumerate(lines):
            if i:
                text.append("\n")
            for plain, style in line:
                text.append(plain, style or None)
        set_text(self.query_one("#packet-summary", Static), text)

    def set_paused(self, paused: bool) -> None:
        """Pause stops rendering, never collecting; resuming shows what came meanwhile."""
        self.paused = paused
        if not paused:
            self._rows()
        self._frame()

    def set_filter(self, needle: str) -> None:
        self.needle = needle.strip()
        self._rows()  # also while paused: the filter applies to what is held
        self._frame()

    def on_row_list_selected(self, event: RowList.Selected) -> None:
        if event.row_list is self.table:
            event.stop()
            self.open_detail()

    def open_detail(self) -> None:
        p = self.table.selected
        if p is None:
            return
        raw = self.raw_of(p.seq) if self.raw_of is not None else None
        self.app.push_screen(PacketDetailScreen(p, raw, self.state_of(p)))

    def action_write_pcap(self) -> None:
        self.write_pcap()

    def write_pcap(self, path: str | None = None) -> str | None:
        """Write the packets listed now (after the filter) whose bytes are still kept to a
        pcap file, oldest first; returns its path (None when there was nothing to write)."""
        from fwtop.service.pcap import write_pcap

        if self.raw_of is None:
            self.post_message(self.Failed("no packet bytes to write (capture not running)"))
            return None
        rows = []
        for p in reversed(self.table.events):
            raw = self.raw_of(p.seq)
            if raw is not None:
                rows.append((p.wall, raw[0], raw[1], raw[2]))
        if not rows:
            self.post_message(self.Failed("none of the listed packets is still kept"))
            return None
        if path is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path = os.path.join(self.pcap_dir, f"fwtop-{stamp}.pcap")
        try:
            count = write_pcap(path, rows)
        except OSError as exc:
            self.post_message(self.Failed(f"cannot write {path}: {exc.strerror}"))
            return None
        self.post_message(self.PcapWritten(path, count))
        return path


def _merge_flows(old: CaptureBatch, new: CaptureBatch) -> CaptureBatch:
    from dataclasses import replace

    return replace(new, flows=old.flows + new.flows, shed=new.shed + old.shed)


class PacketDetailScreen(ModalScreen[None]):
    """One packet in full: fwtop's summary and its flow's fate, then scapy's layer-by-layer
    dissection and a hex dump (scapy runs on a worker thread: its first import takes ~0.5 s)."""

    DEFAULT_CSS = """
    PacketDetailScreen { align: center middle; }
    PacketDetailScreen > #pkt-box {
        width: 90%; height: 90%; border: round $accent; background: $surface; padding: 0 1;
    }
    PacketDetailScreen #pkt-head { height: auto; margin-bottom: 1; }
    PacketDetailScreen #pkt-scroll { height: 1fr; }
    """

    BINDINGS = [
        Binding("escape", "close", "Close", id="packet-close"),
        Binding("q", "close", "Close", id="packet-close-q", show=False),
        Binding("enter", "close", "Close", id="packet-close-enter", show=False),
    ]

    def __init__(self, packet: PacketEvent, raw: Raw | None, state: str | None = None,
                 **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.packet = packet
        self.raw = raw
        self.state = state
        self.dissection: str | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="pkt-box"):
            yield Static(id="pkt-head")
            with VerticalScroll(id="pkt-scroll"):
                yield Static(id="pkt-body")

    def on_mount(self) -> None:
        p = self.packet
        box = self.query_one("#pkt-box")
        box.border_title = safe(f"Packet #{p.seq} · {p.iface or '?'} {p.dir}")
        box.border_subtitle = "esc close"
        head = Text(no_wrap=False, end="")
        head.append(safe(f"{p.proto} {_endpoint(p.src, p.sport)} → {_endpoint(p.dst, p.dport)}"),
                    "bold")
        info = _info(p)
        if info:
            head.append("  " + safe(info))
        head.append(f"  len {p.len}  frame {p.frame_len}", DIM)
        if self.state:
            head.append(f"\nflow: {self.state}", STATE_STYLE.get(self.state, ""))
        self.query_one("#pkt-head", Static).update(head)
        if self.raw is None:
            self._show("(the bytes of this packet are no longer kept: only the last few "
                       "thousand packets are)")
            return
        self._show("dissecting…")
        frame, _, link = self.raw

        def work() -> None:
            from fwtop.service.pcap import dissect

            try:
                text = dissect(frame, link)
            except Exception as exc:  # shown, never fatal
                text = f"could not dissect: {type(exc).__name__}: {exc}"
            try:
                self.app.call_from_thread(self._dissected, text)
            except RuntimeError:  # the app is exiting
                pass

        self.run_worker(work, thread=True, exclusive=True, group="dissect")

    def _dissected(self, text: str) -> None:
        self.dissection = text
        self._show(text)

    def _show(self, text: str) -> None:
        # Packet bytes are attacker-controlled: every line is escaped, and never markup.
        safe_text = "\n".join(safe(line) for line in text.splitlines())
        try:
            self.query_one("#pkt-body", Static).update(Text(safe_text, no_wrap=True))
        except Exception:  # the screen was closed meanwhile
            pass

    def action_close(self) -> None:
        self.dismiss(None)
