"""nftrace: the kernel's own record of every nf_tables rule a traced packet touched.

Wire format (include/uapi/linux/netfilter/nf_tables.h): NFT_MSG_TRACE messages of the
NFNL_SUBSYS_NFTABLES subsystem, multicast to NFNLGRP_NFTRACE, one per rule, return or policy
the packet met, all sharing NFTA_TRACE_ID. Pure and stdlib only: bytes in, TraceSteps out;
malformed input is counted, never raised. Also builds the nft commands of fwtop's own trace
table (an `owner` table: the kernel deletes it when fwtop's netlink socket closes, i.e. when
fwtop exits or is killed).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_TRACE = 17
NFNLGRP_NFTRACE = 9
TRACE_MSG_TYPE = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_TRACE

NFTA_TRACE_TABLE = 1
NFTA_TRACE_CHAIN = 2
NFTA_TRACE_RULE_HANDLE = 3
NFTA_TRACE_TYPE = 4
NFTA_TRACE_VERDICT = 5
NFTA_TRACE_ID = 6
NFTA_TRACE_NETWORK_HEADER = 8
NFTA_TRACE_TRANSPORT_HEADER = 9
NFTA_TRACE_IIF = 10
NFTA_TRACE_OIF = 12
NFTA_TRACE_MARK = 14
NFTA_TRACE_NFPROTO = 15
NFTA_TRACE_POLICY = 16
NFTA_VERDICT_CODE = 1
NFTA_VERDICT_CHAIN = 2

TRACE_TYPES = {1: "policy", 2: "return", 3: "rule"}
VERDICTS = {0: "drop", 1: "accept", 2: "stolen", 3: "queue", 4: "repeat", -1: "continue",
            -2: "break", -3: "jump", -4: "goto", -5: "return"}
FAMILIES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}
HOOK_FAMILY = {2: "ip", 10: "ip6"}

_NLMSG = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")


@dataclass(frozen=True, slots=True)
class TraceStep:
    trace_id: int
    kind: str  # rule, return, policy
    family: str
    table: str
    chain: str
    handle: int | None
    verdict: str  # accept, drop, continue, jump, goto, return, ...
    target: str | None = None  # jump/goto chain
    iif: int | None = None
    oif: int | None = None
    nfproto: str | None = None
    network: bytes | None = None  # the packet's network header (for the 5-tuple)
    transport: bytes | None = None  # and its transport header


@dataclass(slots=True)
class ParseStats:
    malformed: int = 0


def _attrs(buf: bytes, start: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    p = start
    while p + 4 <= end:
        ln, typ = _NLA.unpack_from(buf, p)
        if ln < 4 or p + ln > end:
            raise ValueError("attribute overruns its message")
        out[typ & 0x3FFF] = buf[p + 4:p + ln]
        p += (ln + 3) & ~3
    return out


def _be32(raw: bytes | None) -> int | None:
    return struct.unpack(">I", raw[:4])[0] if raw is not None and len(raw) >= 4 else None


def _str(raw: bytes | None) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace") if raw else ""


def parse_trace(buf: bytes, stats: ParseStats | None = None) -> list[TraceStep]:
    """Every NFT_MSG_TRACE message in a datagram (other messages are skipped)."""
    stats = stats or ParseStats()
    steps: list[TraceStep] = []
    p = 0
    while p + 16 <= len(buf):
        ln, typ, _flags, _seq, _pid = _NLMSG.unpack_from(buf, p)
        if ln < 16 or p + ln > len(buf):
            stats.malformed += 1
            break
        if typ == TRACE_MSG_TYPE and ln >= 20:
            try:
                steps.append(_step(buf, p + 16, p + ln))
            except (ValueError, struct.error, KeyError):
                stats.malformed += 1
        p += (ln + 3) & ~3
    return steps


def _step(buf: bytes, start: int, end: int) -> TraceStep:
    family = FAMILIES.get(buf[start], str(buf[start]))
    a = _attrs(buf, start + 4, end)
    tid = _be32(a.get(NFTA_TRACE_ID))
    kind_num = _be32(a.get(NFTA_TRACE_TYPE))
    if tid is None or kind_num is None:
        raise ValueError("trace without id or type")
    kind = TRACE_TYPES.get(kind_num, str(kind_num))
    handle_raw = a.get(NFTA_TRACE_RULE_HANDLE)
    handle = struct.unpack(">Q", handle_raw[:8])[0] if handle_raw and len(handle_raw) >= 8 \
        else None
    verdict, target = "continue", None
    if NFTA_TRACE_VERDICT in a:
        v = _attrs(a[NFTA_TRACE_VERDICT], 0, len(a[NFTA_TRACE_VERDICT]))
        code = _be32(v.get(NFTA_VERDICT_CODE))
        if code is not None:
            code = code - (1 << 32) if code & 0x80000000 else code
            verdict = VERDICTS.get(code, str(code))
        target = _str(v.get(NFTA_VERDICT_CHAIN)) or None
    if kind == "policy":
        code = _be32(a.get(NFTA_TRACE_POLICY))
        verdict = VERDICTS.get(code if code is not None else -99, "unknown")
    nfproto = _be32(a.get(NFTA_TRACE_NFPROTO))
    return TraceStep(tid, kind, family, _str(a.get(NFTA_TRACE_TABLE)),
                     _str(a.get(NFTA_TRACE_CHAIN)), handle, verdict, target,
                     _be32(a.get(NFTA_TRACE_IIF)), _be32(a.get(NFTA_TRACE_OIF)),
                     HOOK_FAMILY.get(nfproto or 0), a.get(NFTA_TRACE_NETWORK_HEADER),
                     a.get(NFTA_TRACE_TRANSPORT_HEADER))


@dataclass(slots=True)
class KernelTrace:
    """One traced packet: every step the kernel reported, in order."""

    trace_id: int
    steps: list[TraceStep] = field(default_factory=list)

    @property
    def final(self) -> TraceStep | None:
        """The step that decided: the first drop (final), else the last accept or policy."""
        for s in self.steps:
            if s.verdict in ("drop", "queue", "stolen"):
                return s
        for s in reversed(self.steps):
            if s.verdict == "accept" or s.kind == "policy":
                return s
        return None

    @property
    def verdict(self) -> str:
        f = self.final
        if f is None:
            return "unknown"
        return "drop" if f.verdict in ("drop", "stolen") else f.verdict


def group_traces(steps: list[TraceStep], traces: dict[int, KernelTrace],
                 done: list[KernelTrace], marker_prefix: str) -> None:
    """Group steps into one KernelTrace per packet. The kernel's trace id is derived from the
    skb and can repeat for later packets, so the step of fwtop's own marking rule (a table
    named `marker_prefix`...) starts a new packet; those steps are not kept."""
    for s in steps:
        if s.table.startswith(marker_prefix):
            if s.chain == "forwarded" and s.trace_id in traces:
                continue  # already marked at prerouting: the same packet, now forwarded
            if s.kind == "rule" and s.handle is not None:
                old = traces.pop(s.trace_id, None)
                if old is not None and old.steps:
                    done.append(old)
                traces[s.trace_id] = KernelTrace(s.trace_id)
            continue
        traces.setdefault(s.trace_id, KernelTrace(s.trace_id)).steps.append(s)


def flow_match(proto: str, src: str | None, dst: str | None, sport: int | None,
               dport: int | None) -> str:
    """The nft match of one flow (either direction is not traced: only this one)."""
    parts: list[str] = []
    fam = None
    for addr, word in ((src, "saddr"), (dst, "daddr")):
        if addr:
            ip = ipaddress.ip_address(addr)
            fam = "ip6" if ip.version == 6 else "ip"
            parts.append(f"{fam} {word} {ip}")
    protos = {"tcp", "udp", "icmp", "icmpv6", "sctp"}
    if proto in protos:
        parts.append(f"meta l4proto {proto}")
        if proto in ("tcp", "udp", "sctp"):
            if sport is not None:
                parts.append(f"th sport {int(sport)}")
            if dport is not None:
                parts.append(f"th dport {int(dport)}")
    return " ".join(parts)


def trace_table(name: str, match: str, rate_per_s: int = 5) -> str:
    """fwtop's own trace table: base chains at prerouting and output priority -350 (before
    conntrack, raw and DNAT), and at forward -350 for a flow known by its translated address
    (a forwarded drop is logged after DNAT, so the prerouting match never sees it); a rate
    limit so a flood cannot flood fwtop; the `owner` flag so the kernel removes the table with
    fwtop's socket."""
    body = f"{match} limit rate {int(rate_per_s)}/second meta nftrace set 1"
    return (f"add table inet {name} {{ flags owner; }}\n"
            f"add chain inet {name} pre {{ type filter hook prerouting priority -350; }}\n"
            f"add chain inet {name} forwarded {{ type filter hook forward priority -350; }}\n"
            f"add chain inet {name} out {{ type filter hook output priority -350; }}\n"
            f"add rule inet {name} pre {body}\n"
            f"add rule inet {name} forwarded {body}\n"
            f"add rule inet {name} out {body}\n")
