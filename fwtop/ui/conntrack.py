"""The conntrack watch in the TUI: a one-line header gauge (count/max, fill, a sparkline of the
count, growth, time to full; red while an alarm is up) and the Conntrack screen (key `c`) with
the breakdown tables. They only display the ConntrackView the service hands them.

Wiring (fwtop/ui/app.py; nothing else needs to change):

    from fwtop.service.conntrack import ConntrackMonitor
    from fwtop.ui.conntrack import (ConntrackGauge, ConntrackScreen, ConntrackUpdated,
                                    ConntrackBreakdownRequested)

    # compose(), in the header row (the gauge is height 1, width auto, has its own CSS):
    yield ConntrackGauge(id="ct-gauge")

    # on_mount(): one monitor for the app's namespace. Its callbacks run on its thread, so
    # they only post (post_message is thread-safe; ConntrackUpdated coalesces in the queue).
    self._ct = ConntrackMonitor(
        on_view=lambda view: self.post_message(ConntrackUpdated(view)),
        on_error=self._on_error,          # the status line, like the rules monitor's errors
        netns=netns, interval=1.0,        # breakdown_every=10.0 s by default
    )
    self._ct.start()
    # on_unmount(): self._ct.stop()

    # The drop stream's batches carry conntrack's "table full" kernel line: hand them over
    # (in _on_drops, any thread):  self._ct.note_drop_events(batch.events)
    # (Or build the monitor with kmsg=True to have it read /dev/kmsg itself, e.g. when the
    # drop stream's kmsg source is off; never both, each line would count twice.)

    def on_conntrack_updated(self, message: ConntrackUpdated) -> None:
        self.query_one(ConntrackGauge).update_view(message.view)
        if isinstance(self.screen, ConntrackScreen):
            self.screen.update_view(message.view)

    # BINDINGS: Binding("c", "conntrack", "Conntrack", id="conntrack",
    #                   tooltip="Conntrack table: what fills it")
    def action_conntrack(self) -> None:
        self.push_screen(ConntrackScreen(self.query_one(ConntrackGauge).view))
        self._ct.request_breakdown()      # fresh tables now, not in up to 10 s

    def on_conntrack_breakdown_requested(self, _: ConntrackBreakdownRequested) -> None:
        self._ct.request_breakdown()      # `r` on the Conntrack screen

While paused, keep calling update_view on the gauge or not, as the other panes do: the
monitor keeps collecting either way. The screen closes itself on escape / c / q.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import DataTable, Sparkline, Static

from fwtop.core.conntrack import Breakdown, ConntrackEntry, ConntrackView

Segment = tuple[str, str]  # (plain text, Rich style); text is never parsed as markup


class ConntrackUpdated(Message):
    """A new ConntrackView from the monitor. State-like: a newer one replaces a queued one
    (the view carries the latest breakdown, so nothing is lost)."""

    def __init__(self, view: ConntrackView) -> None:
        super().__init__()
        self.view = view

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ConntrackUpdated)


class ConntrackBreakdownRequested(Message):
    """The user asked for a fresh breakdown (`r` on the Conntrack screen)."""


# --- text -------------------------------------------------------------------------------------


def human_count(n: int) -> str:
    if n >= 10_000_000:
        return f"{n / 1e6:.0f}M"
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 100_000:
        return f"{n / 1e3:.0f}k"
    if n >= 10_000:
        return f"{n / 1e3:.1f}k"
    return str(n)


def human_duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def gauge_segments(view: ConntrackView | None) -> list[Segment]:
    """`ct 12.3k/262k 4.7% +120/s full in 35m00s`, with the alarm in red."""
    if view is None:
        return [("ct ", "bold"), ("…", "dim")]
    if view.stats is None or view.growth is None:
        return [("ct ", "bold"), ("off", "dim")]
    s, g = view.stats, view.growth
    alarm = "bold red" if g.alarmed else ""
    out: list[Segment] = [("ct ", "bold"),
                          (f"{human_count(s.count)}/{human_count(s.max) if s.max else '∞'}",
                           alarm)]
    if g.fill is not None:
        out.append((f" {g.fill:.1%}", alarm or ("yellow" if g.fill >= 0.5 else "")))
    if g.rate_per_s is not None and abs(g.rate_per_s) >= 0.05:
        out.append((f" {g.rate_per_s:+.0f}/s", "yellow" if g.rate_per_s > 0 else "dim"))
    if g.eta_full_s is not None:
        out.append((" FULL" if g.eta_full_s <= 0 else f" full in {human_duration(g.eta_full_s)}",
                    "bold red" if g.eta_full_s < 600 else "yellow"))
    if g.alarmed:
        out.append((" ⚠", "bold red"))
    return out


def gauge_tooltip(view: ConntrackView | None) -> str:
    if view is None:
        return "conntrack: waiting for the first reading"
    if view.stats is None or view.growth is None:
        return f"conntrack: {view.off_reason or 'off'}"
    s, g = view.stats, view.growth
    lines = [f"conntrack table: {s.count:,} entries of {s.max:,} (max is host-wide)"]
    if s.buckets:
        lines.append(f"hash buckets: {s.buckets:,}")
    if g.rate_per_s is not None:
        lines.append(f"net growth: {g.rate_per_s:+.1f} entries/s (smoothed)")
    if g.new_per_s is not None:
        lines.append(f"new entries: {g.new_per_s:.1f}/s")
    if g.destroy_per_s is not None:
        lines.append(f"destroyed entries: {g.destroy_per_s:.1f}/s"
                     + (f" (events lost: {s.events_lost} overruns)" if s.events_lost else ""))
    lines.append("time to full: " + ("not growing" if g.eta_full_s is None
                                     else human_duration(g.eta_full_s)))
    if s.stats_available:
        lines.append("per-CPU totals: " + ", ".join(
            f"{k} {s.cpu.to_json()[k]:,}" for k in ("insert_failed", "drop", "early_drop",
                                                    "invalid", "search_restart")))
    else:
        lines.append("per-CPU statistics unavailable")
    for a in g.alarms:
        lines.append(f"ALARM: {a.message}")
    lines.append("press c for what fills the table")
    return "\n".join(lines)


def to_text(segments: Sequence[Segment]) -> Text:
    text = Text(no_wrap=True, end="")
    for plain, style in segments:
        text.append(plain, style or None)
    return text


# --- the header gauge -------------------------------------------------------------------------


class ConntrackGauge(Horizontal):
    """One line: the numbers, then a sparkline of the count over the last ticks."""

    DEFAULT_CSS = """
    ConntrackGauge { height: 1; width: auto; }
    ConntrackGauge > .ct-label { width: auto; height: 1; }
    ConntrackGauge > Sparkline { width: 20; height: 1; margin-left: 1; }
    ConntrackGauge.-alarm > Sparkline > .sparkline--max-color { color: $error; }
    ConntrackGauge.-alarm > Sparkline > .sparkline--min-color { color: $error 50%; }
    ConntrackGauge.-off > Sparkline { display: none; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.view: ConntrackView | None = None

    def compose(self) -> ComposeResult:
        yield Static(to_text(gauge_segments(None)), classes="ct-label")
        yield Sparkline([], summary_function=max)

    def update_view(self, view: ConntrackView) -> None:
        """Show a ConntrackView (call it on the UI thread with each one the monitor hands)."""
        self.view = view
        self.set_class(view.alarmed, "-alarm")
        self.set_class(not view.running, "-off")
        self.query_one(".ct-label", Static).update(to_text(gauge_segments(view)))
        self.query_one(Sparkline).data = [float(x) for x in view.history]
        self.tooltip = Text(gauge_tooltip(view))


# --- the Conntrack screen ---------------------------------------------------------------------

TABLES = ("states", "protos", "sources", "destinations", "dports", "oldest")
_TITLES = {"states": "TCP state", "protos": "Protocol", "sources": "Top sources",
           "destinations": "Top destinations", "dports": "Top destination ports",
           "oldest": "Oldest"}


def breakdown_rows(b: Breakdown, table: str) -> list[tuple[str, tuple[str, ...]]]:
    """(row key, cells) for one table: the keys stay stable across breakdowns so rows are
    updated in place."""
    def share(n: int) -> str:
        return f"{n / b.total:.1%}" if b.total else ""

    pairs = {"states": b.by_state, "protos": b.by_proto, "sources": b.top_sources,
             "destinations": b.top_destinations, "dports": b.top_dports}.get(table)
    if pairs is not None:
        return [(k, (k, f"{n:,}", share(n))) for k, n in pairs]
    return [(f"{i}", _oldest_cells(e, b)) for i, e in enumerate(b.oldest)]


def _oldest_cells(e: ConntrackEntry, b: Breakdown) -> tuple[str, ...]:
    how = e.age_s if b.oldest_by == "age" else e.idle_s
    return (e.text(), e.state or "", human_duration(how) if how is not None else "?",
            human_duration(e.timeout_s))


def _columns(table: str, oldest_by: str) -> tuple[str, ...]:
    if table == "oldest":
        return ("connection", "state", "age" if oldest_by == "age" else "idle (est.)",
                "expires in")
    return (_TITLES[table], "entries", "share")


def summary_segments(view: ConntrackView | None) -> list[Segment]:
    out = gauge_segments(view)
    if view is None:
        return out
    b = view.breakdown
    if b is None:
        out.append(("   breakdown: " + (view.breakdown_error or "dumping the table…"),
                    "red" if view.breakdown_error else "dim"))
        return out
    what = (f"   breakdown of {b.dumped:,} entries" + (f" (a sample of {b.total:,})"
                                                        if b.sampled else "")
            + f", {b.elapsed_s * 1000:.0f} ms")
    out.append((what, "dim"))
    if view.breakdown_error:
        out.append((f"   last dump failed: {view.breakdown_error}", "red"))
    return out


class ConntrackScreen(ModalScreen[None]):
    """The breakdown: what fills the table, and the sysctl that keeps it there."""

    DEFAULT_CSS = """
    ConntrackScreen { align: center middle; }
    ConntrackScreen > #ct-box {
        width: 96%; height: 92%; border: round $accent; background: $surface; padding: 0 1;
    }
    ConntrackScreen #ct-summary, ConntrackScreen #ct-hint { height: auto; }
    ConntrackScreen #ct-hint { color: $warning; margin-bottom: 1; }
    ConntrackScreen .ct-row { height: 1fr; }
    ConntrackScreen DataTable { width: 1fr; height: 1fr; margin-right: 1; }
    ConntrackScreen #ct-oldest { width: 2fr; }
    """

    BINDINGS = [
        Binding("escape", "close", "Close", id="conntrack-close"),
        Binding("c", "close", "Close", id="conntrack-close-c", show=False),
        Binding("q", "close", "Close", id="conntrack-close-q", show=False),
        Binding("r", "refresh", "Refresh", id="conntrack-refresh",
                tooltip="Dump the conntrack table again now"),
    ]

    def __init__(self, view: ConntrackView | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.view = view
        self._shown: Breakdown | None = None
        self._oldest_by: str | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="ct-box"):
            yield Static(id="ct-summary")
            yield Static(id="ct-hint")
            with Horizontal(classes="ct-row"):
                for name in ("states", "protos", "dports"):
                    yield DataTable(id=f"ct-{name}", cursor_type="row", zebra_stripes=True)
            with Horizontal(classes="ct-row"):
                for name in ("sources", "destinations", "oldest"):
                    yield DataTable(id=f"ct-{name}", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        self.query_one("#ct-box").border_title = "Conntrack: what fills the table"
        self.query_one("#ct-box").border_subtitle = "r refresh · esc close"
        for name in TABLES:
            self._set_columns(name, "idle")
        self.update_view(self.view)

    def table(self, name: str) -> DataTable[str]:
        return self.query_one(f"#ct-{name}", DataTable)

    def _set_columns(self, name: str, oldest_by: str) -> None:
        t = self.table(name)
        t.clear(columns=True)
        for i, label in enumerate(_columns(name, oldest_by)):
            t.add_column(label, key=f"c{i}")

    def update_view(self, view: ConntrackView | None) -> None:
        """Show a ConntrackView (the app calls it with each one while this screen is up)."""
        self.view = view
        self.query_one("#ct-summary", Static).update(to_text(summary_segments(view)))
        b = view.breakdown if view is not None else None
        hint = self.query_one("#ct-hint", Static)
        alarms = view.growth.alarms if view is not None and view.growth is not None else ()
        lines: list[Segment] = [(f"⚠ {a.message}\n", "bold red") for a in alarms]
        if b is not None and b.hint is not None:
            lines.append((b.hint.text, ""))
        elif b is not None:
            lines.append(("no single kind of entry dominates the table", "dim"))
        hint.update(to_text(lines))
        if b is None or b is self._shown:
            return
        self._shown = b
        with self.app.batch_update():
            if b.oldest_by != self._oldest_by:
                self._oldest_by = b.oldest_by
                self._set_columns("oldest", b.oldest_by)
            for name in TABLES:
                self._diff(self.table(name), breakdown_rows(b, name))

    @staticmethod
    def _diff(table: DataTable[str], rows: list[tuple[str, tuple[str, ...]]]) -> None:
        """Keyed update: changed cells in place, new rows added, gone rows removed; then the
        order follows the breakdown's (largest first)."""
        wanted = dict(rows)
        for key in [k.value for k in table.rows if k.value not in wanted]:
            if key is not None:
                table.remove_row(key)
        columns = [c.key for c in table.ordered_columns]
        for key, cells in rows:
            if key in table.rows:
                for col, value in zip(columns, cells, strict=False):
                    if table.get_cell(key, col) != value:
                        table.update_cell(key, col, value)
            else:
                table.add_row(*cells, key=key)
        # Counts change between dumps, and so does the order (largest first). Keys of the
        # other tables are their first column; the oldest table's keys are its positions.
        order = {key: i for i, (key, _) in enumerate(rows)}
        current = [r.key.value for r in table.ordered_rows]
        if table.id != "ct-oldest" and current != [key for key, _ in rows]:
            table.sort(columns[0], key=lambda label: order.get(label, len(order)))

    def action_close(self) -> None:
        self.dismiss()

    def action_refresh(self) -> None:
        self.post_message(ConntrackBreakdownRequested())

