"""What the Drops pane shows: one row per drop event, the pane's title with each source's
received/lost counts, and the top-N summary line. Plain (text, style) segments, terminal-safe;
nothing here touches Textual."""

from __future__ import annotations

import time
from collections.abc import Sequence

from fwtop.core.droplog import DropLog
from fwtop.core.events import DropEvent, SourceStats
from fwtop.ui.render import DIM, Cell, Segment, clip, human_count, safe

# Most telling first: at 100 columns the pane is half the screen and scrolls sideways.
# (key, label, width): None = as wide as the widest row so far (columns only grow, so they
# settle after the first rows; at 100 columns the addresses must not be padded to IPv6 width).
DROP_COLUMNS: tuple[tuple[str, str, int | None], ...] = (
    ("time", "time", 8),
    ("from", "from", None),
    ("to", "to", None),
    ("proto", "proto", 5),
    ("rule", "rule", None),
    ("why", "prefix / reason", None),
    ("where", "where", None),
    ("info", "flags", None),
    ("src", "via", 5),
)
SOURCE_SHORT = {"nflog": "nflog", "kmsg": "log", "journal": "log", "logfile": "log",
                "tracepoint": "trace", "conntrack": "ct", "counter": "ctr"}
PREFIX_MAX = 20


def _endpoint(addr: str | None, port: int | None) -> str:
    if addr is None:
        return "?"
    host = f"[{addr}]" if ":" in addr and port is not None else addr
    return f"{host}:{port}" if port is not None else host


def flow_text(e: DropEvent) -> str:
    """"tcp 10.0.0.2:40000 → 10.0.0.1:8080", or for ICMP "icmp type 8 10.0.0.2 → 10.0.0.1"."""
    if e.icmp_type is not None:
        return f"{e.proto} type {e.icmp_type} {e.src} → {e.dst}"
    return f"{e.proto} {_endpoint(e.src, e.sport)} → {_endpoint(e.dst, e.dport)}"


def _where(e: DropEvent) -> str:
    hook = e.hook or ""
    ifaces = ""
    if e.iif or e.oif:
        ifaces = f"{e.iif or '·'}→{e.oif or '·'}"
    return f"{hook} {ifaces}".strip() or "?"


def _info(e: DropEvent) -> str:
    if e.tcp_flags:
        return e.tcp_flags
    if e.icmp_type is not None:
        return f"type {e.icmp_type}/{e.icmp_code if e.icmp_code is not None else '?'}"
    return ""


def rule_cell(label: str | None, certain: bool) -> Cell:
    if label is None:
        return (("…", DIM),)
    return ((safe(label), "bold magenta" if certain else "magenta"),)


def drop_cells(e: DropEvent, rule: Cell = (("", ""),)) -> tuple[Cell, ...]:
    stamp = time.strftime("%H:%M:%S", time.localtime(e.wall))
    why = e.prefix or e.reason or ""
    src_style = "bold red" if e.source == "conntrack" else ""
    return (
        ((stamp, DIM),),
        ((safe(_endpoint(e.src, e.sport)), src_style),),
        ((safe(_endpoint(e.dst, e.dport)), "bold"),),
        ((safe(e.proto or "?"), "bold"),),
        rule,
        ((safe(clip(why, PREFIX_MAX)), "red"),),
        ((safe(_where(e)), ""),),
        ((safe(_info(e)), "yellow" if e.tcp_flags else ""),),
        ((SOURCE_SHORT.get(e.source, e.source), DIM),),
    )


def drops_title(stats: Sequence[SourceStats], paused: bool) -> str:
    """"Drops · nflog 400 · log off · trace 12 lost 3": every source, never hidden."""
    parts = ["Drops"]
    for s in stats:
        name = SOURCE_SHORT.get(s.source, s.source)
        if not s.running:
            parts.append(f"{name} off")
            continue
        text = f"{name} {human_count(s.received)}"
        if s.lost:
            text += f" lost {human_count(s.lost)}"
        if s.malformed:
            text += f" bad {human_count(s.malformed)}"
        parts.append(text)
    if paused:
        parts.append("PAUSED")
    return " · ".join(parts)


def off_reasons(stats: Sequence[SourceStats]) -> list[str]:
    return [f"{SOURCE_SHORT.get(s.source, s.source)} off: {s.off_reason}"
            for s in stats if not s.running and s.off_reason]


def summary_segments(log: DropLog, shown: int, needle: str, shed: int) -> list[Segment]:
    """Top source addresses, destination ports and prefixes, and what the pane holds."""
    segs: list[Segment] = []
    labels = {"src": "top src", "dport": "dport", "prefix": "prefix"}
    for name, label in labels.items():
        top = log.top(name, 3)
        if not top:
            continue
        if segs:
            segs.append(("  ", ""))
        segs.append((label + " ", DIM))
        items = []
        for key, n in top:
            text = f"{key[1]}/{key[0]}" if isinstance(key, tuple) else str(key)
            items.append(f"{clip(safe(text), 24)}×{human_count(n)}")
        segs.append((" ".join(items), ""))
    if not segs:
        segs.append(("no drops seen yet", DIM))
    tail = f"  │ {human_count(log.total)} total"
    if needle:
        tail += f", {shown} shown for {needle!r}"
    if shed:
        tail += f", {human_count(shed)} shed by fwtop"
    segs.append((safe(tail), DIM))
    return segs


def off_segments(stats: Sequence[SourceStats]) -> list[Segment]:
    """Why each source that is off is off, on a line of its own: an empty pane is never
    ambiguous (a mouse hover is not something to rely on in a terminal)."""
    segs: list[Segment] = []
    for reason in off_reasons(stats):
        segs += [("\n", ""), (safe(reason), "italic yellow")]
    return segs
