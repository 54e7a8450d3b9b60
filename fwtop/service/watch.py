"""`fwtop watch --json`: the drop stream as JSON lines, with periodic per-source stats lines.

Each drop is one `{"type": "drop", ...}` line (DropEvent.to_json); every stats interval, and once
at the end, a `{"type": "stats", "sources": [...]}` line tells what each source received and
lost, and which sources are off and why, so an empty stream is never ambiguous.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import TextIO

from fwtop.core.events import SourceStats
from fwtop.firewall.netns import NetNamespace
from fwtop.service.drops import DropBatch, DropSources, DropStream


def _stats_line(stats: tuple[SourceStats, ...], shed: int) -> str:
    return json.dumps({"type": "stats", "ts": round(time.time(), 6),
                       "sources": [s.to_json() for s in stats], "shed": shed})


def watch(out: TextIO, netns: NetNamespace | None, extra_groups: list[int],
          duration: float | None, stats_interval: float = 1.0) -> int:
    """Stream until `duration` passes or SIGINT/SIGTERM; returns the exit code."""
    # NFLOG groups the ruleset uses plus any asked for, LOG lines narrowed to the namespace's
    # interfaces: both worked out by the reader thread inside the namespace.
    cfg = DropSources(groups=None, extra_groups=extra_groups, netns=netns)
    lock = threading.Lock()
    done = threading.Event()
    last_stats = [float("-inf")]  # the first batch says at once which sources run
    latest: list[tuple[SourceStats, ...]] = [tuple(cfg.off)]
    failed: list[str] = []

    def write(text: str) -> None:
        try:
            out.write(text)
            out.flush()
        except BrokenPipeError:
            done.set()

    def on_batch(batch: DropBatch) -> None:
        lines = [json.dumps(e.to_json()) for e in batch.events]
        latest[0] = batch.stats
        now = time.monotonic()
        if now - last_stats[0] >= stats_interval:
            lines.append(_stats_line(batch.stats, stream.shed))
            last_stats[0] = now
        if lines:
            with lock:
                write("\n".join(lines) + "\n")

    def on_error(message: str) -> None:
        failed.append(message)
        with lock:
            write(json.dumps({"type": "error", "ts": round(time.time(), 6),
                              "message": message}) + "\n")

    stream = DropStream(cfg, on_batch, on_error)
    previous = signal.signal(signal.SIGTERM, lambda *_: done.set())
    stream.start()
    try:
        done.wait(duration)
    except KeyboardInterrupt:
        pass
    finally:
        stream.stop()
        signal.signal(signal.SIGTERM, previous)
    with lock:
        write(_stats_line(latest[0], stream.shed) + "\n")
    return 1 if failed and not any(s.running for s in latest[0]) else 0
