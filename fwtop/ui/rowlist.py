"""RowList: rows of (text, style) cells in fixed columns, drawn through Textual's line API.

The Drops, Packets and Rules panes change several times a second under load. Textual's
DataTable re-measures every new cell and re-renders every visible cell of a refilled table
(measured: 40-70 ms per table per frame at 50,000 packets/s, most of the UI thread), so these
panes use this widget instead, after the toolong model in STYLE.md: each row is rendered once
into a `Strip` kept in a cache keyed by the row's key and cells, a frame only picks the visible
strips (the cursor row gets its style on the way out), and handing over new rows costs a dict
update, not a re-layout. Columns have fixed widths; a column declared with width None grows to
its widest content (never shrinks, so rows do not jitter) and growing it is the only thing that
drops the whole cache. The first `fixed_columns` stay in place when scrolled sideways.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Generic, TypeVar

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment as RichSegment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.cache import LRUCache
from textual.color import Color
from textual.filter import LineFilter
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

Segment = tuple[str, str]  # (terminal-safe text, Rich style)
# What every line of one frame shares: the widget's width, sideways scroll and base style, and
# the app's line filters with the background they need.
Frame = tuple[int, int, Style, tuple[LineFilter, ...], Color | None]
Cell = tuple[Segment, ...]
Cells = tuple[Cell, ...]

E = TypeVar("E")
PAD = 1  # blank cells on each side of every column (as DataTable's cell_padding)


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    key: str
    label: str
    width: int | None  # None: as wide as its widest content so far
    right: bool = False  # right-aligned (numbers)


@lru_cache(maxsize=512)
def _style(name: str) -> Style:
    return Style.parse(name) if name else Style.null()


def cell_width(cell: Cell) -> int:
    return sum(cell_len(text) for text, _ in cell)


def _cell_segments(cell: Cell, width: int, right: bool, base: Style) -> list[RichSegment]:
    """One cell cut or padded to exactly `width` cells ("…" marks a cut), styled over
    `base`."""
    total = cell_width(cell)
    if total > width:
        out: list[RichSegment] = []
        room = width - 1
        last = ""
        for text, style in cell:
            if room <= 0:
                break
            n = cell_len(text)
            last = style
            if n > room:
                text = set_cell_size(text, room)
                n = room
            out.append(RichSegment(text, base + _style(style)))
            room -= n
        if width > 0:
            out.append(RichSegment("…", base + _style(last)))
        return out
    segs = [RichSegment(text, base + _style(style)) for text, style in cell if text]
    if total < width:
        pad = RichSegment(" " * (width - total), base)
        return [pad, *segs] if right else [*segs, pad]
    return segs


class RowList(ScrollView, can_focus=True):
    """A keyed list of rows; `set_rows(keys, cells)` replaces them and keeps the cursor on the
    same key (or, with `follow_top`, on the newest row while it is at the top)."""

    COLUMNS: tuple[ColumnSpec, ...] = ()
    FIXED_COLUMNS = 0
    FOLLOW_TOP = False  # row 0 follows the newest row (event lists)
    CACHE_ROWS = 4096  # drawn rows kept (an event list needs only a few times what it shows)

    BINDINGS = [
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "jump(0)", "First", show=False),
        Binding("end", "jump(-1)", "Last", show=False),
        Binding("enter", "select", "Select", show=False),
    ]

    COMPONENT_CLASSES = {"rowlist--header", "rowlist--cursor"}

    DEFAULT_CSS = """
    RowList {
        background: $surface;
        color: $foreground;
        height: 1fr;
        & > .rowlist--header { text-style: bold; background: $panel; color: $foreground; }
        & > .rowlist--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
            text-style: $block-cursor-blurred-text-style;
        }
        &:focus > .rowlist--cursor {
            background: $block-cursor-background;
            color: $block-cursor-foreground;
            text-style: $block-cursor-text-style;
        }
    }
    """

    class _RowMessage(Message):
        def __init__(self, row_list: RowList, cursor_row: int) -> None:
            super().__init__()
            self.row_list = row_list
            self.cursor_row = cursor_row

        @property
        def control(self) -> RowList:
            return self.row_list

    class Highlighted(_RowMessage):
        """The cursor moved to another row (by a key, a click or `move_cursor`)."""

    class Selected(_RowMessage):
        """Enter (or a click on the cursor row)."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._keys: list[Hashable] = []
        self._cells: list[Cells] = []
        self._index: dict[Hashable, int] = {}
        self._measured: dict[int, tuple[Cell, int]] = {}  # id(cell) -> (cell, its width)
        self._most_rows = 0
        self._seen: dict[Hashable, Cells] = {}  # row key -> the cells last handed over
        self._widths = [c.width if c.width is not None else cell_len(c.label)
                        for c in self.COLUMNS]
        # row key -> (cells, finished line, the frame it was made for)
        self._strips: LRUCache[Hashable, tuple[Cells, Strip, Frame]] = LRUCache(self.CACHE_ROWS)
        self._frame: Frame | None = None
        self._header: tuple[Strip, tuple[Frame, Style]] | None = None
        self.cursor_row = 0
        self.rebuilds = 0  # times a column grew and every cached row had to be drawn again
        self.rows_drawn = 0  # rows rendered into a strip (a cached row costs nothing)

    # --- data ---------------------------------------------------------------------------------

    @property
    def row_count(self) -> int:
        return len(self._keys)

    @property
    def cursor_key(self) -> Hashable | None:
        if not self._keys:
            return None
        return self._keys[min(self.cursor_row, len(self._keys) - 1)]

    @property
    def visible_rows(self) -> tuple[int, int]:
        """(first row on screen, how many rows fit under the header)."""
        return round(self.scroll_y), max(1, self.scrollable_content_region.height - 1)

    def get_row_index(self, key: Hashable) -> int:
        return self._index[key]

    def cells_of(self, row: int) -> Cells:
        return self._cells[row]

    def column_index(self, key: str) -> int:
        for i, c in enumerate(self.COLUMNS):
            if c.key == key:
                return i
        raise KeyError(key)

    def set_rows(self, keys: Sequence[Hashable], cells: Sequence[Cells]) -> None:
        """Show these rows (keys unique). Only rows whose cells changed are drawn again, and
        only when they are on screen."""
        old = self.cursor_key
        keep = old is not None and (not self.FOLLOW_TOP or self.cursor_row > 0)
        before_cells, before_keys = self._cells, self._keys
        rebuilds, cursor_before = self.rebuilds, self.cursor_row
        self._keys = list(keys)
        self._cells = list(cells)
        self._index = {k: i for i, k in enumerate(self._keys)}
        # Only rows not handed over before are looked at (a tick of a big ruleset changes few).
        seen = self._seen
        fresh = []
        for k, c in zip(self._keys, self._cells, strict=True):
            if seen.get(k) is not c:
                fresh.append(c)
                seen[k] = c
        if len(seen) > 4 * len(self._keys) + 1024:  # rows long gone: forget them
            self._seen = dict(zip(self._keys, self._cells, strict=True))
        self._grow(fresh)
        row = self.cursor_row
        if keep and old in self._index:
            row = self._index[old]
        row = max(0, min(row, len(self._keys) - 1))
        self._set_virtual_size()
        moved = row != self.cursor_row
        self.cursor_row = row
        if moved:
            self._scroll_to_cursor()
        top, height = self.visible_rows
        if (moved or self.rebuilds != rebuilds or self.cursor_row != cursor_before
                or self._keys[top: top + height] != before_keys[top: top + height]):
            self.refresh()
            return
        # The same rows on screen (a counter tick of the Rules pane, or a list scrolled
        # back): repaint only the lines whose cells changed.
        for row in range(top, min(top + height, len(self._keys))):
            if self._cells[row] is not before_cells[row]:
                self.refresh_line(row + 1)  # line 0 of the content is the header

    def _grow(self, rows: Sequence[Cells]) -> None:
        """Widen the auto-width columns to their widest cell. A cell is measured once per
        object (a tick of a big ruleset makes few new ones, and a row that comes back, in
        the other order or when a filter is cleared, brings its old cells)."""
        auto = [i for i, c in enumerate(self.COLUMNS) if c.width is None]
        if not auto:
            return
        widths = self._widths
        measured = self._measured
        grew = False
        for cells in rows:
            for i in auto:
                cell = cells[i]
                hit = measured.get(id(cell))
                if hit is not None and hit[0] is cell:  # held, so its id is still its own
                    continue
                w = cell_width(cell)
                measured[id(cell)] = (cell, w)
                if w > widths[i]:
                    widths[i] = w
                    grew = True
        # Cells long gone are forgotten, past a bound set by the most rows shown (a filter
        # showing few must not forget the rest: they come back when it is cleared).
        self._most_rows = max(self._most_rows, len(self._cells))
        if len(measured) > 3 * len(auto) * self._most_rows + 1024:
            self._measured = {id(c[i]): measured[id(c[i])] for c in self._cells for i in auto}
        if grew:
            if len(self._strips):
                self.rebuilds += 1
            self._strips.clear()
            self._header = None

    @property
    def total_width(self) -> int:
        return sum(w + 2 * PAD for w in self._widths)

    def _set_virtual_size(self) -> None:
        size = Size(self.total_width, len(self._keys) + 1)
        if size != self.virtual_size:
            # Not through the reactive: it would lay out the whole screen (a layout pass costs
            # more than a frame), and the widget's own size does not depend on its content.
            # Scrollbars are updated here; showing or hiding one lays out by itself.
            self.set_reactive(RowList.virtual_size, size)
            self._scroll_update(size)

    # --- cursor -------------------------------------------------------------------------------

    def move_cursor(self, row: int, animate: bool = False) -> None:
        if not self._keys:
            return
        row = max(0, min(row, len(self._keys) - 1))
        if row == self.cursor_row:
            return
        self.cursor_row = row
        self._scroll_to_cursor()
        self.refresh()
        self.post_message(self.Highlighted(self, row))

    def _scroll_to_cursor(self) -> None:
        top, visible = self.visible_rows
        if self.cursor_row < top:
            self.scroll_to(y=self.cursor_row, animate=False, immediate=True)
        elif self.cursor_row >= top + visible:
            self.scroll_to(y=self.cursor_row - visible + 1, animate=False, immediate=True)

    def action_cursor(self, delta: int) -> None:
        self.move_cursor(self.cursor_row + delta)

    def action_page(self, direction: int) -> None:
        page = max(1, self.scrollable_content_region.height - 2)
        self.move_cursor(self.cursor_row + direction * page)

    def action_jump(self, row: int) -> None:
        self.move_cursor(row if row >= 0 else len(self._keys) - 1)

    def action_select(self) -> None:
        if self._keys:
            self.post_message(self.Selected(self, self.cursor_row))

    def on_click(self, event: events.Click) -> None:
        if event.y < 1:
            return
        row = round(self.scroll_y) + event.y - 1
        if not 0 <= row < len(self._keys):
            return
        if row == self.cursor_row:
            self.action_select()
        else:
            self.move_cursor(row)

    # --- drawing ------------------------------------------------------------------------------

    def _segments(self, cells: Sequence[Cell | str], base: Style) -> list[RichSegment]:
        """A whole row (`total_width` cells), every segment styled over `base`."""
        segments: list[RichSegment] = []
        pad = RichSegment(" " * PAD, base)
        for column, width, cell in zip(self.COLUMNS, self._widths, cells, strict=True):
            if isinstance(cell, str):
                cell = ((cell, ""),)
            segments.append(pad)
            segments.extend(_cell_segments(cell, width, column.right, base))
            segments.append(pad)
        return segments

    def _line(self, segments: list[RichSegment], frame: Frame) -> Strip:
        """A row's segments as the widget shows them: scrolled sideways (the fixed columns
        stay) and exactly as wide as the widget. Unscrolled, one Strip is made, not three."""
        width, scroll_x, base, _, _ = frame
        total = self.total_width
        if scroll_x:
            strip = Strip(segments, total)
            fixed = sum(w + 2 * PAD for w in self._widths[: self.FIXED_COLUMNS])
            strip = Strip.join([strip.crop(0, fixed),
                                strip.crop(fixed + scroll_x, scroll_x + width)])
            return strip.adjust_cell_length(width, base)
        if total < width:
            segments.append(RichSegment(" " * (width - total), base))
            return Strip(segments, width)
        strip = Strip(segments, total)
        return strip if total == width else strip.crop(0, width)

    @staticmethod
    def _filtered(strip: Strip, frame: Frame) -> Strip:
        """The app's line filters (NO_COLOR, ANSI colours to the theme's) applied once, when a
        line is made: the cache keeps the finished line only, not the line and its copy."""
        _, _, _, filters, background = frame
        for line_filter in filters:
            assert background is not None
            strip = strip.apply_filter(line_filter, background)
        return strip

    def _row_line(self, row: int, frame: Frame) -> Strip:
        """The finished line of a row, cached with the cells and the frame it was made for:
        a row that did not change costs a dictionary look-up per frame. The frame holds the
        widget's base style and the app's filters, so a new theme draws every row again; a
        focus change (it only restyles the cursor row) draws none."""
        key = self._keys[row]
        cells = self._cells[row]
        cached = self._strips.get(key)
        same_cells = cached is not None and (cached[0] is cells or cached[0] == cells)
        if same_cells and cached is not None and cached[2] == frame:
            return cached[1]
        if not same_cells:
            self.rows_drawn += 1  # new cells (a new frame alone only restyles the same row)
        line = self._filtered(self._line(self._segments(cells, frame[2]), frame), frame)
        self._strips[key] = (cells, line, frame)
        return line

    def _header_line(self, frame: Frame) -> Strip:
        style = frame[2] + self.get_component_rich_style("rowlist--header")
        if self._header is None or self._header[1] != (frame, style):
            labels = [c.label for c in self.COLUMNS]
            line = self._filtered(self._line(self._segments(labels, style), frame), frame)
            self._header = (line, (frame, style))
        return self._header[0]

    def _make_frame(self) -> Frame:
        filters = tuple(self.get_line_filters())
        return (self.scrollable_content_region.width, round(self.scroll_x), self.rich_style,
                filters, self.background_colors[1] if filters else None)

    def render_lines(self, crop: Region) -> list[Strip]:
        """The rows in `crop`, straight from the row cache. Not through Textual's styles cache
        (Widget.render_lines): it would wrap every line in a new Strip again to apply
        borders, padding and opacity this widget does not have; the app's line filters
        (NO_COLOR, ANSI colours) are applied as it would, once per line made."""
        frame = self._make_frame()
        self._frame = frame
        strips = [self.render_line(y) for y in crop.line_range]
        x1, x2 = crop.column_span
        if (x1, x2) != (0, frame[0]):
            strips = [strip.crop(x1, x2) for strip in strips]
        return strips

    def render_line(self, y: int) -> Strip:
        frame = self._frame if self._frame is not None else self._make_frame()
        width, base = frame[0], frame[2]
        if y == 0:
            return self._header_line(frame)
        row = round(self.scroll_y) + y - 1
        if row >= len(self._keys):
            return self._filtered(Strip.blank(width, base), frame)
        if row != self.cursor_row:
            return self._row_line(row, frame)
        # The cursor's style goes under the filters, like every other style: made afresh
        # (one row a frame; the cache keeps rows as they look without the cursor).
        line = self._line(self._segments(self._cells[row], base), frame)
        cursor = self.get_component_rich_style("rowlist--cursor")
        return self._filtered(
            Strip(RichSegment.apply_style(line, post_style=cursor), line.cell_length), frame)

    def cell_plain(self, row: int, column: str) -> str:
        return "".join(text for text, _ in self._cells[row][self.column_index(column)])

    def cell_text(self, row: int, column: str) -> Text:
        text = Text(no_wrap=True, end="")
        for plain, style in self._cells[row][self.column_index(column)]:
            text.append(plain, style or None)
        return text


class EventList(RowList, Generic[E]):
    """The newest events first (at most MAX_ROWS); the cursor stays on the same event while
    newer ones push it down, and on the newest while it is on the first row. Subclasses say
    how an event becomes a row (`row_cells`) and what keys it (`row_key`)."""

    MAX_ROWS = 100
    FOLLOW_TOP = True
    CACHE_ROWS = 400

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.events: list[E] = []
        self.refills = 0
        self._made: dict[Hashable, tuple[E, Hashable, Cells]] = {}

    def cell_text(self, row: int, column: str) -> str:  # type: ignore[override]
        return self.cell_plain(row, column)

    @property
    def selected(self) -> E | None:
        if not self.events or not 0 <= self.cursor_row < len(self.events):
            return None
        return self.events[self.cursor_row]

    def show_events(self, events: Sequence[E], extra: Callable[[E], Hashable],
                    cells: Callable[[E, Hashable], Cells]) -> None:
        """Show `events` (newest first). `extra(e)` is what else its row depends on (its rule,
        its flow's state): a row is reused, not measured or drawn again, while it is equal."""
        events = list(events[: self.MAX_ROWS])
        made: dict[Hashable, tuple[E, Hashable, Cells]] = {}
        keys, rows = [], []
        for e in events:
            key = self.row_key(e)
            more = extra(e)
            hit = self._made.get(key)
            row = hit[2] if hit is not None and hit[0] is e and hit[1] == more else cells(e, more)
            made[key] = (e, more, row)
            keys.append(key)
            rows.append(row)
        self._made = made
        self.set_rows(keys, rows)
        self.events = events
        self.refills += 1

    def row_key(self, event: E) -> Hashable:
        # id() is a sound key: the strip cache checks the cells too, and the event under the
        # cursor is still held by self.events while the new list is matched against it.
        return id(event)
