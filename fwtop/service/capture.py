"""The live packet stream: one thread inside the namespace reads the capture socket, runs every
decoded packet through the flow table, and hands packets and decided flows on in time batches.

Like DropStream: a CaptureBatch every `batch_s` (100-250 ms), never one message per packet, and
bounded whatever the rate. Every decoded packet reaches the flow table; at most `max_packets`
per batch are handed on for display, sampled evenly when there are more (the rest are counted
in `shed`, never silently dropped). Decided flows are annotated here, inside the namespace: for
a refusal (RST, or ICMP port unreachable) whose destination is an address of the namespace, who
listens on that port ("refused: nothing listens on 8081" vs "refused by a REJECT rule").
"""

from __future__ import annotations

import dataclasses
import errno
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from fwtop.core.capture_events import (
    CaptureStats,
    FlowEvent,
    FlowListener,
    PacketEvent,
    PacketFields,
)
from fwtop.core.flows import (
    PROHIBITED_V4,
    PROHIBITED_V6,
    FlowTable,
    FlowTableStats,
    icmp_error_text,
    is_port_unreachable,
)
from fwtop.core.frames import make_packet
from fwtop.firewall.netns import NetNamespace, enter


class PacketReader(Protocol):
    pcap: object

    def fileno(self) -> int: ...
    def read_fields(self, max_packets: int = ...,
                    timeout: float | None = ...) -> list[PacketFields]: ...
    def raw(self, seq: int) -> tuple[bytes, int, str] | None: ...
    def stats(self) -> CaptureStats: ...
    def close(self) -> None: ...
    @property
    def last_skip(self) -> float: ...
    @property
    def last_blind(self) -> float: ...


@dataclass(frozen=True, slots=True)
class CaptureBatch:
    """What the capture saw in one batch interval. `packets` are in capture order (oldest
    first), an even sample when there were more than the batch holds; `shed` counts decoded
    packets not handed on (display sampling), `flows_shed` flow events likewise."""

    packets: tuple[PacketEvent, ...]
    flows: tuple[FlowEvent, ...]
    stats: CaptureStats
    flow_stats: FlowTableStats
    shed: int = 0
    flows_shed: int = 0
    pcap_written: int | None = None  # packets in the --pcap file so far (None: no file)


@dataclass(slots=True)
class CaptureConfig:
    """What to capture: every interface of `netns` (None: fwtop's own namespace) or `iface`,
    through an optional tcpdump-style `capture_filter`; `timeout` is how long a SYN, datagram or
    echo waits for its answer before it is `unanswered`. `pcap_path` writes to a pcap file every
    packet the reader looks at (all of them unless it is sampling), each cut to its first 2 KiB
    (every header fits; the record keeps the length on the wire)."""

    netns: NetNamespace | None = None
    iface: str | None = None
    capture_filter: str | None = None
    ring: bool = True
    timeout: float = 3.0
    max_flows: int = 65_536
    pcap_path: str | None = None


def open_capture(cfg: CaptureConfig) -> PacketReader:
    """The capture reader, opened in the calling thread's namespace."""
    from fwtop.sources.capture import CaptureReader

    reader: PacketReader = CaptureReader(iface=cfg.iface, capture_filter=cfg.capture_filter,
                                         ring=cfg.ring)
    return reader


ListenerLookup = Callable[[str, int], FlowListener | None]


def find_listener(proto: str, port: int) -> FlowListener | None:
    """Who listens on proto/port in the calling thread's namespace (fwtop.sources.listeners)."""
    from fwtop.sources.listeners import listener

    found = listener(proto, port)
    return None if found is None else FlowListener(found.pid, found.name)


def is_local_address(addr: str) -> bool:
    """Whether `addr` is an address of the calling thread's namespace: only a local address
    can be bound (no IP_FREEBIND), and binding sends nothing."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((addr, 0))
    except OSError as exc:
        return exc.errno not in (errno.EADDRNOTAVAIL, errno.EINVAL)
    return True


class FlowAnnotator:
    """Adds the listener and plain words to refusals, in the namespace's own view. Lookups scan
    /proc, so they are cached per port for `cache_s` and at most `per_batch` are made per batch
    (the rest say they were not checked)."""

    def __init__(self, lookup: ListenerLookup = find_listener,
                 is_local: Callable[[str], bool] = is_local_address, cache_s: float = 1.0,
                 per_batch: int = 32) -> None:
        self._lookup = lookup
        self._is_local = is_local
        self._cache_s = cache_s
        self._per_batch = per_batch
        self._listeners: dict[tuple[str, int], tuple[float, FlowListener | None]] = {}
        self._local: dict[str, tuple[float, bool]] = {}
        self._budget = per_batch

    def new_batch(self) -> None:
        self._budget = self._per_batch
        if len(self._listeners) > 4096:
            self._listeners.clear()
        if len(self._local) > 4096:
            self._local.clear()

    def _local_addr(self, addr: str, now: float) -> bool:
        hit = self._local.get(addr)
        if hit is not None and now - hit[0] < self._cache_s * 10:
            return hit[1]
        local = self._is_local(addr)
        self._local[addr] = (now, local)
        return local

    def _listener(self, proto: str, port: int, now: float) -> tuple[bool, FlowListener | None]:
        hit = self._listeners.get((proto, port))
        if hit is not None and now - hit[0] < self._cache_s:
            return True, hit[1]
        if self._budget <= 0:
            return False, None
        self._budget -= 1
        found = self._lookup(proto, port)
        self._listeners[(proto, port)] = (now, found)
        return True, found

    def annotate(self, e: FlowEvent) -> FlowEvent:
        refused = e.state == "refused"
        port_unreach = e.state == "rejected" and is_port_unreachable(e.family, e.icmp_type,
                                                                     e.icmp_code)
        if e.state == "rejected" and not port_unreach:
            prohibited = (e.icmp_code in PROHIBITED_V6 if e.family == "ip6" and e.icmp_type == 1
                          else e.icmp_type == 3 and e.icmp_code in PROHIBITED_V4)
            if prohibited:
                what = icmp_error_text(e.family, e.icmp_type, e.icmp_code)
                return dataclasses.replace(
                    e, reason=f"rejected by a REJECT rule (ICMP {what} from {e.answered_by})")
            return e
        if not (refused or port_unreach) or e.dport is None or e.proto not in ("tcp", "udp"):
            return e
        answer = f"RST from {e.answered_by}" if refused else \
            f"ICMP port unreachable from {e.answered_by}"
        word = "refused" if refused else "rejected"
        now = time.monotonic()
        if not self._local_addr(e.dst, now):
            return dataclasses.replace(
                e, reason=f"{word}: {answer} ({e.dst} is not an address of this namespace, so "
                          "fwtop cannot tell whether anything listens there)")
        checked, found = self._listener(e.proto, e.dport, now)
        if not checked:
            return dataclasses.replace(
                e, reason=f"{word}: {answer} (listener not checked: too many refusals at once)")
        if found is None:
            return dataclasses.replace(
                e, reason=f"{word}: nothing listens on {e.dport} ({answer})",
                listener_checked=True)
        who = found.name or "a process"
        if found.pid is not None:
            who += f" (pid {found.pid})"
        return dataclasses.replace(
            e, reason=f"{word} by a REJECT rule: {who} listens on {e.dport}, yet {answer} "
                      "came back", listener=found, listener_checked=True)


class CaptureStream:
    """Owns the capture thread; `on_batch` is called from that thread (the UI posts it on)."""

    def __init__(
        self,
        cfg: CaptureConfig,
        on_batch: Callable[[CaptureBatch], None],
        on_error: Callable[[str], None],
        batch_s: float = 0.2,
        max_packets: int = 2_000,
        max_flow_events: int = 2_000,
        opener: Callable[[CaptureConfig], PacketReader] = open_capture,
        annotator: FlowAnnotator | None = None,
    ) -> None:
        self._cfg = cfg
        self._on_batch = on_batch
        self._on_error = on_error
        self._batch_s = batch_s
        self._max_packets = max_packets
        self._max_flow_events = max_flow_events
        self._opener = opener
        self._annotator = annotator
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="fwtop-capture", daemon=True)
        self._reader: PacketReader | None = None
        self.table = FlowTable(timeout=cfg.timeout, max_flows=cfg.max_flows)
        self.shed = 0  # packets decoded but not handed on, in total
        self.flows_shed = 0
        self._pcap: object | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if self._thread.is_alive():
            self._thread.join(timeout)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def raw(self, seq: int) -> tuple[bytes, int, str] | None:
        """(frame, length on the wire, link) of a recent packet by its `seq`, if still kept
        (the last few thousand): for the details view and pcap export. Any thread."""
        reader = self._reader
        return None if reader is None else reader.raw(seq)

    def _run(self) -> None:
        try:
            if self._cfg.netns is not None:
                enter(self._cfg.netns)
            reader = self._opener(self._cfg)
        except Exception as exc:  # reported, not raised: the rest of fwtop keeps running
            self._on_error(f"packet capture: {exc}")
            return
        pcap = None
        if self._cfg.pcap_path is not None:
            from fwtop.service.pcap import PcapWriter

            try:
                pcap = PcapWriter(self._cfg.pcap_path)
            except OSError as exc:
                self._on_error(f"cannot write {self._cfg.pcap_path}: {exc.strerror}")
            else:
                reader.pcap = pcap
        self._reader = reader
        if self._annotator is None:
            self._annotator = FlowAnnotator()
        sel = selectors.DefaultSelector()
        try:
            sel.register(reader.fileno(), selectors.EVENT_READ, reader)
            sel.register(self._wake_r, selectors.EVENT_READ, None)
            self._loop(sel, reader, pcap)
        except Exception as exc:
            self._on_error(f"packet capture stopped: {type(exc).__name__}: {exc}")
        finally:
            sel.close()
            if pcap is not None:
                pcap.close()
            try:
                reader.close()
            except Exception as exc:
                self._on_error(f"closing the capture: {exc}")

    def _loop(self, sel: selectors.BaseSelector, reader: PacketReader,
              pcap: object | None) -> None:
        from fwtop.service.pcap import PcapWriter

        table = self.table
        observe = table.observe_fields
        annotator = self._annotator
        assert annotator is not None
        keep: list[PacketFields] = []
        seen = 0  # decoded packets this batch
        stride = 1  # keep every stride-th packet: from the previous batch's rate
        max_packets = self._max_packets
        deadline = time.monotonic() + self._batch_s
        while True:
            stopping = self._stop.is_set()
            if not stopping:
                timeout = max(0.0, deadline - time.monotonic())
                sel.select(timeout)
            # Read whatever is there, whether or not select said so (a ring block retires on
            # its own timer); bounded so a flood cannot starve the batch deadline.
            for _ in range(64):
                packets = reader.read_fields(4096)
                if not packets:
                    break
                for p in packets:
                    observe(p)
                    if seen % stride == 0 and len(keep) < max_packets:
                        keep.append(p)
                    seen += 1
                if time.monotonic() >= deadline:
                    break
            now = time.monotonic()
            if now < deadline and not stopping:
                continue
            if reader.last_skip > float("-inf"):
                table.note_skipped(reader.last_skip, reader.last_blind)
            table.expire(now)
            flows = table.take()
            flows_shed = max(0, len(flows) - self._max_flow_events)
            annotator.new_batch()
            flows = [annotator.annotate(f) for f in flows[:self._max_flow_events]]
            shed = seen - len(keep)
            self.shed += shed
            self.flows_shed += flows_shed
            written = None
            if isinstance(pcap, PcapWriter):
                pcap.flush()
                written = pcap.written
            self._on_batch(CaptureBatch(tuple(make_packet(*t) for t in keep), tuple(flows),
                                        reader.stats(),
                                        table.stats(), shed, flows_shed, written))
            stride = max(1, -(-seen // max_packets))
            keep, seen = [], 0
            deadline = now + self._batch_s
            if stopping:
                return
