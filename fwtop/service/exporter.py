"""`fwtop exporter`: the firewall's live state as Prometheus metrics, for a fleet.

The three background services (rule counters, drop stream, conntrack) run once, each on its own
thread inside the target namespace, and keep their latest reading in `Readings`; a custom
collector turns those readings into metric families at scrape time, so nothing is allocated per
event. Drops are the one thing tallied between scrapes, by a bounded set of label values.
The HTTP server stays in fwtop's own namespace (the caller's thread never enters the target).
"""

from __future__ import annotations

import ipaddress
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from fwtop.core.conntrack import ConntrackView
from fwtop.core.events import DropEvent, SourceStats
from fwtop.firewall.netns import NetNamespace
from fwtop.service.drops import DropBatch
from fwtop.service.rules import RulesView

DEFAULT_MAX_DROP_LABEL_SETS = 1000
COMMENT_MAX = 64
REASON_MAX = 160
OTHER = "other"
# The per-CPU conntrack statistics worth alerting on (`insert` only counts ctnetlink inserts).
CONNTRACK_STATS = ("insert_failed", "drop", "early_drop", "invalid", "search_restart",
                   "clash_resolve")
RULE_LABELS = ("backend", "family", "table", "chain", "position", "handle", "comment",
               "verdict")
POLICY_LABELS = ("backend", "family", "table", "chain", "verdict")
DROP_LABELS = ("source", "backend", "family", "table", "chain", "position", "certain")

DropLabels = tuple[str, str, str, str, str, str, str]  # in DROP_LABELS order
Attribute = Callable[[DropEvent], Mapping[str, object]]


class ListenError(ValueError):
    """A --listen value that is not HOST:PORT, or an address that cannot be bound (message
    is one line for the user)."""


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT, [IPv6]:PORT or :PORT (every IPv4 address) -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text:
        raise ListenError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9630")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ListenError(f"--listen {text!r}: {host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ListenError(f"--listen {text!r}: write an IPv6 address in brackets, "
                          "e.g. [::1]:9630")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ListenError(f"--listen {text!r}: the port must be a number from 1 to 65535")
    if any(c.isspace() for c in host):
        raise ListenError(f"--listen {text!r}: bad host")
    return host or "0.0.0.0", int(port_text)


def _clip(text: str | None, limit: int) -> str:
    if not text:
        return ""
    return text if len(text) <= limit else text[:limit]


def drop_labels(source: str, attribution: Mapping[str, object]) -> DropLabels:
    """The rule (or policy) labels of one attributed drop; empty strings when unattributed."""
    certain = "true" if attribution.get("certain") is True else "false"
    rule = attribution.get("rule")
    policy = attribution.get("policy")
    where: Mapping[str, Any] | None = None
    position = ""
    if isinstance(rule, Mapping):
        where, position = rule, str(rule.get("position") or "")
    elif isinstance(policy, Mapping):
        where, position = policy, "policy"
    if where is None:
        return (source, "", "", "", "", "", certain)
    return (source, str(where.get("backend") or ""), str(where.get("family") or ""),
            str(where.get("table") or ""), str(where.get("chain") or ""), position, certain)


class DropTally:
    """Drop counts by label set, at most `max_sets` distinct sets: past that, new sets are
    counted in their source's `other` bucket (and the overflow is counted), so a flood of
    oddities can never blow up the scrape. Counts only grow."""

    def __init__(self, max_sets: int = DEFAULT_MAX_DROP_LABEL_SETS) -> None:
        self.max_sets = max(1, max_sets)
        self._counts: dict[DropLabels, int] = {}
        self._named = 0  # label sets that are not an `other` bucket
        self.overflow = 0  # drops counted in an `other` bucket
        self._lock = threading.Lock()

    def add(self, labels: DropLabels, n: int = 1) -> None:
        with self._lock:
            if labels not in self._counts:
                if self._named >= self.max_sets:
                    self.overflow += n
                    labels = (labels[0], OTHER, OTHER, OTHER, OTHER, OTHER, OTHER)
                    self._counts[labels] = self._counts.get(labels, 0) + n
                    return
                self._named += 1
                self._counts[labels] = 0
            self._counts[labels] += n

    def snapshot(self) -> tuple[dict[DropLabels, int], int, int]:
        """(counts, distinct named sets, drops in `other` buckets), consistent with each other."""
        with self._lock:
            return dict(self._counts), self._named, self.overflow


class Readings:
    """The latest reading of each service, written by their threads, read at scrape time.
    Each reading is an immutable object swapped in whole, so a scrape never sees half a tick."""

    def __init__(self, netns: NetNamespace | None = None, interval: float = 1.0,
                 max_drop_label_sets: int = DEFAULT_MAX_DROP_LABEL_SETS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.netns = netns
        self.interval = interval
        self.clock = clock
        self.rules: RulesView | None = None
        self.rules_at: float | None = None  # clock() when the last rules view arrived
        self.sources: tuple[SourceStats, ...] = ()
        self.conntrack: ConntrackView | None = None
        self.drops = DropTally(max_drop_label_sets)
        self.shed = 0  # drop events the stream itself had to shed (full batch)
        self._errors: dict[str, int] = {}
        self.last_error: str | None = None
        self._lock = threading.Lock()

    def note_rules(self, view: RulesView) -> None:
        self.rules, self.rules_at = view, self.clock()

    def note_drops(self, batch: DropBatch, attribute: Attribute) -> None:
        """On the drop stream's thread (inside the namespace, where `attribute` reads it)."""
        counts: dict[DropLabels, int] = {}
        for event in batch.events:
            labels = drop_labels(event.source, attribute(event))
            counts[labels] = counts.get(labels, 0) + 1
        for labels, n in counts.items():
            self.drops.add(labels, n)
        self.shed += batch.overflow
        self.sources = batch.stats

    def note_conntrack(self, view: ConntrackView) -> None:
        self.conntrack = view

    def note_error(self, component: str, message: str) -> None:
        with self._lock:
            self._errors[component] = self._errors.get(component, 0) + 1
            self.last_error = f"{component}: {message}"

    def errors(self) -> dict[str, int]:
        with self._lock:
            return dict(self._errors)

    def rules_fresh(self) -> bool:
        """A rules poll arrived recently enough (a slow poll stretches the tick: allow it)."""
        view, at = self.rules, self.rules_at
        if view is None or at is None:
            return False
        stale_after = max(15.0, 5 * self.interval, 4 * view.poll_wall_s + self.interval)
        return self.clock() - at <= stale_after


def _merged_sources(stats: Iterable[SourceStats]) -> dict[str, SourceStats]:
    """One entry per source name (a source reported twice is summed; up if any part runs)."""
    out: dict[str, SourceStats] = {}
    for s in stats:
        prev = out.get(s.source)
        if prev is None:
            out[s.source] = s
            continue
        out[s.source] = SourceStats(
            s.source, prev.running or s.running, prev.received + s.received,
            prev.lost + s.lost, prev.malformed + s.malformed,
            None if prev.running or s.running else (prev.off_reason or s.off_reason))
    return out


class FwtopCollector:
    """Builds every fwtop_* metric family from `Readings` at scrape time."""

    def __init__(self, readings: Readings, version: str = "") -> None:
        self.readings = readings
        self.version = version

    def collect(self) -> Iterator[Metric]:
        r = self.readings
        info = GaugeMetricFamily("fwtop_info", "fwtop exporter: version and the namespace "
                                 "it watches (empty: fwtop's own)", labels=["version", "netns"])
        info.add_metric([self.version, r.netns.name if r.netns is not None else ""], 1)
        yield info
        yield GaugeMetricFamily("fwtop_up", "1 while fwtop reads the firewall's rules "
                                "(a recent poll), else 0", value=1 if r.rules_fresh() else 0)
        errors = CounterMetricFamily("fwtop_errors", "Errors reported by fwtop's readers",
                                     labels=["component"])
        for component, n in sorted(r.errors().items()):
            errors.add_metric([component], n)
        yield errors
        yield from self._rules(r.rules)
        yield from self._drops(r)
        yield from self._sources(r.sources)
        yield from self._conntrack(r.conntrack)

    def _rules(self, view: RulesView | None) -> Iterator[Metric]:
        packets = CounterMetricFamily("fwtop_rule_packets", "Packets the rule matched "
                                      "(the kernel's counter)", labels=RULE_LABELS)
        nbytes = CounterMetricFamily("fwtop_rule_bytes", "Bytes the rule matched "
                                     "(the kernel's counter)", labels=RULE_LABELS)
        ppackets = CounterMetricFamily("fwtop_policy_packets", "Packets that met the chain's "
                                       "policy (where the backend counts them)",
                                       labels=POLICY_LABELS)
        pbytes = CounterMetricFamily("fwtop_policy_bytes", "Bytes that met the chain's policy "
                                     "(where the backend counts them)", labels=POLICY_LABELS)
        if view is not None:
            seen: set[tuple[str, ...]] = set()
            for rule in view.ruleset.rules():
                c = rule.counters
                if c is None:
                    continue
                labels = (rule.backend, rule.family, rule.table, rule.chain, str(rule.position),
                          "" if rule.handle is None else str(rule.handle),
                          _clip(rule.comment, COMMENT_MAX), rule.verdict)
                if labels in seen:
                    continue
                seen.add(labels)
                packets.add_metric(labels, c.packets)
                nbytes.add_metric(labels, c.bytes)
            for policy in view.ruleset.policies():
                pc = policy.counters
                if pc is None:
                    continue
                plabels = (policy.backend, policy.family, policy.table, policy.chain,
                           policy.verdict)
                if plabels in seen:
                    continue
                seen.add(plabels)
                ppackets.add_metric(plabels, pc.packets)
                pbytes.add_metric(plabels, pc.bytes)
            yield GaugeMetricFamily("fwtop_rules_poll_duration_seconds",
                                    "Wall time of the last rules poll", value=view.poll_wall_s)
        yield from (packets, nbytes, ppackets, pbytes)

    def _drops(self, r: Readings) -> Iterator[Metric]:
        counts, named, overflow = r.drops.snapshot()
        drops = CounterMetricFamily(
            "fwtop_drops", "Drop events fwtop received (NFLOG, LOG lines, drop-reason "
            "tracepoint), by source and the rule (position) or policy (position=\"policy\") "
            "it attributed them to; empty rule labels: not attributed (e.g. a logged packet "
            "that was then accepted)", labels=DROP_LABELS)
        for labels, n in sorted(counts.items()):
            drops.add_metric(labels, n)
        yield drops
        yield GaugeMetricFamily("fwtop_drops_label_sets", "Distinct label sets of fwtop_drops_"
                                "total (excluding the `other` buckets)", value=named)
        yield GaugeMetricFamily("fwtop_drops_label_sets_max", "Cap on those label sets: "
                                "past it drops are counted in `other`", value=r.drops.max_sets)
        yield CounterMetricFamily("fwtop_drops_other", "Drops counted in an `other` bucket "
                                  "because the label-set cap was reached", value=overflow)
        yield CounterMetricFamily("fwtop_drops_shed", "Drop events fwtop had to shed "
                                  "(a full batch): not in fwtop_drops_total", value=r.shed)

    def _sources(self, stats: Sequence[SourceStats]) -> Iterator[Metric]:
        received = CounterMetricFamily("fwtop_source_received", "Events the drop source "
                                       "received", labels=["source"])
        lost = CounterMetricFamily("fwtop_source_lost", "Events the drop source knows it lost "
                                   "(ENOBUFS, kmsg overrun, a full queue)", labels=["source"])
        malformed = CounterMetricFamily("fwtop_source_malformed", "Records the drop source "
                                        "could not parse", labels=["source"])
        up = GaugeMetricFamily("fwtop_source_up", "1 if the drop source runs, 0 if off "
                               "(reason says why)", labels=["source", "reason"])
        for name, s in sorted(_merged_sources(stats).items()):
            received.add_metric([name], s.received)
            lost.add_metric([name], s.lost)
            malformed.add_metric([name], s.malformed)
            up.add_metric([name, "" if s.running else _clip(s.off_reason, REASON_MAX)],
                          1 if s.running else 0)
        yield from (received, lost, malformed, up)

    def _conntrack(self, view: ConntrackView | None) -> Iterator[Metric]:
        up = GaugeMetricFamily("fwtop_conntrack_up", "1 if fwtop reads the conntrack table, "
                               "0 if not (reason says why)", labels=["reason"])
        stats = view.stats if view is not None else None
        if stats is None:
            reason = view.off_reason if view is not None else "no reading yet"
            up.add_metric([_clip(reason, REASON_MAX)], 0)
            yield up
            return
        up.add_metric([""], 1)
        yield up
        yield GaugeMetricFamily("fwtop_conntrack_entries", "Connections in the namespace's "
                                "conntrack table", value=stats.count)
        yield GaugeMetricFamily("fwtop_conntrack_max", "The conntrack table's limit "
                                "(nf_conntrack_max, host-wide; 0: none)", value=stats.max)
        if stats.fill is not None:
            yield GaugeMetricFamily("fwtop_conntrack_fill_ratio", "entries / max",
                                    value=stats.fill)
        growth = view.growth if view is not None else None
        if growth is not None and growth.eta_full_s is not None:
            yield GaugeMetricFamily("fwtop_conntrack_time_to_full_seconds", "When the table "
                                    "fills at its current growth (absent: not growing)",
                                    value=growth.eta_full_s)
        if stats.stats_available:
            per_cpu = CounterMetricFamily("fwtop_conntrack_stat", "Per-CPU conntrack "
                                          "statistics summed over CPUs", labels=["stat"])
            for name in CONNTRACK_STATS:
                per_cpu.add_metric([name], getattr(stats.cpu, name))
            yield per_cpu


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("fwtop")
    except Exception:  # running from a source tree that was never installed
        return ""


def metrics_registry(readings: Readings) -> CollectorRegistry:
    """fwtop's metrics plus prometheus_client's usual process_*, python_gc_* and python_info
    (on a registry of its own: tests build several)."""
    registry = CollectorRegistry()
    registry.register(FwtopCollector(readings, _version()))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class Exporter:
    """The three services, started once, feeding one `Readings`."""

    def __init__(self, netns: NetNamespace | None, interval: float = 1.0,
                 nflog_groups: Sequence[int] = (),
                 max_drop_label_sets: int = DEFAULT_MAX_DROP_LABEL_SETS) -> None:
        from fwtop.service.conntrack import ConntrackMonitor
        from fwtop.service.drops import DropSources, DropStream
        from fwtop.service.monitor import Monitor
        from fwtop.service.watch import Attributor

        self.readings = Readings(netns, interval, max_drop_label_sets)
        self.registry = metrics_registry(self.readings)
        readings = self.readings
        attributor = Attributor()

        def on_batch(batch: DropBatch) -> None:
            # On the drop stream's thread, inside the namespace: the ruleset and routes the
            # attribution reads are the namespace's own.
            attributor.refresh()
            readings.note_drops(batch, attributor.attribution_json)

        def reporter(component: str) -> Callable[[str], None]:
            return lambda message: readings.note_error(component, message)

        self._monitor = Monitor(readings.note_rules, reporter("rules"), netns=netns,
                                interval=interval)
        self._drops = DropStream(DropSources(groups=None, extra_groups=list(nflog_groups),
                                             netns=netns), on_batch, reporter("drops"))
        # No breakdown dumps: nothing here exports them, and a dump of a big table costs CPU.
        self._conntrack = ConntrackMonitor(readings.note_conntrack, reporter("conntrack"),
                                           netns=netns, interval=interval,
                                           breakdown_every=None)

    def start(self) -> None:
        self._monitor.start()
        self._drops.start()
        self._conntrack.start()

    def stop(self) -> None:
        self._conntrack.stop()
        self._drops.stop()
        self._monitor.stop()


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def serve(host: str, port: int, netns: NetNamespace | None, interval: float = 1.0,
          nflog_groups: Sequence[int] = (),
          max_drop_label_sets: int = DEFAULT_MAX_DROP_LABEL_SETS) -> int:
    """Serve /metrics on host:port until SIGTERM or SIGINT, then stop every thread. Must be
    called from a thread in fwtop's own namespace: the listening socket is opened here, and
    only the readers enter `netns`. Raises ListenError when the address cannot be bound."""
    exporter = Exporter(netns, interval, nflog_groups, max_drop_label_sets)
    # Bind first: a port in use fails before any reader starts.
    try:
        httpd, http_thread = start_http_server(port, addr=host, registry=exporter.registry)
    except OSError as exc:  # EADDRINUSE, EADDRNOTAVAIL, an unknown host name (gaierror)
        exporter.stop()  # nothing started yet: this only closes what the services opened
        reason = exc.strerror or str(exc)
        raise ListenError(f"cannot listen on {_hostport(host, port)}: {reason}") from None
    done = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: done.set())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    exporter.start()
    print(f"fwtop exporter: serving http://{_hostport(host, port)}/metrics"
          + (f" for namespace {netns.name}" if netns is not None else ""), file=sys.stderr)
    try:
        while not done.wait(1.0):
            pass
    finally:
        httpd.shutdown()
        httpd.server_close()
        http_thread.join(5.0)
        exporter.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
