"""Events of the packet capture: one captured packet, one decided flow, and the capture's health.

Flat, frozen and slotted like DropEvent: the capture builds one PacketEvent per decoded packet
at wire speed, and the JSON of `fwtop watch --packets` is their fields as they are (names are
published; keep them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

Direction = Literal["in", "out"]
T = TypeVar("T")
FlowState = Literal["unanswered", "refused", "rejected", "established", "half-open",
                    "answered", "pmtu"]


@dataclass(frozen=True, slots=True)
class Embedded:
    """The header an ICMP error quotes: the packet that caused it, in its own direction."""

    proto: str | None
    src: str
    dst: str
    sport: int | None = None
    dport: int | None = None
    icmp_id: int | None = None  # when the quoted packet is itself an ICMP echo


@dataclass(frozen=True, slots=True)
class PacketEvent:
    """One packet fwtop captured and decoded.

    `ts` is time.monotonic() at the kernel's capture time (for timeouts and rates), `wall` the
    kernel's wall-clock capture time (for display). `len` is what the IP header claims, like
    DropEvent.len; `frame_len` is the length on the wire (link header included). `seq` numbers
    packets in capture order and is the key of the raw bytes fwtop keeps for the last packets
    (dissection and pcap). ICMP fields: `icmp_id` for echo request/reply, `embedded` for an
    error that quotes a packet, `mtu` for fragmentation-needed / packet-too-big."""

    ts: float
    wall: float
    seq: int
    iface: str | None
    dir: Direction
    family: str | None  # ip, ip6
    proto: str | None  # tcp, udp, icmp, icmpv6, or the protocol number as text
    src: str | None
    dst: str | None
    sport: int | None = None
    dport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    tcp_flags: str | None = None  # "SYN", "SYN,ACK", "RST,ACK", ...
    len: int | None = None
    frame_len: int = 0
    vlan: int | None = None
    icmp_id: int | None = None
    embedded: Embedded | None = None
    mtu: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "packet", "ts": round(self.wall, 6), "iface": self.iface, "dir": self.dir,
            "family": self.family, "proto": self.proto, "src": self.src, "dst": self.dst,
            "sport": self.sport, "dport": self.dport, "tcp_flags": self.tcp_flags,
            "icmp_type": self.icmp_type, "icmp_code": self.icmp_code, "len": self.len,
            "frame_len": self.frame_len, "vlan": self.vlan, "seq": self.seq,
        }


# A PacketEvent's fields as a plain tuple, in PACKET_FIELDS order: the capture's hot path
# hands these to the flow table and builds a PacketEvent only for packets that are shown
# (building the frozen dataclass costs three times the decode).
PacketFields = tuple[float, float, int, "str | None", str, "str | None", "str | None",
                     "str | None", "str | None", "int | None", "int | None", "int | None",
                     "int | None", "str | None", "int | None", int, "int | None", "int | None",
                     "Embedded | None", "int | None"]
PACKET_FIELDS = ("ts", "wall", "seq", "iface", "dir", "family", "proto", "src", "dst", "sport",
                 "dport", "icmp_type", "icmp_code", "tcp_flags", "len", "frame_len", "vlan",
                 "icmp_id", "embedded", "mtu")


def packet_fields(p: PacketEvent) -> PacketFields:
    return (p.ts, p.wall, p.seq, p.iface, p.dir, p.family, p.proto, p.src, p.dst, p.sport,
            p.dport, p.icmp_type, p.icmp_code, p.tcp_flags, p.len, p.frame_len, p.vlan,
            p.icmp_id, p.embedded, p.mtu)


@dataclass(frozen=True, slots=True)
class FlowListener:
    """The local process that listens on a flow's port (pid/name None when it cannot be
    told, e.g. the socket belongs to a process fwtop cannot see)."""

    pid: int | None
    name: str | None

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "name": self.name}


@dataclass(frozen=True, slots=True)
class FlowEvent:
    """A flow whose state was just decided: always from the initiator's side (`src`:`sport`
    opened it towards `dst`:`dport`). `answered_by` is the address the answer (RST, ICMP
    error, reply) came from. `listener_checked` says whether the service looked for a local
    listener at all (it only can when `dst` is an address of the captured namespace).
    `certain` is False when the capture was sampling while the flow waited, so a reply may
    have been skipped."""

    ts: float
    wall: float
    family: str | None
    proto: str
    src: str
    dst: str
    sport: int | None
    dport: int | None
    state: FlowState
    reason: str
    answered_by: str | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    mtu: int | None = None
    icmp_id: int | None = None
    attempts: int = 1  # SYNs / requests seen before the decision
    certain: bool = True
    listener: FlowListener | None = None
    listener_checked: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "flow", "ts": round(self.wall, 6), "family": self.family,
            "proto": self.proto, "src": self.src, "dst": self.dst, "sport": self.sport,
            "dport": self.dport, "state": self.state, "reason": self.reason,
            "listener": self.listener.to_json() if self.listener is not None else None,
            "answered_by": self.answered_by, "icmp_type": self.icmp_type,
            "icmp_code": self.icmp_code, "mtu": self.mtu, "attempts": self.attempts,
            "certain": self.certain,
        }


@dataclass(frozen=True, slots=True)
class CaptureStats:
    """The capture's health, never hidden.

    `received` counts every packet fwtop's socket handed it; `kernel_packets` / `kernel_drops`
    are PACKET_STATISTICS (tp_packets, which includes tp_drops, and tp_drops: packets that
    passed the filter but found the socket's buffer or ring full). `skipped` are packets
    received but not decoded because the reader was behind (it then samples: packets that can
    decide a flow are still decoded); `malformed` frames held no IP header fwtop could read
    (ARP, LLDP, ... count here too: `not_ip`)."""

    running: bool
    received: int = 0
    decoded: int = 0
    skipped: int = 0
    not_ip: int = 0
    kernel_packets: int = 0
    kernel_drops: int = 0
    mode: str = ""  # "tpacket_v3 ring 16 MiB" or "recv"
    interfaces: str = ""  # "all" or the interface name
    capture_filter: str | None = None
    off_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"source": "capture", "running": self.running, "received": self.received,
                "decoded": self.decoded, "skipped": self.skipped, "not_ip": self.not_ip,
                "kernel_packets": self.kernel_packets, "kernel_drops": self.kernel_drops,
                "mode": self.mode, "interfaces": self.interfaces,
                "capture_filter": self.capture_filter, "off_reason": self.off_reason}


def fast_factory(cls: type[T], args: tuple[str, ...]) -> Callable[..., T]:
    """A constructor for a frozen slotted dataclass that takes `args` positionally and gives
    every other field its default, setting slots through their descriptors.

    A frozen dataclass's __init__ goes through object.__setattr__ per field, which costs more
    than decoding the packet; this builds the identical object in about half the time.
    Generated from dataclasses.fields the way dataclasses generates __init__, so a new field
    gets its default; a class with __post_init__, without slots or with a required field not
    in `args` gets its real constructor (keyword-mapped)."""
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    names = [f.name for f in fields]

    def slow(*values: Any) -> T:
        return cls(**dict(zip(args, values, strict=True)))

    if hasattr(cls, "__post_init__") or not hasattr(cls, "__slots__") or any(
            a not in names for a in args):
        return slow
    env: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    lines = [f"def make({', '.join(args)}):", " ev = _new(_cls)"]
    for f in fields:
        env[f"_set_{f.name}"] = getattr(cls, f.name).__set__
        if f.name in args:
            value = f.name
        elif f.default is not dataclasses.MISSING:
            env[f"_default_{f.name}"] = f.default
            value = f"_default_{f.name}"
        else:
            return slow
        lines.append(f" _set_{f.name}(ev, {value})")
    lines.append(" return ev")
    exec("\n".join(lines), env)  # names come from the dataclass, never from input
    make: Callable[..., T] = env["make"]
    return make
