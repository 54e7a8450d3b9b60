"""The fwtop TUI: header, the Drops and Rules panes, filters, status line, footer; fed only by
the service layer (the rules Monitor and the DropStream).

Both call back from their own threads. The callbacks never touch a widget: they park the newest
view (or log the new drops into the bounded DropLog) and post a message; the UI thread renders
at most RENDER_HZ times a second, so data that arrives faster than that is coalesced.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from textual import events
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches, QueryType
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Static

from fwtop.core.capture_events import PacketEvent
from fwtop.core.conntrack import ConntrackView
from fwtop.core.correlate import Attribution, Correlator, attribute_by_counters, packet_of
from fwtop.core.droplog import DropLog
from fwtop.core.edits import ChainRef, Edit, RuleRef
from fwtop.core.evaluator import NetContext, Packet
from fwtop.core.events import DropEvent, SourceStats
from fwtop.core.model import Chain, Rule
from fwtop.core.tempallow import AllowRequest
from fwtop.firewall.netns import NetNamespace
from fwtop.service.attribution import AttributionWorker
from fwtop.service.drops import DropBatch
from fwtop.service.edits import Preview as EditPreview
from fwtop.service.journal import Record
from fwtop.service.rules import RulesView
from fwtop.ui.conntrack import (
    ConntrackBreakdownRequested,
    ConntrackGauge,
    ConntrackScreen,
    ConntrackUpdated,
)
from fwtop.ui.packets import (
    CaptureFactory,
    CaptureHandle,
    PacketsPane,
    default_capture_factory,
)
from fwtop.ui.render import (
    Cell,
    HeaderState,
    RowsBuilder,
    backend_notes,
    safe,
    status_segments,
)
from fwtop.ui.render_drops import (
    drops_title,
    flow_text,
    off_reasons,
    off_segments,
    rule_cell,
    summary_segments,
)
from fwtop.ui.rowlist import RowList
from fwtop.ui.screens import ExplainScreen, HelpScreen, MainScreen
from fwtop.ui.tempallow import AllowScreen, TempScreen, countdown
from fwtop.ui.widgets import (
    DropsTable,
    FilterInput,
    FwtopFooter,
    FwtopHeader,
    RulesTable,
    StatusLine,
    set_border,
    set_text,
    set_tooltip,
    to_text,
)

PENDING_CELL: Cell = (("…", "dim"),)  # the attribution worker has not answered yet
RENDER_HZ = 10.0
RENDER_BUDGET = 4.0  # a tick comes at most every 4x what the last one cost (<= 25% of the UI)
# (one pane per tick: with three busy panes each one renders at most every 0.3 s)
MIN_RENDER_INTERVAL = 1.0 / RENDER_HZ
MAX_RENDER_INTERVAL = 2.0  # however slow the machine, the panes move at least this often
# The collector's thresholds while the app runs: full passes (100-250 ms each under load, with
# Python's defaults about every 1.3 s) become rare; what fwtop allocates per event is acyclic.
GC_THRESHOLD = (2_000, 10, 100)
KEY_QUIET = 0.15  # seconds after a key press with no render tick (its frame goes out alone)


class MonitorHandle(Protocol):
    """What the app needs from the service layer's Monitor (and what a test fake provides)."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def poll_now(self) -> None: ...


# monitor_factory(on_rules, on_error) -> MonitorHandle. The callbacks may be called from any
# thread, including synchronously from inside start() or poll_now().
MonitorFactory = Callable[[Callable[[RulesView], None], Callable[[str], None]], MonitorHandle]


class DropsHandle(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


# drops_factory(on_batch, on_error) -> DropsHandle; callbacks from any thread.
DropsFactory = Callable[[Callable[[DropBatch], None], Callable[[str], None]], DropsHandle]

class ConntrackHandle(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def request_breakdown(self) -> None: ...
    def note_drop_events(self, events: Iterable[DropEvent]) -> None: ...


# conntrack_factory(on_view, on_error) -> ConntrackHandle; callbacks from any thread.
ConntrackFactory = Callable[[Callable[[ConntrackView], None], Callable[[str], None]],
                            ConntrackHandle]


class DropsReady(Message):
    """New drops have been logged since the Drops pane last rendered."""


class AttributionsReady(Message):
    """The attribution worker knows the rule of more shown drops."""


class ViewReady(Message):
    """A newer RulesView is parked in the app's slot (the message itself carries nothing, so a
    burst of views costs one render)."""


class MonitorFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


def default_monitor_factory(netns: NetNamespace | None, interval: float) -> MonitorFactory:
    def factory(on_rules: Callable[[RulesView], None],
                on_error: Callable[[str], None]) -> MonitorHandle:
        from fwtop.service.monitor import Monitor

        return Monitor(on_rules, on_error, netns=netns, interval=interval)

    return factory


def default_conntrack_factory(netns: NetNamespace | None) -> ConntrackFactory:
    def factory(on_view: Callable[[ConntrackView], None],
                on_error: Callable[[str], None]) -> ConntrackHandle:
        from fwtop.service.conntrack import ConntrackMonitor

        return ConntrackMonitor(on_view=on_view, on_error=on_error, netns=netns, interval=1.0)

    return factory


def default_drops_factory(netns: NetNamespace | None,
                          nflog_groups: tuple[int, ...] = ()) -> DropsFactory:
    def factory(on_batch: Callable[[DropBatch], None],
                on_error: Callable[[str], None]) -> DropsHandle:
        from fwtop.service.drops import DropSources, DropStream

        cfg = DropSources(groups=None, extra_groups=nflog_groups, netns=netns)
        return DropStream(cfg, on_batch, on_error)

    return factory


class FwtopApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "fwtop"

    BINDINGS = [
        Binding("q", "quit", "Quit", id="quit", tooltip="Quit fwtop"),
        Binding("p", "toggle_pause", "Pause", id="pause",
                tooltip="Pause/resume the display; polling continues"),
        Binding("s", "toggle_sort", "Sort", id="sort",
                tooltip="Busiest rules first / chain order"),
        Binding("f5", "refresh", "Refresh", id="refresh", tooltip="Poll now"),
        Binding("a", "allow_drop", "Allow", id="allow",
                tooltip="Open the selected drop's (or incoming packet's) flow for a while"),
        Binding("r", "temp_rules", "Temp rules", id="temp",
                tooltip="Active temporary rules and edits: revert, extend, confirm"),
        Binding("d", "edit_delete", "Delete rule", id="edit-delete", show=False,
                tooltip="Delete the selected rule, reverted by itself unless confirmed (C)"),
        Binding("m", "edit_move", "Move rule", id="edit-move", show=False,
                tooltip="Pick up the selected rule; m again on another rule of its chain moves "
                        "it there, reverted by itself unless confirmed (C)"),
        Binding("P", "edit_policy", "Flip policy", id="edit-policy", show=False,
                tooltip="Flip the selected chain's policy (drop/accept), reverted unless "
                        "confirmed (C)"),
        Binding("C", "confirm_edit", "Confirm edit", id="edit-confirm", show=False,
                tooltip="Keep the newest pending edit (cancel its automatic revert)"),
        Binding("slash", "filter", "Filter", id="filter", key_display="/",
                tooltip="Filter rules by text, comment or chain"),
        Binding("escape", "clear_filter", "Clear filter", id="clear-filter", show=False),
        Binding("tab", "focus_next", "Next pane", show=False),
        Binding("1", "focus_pane('drops')", "Drops", id="pane-drops", show=False),
        Binding("2", "focus_pane('rules')", "Rules", id="pane-rules", show=False),
        Binding("3", "focus_pane('packets')", "Packets", id="pane-packets", show=False),
        Binding("c", "conntrack", "Conntrack", id="conntrack",
                tooltip="Conntrack table: how full, how fast, who fills it"),
        Binding("t", "trace_drop", "Trace", id="trace",
                tooltip="Trace the selected drop's flow with nftrace: the kernel's own answer"),
        Binding("e", "explain_drop", "Explain", id="explain",
                tooltip="Why the selected drop was dropped: its rule, path and reasons"),
        Binding("question_mark", "help", "Help", id="help", key_display="?",
                tooltip="What the panes, columns and keys mean"),
        Binding("f1", "help", "Help", id="help-f1", show=False),
    ]

    def __init__(self, monitor_factory: MonitorFactory, netns_name: str = "host",
                 lab: bool = False, host: str | None = None,
                 drops_factory: DropsFactory | None = None,
                 net_factory: Callable[[], NetContext] | None = None,
                 netns: NetNamespace | None = None,
                 conntrack_factory: ConntrackFactory | None = None,
                 edits_enabled: bool = False,
                 capture_factory: CaptureFactory | None = None) -> None:
        super().__init__()
        self._capture_factory = capture_factory
        self._capture: CaptureHandle | None = None
        self._left = "drops"  # which of Packets / Drops a narrow terminal shows
        # Writing to the firewall (allow, revert) only against a real namespace or host, never
        # from an app fed by fakes (tests).
        self._edits_enabled = edits_enabled
        self.clock: Callable[[], float] = time.time  # wall clock for display (tests pin it)
        self.temp_records: list[Record] = []
        self._edit_preview: EditPreview | None = None
        self._moving: Rule | None = None  # picked up by `m`, waiting for its new place
        self._warned: set[str] = set()
        self._conntrack_factory = conntrack_factory
        self._ct: ConntrackHandle | None = None
        self._netns = netns
        self._net_factory = net_factory
        self._net: NetContext | None = None
        self._net_at = float("-inf")
        self.correlator = Correlator()
        self._attrib = AttributionWorker(self.correlator, self._net_context,
                                         lambda: self._post(AttributionsReady()))
        self._attrib_dirty = False  # the worker knows more than the Drops pane shows
        self._monitor_factory = monitor_factory
        self._monitor: MonitorHandle | None = None
        self._drops_factory = drops_factory
        self._dirty: set[str] = set()  # panes with something new for the next render tick
        self._turns = ["rules", "drops", "packets"]  # whose turn it is among the dirty ones
        self._tick_armed = False
        self._last_tick = 0.0
        self._tick_cost = 0.0  # seconds the last tick took, the frame it caused included
        self._last_key = float("-inf")
        self._gc_threshold = gc.get_threshold()
        self.ticks = 0
        self._drops: DropsHandle | None = None
        # Every drop is logged (totals, top talkers, the bounded ring the pane lists) on the
        # stream's thread as it arrives, not on the UI thread: at 5,000 drops/s that is a
        # tenth of the UI thread's time, and nothing waits for a render to be counted.
        self.drop_log = DropLog()
        self._log_lock = threading.Lock()  # drop_log
        self._drops_new = False  # guarded by _lock: logged since the last render
        self._drops_posted = False
        self.drop_stats: tuple[SourceStats, ...] = ()
        self.drops_shed = 0  # shed by the stream (a full batch), counted in its overflow
        self.drop_needle = ""
        self.drop_renders = 0
        self._filter_target = "rules"
        self._main_screen: Screen[object] | None = None
        self._lock = threading.Lock()
        self._latest: RulesView | None = None  # newest view from the monitor (any thread)
        self._render_pending = False
        self.shown: RulesView | None = None  # the view the screen shows
        self.paused = False
        self.by_activity = False
        self.needle = ""
        self.renders = 0
        self.views_received = 0
        self._rows = RowsBuilder()
        self._error: str | None = None  # last monitor error, until a clean view replaces it
        self._header = HeaderState(host=host or socket.gethostname(), netns=netns_name, lab=lab)

    # --- layout ---------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Horizontal(id="header-row"):
            yield FwtopHeader(self._header, id="header")
            yield ConntrackGauge(id="ct-gauge")
        # The Packets pane (a later issue) joins these two in this row.
        with Horizontal(id="panes"):
            yield PacketsPane(id="packets-pane")
            with Vertical(id="drops-pane"):
                yield DropsTable(id="drops")
                yield Static(id="drop-detail", markup=False)
                yield Static(id="drop-summary", markup=False)
                yield FilterInput(placeholder="filter drops: src 10.0.0.0/8 and dport 443 "
                                              "and not proto udp, or plain words (Enter keeps, "
                                              "Esc clears)",
                                  id="drop-filter", compact=True)
            with Vertical(id="rules-pane"):
                yield RulesTable(id="rules")
                yield FilterInput(placeholder="filter rules: text, comment, chain "
                                              "(Enter keeps, Esc clears)", id="filter",
                                  compact=True)
        yield StatusLine(id="status", markup=False)
        yield FwtopFooter()

    def get_default_screen(self) -> Screen[None]:
        return MainScreen(id="_default")

    def _q(self, selector: str | type[QueryType], expect_type: type[QueryType] | None = None,
           ) -> QueryType:
        """query_one on the main screen: App.query_one searches the active screen, which is
        the help screen while it is open, and data keeps arriving meanwhile."""
        screen = self._main_screen or self.screen
        if expect_type is None:
            return screen.query_one(selector)  # type: ignore[arg-type]
        return screen.query_one(selector, expect_type)  # type: ignore[arg-type]

    @property
    def table(self) -> RulesTable:
        return self._q("#rules", RulesTable)

    @property
    def drops_table(self) -> DropsTable:
        return self._q("#drops", DropsTable)

    def on_mount(self) -> None:
        self._main_screen = self.screen
        # Everything loaded so far (Textual, Rich, the modules, the widgets) lives as long as
        # the app: out of the collector's full passes, which otherwise walk it all again every
        # few seconds under load and stall the UI for 100-250 ms each (measured).
        gc.freeze()
        self._gc_threshold = gc.get_threshold()
        gc.set_threshold(*GC_THRESHOLD)
        self._attrib.start()
        pane = self._q("#rules-pane")
        pane.border_title = "Rules"
        self._update_subtitle()
        self._show_drops_frame()
        if self._drops_factory is not None:
            self._drops = self._drops_factory(self._on_drops, self._on_error)
            try:
                self._drops.start()
            except Exception as exc:
                self._on_error(f"drop readers did not start: {type(exc).__name__}: {exc}")
        else:
            self._q("#drops-pane").display = False
        pane = self._q(PacketsPane)
        if self._capture_factory is not None:
            pane.mount(FilterInput(placeholder="filter packets: words all present, e.g. "
                                               "\"tcp 8081\" or \"unanswered\" (Enter keeps, "
                                               "Esc clears)",
                                   id="packet-filter", compact=True))
            pane.on_dirty = lambda: self._request("packets")
            self._capture = self._capture_factory(pane.feed, self._on_error)
            pane.raw_of = self._capture.raw
            try:
                self._capture.start()
            except Exception as exc:
                self._capture = None
                self._on_error(f"packet capture did not start: {type(exc).__name__}: {exc}")
        self._layout_panes()
        if self._edits_enabled:
            self._poll_temp()
            self.set_interval(1.0, self._poll_temp)
        if self._conntrack_factory is not None:
            self._ct = self._conntrack_factory(
                lambda view: self._post(ConntrackUpdated(view)), self._on_error)
            try:
                self._ct.start()
            except Exception as exc:
                self._ct = None
                self._on_error(f"conntrack watch did not start: {type(exc).__name__}: {exc}")
        self._q(StatusLine).show(status_segments([], [], "waiting for the first poll…"))
        self.table.focus()
        self._monitor = self._monitor_factory(self._on_rules, self._on_error)
        try:
            self._monitor.start()
        except Exception as exc:  # shown in the status line; the app stays usable
            self._on_error(f"monitor did not start: {type(exc).__name__}: {exc}")

    async def on_unmount(self) -> None:
        gc.set_threshold(*self._gc_threshold)
        await asyncio.to_thread(self._attrib.stop)
        monitor, self._monitor = self._monitor, None
        drops, self._drops = self._drops, None
        ct, self._ct = self._ct, None
        if ct is not None:
            await asyncio.to_thread(ct.stop)
        capture, self._capture = self._capture, None
        if capture is not None:
            await asyncio.to_thread(capture.stop)
        # The threads may be mid-poll or mid-read: join them off the UI thread.
        if monitor is not None:
            await asyncio.to_thread(monitor.stop)
        if drops is not None:
            await asyncio.to_thread(drops.stop)

    # --- monitor callbacks: any thread; they never touch widgets ----------------------------

    def _on_rules(self, view: RulesView) -> None:
        with self._lock:
            self._latest = view
            self.views_received += 1
            if self._render_pending:
                return  # the render already queued will pick this newer view up
            self._render_pending = True
        self._post(ViewReady())

    def _on_drops(self, batch: DropBatch) -> None:
        if batch.events:
            with self._log_lock:
                self.drop_log.add(batch.events)
        with self._lock:
            self._drops_new = self._drops_new or bool(batch.events)
            self.drops_shed += batch.overflow
            self.drop_stats = batch.stats
            ct = self._ct
            posted = self._drops_posted
            self._drops_posted = True
        if ct is not None and batch.events:
            ct.note_drop_events(batch.events)  # "table full" kernel lines raise its alarm
        if not posted:
            self._post(DropsReady())

    def _on_error(self, error: str) -> None:
        self._post(MonitorFailed(error))

    def _post(self, message: Message) -> None:
        try:
            self.post_message(message)
        except RuntimeError:  # the event loop is gone: the app is exiting
            pass

    # --- rendering (UI thread) ------------------------------------------------------------

    def _request(self, pane: str) -> None:
        """Mark a pane as having something new and make sure a render tick is coming."""
        self._dirty.add(pane)
        self._arm()

    def _arm(self) -> None:
        """Each tick renders one pane that has something new (in turn, so none starves) and
        paints it: the UI thread is never busy for long in one piece, and a key press waits
        for one pane's render and frame at most. Ticks are at least MIN_RENDER_INTERVAL apart,
        and RENDER_BUDGET times what the last one cost, its frame included, so rendering takes
        at most a quarter of the UI thread."""
        if self._tick_armed or not self._dirty:
            return
        self._tick_armed = True
        interval = min(MAX_RENDER_INTERVAL,
                       max(MIN_RENDER_INTERVAL, RENDER_BUDGET * self._tick_cost))
        wait = self._last_tick + interval - time.monotonic()
        if wait > 0:
            self.set_timer(wait, self._tick)
        else:  # after the messages already queued (a burst still costs one tick)
            self.call_later(self._tick)

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Key):
            self._last_key = time.monotonic()
            self._attrib.hold(KEY_QUIET)  # its frame does not share the GIL with evaluations
        await super().on_event(event)

    def _tick(self) -> None:
        # Right after a key press, let its own frame go out alone (a tick's render and its
        # frame would delay it), unless the panes have already waited long.
        now = time.monotonic()
        quiet = self._last_key + KEY_QUIET - now
        if quiet > 0 and now - self._last_tick < MAX_RENDER_INTERVAL:
            self.set_timer(quiet, self._tick)
            return
        self._tick_armed = False
        pane = next((p for p in self._turns if p in self._dirty), None)
        if pane is None:
            return
        self._dirty.discard(pane)
        self._turns.remove(pane)
        self._turns.append(pane)  # the others go first next time
        started = time.perf_counter()
        self._last_tick = time.monotonic()
        try:
            if pane == "rules":
                self._render_newest_now()
            elif pane == "drops":
                self._render_drops_now()
            else:
                self._q(PacketsPane)._take()
        except NoMatches:  # data that arrives while the app shuts down has nowhere to go
            return
        self.call_after_refresh(self._tick_done, started)

    def _tick_done(self, started: float) -> None:
        self._tick_cost = time.perf_counter() - started
        self.ticks += 1
        self._arm()

    def on_drops_ready(self, _: DropsReady) -> None:
        self._request("drops")

    def _render_drops_now(self) -> None:
        with self._lock:
            new, self._drops_new = self._drops_new, False
            self._drops_posted = False
        dirty, self._attrib_dirty = self._attrib_dirty, False
        if (new or dirty) and not self.paused:
            self._show_drop_rows()
        self._show_drops_frame()

    def on_attributions_ready(self, _: AttributionsReady) -> None:
        self._attrib_dirty = True
        self._request("drops")

    def _show_drop_rows(self) -> None:
        self.drop_renders += 1
        table = self.drops_table
        with self._log_lock:
            newest = self.drop_log.newest(DropsTable.MAX_ROWS, self.drop_needle)
        table.show(newest, self._rule_cell)
        self._show_drop_detail()

    def _want_visible(self) -> None:
        """Ask the worker for the rules of the listed drops: the selected one first, then the
        ones on screen, then the rest (its rule cells show "…" until it answers). Each new
        render replaces the wish, so under a flood the worker spends its share of a CPU on
        what is in view."""
        table = self.drops_table
        top, height = table.visible_rows
        selected = table.selected
        events = table.events
        wanted = [selected] if selected is not None else []
        wanted += [e for e in events[top: top + height] if e is not selected]
        wanted += [e for e in events[:top] + events[top + height:] if e is not selected]
        wanted = [e for e in wanted if not self._attrib.get(e)[0]]
        if wanted:
            self._attrib.want(wanted)

    # --- correlation: which rule dropped it -------------------------------------------------

    def _net_context(self) -> NetContext | None:
        """The namespace's addresses and routes, re-read at most every 10 s."""
        now = time.monotonic()
        if self._net_factory is not None and now - self._net_at > 10.0:
            self._net_at = now
            try:
                self._net = self._net_factory()
            except Exception as exc:  # shown, never fatal: attribution is then less sure
                self._error = f"cannot read routes/addresses: {exc}"
        return self._net

    def attribution(self, event: DropEvent) -> Attribution | None:
        """The rule that dropped `event`, computed now if the worker does not know it yet."""
        return self._with_counters(event, self._attrib.attribute_now(event))

    def _with_counters(self, event: DropEvent, a: Attribution | None) -> Attribution | None:
        if (a is None or a.label == "?") and event.src is None and self.shown is not None:
            # No addresses (the drop-reason tracepoint): the counters that moved this tick.
            moved = {k: r.packets for k, r in self.shown.rates.items() if r.packets}
            return attribute_by_counters(self.shown.ruleset, moved, event) or a
        return a

    def _rule_cell(self, event: DropEvent) -> Cell:
        known, a = self._attrib.get(event)
        if not known:
            return PENDING_CELL
        a = self._with_counters(event, a)
        return rule_cell(a.label if a else None, a.certain if a else False)

    def _show_drop_detail(self) -> None:
        """One line under the drops: the selected drop's rule and why; its rule is selected
        in the Rules pane."""
        try:
            detail = self._q("#drop-detail", Static)
        except NoMatches:  # the app is shutting down
            return
        e = self.drops_table.selected
        if e is None:
            set_text(detail, "")
            return
        self._want_visible()
        known, a = self._attrib.get(e)
        if not known:  # asked first; its answer re-renders the pane
            set_text(detail, to_text([("▸ ", "bold magenta"), ("finding its rule…", "dim")]))
            return
        a = self._with_counters(e, a)
        if a is None:
            set_text(detail, "")
            return
        sure = "" if a.certain else " (not certain: enter for details)"
        set_text(detail, to_text([("▸ ", "bold magenta"), (safe(a.summary), ""),
                               (sure, "dim"), ("  enter: explain", "dim")]))
        if a.key is not None and self.drops_table.has_focus:
            self.table.select_key(a.key)

    # --- conntrack ---------------------------------------------------------------------------

    def on_conntrack_updated(self, message: ConntrackUpdated) -> None:
        try:
            self._q(ConntrackGauge).update_view(message.view)
        except NoMatches:
            return
        if isinstance(self.screen, ConntrackScreen):
            try:
                self.screen.update_view(message.view)
            except NoMatches:  # pushed but not composed yet: it gets the next view
                pass

    def action_conntrack(self) -> None:
        if isinstance(self.screen, ConntrackScreen):
            return
        self.push_screen(ConntrackScreen(self._q(ConntrackGauge).view))
        if self._ct is not None:
            self._ct.request_breakdown()  # fresh tables now, not in up to 10 s

    def on_conntrack_breakdown_requested(self, _: ConntrackBreakdownRequested) -> None:
        if self._ct is not None:
            self._ct.request_breakdown()

    def on_row_list_highlighted(self, event: RowList.Highlighted) -> None:
        if event.row_list.id == "drops":
            self._show_drop_detail()

    # --- temporary allows ----------------------------------------------------------------

    @property
    def _netns_name(self) -> str | None:
        return self._netns.name if self._netns is not None else None

    def _poll_temp(self) -> None:
        """Active temporary rules for the status line; a warning 30 s before each expires."""
        from fwtop.service.tempallow import active, leftovers

        try:
            records = [r for r in active() if r.netns == self._netns_name]
            stuck = [r for r in leftovers() if r.netns == self._netns_name]
        except Exception:  # an unreadable journal must not stop the display
            records, stuck = [], []
        self.temp_records = records
        for r in stuck:  # past its deadline and still open (firewalld died): say so, once
            if r.id not in self._warned:
                self._warned.add(r.id)
                self.notify(f"temporary allow {r.id} is past its deadline but may still be "
                            f"open: {r.note}", severity="error", timeout=30)
        now = time.time()
        for r in records:
            if r.expires_at - now <= 30 and r.id not in self._warned:
                self._warned.add(r.id)
                self.notify(f"temporary rule {r.id} closes in {int(r.expires_at - now)} s "
                            "(r to extend)", severity="warning", timeout=10)
        try:
            self._show_status()
        except NoMatches:
            pass

    @staticmethod
    def _allow_request(e: DropEvent | PacketEvent, ttl: int) -> AllowRequest:
        if isinstance(e, PacketEvent):  # an incoming packet: its flow, on its interface
            hook, iif = None, e.iface
        else:
            hook, iif = (e.hook if e.hook in ("input", "forward") else None), e.iif
        return AllowRequest(proto=e.proto or "", src=e.src, dst=e.dst,
                            dport=e.dport if e.proto in ("tcp", "udp", "sctp") else None,
                            iif=iif, ttl=ttl, hook=hook)

    def _allow_target(self) -> DropEvent | PacketEvent | None:
        """The selected drop, or with the Packets pane focused its selected incoming packet
        (an unanswered SYN, say): what `a` opens."""
        if self._filter_target == "packets":
            p = self._q(PacketsPane).table.selected
            if p is None or p.dir != "in" or p.src is None or p.proto is None:
                self.notify("Select an incoming packet of the flow to allow (its addresses "
                            "and port), or a drop in the Drops pane (1).", timeout=4)
                return None
            return p
        e = self.drops_table.selected
        if e is None or e.src is None or e.proto is None:
            self.notify("Select a drop first (one that carries its addresses).", timeout=3)
            return None
        return e

    def action_allow_drop(self) -> None:
        e = self._allow_target()
        if e is None:
            return
        if not self._edits_enabled:
            self.notify("Allowing needs the real firewall (not available here).", timeout=3)
            return
        netns = self._netns_name

        def preview(ttl: int) -> str:
            from fwtop.service import tempallow

            prev = tempallow.preview(self._allow_request(e, ttl), netns)
            plan = prev.plan
            return "\n".join([
                f"dropped now by {tempallow._decider(prev.verdict)}",
                plan.summary(),
                *[f"  {c}" for c in plan.commands()],
                "", "enter: apply · esc: cancel"])

        def apply(ttl: int) -> str:
            from fwtop.service import tempallow

            prev = tempallow.preview(self._allow_request(e, ttl), netns)
            done = tempallow.apply(prev, netns)
            self.call_from_thread(self._poll_temp)
            text = (f"allowed for {ttl} s: id {done.record.id} "
                    f"(r: revert or extend it)")
            if done.still_dropped:
                text += f"\nwarning: still dropped: {done.still_dropped}"
            return text + "\n\nenter/esc: close"

        title = flow_text(e) if isinstance(e, DropEvent) else \
            f"{e.proto} {e.src}:{e.sport} → {e.dst}:{e.dport}"
        self.push_screen(AllowScreen(title, preview, apply))

    def action_temp_rules(self) -> None:
        from fwtop.service import tempallow

        netns = self._netns_name

        def records() -> list[Record]:
            return [r for r in tempallow.active() if r.netns == netns]

        def revert(allow_id: str) -> str:
            from fwtop.service import edits

            if edits.is_edit(allow_id):
                r = edits.revert(allow_id)
            else:
                r = tempallow.revert(allow_id)
            return f"reverted {r.id} ({r.note})"

        def extend(allow_id: str, seconds: int) -> str:
            from fwtop.service import edits

            if edits.is_edit(allow_id):
                r = edits.extend(allow_id, seconds)
            else:
                r = tempallow.extend(allow_id, seconds)
            self._warned.discard(allow_id)
            return f"{r.id} now closes in {int(r.expires_at - time.time())} s"

        def confirm(edit_id: str) -> str:
            from fwtop.service import edits

            if not edits.is_edit(edit_id):
                return f"{edit_id} is a temporary allow: it always closes (extend it instead)"
            r = edits.confirm(edit_id)
            return f"edit {r.id} confirmed: it stays"

        if not self._edits_enabled:
            self.notify("Temporary rules need the real firewall (not available here).",
                        timeout=3)
            return
        self.push_screen(TempScreen(records, revert, extend, confirm))

    # --- commit-confirmed edits (issue 9) ---------------------------------------------------

    def _selected_rule(self) -> tuple[Rule | None, Chain | None]:
        key = self.table.cursor_key
        if key is None or self.shown is None:
            return None, None
        for chain in self.shown.ruleset.chains():
            if key == f"chain|{chain.backend}|{chain.family}|{chain.table}|{chain.name}":
                return None, chain
            for rule in chain.rules:
                if rule.key == key:
                    return rule, chain
        return None, None

    def _start_edit(self, edit: Edit, title: str) -> None:
        if not self._edits_enabled:
            self.notify("Editing needs the real firewall (not available here).", timeout=3)
            return
        from fwtop.service import edits

        netns = self._netns_name
        with self._log_lock:
            recent = list(self.drop_log.recent)
        traffic = edits.traffic_from_events(recent)

        def preview(_: int) -> str:
            prev = edits.preview(edit, netns, traffic)
            self._edit_preview = prev
            lines = [prev.subject, "", *prev.diff, "", *prev.impact.summary()]
            lines += [f"warning: {w}" for w in prev.warnings]
            lines += ["", f"reverts by itself in {edit.confirm_within} s unless confirmed "
                      "(C, or r then c); " + prev.backup, "", "enter: apply · esc: cancel"]
            return "\n".join(lines)

        def apply(_: int) -> str:
            prev = self._edit_preview
            if prev is None:
                raise RuntimeError("no preview")
            record = edits.apply(prev)
            self.call_from_thread(self._poll_temp)
            return (f"applied: edit {record.id}; it reverts at the deadline unless you press C "
                    "(or r, then c)\n\nenter/esc: close")

        self._edit_preview = None
        self.push_screen(AllowScreen(title, preview, apply, ttl=edit.confirm_within,
                                     verb="Edit"))

    @staticmethod
    def _rule_ref(rule: Rule) -> RuleRef:
        """nft and iptables-nft rules by handle; legacy ones by position, checked against
        their text by the edit itself (never a stale position)."""
        legacy = rule.backend == "iptables-legacy"
        return RuleRef(rule.table, rule.chain, handle=None if legacy else rule.handle,
                       position=rule.position if legacy else None, family=rule.family)

    def action_edit_delete(self) -> None:
        rule, _chain = self._selected_rule()
        if rule is None:
            self.notify("Select a rule in the Rules pane (2) first.", timeout=3)
            return
        self._start_edit(Edit("delete", rule=self._rule_ref(rule), expect_text=rule.text),
                         f"delete {rule.chain} #{rule.position}")

    def action_edit_move(self) -> None:
        """`m` on a rule picks it up; `m` on another rule of the same chain puts it right
        before that one (a commit-confirmed edit, previewed first); esc drops it."""
        rule, _chain = self._selected_rule()
        moving = self._moving
        if moving is None:
            if rule is None:
                self.notify("Select a rule in the Rules pane (2) first.", timeout=3)
                return
            self._moving = rule
            self.notify(f"moving {rule.chain} #{rule.position}: put the cursor on the rule it "
                        "should go before (same chain) and press m again; esc cancels",
                        timeout=8)
            self._show_status()
            return
        if rule is None or (rule.backend, rule.family, rule.table, rule.chain) != (
                moving.backend, moving.family, moving.table, moving.chain):
            self.notify(f"{moving.chain} #{moving.position} can only move before another rule "
                        f"of {moving.table} {moving.chain} (esc cancels)", timeout=4)
            return
        self._moving = None
        self._show_status()
        if rule.key == moving.key:
            self.notify("Move cancelled (same rule).", timeout=3)
            return
        self._start_edit(Edit("move", rule=self._rule_ref(moving), before=self._rule_ref(rule),
                              expect_text=moving.text),
                         f"move {moving.chain} #{moving.position} before #{rule.position}")

    def action_edit_policy(self) -> None:
        _rule, chain = self._selected_rule()
        if chain is None or chain.policy is None:
            self.notify("Select a base chain (its header row) in the Rules pane first.",
                        timeout=3)
            return
        verdict = "accept" if chain.policy.verdict == "drop" else "drop"
        self._start_edit(Edit("policy", chain=ChainRef(chain.table, chain.name, chain.family),
                              verdict=verdict),
                         f"policy of {chain.table} {chain.name} → {verdict}")

    def action_confirm_edit(self) -> None:
        from fwtop.service import edits

        mine = [r for r in self.temp_records if r.kind == "edit"]
        if not mine:
            self.notify("No pending edit to confirm.", timeout=3)
            return
        newest = max(mine, key=lambda r: r.created)
        try:
            edits.confirm(newest.id)
        except Exception as exc:
            self.notify(f"could not confirm {newest.id}: {exc}", severity="error", timeout=6)
            return
        self.notify(f"edit {newest.id} confirmed: it stays", timeout=4)
        self._poll_temp()

    def action_trace_drop(self) -> None:
        e = self.drops_table.selected
        ev = self.correlator.evaluator
        if e is None or ev is None:
            self.notify("Select a drop first (and wait for the first rules poll).", timeout=3)
            return
        pkt = packet_of(e)
        if pkt is None:
            self.notify("This drop does not carry the packet's addresses.", timeout=3)
            return
        screen = ExplainScreen(flow_text(e), verb="Kernel trace",
                               initial="waiting up to 10 s for the next packet of this flow "
                                       "(any source port), traced by the kernel…")
        self.push_screen(screen)
        netns, net = self._netns, self._net_context()
        flow = Packet(pkt.proto, pkt.src, pkt.dst, None, pkt.dport, pkt.icmp_type,
                      pkt.icmp_code)

        def work() -> None:
            from fwtop.firewall.netns import run_in
            from fwtop.service.trace import trace_flow

            def trace_here() -> str:
                return trace_flow(flow, timeout=10.0, count=1, evaluator=ev, net=net).text()

            try:
                text = run_in(netns, trace_here) if netns is not None else trace_here()
            except Exception as exc:
                text = f"could not trace: {exc}"
            self.call_from_thread(screen.show, text)

        self.run_worker(work, thread=True, exclusive=True, group="trace")

    def on_row_list_selected(self, event: RowList.Selected) -> None:
        if event.row_list.id == "drops":
            self.action_explain_drop()

    def action_explain_drop(self) -> None:
        e = self.drops_table.selected
        ev = self.correlator.evaluator
        if e is None or ev is None:
            self.notify("Select a drop first (and wait for the first rules poll).", timeout=3)
            return
        pkt = packet_of(e)
        if pkt is None:
            self.notify("This drop does not carry the packet's addresses.", timeout=3)
            return
        screen = ExplainScreen(flow_text(e))
        self.push_screen(screen)
        netns, net = self._netns, self._net_context()

        def work() -> None:
            from fwtop.firewall.netns import run_in
            from fwtop.service.explain import explain_in_namespace

            def explain_here() -> str:
                return explain_in_namespace(pkt, net=net, evaluator=ev).text()

            try:
                text = run_in(netns, explain_here) if netns is not None else explain_here()
            except Exception as exc:
                text = f"could not explain: {type(exc).__name__}: {exc}"
            self.call_from_thread(screen.show, text)

        self.run_worker(work, thread=True, exclusive=True, group="explain")

    def _show_drops_frame(self) -> None:
        """The pane's title (every source's counts, off sources) and the summary line."""
        pane = self._q("#drops-pane")
        set_border(pane, drops_title(self.drop_stats, self.paused))
        reasons = off_reasons(self.drop_stats)
        set_tooltip(pane, "\n".join(reasons) if reasons else None)
        with self._log_lock:
            summary = summary_segments(self.drop_log, len(self.drops_table.events),
                                       self.drop_needle, self.drops_shed)
        set_text(self._q("#drop-summary", Static),
                 to_text(summary + off_segments(self.drop_stats)))

    def on_view_ready(self, _: ViewReady) -> None:
        self._request("rules")

    def _render_newest_now(self) -> None:
        with self._lock:
            view = self._latest
            self._render_pending = False
        if view is None:
            return
        if self.paused:
            self._show_header()  # only the "newer data held" hint changes
            return
        self._render(view)

    def _render(self, view: RulesView) -> None:
        # A new structure only when the poller reloaded it (every tick brings a new Ruleset
        # object with fresh counters; attribution does not read counters, so re-evaluating
        # every drop on screen each tick would be wasted).
        first = self.shown is None or self.shown.reloads != view.reloads
        if first:
            self._attrib.use(view.ruleset)  # the evaluator is built on the worker's thread
        if first and self.drops_table.events:
            self._show_drop_rows()  # the rule column can now be filled in
        self.shown = view
        self.renders += 1
        if not view.errors:
            self._error = None
        with self.batch_update():
            self.table.show(self._rows.rows(view, self.needle, self.by_activity))
            self._show_header()
            self._show_status()
            self._update_subtitle()

    def _rerender(self) -> None:
        """Show the same view again after a change of filter or sort (also while paused)."""
        try:
            self._rerender_now()
        except NoMatches:  # a key typed while the app shuts down
            pass

    def _rerender_now(self) -> None:
        if self.shown is not None:
            with self.batch_update():
                self.table.show(self._rows.rows(self.shown, self.needle, self.by_activity))
                self._show_status()
        self._update_subtitle()

    def _show_header(self) -> None:
        view = self.shown
        with self._lock:
            waiting = self.paused and self._latest is not None and self._latest is not view
        state = HeaderState(
            host=self._header.host, netns=self._header.netns, lab=self._header.lab,
            paused=self.paused, by_activity=self.by_activity, waiting=waiting,
            backends=view.ruleset.backends if view else (),
            rules=sum(len(c.rules) for c in view.ruleset.chains()) if view else None,
            poll_cpu_ms=view.poll_cpu_s * 1000 if view else None,
            poll_wall_ms=view.poll_wall_s * 1000 if view else None,
        )
        self._q(FwtopHeader).show(state)

    def _show_status(self) -> None:
        view = self.shown
        errors: list[str] = []
        warnings: list[str] = []
        if self._error:
            errors.append(self._error)
        if view is not None:
            errors += view.errors
            warnings += view.ruleset.warnings
        note = ""
        if view is not None:
            stamp = time.strftime("%H:%M:%S", time.localtime(self.clock()))
            note = f"updated {stamp}  ·  {view.reloads} reloads"
        if self.needle:
            shown = sum(1 for k in self.table.row_keys if not k.startswith("chain|"))
            note += f"  ·  filter {self.needle!r}: {shown} rules"
        if self._moving is not None:
            note += (f"  ·  moving {self._moving.chain} #{self._moving.position}: m on the "
                     "rule it goes before, esc cancels")
        if self.temp_records:
            now = time.time()
            note += "  ·  temp: " + ", ".join(
                f"{r.id} {countdown(r.expires_at - now)}" for r in self.temp_records[:4])
        self._q(StatusLine).show(status_segments(errors, warnings, note),
                                        error=bool(errors))

    def _update_subtitle(self) -> None:
        pane = self._q("#rules-pane")
        order = "busiest first" if self.by_activity else "chain order"
        set_border(pane, subtitle=f"{order} · s to sort")

    def on_monitor_failed(self, message: MonitorFailed) -> None:
        self._error = message.error
        try:
            self._show_status()
        except NoMatches:  # the app is shutting down
            pass

    # --- actions --------------------------------------------------------------------------

    def on_packets_pane_pcap_written(self, message: PacketsPane.PcapWritten) -> None:
        self.notify(f"wrote {message.count} packets to {message.path} (tcpdump -r / Wireshark)",
                    timeout=6)

    def on_packets_pane_failed(self, message: PacketsPane.Failed) -> None:
        self._error = message.error
        self._show_status()

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        self._q(PacketsPane).set_paused(self.paused)
        if not self.paused:
            self._show_drop_rows()
        self._show_drops_frame()
        if not self.paused:
            with self._lock:
                view = self._latest
            if view is not None and view is not self.shown:
                self._render(view)
                return
        self._show_header()

    def action_toggle_sort(self) -> None:
        self.by_activity = not self.by_activity
        self._show_header()
        self._rerender()

    def action_refresh(self) -> None:
        if self._monitor is not None:
            self._monitor.poll_now()
        if self.paused:
            self.notify("Paused: the new poll is shown when you resume (p).", timeout=3)

    def on_descendant_focus(self, event: object) -> None:
        focused = self.focused
        if focused is self.table or (focused is not None and focused.id == "filter"):
            self._filter_target = "rules"
        elif focused is not None and (focused.id == "packet-filter" or (
                isinstance(focused, RowList) and isinstance(focused.parent, PacketsPane))):
            self._filter_target = "packets"
        elif focused is not None and focused.id in ("drops", "drop-filter"):
            self._filter_target = "drops"
            if focused.id == "drops":
                self._show_drop_detail()  # and select its rule in the Rules pane

    def action_focus_pane(self, pane: str) -> None:
        if pane in ("drops", "packets") and self._left != pane:
            self._left = pane
            self._layout_panes()
        if pane == "packets":
            if self._capture is not None:
                self._q(PacketsPane).table.focus()
            return
        target = self.drops_table if pane == "drops" else self.table
        if target.display and self._q(f"#{pane}-pane").display:
            target.focus()

    def on_resize(self, _: object) -> None:
        self._layout_panes()

    def _layout_panes(self) -> None:
        """All three panes side by side from 150 columns; below that Rules plus one of Packets
        and Drops (1 / 3 switch), so each keeps a usable width at 100 columns."""
        try:
            packets = self._q(PacketsPane)
            drops = self._q("#drops-pane")
        except NoMatches:
            return
        has_packets = self._capture is not None
        has_drops = self._drops_factory is not None
        wide = self.size.width >= 150
        packets.display = has_packets and (wide or self._left == "packets" or not has_drops)
        drops.display = has_drops and (wide or self._left == "drops" or not has_packets)

    def _filter_box(self, target: str | None = None) -> FilterInput:
        name = target or self._filter_target
        box_id = {"drops": "#drop-filter", "packets": "#packet-filter"}.get(name, "#filter")
        return self._q(box_id, FilterInput)

    def action_filter(self) -> None:
        box = self._filter_box()
        box.add_class("-visible")
        box.focus()

    def action_clear_filter(self) -> None:
        if self._moving is not None:
            self._moving = None
            self._show_status()
            self.notify("Move cancelled.", timeout=2)
            return
        box = self._filter_box()
        if box.value or box.has_class("-visible"):
            box.value = ""
            self._close_filter(box, cleared=True)

    def _close_filter(self, box: FilterInput, cleared: bool) -> None:
        if cleared or not box.value:
            box.remove_class("-visible")
        if box.id == "packet-filter":
            self._q(PacketsPane).table.focus()
        else:
            (self.drops_table if box.id == "drop-filter" else self.table).focus()

    def on_input_changed(self, event: FilterInput.Changed) -> None:
        if event.input.id == "filter" and event.value != self.needle:
            self.needle = event.value
            self._rerender()
        elif event.input.id == "packet-filter":
            self._q(PacketsPane).set_filter(event.value)
        elif event.input.id == "drop-filter" and event.value != self.drop_needle:
            self.drop_needle = event.value
            self._show_drop_rows()
            self._show_drops_frame()

    def on_filter_input_closed(self, event: FilterInput.Closed) -> None:
        box_id = {"drop-filter": "#drop-filter", "packet-filter": "#packet-filter"}.get(
            event.box_id or "", "#filter")
        box = self._q(box_id, FilterInput)
        self._close_filter(box, event.cleared)

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        backends = self.shown.ruleset.backends if self.shown else ()
        self.push_screen(HelpScreen(backend_notes(backends)))

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Pause / resume", "Freeze the display; polling continues",
                            self.action_toggle_pause)
        yield SystemCommand("Sort by activity", "Busiest rules first / chain order",
                            self.action_toggle_sort)
        yield SystemCommand("Refresh now", "Poll the counters without waiting",
                            self.action_refresh)
        yield SystemCommand("Filter rules", "Narrow the rules by a substring",
                            self.action_filter)
        yield SystemCommand("Explain the selected drop", "Its rule, path and the classic "
                            "mistake (e, enter)", self.action_explain_drop)
        yield SystemCommand("Trace the selected drop's flow", "The kernel's own nftrace beside "
                            "fwtop's answer (t)", self.action_trace_drop)
        yield SystemCommand("Allow the selected drop's flow for a while",
                            "The kernel closes it at the deadline (a)", self.action_allow_drop)
        yield SystemCommand("Temporary rules and pending edits", "Countdowns, revert, extend, "
                            "confirm (r)", self.action_temp_rules)
        yield SystemCommand("Delete the selected rule (commit-confirmed)",
                            "Reverted by itself unless confirmed (d)", self.action_edit_delete)
        yield SystemCommand("Move the selected rule (commit-confirmed)",
                            "m, then m on the rule it should go before (m)",
                            self.action_edit_move)
        yield SystemCommand("Flip the selected chain's policy (commit-confirmed)",
                            "drop <-> accept, reverted unless confirmed (P)",
                            self.action_edit_policy)
        yield SystemCommand("Confirm the newest pending edit", "Keep it (C)",
                            self.action_confirm_edit)
        yield SystemCommand("Conntrack", "How full, how fast, who fills it (c)",
                            self.action_conntrack)
        for pane, key in (("drops", "1"), ("rules", "2"), ("packets", "3")):
            yield SystemCommand(f"Go to the {pane.capitalize()} pane", f"({key})",
                                lambda pane=pane: self.action_focus_pane(pane))
        yield SystemCommand("Help", "Panes, columns, keys, classic symptoms", self.action_help)


def build_app(netns: NetNamespace | None = None, interval: float = 1.0, lab: bool = False,
              monitor_factory: MonitorFactory | None = None,
              drops_factory: DropsFactory | None = None, real_drops: bool = True,
              nflog_groups: tuple[int, ...] = (),
              capture_factory: CaptureFactory | None = None, real_capture: bool = True,
              iface: str | None = None, capture_filter: str | None = None) -> FwtopApp:
    """The one way to build the app (the CLI and the tests). `monitor_factory(on_rules,
    on_error)` returns an object with start()/stop()/poll_now(); by default the real Monitor
    polling `netns` every `interval` seconds. `drops_factory(on_batch, on_error)` likewise for
    the drop stream; by default the real readers, unless `real_drops` is False (no Drops pane)."""
    factory = monitor_factory or default_monitor_factory(netns, interval)
    if drops_factory is None and real_drops:
        drops_factory = default_drops_factory(netns, nflog_groups)
    net_factory = None
    conntrack_factory = None
    if capture_factory is None and real_capture and monitor_factory is None:
        capture_factory = default_capture_factory(netns, iface=iface,
                                                  capture_filter=capture_filter)
    if monitor_factory is None:  # the real namespace: its routes, its conntrack table
        net_factory = default_net_factory(netns)
        conntrack_factory = default_conntrack_factory(netns)
    return FwtopApp(factory, netns_name=netns.name if netns is not None else "host", lab=lab,
                    drops_factory=drops_factory, net_factory=net_factory, netns=netns,
                    conntrack_factory=conntrack_factory, edits_enabled=monitor_factory is None,
                    capture_factory=capture_factory)


def default_net_factory(netns: NetNamespace | None) -> Callable[[], NetContext]:
    def read() -> NetContext:
        from fwtop.firewall.netns import run_in
        from fwtop.firewall.routing import net_context

        return run_in(netns, net_context) if netns is not None else net_context()

    return read


def run_app(netns: NetNamespace | None, interval: float = 1.0, lab: bool = False,
            nflog_groups: tuple[int, ...] = (), theme: str = "dark", iface: str | None = None,
            capture_filter: str | None = None) -> None:
    app = build_app(netns=netns, interval=interval, lab=lab, nflog_groups=nflog_groups,
                    iface=iface, capture_filter=capture_filter)
    app.theme = "textual-light" if theme == "light" else "textual-dark"
    app.run()
