"""fwtop's own widgets: the header, the Rules table (keyed diffs, never a refill per tick),
the filter input and the status line. They only display what the app hands them."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rich.text import Text
from textual.binding import Binding
from textual.coordinate import Coordinate
from textual.message import Message
from textual.widgets import DataTable, Input, Static
from textual.widgets.data_table import CellDoesNotExist, ColumnKey

from fwtop.core.events import DropEvent
from fwtop.ui.render import (
    COLUMN_KEYS,
    COLUMNS,
    TEXT_COLUMNS,
    Cell,
    HeaderState,
    RowSpec,
    Segment,
    backend_notes,
    header_segments,
)


def set_text(widget: Static, text: Text | str) -> None:
    """Update a fixed-height Static only when its content changed, without a layout pass
    (Static.update asks for one by default, and a layout pass costs more than the whole
    frame when panes update several times a second)."""
    key = (text.plain, tuple(text.spans)) if isinstance(text, Text) else (text, ())
    if getattr(widget, "_fwtop_shown", None) == key:
        return
    widget._fwtop_shown = key  # type: ignore[attr-defined]
    widget.update(text, layout=False)


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


class StatusLine(Static):
    """Monitor errors and warnings (escaped) and what is being shown."""

    def show(self, segments: Sequence[Segment], error: bool = False) -> None:
        self.set_class(error, "-error")
        set_text(self, to_text(segments))


class FilterInput(Input):
    """The `/` filter: narrows rules as you type; Enter keeps it, Esc clears it."""

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


# Beyond this many removed rows one refill is cheaper than the diff (each remove_row is linear
# in the table size); it happens on a filter or a big reload, never on a counter tick.
REBUILD_AT = 200


class RulesTable(DataTable[Text]):
    """The rules grouped by chain, or busiest first. `show(rows)` applies a keyed diff: rows
    are added and removed by key, only changed cells are rewritten, and the cursor stays on
    the same rule whatever moved around it."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(cursor_type="row", fixed_columns=1, **kwargs)  # type: ignore[arg-type]
        self._specs: dict[str, RowSpec] = {}
        self._order: list[str] = []
        self.rebuilds = 0  # full refills, for tests: a counter tick must not cause one
        self.cell_updates = 0

    def on_mount(self) -> None:
        for col in COLUMNS:
            justify = "left" if col.key in TEXT_COLUMNS or col.key == "verdict" else "right"
            self.add_column(Text(col.label, justify=justify),  # type: ignore[arg-type]
                            width=col.width, key=col.key)

    @staticmethod
    def _cell(column: str, cell: Cell) -> Text:
        left = column in TEXT_COLUMNS or column == "verdict"
        return to_text(cell, "left" if left else "right")

    def _cells(self, row: RowSpec) -> list[Text]:
        return [self._cell(k, c) for k, c in zip(COLUMN_KEYS, row.cells, strict=True)]

    @property
    def cursor_key(self) -> str | None:
        """The key of the row under the cursor (a rule key or a chain row key)."""
        if self.row_count == 0:
            return None
        try:
            key = self.coordinate_to_cell_key(Coordinate(self.cursor_row, 0)).row_key.value
        except CellDoesNotExist:
            return None
        return key

    @property
    def row_keys(self) -> list[str]:
        """Row keys in display order."""
        return list(self._order)

    def spec(self, key: str) -> RowSpec | None:
        return self._specs.get(key)

    def show(self, rows: Sequence[RowSpec]) -> None:
        cursor_key = self.cursor_key
        new = {row.key: row for row in rows}
        keys = [row.key for row in rows]
        removed = [k for k in self._order if k not in new]
        if len(removed) > REBUILD_AT:
            self._rebuild(rows, cursor_key)
            return
        widest: dict[str, tuple[int, str]] = {}  # text column -> (width, row key) that grew it
        with self.app.batch_update():
            for key in removed:
                self.remove_row(key)
                del self._specs[key]
            current = [k for k in self._order if k in new]
            for row in rows:
                old = self._specs.get(row.key)
                if old is None:
                    self.add_row(*self._cells(row), key=row.key)
                    current.append(row.key)
                elif old is not row and old.cells != row.cells:
                    self._update_row(old, row, widest)
                self._specs[row.key] = row
            # Widen a text column once, by its widest new cell. update_width=True on every
            # changed cell would make DataTable re-measure the whole column for each cell
            # narrower than the column (quadratic on a sort toggle); columns never shrink here.
            for col, (_, key) in widest.items():
                self.update_cell(key, col, self.get_cell(key, col), update_width=True)
            if current != keys:
                self._reorder(keys)
            self._order = keys
            self._keep_cursor(cursor_key)

    def _update_row(self, old: RowSpec, row: RowSpec,
                    widest: dict[str, tuple[int, str]]) -> None:
        for col, before, after in zip(COLUMN_KEYS, old.cells, row.cells, strict=True):
            if before == after:
                continue
            text = self._cell(col, after)
            self.update_cell(row.key, col, text)
            self.cell_updates += 1
            if col in TEXT_COLUMNS:
                width = text.cell_len
                if width > self.columns[ColumnKey(col)].content_width and \
                        width > widest.get(col, (0, ""))[0]:
                    widest[col] = (width, row.key)

    def select_key(self, key: str) -> bool:
        """Put the cursor on a rule (or policy's chain row) by key; False if not shown."""
        if key.endswith(":policy"):
            backend, family, table, chain, _ = key.rsplit(":", 4)
            key = f"chain|{backend}|{family}|{table}|{chain}"
        if key not in self._specs:
            return False
        self._keep_cursor(key)
        return True

    def _rebuild(self, rows: Sequence[RowSpec], cursor_key: str | None) -> None:
        with self.app.batch_update():
            self.clear()
            for row in rows:
                self.add_row(*self._cells(row), key=row.key)
            self._specs = {row.key: row for row in rows}
            self._order = [row.key for row in rows]
            self.rebuilds += 1
            self._keep_cursor(cursor_key)

    def _reorder(self, keys: Sequence[str]) -> None:
        # DataTable can only append rows; its public sort() hands the key function cell values,
        # not row keys, so rank rows by the identity of their (unique, never shared) "#" cell.
        rank = {id(self.get_cell(k, "pos")): i for i, k in enumerate(keys)}
        self.sort("pos", key=lambda cell: rank[id(cell)])

    def _keep_cursor(self, key: str | None) -> None:
        if key is None or key not in self._specs:
            return
        index = self.get_row_index(key)
        if index != self.cursor_row:
            self.move_cursor(row=index)


class DropsTable(DataTable[Text]):
    """The newest drops first. DataTable only appends, so each render refills it (at most
    MAX_ROWS rows, at most ~10 times a second, and only when something changed); the cursor
    stays on the same event while newer ones push it down."""

    MAX_ROWS = 100  # a refill per render: more rows than a tall terminal shows cost for nothing

    def __init__(self, **kwargs: object) -> None:
        super().__init__(cursor_type="row", **kwargs)  # type: ignore[arg-type]
        self.events: list[DropEvent] = []
        self.keys: list[str] = []
        self._next_key = 0
        self.refills = 0

    def on_mount(self) -> None:
        from fwtop.ui.render_drops import DROP_COLUMNS

        for key, label, width in DROP_COLUMNS:
            self.add_column(label, key=key, width=width)

    def cell_text(self, row: int, column: str) -> str:
        return self.get_cell(self.keys[row], column).plain

    @property
    def selected(self) -> DropEvent | None:
        if not self.events or not 0 <= self.cursor_row < len(self.events):
            return None
        return self.events[self.cursor_row]

    def show(self, events: Sequence[DropEvent],
             rule_of: Callable[[DropEvent], Cell] | None = None) -> None:
        from fwtop.ui.render_drops import drop_cells

        keep = self.selected if self.cursor_row > 0 else None  # row 0 follows the newest
        events = list(events[: self.MAX_ROWS])
        # An event keeps its row key across refills and a new event gets a new one: DataTable
        # caches rendered rows by key, so a reused key would show a stale row. self.events holds
        # the previous events alive here, so no new event can share an id() with one of them.
        previous = {id(e): k for e, k in zip(self.events, self.keys, strict=True)}
        keys = []
        for e in events:
            key = previous.get(id(e))
            if key is None:
                key = f"d{self._next_key}"
                self._next_key += 1
            keys.append(key)
        with self.app.batch_update():
            self.clear()
            for e, key in zip(events, keys, strict=True):
                cells = drop_cells(e, rule_of(e)) if rule_of is not None else drop_cells(e)
                self.add_row(*(to_text(cell) for cell in cells), key=key)
            self.events = events
            self.keys = keys
            self.refills += 1
            if keep is not None:
                for i, e in enumerate(events):
                    if e is keep:
                        self.move_cursor(row=i, animate=False)
                        break
