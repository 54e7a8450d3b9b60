"""The conntrack table as fwtop sees it: snapshots of its size and per-CPU statistics, how fast
it grows and when it will be full, and what fills it (a breakdown of a dump).

Pure and stdlib only. Owns the text format of /proc/net/stat/nf_conntrack, the growth and alarm
rules, and the stale-entry hints (which sysctl governs the state that fills the table). The
readers in fwtop.sources.conntrack move the bytes; the netlink wire format is
fwtop.core.ctnetlink's, which feeds a BreakdownCounter entry by entry.
"""

from __future__ import annotations

import heapq
import ipaddress
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from fwtop.core.events import DropEvent

# The per-CPU statistics fwtop reports (names as /proc/net/stat/nf_conntrack prints them;
# "icmp_error" is "error" over netlink, "clashres" is "clash_resolve").
STAT_FIELDS = ("insert", "insert_failed", "drop", "early_drop", "invalid", "search_restart",
               "clash_resolve")
# A delta in any of these means the kernel refused or threw away a connection.
FAILURE_FIELDS = ("insert_failed", "drop")
_HEADER_ALIASES = {"clashres": "clash_resolve", "searched": "searched"}

# Sysctls under /proc/sys/net/netfilter/ (without the "nf_conntrack_" prefix) that govern how long
# entries stay; the breakdown's hints and idle estimates use them.
TIMEOUT_KEYS = (
    "tcp_timeout_established", "tcp_timeout_time_wait", "tcp_timeout_close_wait",
    "tcp_timeout_syn_sent", "tcp_timeout_syn_recv", "tcp_timeout_fin_wait",
    "tcp_timeout_last_ack", "tcp_timeout_close", "udp_timeout", "udp_timeout_stream",
    "icmp_timeout", "icmpv6_timeout", "generic_timeout",
)
SYSCTL_PREFIX = "net.netfilter.nf_conntrack_"

# enum tcp_conntrack (include/uapi/linux/netfilter/nf_conntrack_tcp.h), named as conntrack -L.
TCP_STATES = ("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT",
              "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2")
HALF_OPEN = frozenset({"SYN_SENT", "SYN_RECV", "SYN_SENT2"})
IPS_ASSURED = 1 << 2

PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp", 33: "dccp",
               136: "udplite", 47: "gre"}

_U32 = 1 << 32
_NO_TIMEOUT = -(1 << 40)
DEFAULT_ALARM_FILL = 0.9


class StatsParseError(ValueError):
    """/proc/net/stat/nf_conntrack text that is not the kernel's table."""


# --- snapshots ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CpuStatTotals:
    """The per-CPU statistics summed over CPUs (each CPU counts in u32; sums may wrap per CPU)."""

    insert: int = 0
    insert_failed: int = 0
    drop: int = 0
    early_drop: int = 0
    invalid: int = 0
    search_restart: int = 0
    clash_resolve: int = 0
    cpus: int = 0

    def to_json(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in STAT_FIELDS}


@dataclass(frozen=True, slots=True)
class ConntrackStats:
    """One cheap reading of the table: what /proc tells without dumping it.

    `count` is the namespace's own; `max` is the host-wide limit that every namespace's count is
    checked against (0: no limit). `ts` is time.monotonic(), `wall` time.time()."""

    ts: float
    wall: float
    count: int
    max: int
    buckets: int | None = None
    cpu: CpuStatTotals = field(default_factory=CpuStatTotals)
    timeouts: Mapping[str, int] = field(default_factory=dict)
    stats_available: bool = True  # False when /proc/net/stat/nf_conntrack could not be read
    # Running totals of conntrack NEW / DESTROY events, when fwtop listens to them (opt-in);
    # `events_lost` counts socket overruns (the rates are then lower bounds).
    events_new: int | None = None
    events_destroyed: int | None = None
    events_lost: int = 0

    @property
    def fill(self) -> float | None:
        return self.count / self.max if self.max > 0 else None


def parse_cpu_stats(text: str) -> CpuStatTotals:
    """Sum /proc/net/stat/nf_conntrack: a header of column names, then one line of hex numbers
    per CPU. Columns are found by name (kernels differ in which they print); the first column,
    `entries`, is the namespace's count repeated on every line, so it is not summed. Raises
    StatsParseError on text that is not that table."""
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0][:1] != ["entries"]:
        raise StatsParseError("no 'entries' header: not /proc/net/stat/nf_conntrack")
    header = [_HEADER_ALIASES.get(name, name) for name in lines[0]]
    wanted = [(i, name) for i, name in enumerate(header) if name in STAT_FIELDS]
    sums = dict.fromkeys(STAT_FIELDS, 0)
    cpus = 0
    for row in lines[1:]:
        if len(row) != len(header):
            raise StatsParseError(f"a row has {len(row)} columns, the header {len(header)}")
        try:
            for i, name in wanted:
                sums[name] += int(row[i], 16)
        except ValueError:
            raise StatsParseError(f"not a hex number in {' '.join(row)[:80]!r}") from None
        cpus += 1
    return CpuStatTotals(cpus=cpus, **sums)


def stat_deltas(prev: CpuStatTotals, cur: CpuStatTotals) -> dict[str, int]:
    """Per-field increase between two readings. A per-CPU u32 that wrapped lowers the sum by
    exactly 2**32, so the difference modulo 2**32 is right for any real increase below that."""
    return {name: (getattr(cur, name) - getattr(prev, name)) % _U32 for name in STAT_FIELDS}


# --- growth, time to full, alarms ------------------------------------------------------------

AlarmKind = Literal["fill", "insert_failed", "drop", "table_full"]


@dataclass(frozen=True, slots=True)
class Alarm:
    kind: AlarmKind
    message: str
    since: float  # monotonic time the condition was last seen


@dataclass(frozen=True, slots=True)
class Growth:
    """How the table moves: the answer to "when will it be full"."""

    fill: float | None  # count / max, None when max is 0 (no limit)
    rate_per_s: float | None  # smoothed net growth in entries/s (negative: shrinking)
    new_per_s: float | None  # smoothed NEW events/s (None unless events are listened to)
    eta_full_s: float | None  # seconds until count reaches max at rate_per_s; None: not growing
    deltas: Mapping[str, int]  # per-CPU statistic increases since the previous reading
    alarms: tuple[Alarm, ...] = ()
    destroy_per_s: float | None = None  # smoothed DESTROY events/s (same condition)

    @property
    def alarmed(self) -> bool:
        return bool(self.alarms)


class GrowthTracker:
    """Turns successive ConntrackStats into Growth: fill, an EWMA of the net growth rate with
    time constant `tau_s`, the time to full at that rate, and alarms.

    Alarms: fill >= `alarm_fill`; any insert_failed or drop increase; a "table full" kernel line
    (note_event). Each stays raised for `hold_s` after it was last seen, so a one-tick spike is
    still on screen when a human looks."""

    def __init__(self, tau_s: float = 5.0, alarm_fill: float = DEFAULT_ALARM_FILL,
                 hold_s: float = 30.0, min_rate: float = 0.05) -> None:
        self.tau_s = max(tau_s, 1e-6)
        self.alarm_fill = alarm_fill
        self.hold_s = hold_s
        self.min_rate = min_rate  # below this (entries/s) the table is "not growing"
        self._prev: ConntrackStats | None = None
        self._rate: float | None = None
        self._new_rate: float | None = None
        self._destroy_rate: float | None = None
        self._seen: dict[AlarmKind, Alarm] = {}
        self.table_full_lines = 0

    def note_event(self, event: DropEvent, now: float | None = None) -> bool:
        """Take a drop event; a conntrack "table full" kernel line raises the alarm. Returns
        whether it did."""
        if event.source != "conntrack" and not (event.reason and "conntrack" in event.reason):
            return False
        reason = event.reason or ""
        if "table full" not in reason or "expectation" in reason:
            return False  # the expectation table (helpers' related flows) is another limit
        self.table_full_lines += 1
        when = event.ts if now is None else now
        lines = self.table_full_lines
        self._seen["table_full"] = Alarm(
            "table_full", f"kernel: {reason}, dropping packets "
                          f"({lines} line{'s' if lines > 1 else ''})", when)
        return True

    def note_events(self, events: Iterable[DropEvent], now: float | None = None) -> int:
        return sum(1 for ev in events if self.note_event(ev, now))

    def update(self, stats: ConntrackStats) -> Growth:
        prev, self._prev = self._prev, stats
        deltas = dict.fromkeys(STAT_FIELDS, 0)
        if prev is not None and stats.ts > prev.ts:
            dt = stats.ts - prev.ts
            alpha = 1.0 - math.exp(-dt / self.tau_s)
            growth = (stats.count - prev.count) / dt
            rate = self._rate
            self._rate = growth if rate is None else rate + alpha * (growth - rate)
            if stats.stats_available and prev.stats_available:
                deltas = stat_deltas(prev.cpu, stats.cpu)
            # (The per-CPU `insert` counter only counts ctnetlink inserts on recent kernels,
            # not connections: new/destroy rates need the events.)
            if stats.events_new is not None and prev.events_new is not None:
                new = max(0, stats.events_new - prev.events_new) / dt
                self._new_rate = _ewma(self._new_rate, new, alpha)
            else:
                self._new_rate = None
            if stats.events_destroyed is not None and prev.events_destroyed is not None:
                gone = max(0, stats.events_destroyed - prev.events_destroyed) / dt
                self._destroy_rate = _ewma(self._destroy_rate, gone, alpha)
            else:
                self._destroy_rate = None
        now = stats.ts
        fill = stats.fill
        if fill is not None and fill >= self.alarm_fill:
            self._seen["fill"] = Alarm(
                "fill", f"table {fill:.0%} full ({stats.count:,} of {stats.max:,})", now)
        for name in FAILURE_FIELDS:
            if deltas[name]:
                what = ("new connections could not be inserted" if name == "insert_failed"
                        else "packets dropped: no room for a new entry")
                kind: AlarmKind = "insert_failed" if name == "insert_failed" else "drop"
                self._seen[kind] = Alarm(kind, f"{name} +{deltas[name]}: {what}", now)
        alarms = tuple(a for a in self._seen.values() if now - a.since <= self.hold_s)
        return Growth(fill=fill, rate_per_s=self._rate, new_per_s=self._new_rate,
                      eta_full_s=eta_full(stats.count, stats.max, self._rate, self.min_rate),
                      deltas=deltas, alarms=alarms, destroy_per_s=self._destroy_rate)


def _ewma(prev: float | None, value: float, alpha: float) -> float:
    return value if prev is None else prev + alpha * (value - prev)


def eta_full(count: int, max_: int, rate_per_s: float | None,
             min_rate: float = 0.05) -> float | None:
    """Seconds until `count` reaches `max_` at `rate_per_s`; 0 when already full; None when the
    table has no limit or is not growing."""
    if max_ <= 0:
        return None
    if count >= max_:
        return 0.0
    if rate_per_s is None or rate_per_s < min_rate:
        return None
    return (max_ - count) / rate_per_s


# --- breakdown -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConntrackEntry:
    """One connection, as the breakdown's "oldest" list shows it."""

    family: str  # ip, ip6
    proto: str
    src: str
    dst: str
    sport: int | None
    dport: int | None
    state: str | None  # TCP state, None for other protocols
    timeout_s: int  # seconds left before the kernel expires it
    assured: bool
    age_s: float | None  # since creation (needs nf_conntrack_timestamp=1)
    idle_s: float | None  # estimated since the last packet: the state's timeout - timeout_s

    def text(self) -> str:
        ports = f" {self.sport} -> {self.dport}" if self.sport is not None else ""
        return f"{self.proto} {self.src} -> {self.dst}{ports}"


@dataclass(frozen=True, slots=True)
class StaleHint:
    """A state that dominates the table and the sysctl that decides how long it stays."""

    state: str  # "TIME_WAIT", "ESTABLISHED", "half-open", "UDP", ...
    share: float
    entries: int
    sysctl: str | None  # e.g. net.netfilter.nf_conntrack_tcp_timeout_time_wait
    timeout_s: int | None  # its current value
    text: str


@dataclass(frozen=True, slots=True)
class Breakdown:
    """What fills the table, from one dump (or the first `dumped` entries of it when sampled:
    the kernel dumps in hash order, so a prefix is a fair sample and counts are scaled)."""

    ts: float
    wall: float
    total: int  # entries the table held (from the count), or `dumped` when unknown
    dumped: int
    sampled: bool
    elapsed_s: float
    by_state: tuple[tuple[str, int], ...]
    by_proto: tuple[tuple[str, int], ...]
    top_sources: tuple[tuple[str, int], ...]
    top_destinations: tuple[tuple[str, int], ...]
    top_dports: tuple[tuple[str, int], ...]  # "tcp/443"
    oldest: tuple[ConntrackEntry, ...]
    oldest_by: Literal["age", "idle"]  # age when the kernel timestamps entries
    hint: StaleHint | None
    malformed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "conntrack_breakdown", "ts": round(self.wall, 6), "total": self.total,
            "dumped": self.dumped, "sampled": self.sampled,
            "elapsed_s": round(self.elapsed_s, 4),
            "by_state": dict(self.by_state), "by_proto": dict(self.by_proto),
            "top_sources": [list(x) for x in self.top_sources],
            "top_destinations": [list(x) for x in self.top_destinations],
            "top_dports": [list(x) for x in self.top_dports],
            "oldest_by": self.oldest_by,
            "oldest": [{"proto": e.proto, "src": e.src, "dst": e.dst, "sport": e.sport,
                        "dport": e.dport, "state": e.state, "timeout_s": e.timeout_s,
                        "age_s": e.age_s, "idle_s": e.idle_s} for e in self.oldest],
            "hint": None if self.hint is None else {
                "state": self.hint.state, "share": round(self.hint.share, 4),
                "sysctl": self.hint.sysctl, "timeout_s": self.hint.timeout_s,
                "text": self.hint.text},
            "malformed": self.malformed,
        }


def full_timeout(timeouts: Mapping[str, int], proto: int, state: int | None,
                 status: int) -> int | None:
    """The timeout an entry is reset to by its last packet (so idle = that - time left)."""
    if proto == 6 and state is not None and 0 < state < len(TCP_STATES):
        name = TCP_STATES[state].lower()
        if name == "syn_sent2":
            name = "syn_sent"
        return timeouts.get(f"tcp_timeout_{name}")
    if proto == 17 or proto == 136:
        return timeouts.get("udp_timeout_stream" if status & IPS_ASSURED else "udp_timeout")
    if proto == 1:
        return timeouts.get("icmp_timeout")
    if proto == 58:
        return timeouts.get("icmpv6_timeout")
    return timeouts.get("generic_timeout")


def _addr(raw: bytes) -> str:
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        return raw.hex()


def _proto_name(num: int) -> str:
    return PROTO_NAMES.get(num, str(num))


class BreakdownCounter:
    """Accumulates a dump entry by entry (fwtop.core.ctnetlink calls `add`, or updates the
    counters directly on its fast path), then `finish` builds the Breakdown.

    Keys stay raw while counting (address bytes, ints) so the hot path allocates little; names
    and text are made only for what is shown."""

    def __init__(self, timeouts: Mapping[str, int] | None = None, oldest: int = 10,
                 limit: int | None = None) -> None:
        self.timeouts: Mapping[str, int] = dict(timeouts or {})
        self.limit = limit
        self.n = 0
        self.malformed = 0
        self.states: Counter[int] = Counter()  # TCP state number
        self.protos: Counter[int] = Counter()
        self.sources: Counter[bytes] = Counter()
        self.destinations: Counter[bytes] = Counter()
        self.dports: Counter[int] = Counter()  # proto << 16 | dport
        self.keep_oldest = max(0, oldest)
        # Min-heaps of (key, tiebreak, entry) holding the `oldest` largest keys seen.
        self._by_age: list[tuple[float, int, tuple[Any, ...]]] = []
        self._by_idle: list[tuple[float, int, tuple[Any, ...]]] = []
        # full_timeout() per (proto << 16 | state << 1 | assured), filled as kinds turn up;
        # _NO_TIMEOUT where the namespace has no such sysctl.
        self.full_timeouts: dict[int, int] = {}

    def oldest_floor(self) -> float:
        """The idle time an entry must exceed to enter the (full) oldest-by-idle list."""
        heap = self._by_idle
        if not self.keep_oldest:
            return math.inf
        return heap[0][0] if len(heap) >= self.keep_oldest else -math.inf

    def age_floor(self) -> float:
        """The negated creation time an entry must exceed to enter the oldest-by-age list."""
        heap = self._by_age
        if not self.keep_oldest:
            return math.inf
        return heap[0][0] if len(heap) >= self.keep_oldest else -math.inf

    @property
    def full(self) -> bool:
        return self.limit is not None and self.n >= self.limit

    def add(self, src: bytes, dst: bytes, proto: int, sport: int | None, dport: int | None,
            state: int | None, status: int, timeout: int, start_ns: int | None) -> None:
        """One entry. `state` is the TCP state number (None for other protocols), `timeout` the
        seconds left, `start_ns` the kernel's creation timestamp (wall clock ns) if it has one."""
        self.n += 1
        self.protos[proto] += 1
        self.sources[src] += 1
        self.destinations[dst] += 1
        if dport is not None:
            self.dports[proto << 16 | dport] += 1
        if state is not None:
            self.states[state] += 1
        if self.keep_oldest:
            self.consider_oldest(src, dst, proto, sport, dport, state, status, timeout, start_ns)

    def consider_oldest(self, src: bytes, dst: bytes, proto: int, sport: int | None,
                        dport: int | None, state: int | None, status: int, timeout: int,
                        start_ns: int | None) -> None:
        item = (src, dst, proto, sport, dport, state, status, timeout, start_ns)
        if start_ns is not None:
            _push(self._by_age, -float(start_ns), self.n, item, self.keep_oldest)
            return
        key = proto << 16 | (state or 0) << 1 | (status >> 2 & 1)
        full = self.full_timeouts.get(key)
        if full is None:
            known = full_timeout(self.timeouts, proto, state, status)
            full = self.full_timeouts[key] = _NO_TIMEOUT if known is None else known
        if full != _NO_TIMEOUT:
            _push(self._by_idle, float(max(0, full - timeout)), self.n, item, self.keep_oldest)

    def finish(self, ts: float, wall: float, elapsed_s: float, total: int | None = None,
               top: int = 10, min_hint_entries: int = 1000) -> Breakdown:
        dumped = self.n
        table = max(total if total is not None else dumped, dumped)
        sampled = self.limit is not None and dumped >= self.limit and table > dumped
        scale = table / dumped if sampled and dumped else 1.0

        def scaled(pairs: Iterable[tuple[str, int]]) -> tuple[tuple[str, int], ...]:
            return tuple((k, round(v * scale)) for k, v in pairs)

        by_state = scaled((TCP_STATES[s] if 0 <= s < len(TCP_STATES) else str(s), c)
                          for s, c in self.states.most_common())
        by_proto = scaled((_proto_name(p), c) for p, c in self.protos.most_common())
        sources = scaled((_addr(a), c) for a, c in self.sources.most_common(top))
        dests = scaled((_addr(a), c) for a, c in self.destinations.most_common(top))
        dports = scaled((f"{_proto_name(k >> 16)}/{k & 0xFFFF}", c)
                        for k, c in self.dports.most_common(top))
        oldest_by: Literal["age", "idle"] = "age" if self._by_age else "idle"
        heap = self._by_age if self._by_age else self._by_idle
        oldest = tuple(self._entry(item, wall) for _, _, item in sorted(heap, reverse=True))
        hint = stale_hint(dict(by_state), dict(by_proto), table, self.timeouts,
                          min_entries=min_hint_entries)
        return Breakdown(ts=ts, wall=wall, total=table, dumped=dumped, sampled=sampled,
                         elapsed_s=elapsed_s, by_state=by_state, by_proto=by_proto,
                         top_sources=sources, top_destinations=dests, top_dports=dports,
                         oldest=oldest, oldest_by=oldest_by, hint=hint, malformed=self.malformed)

    def _entry(self, item: tuple[Any, ...], wall: float) -> ConntrackEntry:
        src, dst, proto, sport, dport, state, status, timeout, start_ns = item
        full = full_timeout(self.timeouts, proto, state, status)
        return ConntrackEntry(
            family="ip6" if len(src) == 16 else "ip", proto=_proto_name(proto),
            src=_addr(src), dst=_addr(dst), sport=sport, dport=dport,
            state=(TCP_STATES[state] if state is not None and 0 <= state < len(TCP_STATES)
                   else None),
            timeout_s=timeout, assured=bool(status & IPS_ASSURED),
            age_s=None if start_ns is None else max(0.0, wall - start_ns / 1e9),
            idle_s=None if full is None else float(max(0, full - timeout)))


def _push(heap: list[tuple[float, int, tuple[Any, ...]]], key: float, tie: int,
          item: tuple[Any, ...], keep: int) -> None:
    if len(heap) < keep:
        heapq.heappush(heap, (key, tie, item))
    elif key > heap[0][0]:
        heapq.heapreplace(heap, (key, tie, item))


# --- stale-entry hints -----------------------------------------------------------------------

_DAY = 86400


def _duration(seconds: int) -> str:
    if seconds >= _DAY and seconds % 3600 == 0:
        days = seconds / _DAY
        return f"{seconds} s = {days:g} day{'s' if days != 1 else ''}"
    if seconds >= 3600 and seconds % 60 == 0:
        return f"{seconds} s = {seconds / 3600:g} h"
    return f"{seconds} s"


def stale_hint(by_state: Mapping[str, int], by_proto: Mapping[str, int], total: int,
               timeouts: Mapping[str, int], share: float = 0.5,
               min_entries: int = 1000) -> StaleHint | None:
    """When one kind of entry holds at least `share` of a table of at least `min_entries`, say
    which sysctl keeps it there (the troubleshooting guide's "reduce timeout to free entries
    faster"). None when nothing dominates."""
    if total < max(1, min_entries):
        return None

    def make(state: str, n: int, key: str | None, advice: str) -> StaleHint:
        value = timeouts.get(key) if key else None
        sysctl = SYSCTL_PREFIX + key if key else None
        now = f" (now {_duration(value)})" if value is not None else ""
        text = (f"{state} holds {n:,} of {total:,} entries ({n / total:.0%}): "
                + advice.format(sysctl=sysctl, now=now))
        return StaleHint(state, n / total, n, sysctl, value, text)

    tw = by_state.get("TIME_WAIT", 0)
    if tw >= share * total:
        return make("TIME_WAIT", tw, "tcp_timeout_time_wait",
                    "closed connections linger for {sysctl}{now}; the guide lowers it to 30 s")
    cw = by_state.get("CLOSE_WAIT", 0)
    if cw >= share * total:
        return make("CLOSE_WAIT", cw, "tcp_timeout_close_wait",
                    "peers closed but the application did not; entries stay for "
                    "{sysctl}{now}; the guide lowers it to 30 s (and fix the application)")
    half = sum(by_state.get(s, 0) for s in HALF_OPEN)
    if half >= share * total:
        syn_recv = by_state.get("SYN_RECV", 0)
        key = "tcp_timeout_syn_recv" if syn_recv * 2 > half else "tcp_timeout_syn_sent"
        return make("half-open", half, key,
                    "handshakes that never completed (a SYN flood, or a peer that does not "
                    "answer); see the top sources; they stay for {sysctl}{now}")
    est = by_state.get("ESTABLISHED", 0)
    est_timeout = timeouts.get("tcp_timeout_established")
    if est >= share * total and (est_timeout is None or est_timeout >= 3600):
        return make("ESTABLISHED", est, "tcp_timeout_established",
                    "an idle established connection stays tracked for {sysctl}{now}; "
                    "the kernel default is 432000 s (5 days): lower it to free idle entries "
                    "sooner, or find what leaves connections open (top sources)")
    udp = by_proto.get("udp", 0)
    if udp >= share * total:
        return make("UDP", udp, "udp_timeout",
                    "each UDP flow stays for {sysctl}{now} after its last packet "
                    "(nf_conntrack_udp_timeout_stream once answered); many one-shot flows "
                    "(DNS, a flood) fill the table")
    other = sum(n for p, n in by_proto.items() if p not in ("tcp", "udp", "icmp", "icmpv6"))
    if other >= share * total:
        return make("other protocols", other, "generic_timeout",
                    "protocols without their own tracker stay for {sysctl}{now}")
    return None


# --- the view the service hands to the UI and to `fwtop watch` ------------------------------


@dataclass(frozen=True, slots=True)
class ConntrackView:
    """One tick of the conntrack watch. `stats`/`growth` are None while the source is off
    (`off_reason` says why); `breakdown` is the latest one (it is refreshed less often, see
    `breakdown_fresh`); `history` is the count over the last ticks, oldest first."""

    ts: float
    wall: float
    stats: ConntrackStats | None
    growth: Growth | None
    breakdown: Breakdown | None = None
    breakdown_fresh: bool = False  # this tick carries a new breakdown
    history: tuple[int, ...] = ()
    off_reason: str | None = None
    breakdown_error: str | None = None

    @property
    def running(self) -> bool:
        return self.stats is not None

    @property
    def alarmed(self) -> bool:
        return self.growth is not None and self.growth.alarmed

    def to_json(self) -> dict[str, Any]:
        """The `fwtop watch` line (field names are published: keep them)."""
        s, g = self.stats, self.growth
        out: dict[str, Any] = {
            "type": "conntrack", "ts": round(self.wall, 6), "running": s is not None,
            "count": s.count if s else None, "max": s.max if s else None,
            "fill": None if g is None or g.fill is None else round(g.fill, 6),
            "rate_per_s": None if g is None or g.rate_per_s is None else round(g.rate_per_s, 3),
            "new_per_s": None if g is None or g.new_per_s is None else round(g.new_per_s, 3),
            "destroy_per_s": (None if g is None or g.destroy_per_s is None
                              else round(g.destroy_per_s, 3)),
            "eta_full_s": (None if g is None or g.eta_full_s is None
                           else round(g.eta_full_s, 1)),
            "buckets": s.buckets if s else None,
            "stats": s.cpu.to_json() if s and s.stats_available else None,
            "deltas": dict(g.deltas) if g else None,
            "alarms": [{"kind": a.kind, "message": a.message} for a in g.alarms] if g else [],
            "events_lost": s.events_lost if s else 0,
        }
        if self.off_reason is not None:
            out["off_reason"] = self.off_reason
        return out
