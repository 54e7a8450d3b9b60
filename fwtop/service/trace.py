"""`fwtop trace` and the TUI's `t`: trace real packets of one flow with nftrace and set the
kernel's answer beside the evaluator's. A disagreement is a bug in fwtop's evaluator, and the
output says so. Call from a thread inside the target namespace."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

from fwtop.core.evaluator import Evaluator, NetContext, Packet, Verdict
from fwtop.core.nftrace import KernelTrace, TraceStep, flow_match
from fwtop.core.packet import decode_l3


@dataclass(slots=True)
class TracedPacket:
    kernel: KernelTrace
    packet: Packet | None
    fwtop: Verdict | None
    agree: bool | None  # None: cannot compare (legacy tables decide, or fwtop is uncertain)
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        k = self.kernel.final
        return {
            "trace_id": self.kernel.trace_id,
            "kernel": {"verdict": self.kernel.verdict, "decided_by": _step_json(k),
                       "steps": [_step_json(s) for s in _visible(self.kernel.steps)]},
            "fwtop": self.fwtop.to_json() if self.fwtop else None,
            "agree": self.agree, "note": self.note,
        }


@dataclass(slots=True)
class TraceReport:
    traced: list[TracedPacket] = field(default_factory=list)
    legacy_tables: list[str] = field(default_factory=list)
    waited_s: float = 0.0
    ignored: int = 0  # traced packets of another flow (the kernel reuses trace ids)

    def to_json(self) -> dict[str, Any]:
        return {"packets": [t.to_json() for t in self.traced],
                "legacy_not_traced": self.legacy_tables, "waited_s": self.waited_s,
                "ignored": self.ignored}

    def text(self) -> str:
        lines: list[str] = []
        if not self.traced:
            lines.append(f"no packet of this flow passed in {self.waited_s:.0f} s: nothing "
                         "to trace (send some traffic, or widen the flow)")
        for t in self.traced:
            final = t.kernel.final
            where = _where(final) if final else "?"
            lines.append(f"kernel: {t.kernel.verdict.upper()} by {where}")
            for s in _visible(t.kernel.steps):
                lines.append(f"    {_where(s):<44} {s.kind:<7} {s.verdict}"
                             + (f" → {s.target}" if s.target else ""))
            if t.fwtop is not None:
                fw = t.fwtop
                decided = (f"{fw.rule.table} {fw.rule.chain} #{fw.rule.position} "
                           f"(handle {fw.rule.handle})" if fw.rule else
                           f"policy of {fw.policy.table} {fw.policy.chain}" if fw.policy
                           else "")
                lines.append(f"fwtop:  {fw.verdict.upper()} by {decided}" if decided else
                             f"fwtop:  {fw.verdict.upper()} (every base chain on its path "
                             "accepted it)")
            if t.agree is True:
                lines.append("  ✓ the evaluator agrees with the kernel")
            elif t.agree is False:
                lines.append("  ✗ THE EVALUATOR DISAGREES WITH THE KERNEL: the kernel is right; "
                             "this is a bug in fwtop, please report it with `fwtop rules "
                             "--json`")
            if t.note:
                lines.append(f"  note: {t.note}")
        if self.legacy_tables:
            lines.append("iptables-legacy tables (" + ", ".join(self.legacy_tables) + ") are "
                         "not nf_tables: nftrace cannot see them; a drop there shows here as "
                         "an accept")
        return "\n".join(lines)


def _visible(steps: list[TraceStep]) -> list[TraceStep]:
    # The kernel also reports a chain's entry without a rule handle: noise for a reader.
    return [s for s in steps if not (s.kind == "rule" and s.handle is None)]


def _where(s: TraceStep) -> str:
    handle = f" handle {s.handle}" if s.handle is not None else ""
    return f"{s.family} {s.table} {s.chain}{handle}"


def _step_json(s: TraceStep | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {"kind": s.kind, "family": s.family, "table": s.table, "chain": s.chain,
            "handle": s.handle, "verdict": s.verdict, "target": s.target}


def _ifname(index: int | None) -> str | None:
    if not index:
        return None
    try:
        return socket.if_indextoname(index)
    except OSError:
        return None


def packet_from_trace(trace: KernelTrace, ct_state: str | None = None) -> Packet | None:
    """The traced packet as the first hook saw it (headers, input interface). Its conntrack
    state is not in the trace: the caller's, else `new` for a TCP SYN or a non-TCP packet and
    `established` for other TCP segments."""
    for s in trace.steps:
        if s.network:
            info = decode_l3(s.network + (s.transport or b""))
            if info is None or info.proto is None:
                return None
            state = ct_state or ("established" if info.proto == "tcp" and info.tcp_flags
                                 not in (None, "SYN") else "new")
            return Packet(info.proto, info.src, info.dst, info.sport, info.dport,
                          info.icmp_type, info.icmp_code, iif=_ifname(s.iif),
                          oif=None, ct_state=state)
    return None


def compare(ev: Evaluator, trace: KernelTrace, net: NetContext | None,
            packet: Packet | None = None) -> TracedPacket:
    pkt = packet or packet_from_trace(trace)
    if pkt is None:
        return TracedPacket(trace, None, None, None, "the trace did not carry the packet")
    v = ev.evaluate(pkt, net)
    final = trace.final
    note = ""
    if v.rule is not None and v.rule.backend == "iptables-legacy":
        return TracedPacket(trace, pkt, v, None,
                            "fwtop says a legacy table decides; nftrace cannot see legacy tables")
    if final is None:
        return TracedPacket(trace, pkt, v, None, "the kernel's trace has no verdict")
    if trace.verdict != v.verdict and not (trace.verdict == "drop" and v.verdict == "reject"):
        agree = False
    elif v.verdict in ("drop", "reject"):
        if v.rule is not None:
            agree = (final.kind == "rule" and final.table == v.rule.table
                     and final.chain == v.rule.chain and final.handle == v.rule.handle)
        elif v.policy is not None:
            agree = (final.kind == "policy" and final.table == v.policy.table
                     and final.chain == v.policy.chain)
        else:
            agree = False
    else:
        agree = True
    if not v.certain:
        note = "fwtop was not certain: " + "; ".join(v.reasons[:2])
        if not agree:
            return TracedPacket(trace, pkt, v, None, note)
    return TracedPacket(trace, pkt, v, agree, note)


def trace_flow(pkt: Packet, timeout: float = 10.0, count: int = 1,
               evaluator: Evaluator | None = None,
               net: NetContext | None = None) -> TraceReport:
    """Trace up to `count` real packets of `pkt`'s flow (source port ignored unless given)."""
    import time

    from fwtop.firewall import load_ruleset
    from fwtop.firewall.routing import net_context
    from fwtop.sources.nftrace import NftraceSession

    if evaluator is None:
        evaluator = Evaluator(load_ruleset())
    net = net if net is not None else net_context()
    report = TraceReport()
    report.legacy_tables = sorted({f"{t.family} {t.name}" for t in evaluator.ruleset.tables
                                   if t.backend == "iptables-legacy"})
    start = time.monotonic()
    match = flow_match(pkt.proto, pkt.src, pkt.dst, pkt.sport, pkt.dport)
    with NftraceSession(match) as session:
        traces = session.collect(timeout, want=count + 4)
    report.waited_s = time.monotonic() - start
    for t in traces:
        observed = packet_from_trace(t)
        if observed is not None and not _same_flow(observed, pkt):
            report.ignored += 1  # another packet under a reused trace id: not this flow
            continue
        report.traced.append(compare(evaluator, t, net, observed))
        if len(report.traced) >= count:
            break
    return report


def _same_flow(seen: Packet, want: Packet) -> bool:
    return (seen.proto == want.proto and seen.src == want.src and seen.dst == want.dst
            and (want.dport is None or seen.dport == want.dport)
            and (want.sport is None or seen.sport == want.sport))
