"""Events that flow from the kernel readers to the model: drops and per-source health.

Flat, frozen and slotted: millions of these pass through a busy incident, and the JSON of
`fwtop watch` is their fields as they are (names are published; keep them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

DropSource = Literal["nflog", "kmsg", "journal", "logfile", "tracepoint", "conntrack", "counter"]


@dataclass(frozen=True, slots=True)
class DropEvent:
    """One packet the firewall logged or threw away, as far as its source could tell.

    `ts` is time.monotonic() when fwtop received it (for rates and latency); `wall` is the wall
    clock for display. Fields a source does not know are None."""

    source: DropSource
    ts: float
    wall: float
    prefix: str | None = None  # LOG/NFLOG prefix, already stripped of trailing blanks
    group: int | None = None  # NFLOG group
    hook: str | None = None  # prerouting, input, forward, output, postrouting
    iif: str | None = None
    oif: str | None = None
    family: str | None = None  # ip, ip6
    proto: str | None = None  # tcp, udp, icmp, icmpv6, or the protocol number as text
    src: str | None = None
    dst: str | None = None
    sport: int | None = None
    dport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    tcp_flags: str | None = None  # e.g. "SYN", "SYN,ACK", "RST"
    len: int | None = None  # IP total length
    mark: int | None = None
    uid: int | None = None
    gid: int | None = None
    reason: str | None = None  # tracepoint drop reason, "conntrack table full", ...

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "drop", "source": self.source, "ts": round(self.wall, 6),
            "prefix": self.prefix, "group": self.group, "hook": self.hook,
            "iif": self.iif, "oif": self.oif, "family": self.family, "proto": self.proto,
            "src": self.src, "dst": self.dst, "sport": self.sport, "dport": self.dport,
            "icmp_type": self.icmp_type, "icmp_code": self.icmp_code,
            "tcp_flags": self.tcp_flags, "len": self.len, "mark": self.mark,
            "uid": self.uid, "gid": self.gid, "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class SourceStats:
    """A reader's health: what it received, what it knows it lost, and whether it runs at all.

    `lost` counts events the kernel or fwtop dropped (ENOBUFS, kmsg EPIPE, a full queue);
    `malformed` counts records that arrived but could not be parsed. `off_reason` says, in words
    a user can act on, why a source is not running."""

    source: str
    running: bool
    received: int = 0
    lost: int = 0
    malformed: int = 0
    off_reason: str | None = None
    detail: str | None = None  # e.g. "groups 7,9" or "nf_log_all_netns=0"

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "running": self.running, "received": self.received,
                "lost": self.lost, "malformed": self.malformed, "off_reason": self.off_reason,
                "detail": self.detail}
