"""fwtop's own widgets: the header, the Rules table (keyed diffs, never a refill per tick),
the filter input and the status line. They only display what the app hands them."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rich.text import Text
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Input, Static

from fwtop.core.events import DropEvent
from fwtop.ui.render import (
    COLUMNS,
    TEXT_COLUMNS,
    Cell,
    HeaderState,
    RowSpec,
    Segment,
    backend_notes,
    header_segments,
)
from fwtop.ui.render_drops import DROP_COLUMNS, drop_cells
from fwtop.ui.rowlist import ColumnSpec, EventList, RowList


def set_text(widget: Static, text: Text | str) -> None:
    """Update a fixed-height Static only when its content changed, without a layout pass
    (Static.update asks for one by default, and a layout pass costs more than the whole
    frame when panes update several times a second)."""
    key = (text.plain, tuple(text.spans)) if isinstance(text, Text) else (text, ())
    if getattr(widget, "_fwtop_shown", None) == key:
        return
    widget._fwtop_shown = key  # type: ignore[attr-defined]
    widget.update(text, layout=False)


def set_border(widget: Widget, title: str | None = None, subtitle: str | None = None) -> None:
    """Set a pane's border title and subtitle only when they change: each assignment repaints
    the whole pane (its border and everything under it), whatever the value."""
    shown = getattr(widget, "_fwtop_border", (None, None))
    title = shown[0] if title is None else title
    subtitle = shown[1] if subtitle is None else subtitle
    if title != shown[0]:
        widget.border_title = title
    if subtitle != shown[1]:
        widget.border_subtitle = subtitle
    widget._fwtop_border = (title, subtitle)  # type: ignore[attr-defined]


def set_tooltip(widget: Widget, tooltip: str | None) -> None:
    if getattr(widget, "_fwtop_tooltip", None) != tooltip:
        widget._fwtop_tooltip = tooltip  # type: ignore[attr-defined]
        widget.tooltip = tooltip


def to_text(segments: Sequence[Segment], justify: str = "left") -> Text:
    """Rich Text from pre-escaped (text, style) segments: styles are ours, text is never
    parsed as markup."""
    text = Text(no_wrap=True, end="", justify=justify)  # type: ignore[arg-type]
    for plain, style in segments:
        text.append(plain, style or None)
    return text


class FwtopHeader(Static):
    """Host, namespace, backends and their state, rule count, poll cost, PAUSED, LAB."""

    def __init__(self, state: HeaderState, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.state = state
        self._notes: list[str] = []

    def on_mount(self) -> None:
        self.show(self.state)

    def show(self, state: HeaderState) -> None:
        self.state = state
        set_text(self, to_text(header_segments(state)))
        notes = backend_notes(state.backends)
        if state.poll_cpu_ms is not None and state.poll_wall_ms is not None:
            notes.append(f"last poll: {state.poll_cpu_ms:.1f} ms CPU, "
                         f"{state.poll_wall_ms:.1f} ms wall")
        if notes != self._notes:
            self._notes = notes
            self.tooltip = Text("\n".join(notes)) if notes else None


class FwtopFooter(Footer):
    """Textual's Footer recomposes itself (a layout pass of the whole screen, longer than a
    frame) whenever the focus moves, even when the keys it shows stay the same. This one
    recomposes only when they change, and not while a filter box has the focus (the letters
    typed then go into the box, and the box says how to leave it): the keys stay as they are.
    Not even dimmed: restyling the footer's keys costs 9 ms on opening and on closing."""

    _shown: tuple[tuple[str, str, bool], ...] | None = None

    def bindings_changed(self, screen: Screen[object]) -> None:
        if isinstance(screen.focused, Input) and self._bindings_ready:
            return
        shown = tuple((binding.key, binding.description, enabled)
                      for _, binding, enabled, _ in screen.active_bindings.values()
                      if binding.show)
        if shown == self._shown and self._bindings_ready:
            return
        self._shown = shown
        super().bindings_changed(screen)


class StatusLine(Static):
    """Monitor errors and warnings (escaped) and what is being shown."""

    def show(self, segments: Sequence[Segment], error: bool = False) -> None:
        self.set_class(error, "-error")
        set_text(self, to_text(segments))


class FilterInput(Input):
    """The `/` filter: narrows rules as you type; Enter keeps it, Esc clears it."""

    def _watch_value(self, value: str) -> None:
        # Input's own watcher sets `virtual_size` through its reactive, which lays the whole
        # screen out again on every key typed (longer than a frame under load); the box's own
        # size never depends on its text, so only its scrolling is updated.
        size = Size(self.content_width, 1)
        if size != self.virtual_size:
            self.set_reactive(Widget.virtual_size, size)
            self._scroll_update(size)
        super()._watch_value(value)

    class Closed(Message):
        def __init__(self, cleared: bool, box_id: str | None = None) -> None:
            super().__init__()
            self.cleared = cleared
            self.box_id = box_id

    BINDINGS = [
        Binding("escape", "close(True)", "Clear filter", show=False, id="filter-clear"),
        Binding("enter", "close(False)", "Keep filter", show=False, id="filter-keep"),
    ]

    def action_close(self, cleared: bool) -> None:
        if cleared:
            self.value = ""
        self.post_message(self.Closed(cleared, self.id))


class RulesTable(RowList):
    """The rules grouped by chain, or busiest first. `show(rows)` hands over the tick's rows:
    a row whose cells did not change keeps its drawn line, and the cursor stays on the same
    rule whatever moved around it."""

    COLUMNS = tuple(ColumnSpec(c.key, c.label, c.width,
                               right=c.key not in TEXT_COLUMNS and c.key != "verdict")
                    for c in COLUMNS)
    FIXED_COLUMNS = 1

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._specs: dict[str, RowSpec] = {}
        self._order: list[str] = []

    @property
    def cursor_key(self) -> str | None:  # type: ignore[override]
        """The key of the row under the cursor (a rule key or a chain row key)."""
        key = super().cursor_key
        return None if key is None else str(key)

    @property
    def row_keys(self) -> list[str]:
        """Row keys in display order."""
        return list(self._order)

    def spec(self, key: str) -> RowSpec | None:
        return self._specs.get(key)

    def get_cell(self, key: str, column: str) -> Text:
        return self.cell_text(self.get_row_index(key), column)

    def show(self, rows: Sequence[RowSpec]) -> None:
        self._specs = {row.key: row for row in rows}
        self._order = [row.key for row in rows]
        self.set_rows(self._order, [row.cells for row in rows])

    def select_key(self, key: str) -> bool:
        """Put the cursor on a rule (or policy's chain row) by key; False if not shown."""
        if key.endswith(":policy"):
            backend, family, table, chain, _ = key.rsplit(":", 4)
            key = f"chain|{backend}|{family}|{table}|{chain}"
        if key not in self._specs:
            return False
        self.move_cursor(self.get_row_index(key))
        return True


class DropsTable(EventList[DropEvent]):
    """The newest drops first; each row's rule cell comes from `rule_of` (the app's
    attribution, "…" until known)."""

    COLUMNS = tuple(ColumnSpec(key, label, width) for key, label, width in DROP_COLUMNS)
    MAX_ROWS = 100
    CACHE_ROWS = 400

    def show(self, events: Sequence[DropEvent],
             rule_of: Callable[[DropEvent], Cell] | None = None) -> None:
        self.show_events(events, rule_of or (lambda _: None),
                         lambda e, rule: drop_cells(e, rule) if rule is not None  # type: ignore[arg-type]
                         else drop_cells(e))
