"""Runs the conntrack watch on a thread of its own inside the target namespace: every interval
a ConntrackView (count, limit, per-CPU statistics, growth, time to full, alarms), and a
breakdown of the table every `breakdown_every` seconds or when asked. One poll at a time: a
slow one (a breakdown of a huge table) stretches the tick instead of piling up."""

from __future__ import annotations

import dataclasses
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from fwtop.core.conntrack import Breakdown, ConntrackView, GrowthTracker
from fwtop.core.events import DropEvent
from fwtop.firewall.netns import NetNamespace, enter
from fwtop.sources.conntrack import ConntrackEvents, ConntrackReader, ConntrackUnavailable
from fwtop.sources.kmsg import KmsgError, KmsgReader

# A dump stops after this many entries (a sample: the kernel dumps in hash order) so that one
# breakdown stays near a second of CPU whatever the table holds (~4 us per entry measured).
DEFAULT_BREAKDOWN_LIMIT = 250_000
_TIMEOUTS_EVERY_S = 30.0


class ConntrackMonitor:
    """Owns the thread. `on_view` and `on_error` are called from it (the UI posts them on)."""

    def __init__(
        self,
        on_view: Callable[[ConntrackView], None],
        on_error: Callable[[str], None],
        netns: NetNamespace | None = None,
        interval: float = 1.0,
        breakdown_every: float | None = 10.0,
        breakdown_limit: int | None = DEFAULT_BREAKDOWN_LIMIT,
        history: int = 120,
        tracker: GrowthTracker | None = None,
        reader_factory: Callable[[], ConntrackReader] = ConntrackReader,
        min_hint_entries: int = 1000,
        kmsg: bool = False,
        events: bool = False,
    ) -> None:
        """With `kmsg`, the monitor reads kernel log records itself for conntrack's "table
        full" line (host-wide: the kernel prints it for every namespace, whatever
        nf_log_all_netns says); otherwise hand it the drop stream's events through
        note_drop_events. Not both: each line would count twice.

        With `events`, the monitor listens to the namespace's conntrack NEW/DESTROY events for
        new/destroy rates (opt-in: the kernel then builds a message per connection)."""
        self._on_view = on_view
        self._on_error = on_error
        self._netns = netns
        self.interval = max(0.1, interval)
        self.breakdown_every = breakdown_every if breakdown_every else None
        self.breakdown_limit = breakdown_limit
        self.min_hint_entries = min_hint_entries
        self.tracker = tracker if tracker is not None else GrowthTracker()
        self._reader_factory = reader_factory
        self._kmsg_wanted = kmsg
        self._events_wanted = events
        self._history: deque[int] = deque(maxlen=max(1, history))
        self._lock = threading.Lock()
        self._events: list[DropEvent] = []
        self._breakdown_wanted = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fwtop-conntrack", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def request_breakdown(self) -> None:
        """Dump the table on the next tick, now (the Conntrack screen opening, a refresh key)."""
        with self._lock:
            self._breakdown_wanted = True
        self._wake.set()

    def note_drop_events(self, events: Iterable[DropEvent]) -> None:
        """Hand over drop events (any thread): a conntrack "table full" kernel line among them
        raises the alarm on the next tick. Only those lines are kept."""
        table_full = [e for e in events if e.reason and "table full" in e.reason]
        if table_full:
            with self._lock:
                self._events.extend(table_full[-100:])
            self._wake.set()

    def _run(self) -> None:
        try:
            if self._netns is not None:
                enter(self._netns)
        except Exception as exc:  # reported, not raised: the rest of fwtop keeps running
            self._on_error(f"conntrack: {exc}")
            return
        kmsg = self._open_kmsg() if self._kmsg_wanted else None
        ct_events: ConntrackEvents | None = None
        reader: ConntrackReader | None = None
        timeouts: dict[str, int] = {}
        timeouts_at = -_TIMEOUTS_EVERY_S
        breakdown: Breakdown | None = None
        next_breakdown = time.monotonic()
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                with self._lock:
                    events, self._events = self._events, []
                    wanted, self._breakdown_wanted = self._breakdown_wanted, False
                if kmsg is not None:
                    events.extend(self._read_kmsg(kmsg))
                self.tracker.note_events(events)
                try:
                    if reader is None:
                        reader = self._reader_factory()
                        timeouts_at = -_TIMEOUTS_EVERY_S
                        if self._events_wanted and ct_events is None:
                            ct_events = self._open_events()
                    if started - timeouts_at >= _TIMEOUTS_EVERY_S:
                        timeouts, timeouts_at = reader.read_timeouts(), started
                    stats = reader.stats(timeouts)
                    if ct_events is not None:
                        new, destroyed = ct_events.read_counts()
                        stats = dataclasses.replace(stats, events_new=new,
                                                    events_destroyed=destroyed,
                                                    events_lost=ct_events.overruns)
                except ConntrackUnavailable as exc:
                    if reader is not None:
                        reader.close()
                        reader = None
                    self._history.clear()
                    now = time.monotonic()
                    self._deliver(ConntrackView(ts=now, wall=time.time(), stats=None,
                                                growth=None, breakdown=breakdown,
                                                off_reason=str(exc)))
                    self._rest(started)
                    continue
                except Exception as exc:
                    self._on_error(f"conntrack: {type(exc).__name__}: {exc}")
                    self._rest(started)
                    continue
                growth = self.tracker.update(stats)
                self._history.append(stats.count)
                fresh = False
                breakdown_error = None
                due = self.breakdown_every is not None and started >= next_breakdown
                if wanted or due:
                    try:
                        breakdown = reader.breakdown(timeouts, limit=self.breakdown_limit,
                                                     total=stats.count,
                                                     min_hint_entries=self.min_hint_entries)
                        fresh = True
                    except ConntrackUnavailable as exc:
                        breakdown_error = str(exc)
                    except Exception as exc:
                        breakdown_error = f"{type(exc).__name__}: {exc}"
                    if self.breakdown_every is not None:
                        next_breakdown = time.monotonic() + self.breakdown_every
                self._deliver(ConntrackView(
                    ts=stats.ts, wall=stats.wall, stats=stats, growth=growth,
                    breakdown=breakdown, breakdown_fresh=fresh, history=tuple(self._history),
                    breakdown_error=breakdown_error))
                self._rest(started, ct_events)
        finally:
            if reader is not None:
                reader.close()
            if kmsg is not None:
                kmsg.close()
            if ct_events is not None:
                ct_events.close()

    def _open_events(self) -> ConntrackEvents | None:
        try:
            return ConntrackEvents()
        except ConntrackUnavailable as exc:
            self._on_error(f"conntrack events: {exc}")
            return None

    def _open_kmsg(self) -> KmsgReader | None:
        try:
            return KmsgReader()
        except KmsgError as exc:
            self._on_error(f"conntrack: no kernel log for 'table full' lines: {exc}")
            return None

    def _read_kmsg(self, kmsg: KmsgReader) -> list[DropEvent]:
        out: list[DropEvent] = []
        for _ in range(64):  # bounded: a LOG flood must not stall the tick
            try:
                batch = kmsg.read(4096)
            except Exception as exc:
                self._on_error(f"conntrack: kernel log: {exc}")
                break
            out.extend(e for e in batch if e.reason and "table full" in e.reason)
            if not batch:
                break
        return out

    def _deliver(self, view: ConntrackView) -> None:
        try:
            self._on_view(view)
        except Exception as exc:  # a consumer's bug must not end the watch
            self._on_error(f"conntrack view consumer: {type(exc).__name__}: {exc}")

    def _rest(self, started: float, ct_events: ConntrackEvents | None = None) -> None:
        elapsed = time.monotonic() - started
        # A tick slower than the interval (a big dump) rests as long as it took: at most half
        # of one CPU, like the rules monitor.
        pause = max(self.interval - elapsed, elapsed)
        if ct_events is None:
            self._wake.wait(pause)
        else:
            # Drain the events as they come: a flood fills any socket buffer within a second.
            deadline = time.monotonic() + pause
            while not self._wake.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                ready, _, _ = select.select([ct_events], [], [], min(left, 0.05))
                if ready:
                    try:
                        ct_events.read_counts()
                    except ConntrackUnavailable as exc:
                        self._on_error(f"conntrack events: {exc}")
                        break
        self._wake.clear()
