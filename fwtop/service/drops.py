"""The live drop stream: runs the drop readers (NFLOG, kernel LOG lines, the drop-reason
tracepoint) on one thread inside the namespace and hands their events on in time batches.

Readers are multiplexed with a selector; events are batched every `batch_s` (100-250 ms) into
one DropBatch, never one message per packet. A batch holds at most `max_batch` events: beyond
that the overflow is counted as lost ("display" loss), never silently dropped. Every batch
carries each source's health so the UI can say which source is off and why.
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from fwtop.core.events import DropEvent, SourceStats
from fwtop.firewall.netns import NetNamespace, enter


class DropReader(Protocol):
    def fileno(self) -> int: ...
    def read(self, max_events: int = ...) -> list[DropEvent]: ...
    def stats(self) -> SourceStats: ...
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class DropBatch:
    events: tuple[DropEvent, ...]
    stats: tuple[SourceStats, ...]
    overflow: int = 0  # events fwtop itself had to shed this batch (counted, shown)


@dataclass(slots=True)
class DropSources:
    """What to read. `groups` are NFLOG groups (None: the groups the ruleset uses, plus
    `extra_groups`); `interfaces` (with a netns) filter LOG lines (None: the namespace's own,
    read once the reader thread is inside it)."""

    groups: Sequence[int] | None = ()
    extra_groups: Sequence[int] = ()
    netns: NetNamespace | None = None
    interfaces: frozenset[str] | None = None
    kmsg: bool = True
    tracepoint: bool = True
    off: list[SourceStats] = field(default_factory=list)  # sources that could not start


def resolve_sources(cfg: DropSources) -> None:
    """Fill in what depends on the namespace (call it inside the namespace): the NFLOG groups
    the ruleset uses and, with a netns, its interface names."""
    if cfg.groups is None:
        from fwtop.core.nflog import groups_in_ruleset
        from fwtop.firewall import FirewallError, load_ruleset

        try:
            found = set(groups_in_ruleset(load_ruleset()))
        except FirewallError as exc:
            cfg.off.append(SourceStats("nflog", False,
                                       off_reason=f"cannot read the ruleset for NFLOG groups: "
                                                  f"{exc}"))
            found = set()
        cfg.groups = sorted(found | set(cfg.extra_groups))
    if cfg.netns is not None and cfg.interfaces is None:
        cfg.interfaces = frozenset(name for _, name in socket.if_nameindex())


def open_readers(cfg: DropSources) -> list[DropReader]:
    """Open every reader the configuration asks for in the calling thread's namespace; a reader
    that cannot start is recorded in `cfg.off` with its reason instead of failing the rest."""
    from fwtop.sources import kmsg, nflog, tracepoint

    resolve_sources(cfg)
    readers: list[DropReader] = []
    if cfg.groups:
        try:
            readers.append(nflog.NflogReader(list(cfg.groups)))
        except nflog.NflogError as exc:
            cfg.off.append(SourceStats("nflog", False, off_reason=str(exc)))
    elif not any(s.source == "nflog" for s in cfg.off):
        cfg.off.append(SourceStats("nflog", False,
                                   off_reason="no NFLOG rule (-j NFLOG / log group N) in the "
                                              "ruleset; pass --nflog-group to listen anyway"))
    if cfg.kmsg:
        visible, reason = kmsg.log_all_netns_state(
            kmsg.in_init_netns(), cfg.netns.name if cfg.netns is not None else None)
        if not visible:
            cfg.off.append(SourceStats("kmsg", False, off_reason=reason))
        else:
            try:
                readers.append(kmsg.KmsgReader(interfaces=cfg.interfaces))
            except kmsg.KmsgError as exc:
                cfg.off.append(SourceStats("kmsg", False, off_reason=str(exc)))
    if cfg.tracepoint:
        if cfg.netns is not None:
            cfg.off.append(SourceStats(
                "tracepoint", False,
                off_reason="host-wide drop-reason tracepoint cannot be narrowed to one namespace"))
        else:
            try:
                readers.append(tracepoint.DropReasonTracepoint())
            except tracepoint.TracepointUnavailable as exc:
                cfg.off.append(SourceStats("tracepoint", False, off_reason=str(exc)))
    return readers


class DropStream:
    """Owns the reader thread; `on_batch` is called from that thread (the UI posts it on)."""

    def __init__(
        self,
        cfg: DropSources,
        on_batch: Callable[[DropBatch], None],
        on_error: Callable[[str], None],
        batch_s: float = 0.2,
        max_batch: int = 20_000,
        opener: Callable[[DropSources], list[DropReader]] = open_readers,
    ) -> None:
        self._cfg = cfg
        self._on_batch = on_batch
        self._on_error = on_error
        self._batch_s = batch_s
        self._max_batch = max_batch
        self._opener = opener
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="fwtop-drops", daemon=True)
        self.shed = 0  # total events shed because a batch was full

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        os.write(self._wake_w, b"x")
        if self._thread.is_alive():
            self._thread.join(timeout)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _run(self) -> None:
        try:
            if self._cfg.netns is not None:
                enter(self._cfg.netns)
            readers = self._opener(self._cfg)
        except Exception as exc:  # reported, not raised: the rest of fwtop keeps running
            self._on_error(f"drop readers: {exc}")
            return
        sel = selectors.DefaultSelector()
        try:
            for reader in readers:
                sel.register(reader.fileno(), selectors.EVENT_READ, reader)
            sel.register(self._wake_r, selectors.EVENT_READ, None)
            self._loop(sel, readers)
        finally:
            sel.close()
            for reader in readers:
                try:
                    reader.close()
                except Exception as exc:
                    self._on_error(f"closing {type(reader).__name__}: {exc}")

    def _loop(self, sel: selectors.BaseSelector, readers: list[DropReader]) -> None:
        pending: list[DropEvent] = []
        overflow = 0
        deadline = time.monotonic() + self._batch_s
        while not self._stop.is_set():
            timeout = max(0.0, deadline - time.monotonic())
            for key, _ in sel.select(timeout):
                reader = key.data
                if reader is None:
                    continue
                try:
                    events = reader.read()
                except Exception as exc:
                    self._on_error(f"{type(reader).__name__}: {exc}")
                    continue
                room = self._max_batch - len(pending)
                if len(events) > room:
                    overflow += len(events) - room
                    events = events[:max(room, 0)]
                pending.extend(events)
            if self._stop.is_set():
                overflow += self._drain(readers, pending)
            if time.monotonic() >= deadline or self._stop.is_set():
                # On stop too: what was read before the stop is delivered, never lost.
                self.shed += overflow
                stats = tuple(r.stats() for r in readers) + tuple(self._cfg.off)
                self._on_batch(DropBatch(tuple(pending), stats, overflow))
                pending, overflow = [], 0
                deadline = time.monotonic() + self._batch_s

    def _drain(self, readers: list[DropReader], pending: list[DropEvent]) -> int:
        """Read what is already queued in every reader (bounded), so stopping loses nothing
        that had arrived."""
        shed = 0
        for reader in readers:
            for _ in range(64):
                try:
                    events = reader.read()
                except Exception:
                    break
                if not events:
                    break
                room = self._max_batch - len(pending)
                shed += max(0, len(events) - room)
                pending.extend(events[:max(room, 0)])
        return shed
