"""`fwtop watch --json`: the drop stream as JSON lines, with periodic per-source stats lines.

Each drop is one `{"type": "drop", ...}` line (DropEvent.to_json); every stats interval, and once
at the end, a `{"type": "stats", "sources": [...]}` line tells what each source received and
lost, and which sources are off and why, so an empty stream is never ambiguous.

Every conntrack interval a `{"type": "conntrack", "ts", "count", "max", "fill", "rate_per_s",
"eta_full_s", "stats": {...}, ...}` line (ConntrackView.to_json) follows the table; with a
breakdown interval, `{"type": "conntrack_breakdown", ...}` lines say what fills it. The first
line is always the first stats line, the last one the final stats line.

With `packets`, the packet capture runs too: `{"type": "packet", "ts", "iface", "dir", "proto",
"src", "dst", "sport", "dport", "tcp_flags", "len", ...}` lines (PacketEvent.to_json; an even
sample of at most 2,000 per 200 ms, the rest counted as `shed` in the capture's stats entry) and
`{"type": "flow", "ts", "proto", "src", "dst", "sport", "dport", "state", "reason",
"listener": {"pid", "name"} | null, ...}` lines (FlowEvent.to_json) when a flow's state is
decided. The stats lines then carry a `{"source": "capture", "received", "decoded", "skipped",
"kernel_packets", "kernel_drops", "shed", ...}` entry; the first stats line is written once the
capture socket is open too.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, TextIO

from fwtop.core.capture_events import CaptureStats
from fwtop.core.conntrack import ConntrackView
from fwtop.core.correlate import Correlator
from fwtop.core.evaluator import NetContext
from fwtop.core.events import DropEvent, SourceStats
from fwtop.firewall.netns import NetNamespace
from fwtop.service.capture import CaptureBatch, CaptureConfig, CaptureStream
from fwtop.service.conntrack import ConntrackMonitor
from fwtop.service.drops import DropBatch, DropSources, DropStream
from fwtop.service.rules import RulesView

# Capture lines that arrive before the first stats line are held, at most this many.
_HOLD_MAX = 20_000


@dataclass(frozen=True, slots=True)
class CaptureOptions:
    """`fwtop watch --packets`: what to capture (see CaptureConfig)."""

    iface: str | None = None
    capture_filter: str | None = None
    pcap_path: str | None = None
    flow_timeout: float = 3.0


def _capture_json(stats: CaptureStats, batch: CaptureBatch | None, shed: int,
                  flows_shed: int) -> dict[str, Any]:
    data = stats.to_json()
    data.update({"shed": shed, "flows_shed": flows_shed})
    if batch is not None:
        fs = batch.flow_stats
        data.update({"flows": fs.flows, "flows_pending": fs.pending,
                     "flows_evicted": fs.evicted, "pcap_written": batch.pcap_written})
    return data


def _stats_line(stats: tuple[SourceStats, ...], shed: int,
                capture: dict[str, Any] | None = None) -> str:
    sources = [s.to_json() for s in stats]
    if capture is not None:
        sources.append(capture)
    return json.dumps({"type": "stats", "ts": round(time.time(), 6), "sources": sources,
                       "shed": shed})


def _error_line(message: str) -> str:
    return json.dumps({"type": "error", "ts": round(time.time(), 6), "message": message}) + "\n"


def _conntrack_lines(view: ConntrackView) -> str:
    text = json.dumps(view.to_json()) + "\n"
    if view.breakdown_fresh and view.breakdown is not None:
        text += json.dumps(view.breakdown.to_json()) + "\n"
    return text


class Attributor:
    """Attribution of drop events for headless use: the ruleset and routes of the calling
    thread's namespace, re-read every `every` seconds (less often when reading is slow)."""

    def __init__(self, every: float = 10.0) -> None:
        self.correlator = Correlator()
        self._every = every
        self._next = float("-inf")
        self._net: NetContext | None = None
        self.error: str | None = None

    def refresh(self) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        from fwtop.firewall import load_ruleset
        from fwtop.firewall.routing import net_context

        try:
            self.correlator.use(load_ruleset())
            self._net = net_context()
            self.error = None
        except Exception as exc:  # attribution is extra: the drop lines go on without it
            self.error = f"cannot read the ruleset for attribution: {exc}"
        took = time.monotonic() - now
        self._next = time.monotonic() + max(self._every, 20 * took)

    def attribution_json(self, event: DropEvent) -> dict[str, object]:
        a = self.correlator.attribute(event, self._net)
        if a is None:
            return {"rule": None, "policy": None, "attributed": "none", "certain": False,
                    "why": self.error or "no ruleset"}
        return a.to_json()


def _counters_line(view: RulesView) -> str:
    """The rules and policies whose counters moved this tick, with their deltas and rates."""
    moved: list[dict[str, object]] = []
    where = {r.key: r for r in view.ruleset.rules()}
    policies = {p.key: p for p in view.ruleset.policies()}
    for key, rate in view.rates.items():
        if rate.packets <= 0:
            continue
        total = view.counters.get(key)
        item: dict[str, object] = {"packets": total.packets if total else None,
                                   "bytes": total.bytes if total else None,
                                   "delta_packets": rate.packets, "delta_bytes": rate.bytes,
                                   "pps": round(rate.pps, 3), "bps": round(rate.bps, 3)}
        if key in where:
            r = where[key]
            item.update(kind="rule", backend=r.backend, family=r.family, table=r.table,
                        chain=r.chain, position=r.position, handle=r.handle,
                        comment=r.comment, verdict=r.verdict)
        elif key in policies:
            p = policies[key]
            item.update(kind="policy", backend=p.backend, family=p.family, table=p.table,
                        chain=p.chain, verdict=p.verdict)
        else:
            continue
        moved.append(item)
    return json.dumps({"type": "counters", "ts": round(time.time(), 6), "moved": moved}) + "\n"


def watch(out: TextIO, netns: NetNamespace | None, extra_groups: list[int],
          duration: float | None, stats_interval: float = 1.0,
          conntrack_interval: float | None = 1.0,
          conntrack_breakdown: float | None = None, conntrack_events: bool = False,
          packets: CaptureOptions | None = None,
          counters_interval: float | None = None) -> int:
    """Stream until `duration` passes or SIGINT/SIGTERM; returns the exit code.
    `conntrack_interval` None turns the conntrack lines off; `conntrack_breakdown` (seconds)
    adds a breakdown line that often; `conntrack_events` listens to NEW/DESTROY events for
    new_per_s / destroy_per_s; `packets` adds the packet capture's packet and flow lines."""
    # NFLOG groups the ruleset uses plus any asked for, LOG lines narrowed to the namespace's
    # interfaces: both worked out by the reader thread inside the namespace.
    cfg = DropSources(groups=None, extra_groups=extra_groups, netns=netns)
    lock = threading.Lock()
    done = threading.Event()
    last_stats = [float("-inf")]  # the first batch says at once which sources run
    latest: list[tuple[SourceStats, ...]] = [tuple(cfg.off)]
    failed: list[str] = []
    # Conntrack lines wait for the first stats line (readers open): until then the latest is
    # held here and written right after it.
    started = [False]
    held: list[ConntrackView] = []
    held_errors: list[str] = []

    def write(text: str) -> None:
        try:
            out.write(text)
            out.flush()
        except BrokenPipeError:
            done.set()

    attributor = Attributor()
    # The capture's latest stats entry and the lines it sent before the first stats line.
    capture_json: list[dict[str, Any] | None] = [None]
    held_capture: list[str] = []
    capture_ready = threading.Event()
    capture_failed: list[str] = []
    capture_ran = [False]

    def capture_entry() -> dict[str, Any] | None:
        return capture_json[0]

    def on_capture(batch: CaptureBatch) -> None:
        # On the capture thread, inside the namespace; the flow lines are already annotated.
        lines = [json.dumps(p.to_json()) for p in batch.packets]
        lines.extend(json.dumps(f.to_json()) for f in batch.flows)
        assert capture is not None
        with lock:
            capture_ran[0] = True
            capture_json[0] = _capture_json(batch.stats, batch, capture.shed,
                                            capture.flows_shed)
            capture_ready.set()
            if not started[0]:
                room = _HOLD_MAX - len(held_capture)
                held_capture.extend(lines[:max(0, room)])
                return
            if lines:
                write("\n".join(lines) + "\n")

    def on_capture_error(message: str) -> None:
        # Like a drop source that cannot start: an off entry in the stats lines, and the error
        # line after the first stats line (which stays the first line).
        with lock:
            capture_failed.append(message)
            if capture_json[0] is None:
                capture_json[0] = CaptureStats(False, off_reason=message).to_json()
            if started[0]:
                write(_error_line(message))
            elif len(held_errors) < 100:
                held_errors.append(message)
        capture_ready.set()

    def on_batch(batch: DropBatch) -> None:
        # On the drop stream's thread, inside the namespace: the ruleset read here is the
        # namespace's own.
        attributor.refresh()
        lines = []
        for e in batch.events:
            data = e.to_json()
            data.update(attributor.attribution_json(e))
            lines.append(json.dumps(data))
        latest[0] = batch.stats
        now = time.monotonic()
        with lock:
            if now - last_stats[0] >= stats_interval:
                lines.append(_stats_line(batch.stats, stream.shed, capture_entry()))
                last_stats[0] = now
            if lines:
                write("\n".join(lines) + "\n")
                if not started[0]:
                    started[0] = True
                    for message in held_errors:
                        write(_error_line(message))
                    for view in held:
                        write(_conntrack_lines(view))
                    held.clear()
                    if held_capture:
                        write("\n".join(held_capture) + "\n")
                        held_capture.clear()

    def on_view(view: ConntrackView) -> None:
        with lock:
            if not started[0]:
                held[:] = [view]
                return
            write(_conntrack_lines(view))

    def on_error(message: str) -> None:
        failed.append(message)
        with lock:
            write(_error_line(message))

    def on_conntrack_error(message: str) -> None:
        # Not a drop source: it never decides the exit code.
        with lock:
            if started[0]:
                write(_error_line(message))
            elif len(held_errors) < 100:
                held_errors.append(message)

    def on_rules(view: RulesView) -> None:
        line = _counters_line(view)
        with lock:
            if started[0]:
                write(line)

    rules_monitor = None
    if counters_interval is not None:
        from fwtop.service.monitor import Monitor

        rules_monitor = Monitor(on_rules, on_conntrack_error, netns=netns,
                                interval=counters_interval)

    conntrack = None
    if conntrack_interval is not None:
        # Its own kernel-log reader: "table full" is printed whatever nf_log_all_netns says,
        # while the drop stream reads LOG lines only where they are logged.
        conntrack = ConntrackMonitor(on_view, on_conntrack_error, netns=netns,
                                     interval=conntrack_interval,
                                     breakdown_every=conntrack_breakdown, kmsg=True,
                                     events=conntrack_events)
    stream = DropStream(cfg, on_batch, on_error)
    capture: CaptureStream | None = None
    if packets is not None:
        capture = CaptureStream(
            CaptureConfig(netns=netns, iface=packets.iface,
                          capture_filter=packets.capture_filter, timeout=packets.flow_timeout,
                          pcap_path=packets.pcap_path),
            on_capture, on_capture_error)
    previous = signal.signal(signal.SIGTERM, lambda *_: done.set())
    if capture is not None:
        # The first stats line says the capture socket is open: start it first.
        capture.start()
        capture_ready.wait(10.0)
    stream.start()
    if conntrack is not None:
        conntrack.start()
    if rules_monitor is not None:
        rules_monitor.start()
    try:
        done.wait(duration)
    except KeyboardInterrupt:
        pass
    finally:
        if rules_monitor is not None:
            rules_monitor.stop()
        if conntrack is not None:
            conntrack.stop()
        if capture is not None:
            capture.stop()  # its last batch (flows decided so far, final counts) comes first
        stream.stop()
        signal.signal(signal.SIGTERM, previous)
    with lock:
        if not started[0] and held_capture:
            write("\n".join(held_capture) + "\n")
        write(_stats_line(latest[0], stream.shed, capture_entry()) + "\n")
    if packets is not None and capture_failed and not capture_ran[0]:
        return 1  # asked for packets and the capture never ran
    return 1 if failed and not any(s.running for s in latest[0]) else 0
