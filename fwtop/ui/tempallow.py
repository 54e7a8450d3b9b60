"""Temporary allows in the TUI: the `a` dialog (the exact change, a TTL, confirm) and the `r`
screen (active temporary rules with their countdowns: revert, extend). They call the service
layer through the callables the app hands them, on worker threads."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Input, Static

from fwtop.service.journal import Record
from fwtop.ui.render import safe


def countdown(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s // 60}:{s % 60:02d}"


class AllowScreen(ModalScreen[None]):
    """Shows the change fwtop would make for the selected drop; Enter applies it with the TTL
    typed in the box. `preview(ttl) -> str` and `apply(ttl) -> str` run on a worker thread."""

    BINDINGS = [Binding("escape", "dismiss", "Cancel", id="allow-cancel")]

    def __init__(self, flow: str, preview: Callable[[int], str],
                 apply: Callable[[int], str], ttl: int = 300,
                 verb: str = "Allow for a while") -> None:
        super().__init__()
        self._verb = verb
        self._flow = flow
        self._preview = preview
        self._apply = apply
        self._ttl = ttl
        self.text = "computing the change…"
        self.applied = False

    def compose(self) -> ComposeResult:
        with Vertical(id="allow-body"):
            yield Static(self.text, id="allow-text", markup=False)
            yield Input(str(self._ttl), id="allow-ttl", restrict=r"[0-9]*", max_length=5,
                        placeholder="TTL in seconds")

    def on_mount(self) -> None:
        body = self.query_one("#allow-body")
        body.border_title = f"{self._verb}: {self._flow}"
        body.border_subtitle = ("TTL (s), enter: apply · esc: cancel" if self._verb.startswith(
            "Allow") else "enter: apply · esc: cancel")
        self.query_one("#allow-ttl", Input).focus()
        self._run(self._preview, self._ttl)

    def _run(self, fn: Callable[[int], str], ttl: int) -> None:
        def work() -> None:
            try:
                text = fn(ttl)
            except Exception as exc:  # refusals are shown, the screen stays
                text = f"not possible: {exc}"
            self.app.call_from_thread(self.show, text)

        self.run_worker(work, thread=True, exclusive=True, group="allow")

    def show(self, text: str) -> None:
        self.text = text
        self.query_one("#allow-text", Static).update(Text(safe(text).replace("\\x0a", "\n")))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if self.applied:
            self.dismiss()
            return
        try:
            ttl = int(event.value)
        except ValueError:
            self.show(self.text + "\nthe TTL must be a number of seconds")
            return
        self.applied = True
        self.show(f"applying ({ttl} s)…")
        self._run(self._apply, ttl)


class TempScreen(ModalScreen[None]):
    """Active temporary rules and pending edits: enter/r reverts the selected one, e extends it
    by 5 minutes, c confirms an edit (it stays)."""

    BINDINGS = [
        Binding("escape,q", "dismiss", "Close", id="temp-close"),
        Binding("r,enter", "revert", "Revert", id="temp-revert"),
        Binding("e", "extend", "Extend +5 min", id="temp-extend"),
        Binding("c", "confirm", "Confirm edit", id="temp-confirm"),
    ]

    def __init__(self, records: Callable[[], list[Record]],
                 revert: Callable[[str], str], extend: Callable[[str, int], str],
                 confirm: Callable[[str], str] | None = None) -> None:
        super().__init__()
        self._records = records
        self._revert = revert
        self._extend = extend
        self._confirm = confirm
        self.shown: list[Record] = []

    def compose(self) -> ComposeResult:
        with Vertical(id="temp-body"):
            yield DataTable(id="temp-table", cursor_type="row")
            yield Static("", id="temp-note", markup=False)

    def on_mount(self) -> None:
        body = self.query_one("#temp-body")
        body.border_title = "Temporary rules and pending edits"
        body.border_subtitle = "r/enter revert · e +5 min · c confirm an edit · esc close"
        table = self.query_one(DataTable)
        for label in ("id", "kind", "left", "namespace", "where", "rule"):
            table.add_column(label, key=label)
        self.refresh_rows()
        self.set_interval(1.0, self.refresh_rows)

    def refresh_rows(self) -> None:
        table = self.query_one(DataTable)
        row = table.cursor_row
        records = self._records()
        self.shown = records
        table.clear()
        now = time.time()
        for r in records:
            table.add_row(r.id, r.kind, countdown(r.expires_at - now), r.netns or "host",
                          f"{r.backend} {r.family} {r.table} {r.chain}", safe(r.text), key=r.id)
        if records:
            table.move_cursor(row=min(row, len(records) - 1))
        else:
            self.query_one("#temp-note", Static).update("no active temporary rules")

    def _selected(self) -> Record | None:
        table = self.query_one(DataTable)
        if not self.shown or not 0 <= table.cursor_row < len(self.shown):
            return None
        return self.shown[table.cursor_row]

    def _do(self, fn: Callable[[], str]) -> None:
        def work() -> None:
            try:
                text = fn()
            except Exception as exc:
                text = f"failed: {exc}"
            self.app.call_from_thread(self._done, text)

        self.run_worker(work, thread=True, exclusive=True, group="temp")

    def _done(self, text: str) -> None:
        self.query_one("#temp-note", Static).update(text)
        self.refresh_rows()

    def action_revert(self) -> None:
        r = self._selected()
        if r is not None:
            self._do(lambda: self._revert(r.id))

    def action_confirm(self) -> None:
        r = self._selected()
        if r is not None and self._confirm is not None:
            confirm = self._confirm
            self._do(lambda: confirm(r.id))

    def action_extend(self) -> None:
        r = self._selected()
        if r is not None:
            left = max(0, int(r.expires_at - time.time()))
            self._do(lambda: self._extend(r.id, left + 300))
