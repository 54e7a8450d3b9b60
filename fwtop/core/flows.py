"""The flow table: packets grouped by 5-tuple (both directions in one flow) and classified into
what an on-call engineer asks about: a SYN, datagram or echo with no answer (`unanswered`),
a RST back (`refused`), an ICMP error back (`rejected`), a completed handshake (`established`),
a SYN-ACK whose final ACK never came (`half-open`), a reply (`answered`), and ICMP
fragmentation-needed / packet-too-big (`pmtu`).

Pure and stdlib only. Bounded: at most `max_flows` flows (least recently active evicted first,
and counted) and a pending-deadline queue bounded by the same. A FlowEvent is emitted when a
flow's state is decided, once per change of state.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

from fwtop.core.capture_events import (
    Embedded,
    FlowEvent,
    FlowState,
    PacketEvent,
    PacketFields,
    fast_factory,
    packet_fields,
)
from fwtop.core.packet import TCP_FLAG_NAMES

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
_FLAG_BITS: dict[str, int] = {
    ",".join(n for bit, n in enumerate(TCP_FLAG_NAMES) if value & (1 << bit)): value
    for value in range(256)
}

# Pending states (not published; decided states are FlowState).
_SYN_SENT = "syn-sent"
_SYN_ACKED = "syn-acked"
_REQUESTED = "requested"  # UDP datagram or ICMP echo waiting for a reply
_PENDING = frozenset({_SYN_SENT, _SYN_ACKED, _REQUESTED})
# States in which another datagram from the client may start the flow over: the UDP fast
# path leaves those to _udp.
_RESTARTS = frozenset({"rejected", "seen"})

ICMP_UNREACH_V4 = {
    0: "network unreachable", 1: "host unreachable", 2: "protocol unreachable",
    3: "port unreachable", 4: "fragmentation needed", 5: "source route failed",
    6: "destination network unknown", 7: "destination host unknown",
    9: "network administratively prohibited", 10: "host administratively prohibited",
    11: "network unreachable for TOS", 12: "host unreachable for TOS",
    13: "communication administratively prohibited", 14: "host precedence violation",
    15: "precedence cutoff in effect",
}
ICMP_UNREACH_V6 = {
    0: "no route to destination", 1: "communication administratively prohibited",
    2: "beyond scope of source address", 3: "address unreachable", 4: "port unreachable",
    5: "source address failed ingress/egress policy", 6: "reject route to destination",
}
PROHIBITED_V4 = frozenset({9, 10, 13})
PROHIBITED_V6 = frozenset({1, 5, 6})


def icmp_error_text(family: str | None, itype: int | None, icode: int | None) -> str:
    """An ICMP error in words: "port unreachable", "communication administratively
    prohibited", "time exceeded", ..."""
    if family == "ip6":
        if itype == 1:
            return ICMP_UNREACH_V6.get(icode or 0, f"destination unreachable (code {icode})")
        return {2: "packet too big", 3: "time exceeded", 4: "parameter problem"}.get(
            itype or 0, f"ICMPv6 type {itype} code {icode}")
    if itype == 3:
        return ICMP_UNREACH_V4.get(icode or 0, f"destination unreachable (code {icode})")
    return {4: "source quench", 5: "redirect", 11: "time exceeded",
            12: "parameter problem"}.get(itype or 0, f"ICMP type {itype} code {icode}")


def is_port_unreachable(family: str | None, itype: int | None, icode: int | None) -> bool:
    return (itype, icode) == ((1, 4) if family == "ip6" else (3, 3))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class _Flow:
    """One flow's bookkeeping (mutable, private to the table)."""

    __slots__ = ("answered_by", "attempts", "client", "deadline", "dport", "emitted",
                 "family", "first_ts", "gen", "icmp_code", "icmp_id", "icmp_type", "key",
                 "last_ts", "mtu", "placed", "proto", "server", "sport", "state", "wall_offset")

    def __init__(self, key: tuple[object, ...], proto: str, family: str | None, client: str,
                 server: str, sport: int | None, dport: int | None, icmp_id: int | None,
                 state: str, ts: float, wall_offset: float) -> None:
        self.key = key
        self.proto = proto
        self.family = family
        self.client = client
        self.server = server
        self.sport = sport
        self.dport = dport
        self.icmp_id = icmp_id
        self.state = state
        self.emitted: str | None = None
        self.attempts = 1
        self.first_ts = ts
        self.last_ts = ts
        self.placed = ts  # last_ts when it was put at the back of the table
        self.deadline = 0.0
        self.gen = 0
        self.wall_offset = wall_offset
        self.answered_by: str | None = None
        self.icmp_type: int | None = None
        self.icmp_code: int | None = None
        self.mtu: int | None = None


_FLOW_ARGS = ("ts", "wall", "family", "proto", "src", "dst", "sport", "dport", "state",
              "reason", "answered_by", "icmp_type", "icmp_code", "mtu", "icmp_id", "attempts",
              "certain")
_make_flow_event = fast_factory(FlowEvent, _FLOW_ARGS)


@dataclass(frozen=True, slots=True)
class FlowTableStats:
    flows: int  # in the table now
    pending: int  # waiting for an answer
    created: int
    evicted: int  # pushed out by the size bound
    evicted_pending: int  # of those, still waiting (never decided)
    decided: int  # flow events emitted


def _key(proto: str, src: str, sport: int | None, dst: str,
         dport: int | None) -> tuple[object, ...]:
    if (src, sport or 0) <= (dst, dport or 0):
        return (proto, src, sport, dst, dport)
    return (proto, dst, dport, src, sport)


def packet_flow_key(p: PacketEvent) -> tuple[object, ...] | None:
    """The key of the flow a packet belongs to, the same for both directions (for an ICMP error:
    the flow of the packet it quotes), as FlowTable keys it; None when it has no flow."""
    inner = p.embedded
    if inner is not None:
        return _flow_key(inner.proto, inner.src, inner.dst, inner.sport, inner.dport,
                         inner.icmp_id)
    if p.src is None or p.dst is None:
        return None
    return _flow_key(p.proto, p.src, p.dst, p.sport, p.dport, p.icmp_id)


def flow_event_key(e: FlowEvent) -> tuple[object, ...] | None:
    """The key of a decided flow, matching packet_flow_key of its packets."""
    return _flow_key(e.proto, e.src, e.dst, e.sport, e.dport, e.icmp_id)


def _flow_key(proto: str | None, src: str, dst: str, sport: int | None, dport: int | None,
              icmp_id: int | None) -> tuple[object, ...] | None:
    if proto in ("tcp", "udp") and sport is not None:
        return _key(proto, src, sport, dst, dport)
    if proto in ("icmp", "icmpv6") and icmp_id is not None:
        lo, hi = (src, dst) if src <= dst else (dst, src)
        return (proto, lo, hi, icmp_id)
    return None


class FlowTable:
    """Feed every decoded packet to `observe` and call `expire(now)` now and then (every batch);
    `take()` returns the FlowEvents decided since the last call.

    `timeout` is how long a SYN / datagram / echo waits for its answer; `idle` how long a flow
    with no packet stays in the table. Times are the packets' monotonic `ts`. While the capture
    is sampling it calls `note_skipped(ts)`: a UDP flow that waited through a skipped stretch is
    then reported `unanswered` with `certain` False (its reply may have been skipped), and so is
    a TCP `half-open` (the final ACK may have been)."""

    def __init__(self, timeout: float = 3.0, idle: float = 120.0,
                 max_flows: int = 65_536) -> None:
        if timeout <= 0 or idle <= 0 or max_flows < 1:
            raise ValueError("timeout and idle must be positive, max_flows at least 1")
        self.timeout = timeout
        self.idle = idle
        self.max_flows = max_flows
        self._flows: OrderedDict[tuple[object, ...], _Flow] = OrderedDict()
        self._pending: deque[tuple[float, int, _Flow]] = deque()
        self._out: list[FlowEvent] = []
        self._last_skip = float("-inf")
        self._last_blind = float("-inf")
        self._created = 0
        self._evicted = 0
        self._evicted_pending = 0
        self._decided = 0

    # --- public API ---------------------------------------------------------------------------

    def take(self) -> list[FlowEvent]:
        out, self._out = self._out, []
        return out

    def note_skipped(self, ts: float, blind_ts: float = float("-inf")) -> None:
        """The capture skipped packets up to `ts` (sampling: flow-deciding TCP and ICMP were
        still decoded) and skipped whole stretches unseen up to `blind_ts` (nothing decoded)."""
        self._last_skip = max(self._last_skip, ts)
        self._last_blind = max(self._last_blind, blind_ts)

    def stats(self) -> FlowTableStats:
        pending = sum(1 for f in self._flows.values() if f.state in _PENDING)
        return FlowTableStats(len(self._flows), pending, self._created, self._evicted,
                              self._evicted_pending, self._decided)

    def __len__(self) -> int:
        return len(self._flows)

    def observe(self, p: PacketEvent) -> None:
        self.observe_fields(packet_fields(p))

    def observe_fields(self, t: PacketFields) -> None:
        """One decoded packet, as PacketEvent fields in a tuple (the capture's hot path)."""
        proto = t[6]
        src = t[7]
        dst = t[8]
        if src is None or dst is None:
            return
        if proto == "udp":
            sport = t[9]
            if sport is None:
                return
            dport = t[10]
            # Most packets belong to a flow whose state they do not change: find it and stamp
            # its activity without a method call.
            if src < dst or (src == dst and sport <= (dport or 0)):
                key: tuple[object, ...] = ("udp", src, sport, dst, dport)
            else:
                key = ("udp", dst, dport, src, sport)
            flow = self._flows.get(key)
            if flow is not None and src == flow.client and sport == flow.sport:
                state = flow.state
                if state not in _RESTARTS:
                    if state == _REQUESTED or state == "unanswered":
                        flow.attempts += 1
                    flow.last_ts = t[0]
                    return
            self._udp(t, src, dst, key, flow)
        elif proto == "tcp":
            flags = t[13]
            if flags is None or t[9] is None:
                return
            self._tcp(t, src, dst, _FLAG_BITS.get(flags, 0))
        elif proto == "icmp" or proto == "icmpv6":
            if t[18] is not None or t[19] is not None:
                self._icmp_error(t)
            elif t[17] is not None:
                self._echo(t, src, dst)

    def expire(self, now: float) -> None:
        """Decide every flow whose answer is overdue at `now`, and forget idle flows."""
        pending = self._pending
        while pending and pending[0][0] <= now:
            deadline, gen, flow = pending.popleft()
            if flow.gen != gen or flow.state not in _PENDING:
                continue
            self._timed_out(flow, deadline)
        flows = self._flows
        cutoff = now - self.idle
        # The table is in order of placement; a flow active since it was placed goes to the
        # back instead (a lazy LRU: no reordering per packet).
        for _ in range(len(flows)):
            flow = next(iter(flows.values()))
            if flow.last_ts <= cutoff:
                self._evict(flow)
            elif flow.last_ts > flow.placed:
                flow.placed = flow.last_ts
                flows.move_to_end(flow.key)
            else:
                break

    # --- per protocol ---------------------------------------------------------------------------

    @staticmethod
    def _touch(flow: _Flow, ts: float) -> None:
        flow.last_ts = ts

    def _new(self, key: tuple[object, ...], t: PacketFields, src: str, dst: str, state: str,
             icmp_id: int | None = None) -> _Flow:
        flows = self._flows
        moves = len(flows)
        while len(flows) >= self.max_flows:
            oldest = next(iter(flows.values()))
            if oldest.last_ts > oldest.placed and moves > 0:
                # Active since placed: a second chance at the back (bounded: one round).
                oldest.placed = oldest.last_ts
                flows.move_to_end(oldest.key)
                moves -= 1
                continue
            self._evict(oldest)
        flow = _Flow(key, t[6] or "?", t[5], src, dst, t[9], t[10], icmp_id, state,
                     t[0], t[1] - t[0])
        flows[key] = flow
        self._created += 1
        return flow

    def _evict(self, flow: _Flow) -> None:
        del self._flows[flow.key]
        flow.gen = -1  # its queued deadline, if any, is void
        self._evicted += 1
        if flow.state in _PENDING:
            self._evicted_pending += 1

    def _wait(self, flow: _Flow, ts: float) -> None:
        flow.gen += 1
        flow.deadline = ts + self.timeout
        pending = self._pending
        pending.append((flow.deadline, flow.gen, flow))
        if len(pending) > 2 * self.max_flows:
            # Far more waiting entries than flows: most are void (superseded or evicted).
            self._pending = deque(e for e in pending if e[2].gen == e[1] and
                                  e[2].state in _PENDING)

    def _restart(self, flow: _Flow, t: PacketFields, state: str) -> None:
        """The same 5-tuple starts over (a port reused after the earlier flow went quiet)."""
        flow.client, flow.server = t[7] or flow.client, t[8] or flow.server
        flow.sport, flow.dport = t[9], t[10]
        flow.state = state
        flow.emitted = None
        flow.attempts = 1
        flow.first_ts = t[0]
        flow.wall_offset = t[1] - t[0]
        flow.answered_by = flow.icmp_type = flow.icmp_code = flow.mtu = None

    def _tcp(self, t: PacketFields, src: str, dst: str, bits: int) -> None:
        key = _key("tcp", src, t[9], dst, t[10])
        flow = self._flows.get(key)
        ts = t[0]
        if bits & SYN and not bits & ACK:
            if flow is None:
                flow = self._new(key, t, src, dst, _SYN_SENT)
                self._wait(flow, ts)
            elif flow.state in (_SYN_SENT, "unanswered") and flow.client == src:
                flow.attempts += 1  # a retransmitted SYN: the same attempt goes on
            elif flow.state in ("refused", "rejected", "seen") or \
                    ts - flow.last_ts > self.timeout:
                self._restart(flow, t, _SYN_SENT)
                self._wait(flow, ts)
            self._touch(flow, ts)
            return
        if flow is None:
            return  # mid-stream packet of a flow that started before the capture
        self._touch(flow, ts)
        from_server = src == flow.server and t[9] == flow.dport
        state = flow.state
        if from_server:
            if bits & RST:
                if state in (_SYN_SENT, "unanswered"):
                    flow.answered_by = src
                    self._decide(flow, "refused", f"RST from {src}", ts, t[1])
            elif bits & SYN and bits & ACK:
                if state in (_SYN_SENT, "unanswered", "rejected"):
                    flow.answered_by = src
                    flow.state = _SYN_ACKED
                    self._wait(flow, ts)
        elif state == _SYN_ACKED and not bits & (SYN | RST):
            self._decide(flow, "established", "handshake completed", ts, t[1])
        elif state == "half-open" and bits & ACK and not bits & (SYN | RST):
            self._decide(flow, "established", "handshake completed (late final ACK)", ts,
                         t[1])

    def _udp(self, t: PacketFields, src: str, dst: str, key: tuple[object, ...],
             flow: _Flow | None) -> None:
        ts = t[0]
        if flow is None:
            flow = self._new(key, t, src, dst, _REQUESTED)
            self._wait(flow, ts)
        elif src == flow.server and t[9] == flow.dport:
            if flow.state in (_REQUESTED, "unanswered", "rejected"):
                flow.answered_by = src
                self._decide(flow, "answered", f"reply from {src}", ts, t[1])
        elif flow.state in (_REQUESTED, "unanswered"):
            if src == flow.client:
                flow.attempts += 1
        elif flow.state == "seen" or (flow.state == "rejected" and
                                      t[0] - flow.last_ts > self.timeout):
            self._restart(flow, t, _REQUESTED)
            self._wait(flow, ts)
        self._touch(flow, ts)

    def _echo(self, t: PacketFields, src: str, dst: str) -> None:
        itype = t[11]
        request = itype == 8 or itype == 128
        lo, hi = (src, dst) if src <= dst else (dst, src)
        key = (t[6], lo, hi, t[17])
        flow = self._flows.get(key)
        ts = t[0]
        if flow is None:
            if not request:
                return
            flow = self._new(key, t, src, dst, _REQUESTED, t[17])
            self._wait(flow, ts)
        elif request and (src == flow.client or flow.state == "seen"):
            if flow.state in (_REQUESTED, "unanswered"):
                flow.attempts += 1
            elif flow.state == "seen" or ts - flow.last_ts > self.timeout:
                self._restart(flow, t, _REQUESTED)
                self._wait(flow, ts)
        elif not request and src == flow.server and flow.state in (_REQUESTED, "unanswered"):
            flow.answered_by = src
            self._decide(flow, "answered", f"echo reply from {src}", ts, t[1])
        self._touch(flow, ts)

    def _icmp_error(self, t: PacketFields) -> None:
        inner: Embedded | None = t[18]
        src = t[7] or "?"
        family = t[5]
        what = icmp_error_text(family, t[11], t[12])
        flow: _Flow | None = None
        if inner is not None and inner.proto is not None:
            if inner.proto in ("tcp", "udp") and inner.sport is not None:
                key = _key(inner.proto, inner.src, inner.sport, inner.dst, inner.dport)
            elif inner.icmp_id is not None:
                lo, hi = sorted((inner.src, inner.dst))
                key = (inner.proto, lo, hi, inner.icmp_id)
            else:
                key = (inner.proto, inner.src, None, inner.dst, None)
            flow = self._flows.get(key)
            if flow is None and inner.proto in ("tcp", "udp", "icmp", "icmpv6"):
                # An error about a flow that began before the capture (or was evicted): keep a
                # record so a burst of the same error is reported once.
                flow = self._new(key, t, inner.src, inner.dst, "seen", inner.icmp_id)
                flow.proto, flow.sport, flow.dport = inner.proto, inner.sport, inner.dport
            if flow is not None:
                self._touch(flow, t[0])
        if t[19] is not None:
            if flow is None:
                event = _make_flow_event(
                    t[0], t[1], family, inner.proto if inner else "?",
                    inner.src if inner else "?", inner.dst if inner else "?",
                    inner.sport if inner else None, inner.dport if inner else None, "pmtu",
                    self._pmtu_reason(t[19], src), src, t[11], t[12], t[19],
                    inner.icmp_id if inner else None, 1, True)
                self._out.append(event)
                self._decided += 1
            elif flow.mtu != t[19]:
                flow.mtu, flow.answered_by = t[19], src
                flow.icmp_type, flow.icmp_code = t[11], t[12]
                self._emit(flow, "pmtu", self._pmtu_reason(t[19], src), t[0], t[1])
            return
        if flow is None:
            return
        unreachable = t[11] == (1 if family == "ip6" else 3)
        state = flow.state
        if unreachable:
            # A late error for an answered datagram flow still tells its fate (service gone).
            decides = state in _PENDING or state in ("unanswered", "seen", "answered")
        else:
            # Time exceeded, parameter problem, redirect: only about a flow that is waiting.
            decides = state in _PENDING or state == "unanswered"
        if decides:
            flow.answered_by = src
            flow.icmp_type, flow.icmp_code = t[11], t[12]
            self._decide(flow, "rejected", f"ICMP {what} from {src}", t[0], t[1])

    @staticmethod
    def _pmtu_reason(mtu: int, src: str) -> str:
        return (f"fragmentation needed: path MTU {mtu} (said by {src}); where this ICMP is "
                "blocked, large packets vanish")

    # --- decisions ------------------------------------------------------------------------------

    def _timed_out(self, flow: _Flow, deadline: float) -> None:
        wall = deadline + flow.wall_offset
        waited = f"{self.timeout:g} s"
        skipped = self._last_skip >= flow.first_ts
        blind = self._last_blind >= flow.first_ts
        if flow.state == _SYN_ACKED:
            self._decide(flow, "half-open",
                         f"SYN-ACK from {flow.answered_by} but no final ACK within {waited} "
                         "(the SYN-ACK may be dropped on its way back)", deadline, wall,
                         certain=not skipped)
            return
        if flow.proto == "tcp":
            reason = (f"no answer to {_plural(flow.attempts, 'SYN')} within {waited}: dropped "
                      "on the way (a firewall DROP, or the path)")
            certain = not blind
        elif flow.proto == "udp":
            reason = (f"no reply within {waited} to {_plural(flow.attempts, 'datagram')} "
                      "(dropped, or the service does not answer)")
            certain = not skipped
        else:
            reason = (f"no echo reply within {waited} to "
                      f"{_plural(flow.attempts, 'echo request')}")
            certain = not blind
        if not certain:
            reason += "; the capture was sampling meanwhile, so a reply may have been skipped"
        self._decide(flow, "unanswered", reason, deadline, wall, certain=certain)

    def _decide(self, flow: _Flow, state: FlowState, reason: str, ts: float, wall: float,
                certain: bool = True) -> None:
        flow.state = state
        flow.gen += 1
        if flow.emitted == state:
            return
        flow.emitted = state
        self._emit(flow, state, reason, ts, wall, certain)

    def _emit(self, flow: _Flow, state: FlowState, reason: str, ts: float, wall: float,
              certain: bool = True) -> None:
        self._decided += 1
        self._out.append(_make_flow_event(
            ts, wall, flow.family, flow.proto, flow.client, flow.server, flow.sport, flow.dport,
            state, reason, flow.answered_by, flow.icmp_type, flow.icmp_code, flow.mtu,
            flow.icmp_id, flow.attempts, certain))
