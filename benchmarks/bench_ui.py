"""TUI under load (issue 8): the real fwtop app, headless, under generated stream load.

The app is built by build_app() with its injectable factories, fed from background threads at
stream rates, while a keyboard thread presses keys; the script measures what a user would notice.

    .venv/bin/python benchmarks/bench_ui.py                          # 10 min, default rates
    .venv/bin/python benchmarks/bench_ui.py --minutes 1 --pps 5000 --dps 500 --rules 500

Load (all in this process, like fwtop's own reader threads):
- Rules: the real `Monitor` thread running the real `RulesPoller` over a synthetic iptables-nft
  ruleset (`--rules`, default 2,000, in INPUT/FORWARD/OUTPUT and two regular chains) whose
  loader and netlink counter reader are fakes: every second about 120 rules start moving and
  the previous set stops, so the Rules pane diff-updates about 250 rows and, sorted by
  activity, reorders them. Like the real poller, every tick hands over a new Ruleset object.
- Drops: a thread that every 200 ms hands the app one DropBatch of `--dps` x 0.2 NFLOG drops
  (many sources, a few dozen ports), capped at 20,000 per batch like DropStream (the rest
  counted as overflow).
- Packets: a thread that every 200 ms hands the Packets pane one CaptureBatch, built the way
  CaptureStream builds it from `--pps` x 0.2 captured packets: at most 2,000 packets kept (an
  even sample, stride from the previous batch), the rest counted in `shed`, plus a few dozen
  decided flows. Only kept packets become PacketEvents, as in CaptureStream; the decode and
  flow-table cost of the packets themselves is not simulated (see bench_capture.py).

Measured:
1. Key-press repaint latency. The keyboard thread hands Key events to the driver's
   `process_message`, the path a terminal's input thread takes, every `--probe-every` seconds,
   in a cycle: `s` (sort busiest first), `s` (chain order), `p` (pause), `p` (resume, 0.5 s
   later), `/` (open the rules filter), `8` `0` `8` `0` (type "8080"), Esc (clear). App._display
   is wrapped: the headless driver skips painting, so the wrapper turns each compositor update
   into the terminal bytes a real driver would write (`render_segments`, see --no-paint) and
   looks for the probe's marker in them ("busiest first" / "chain order" in the Rules pane's
   border, "PAUSED", the filter box's placeholder, "filter '80'" in the status line). Latency is
   key handed to the driver -> end of the first frame whose bytes contain the marker. Resume and
   Esc remove text instead, so for them it is -> end of the first frame begun after the key's
   handler (action_toggle_pause / _close_filter) returned.
2. Render rate: the app's own counters (app.renders for the Rules pane, app.drop_renders,
   PacketsPane.renders), frames painted and terminal bytes per second, and the event loop's lag
   (a 50 ms sleep's oversleep).
3. Events generated vs handed to the UI vs shed for display vs ever on screen (a row in at least
   one render of the Drops / Packets table).
4. RSS (psutil) every 10 s and at the end; 5. CPU of the process (user + system, as a share of
   one CPU) and per thread (UI thread, monitor, load generators), and the UI thread's wall time
   split by activity (wrappers on the app's render methods and on Textual's layout, frame and
   RowList methods).

Diagnostics (not fwtop's behaviour): --no-attribution, --render-interval, --no-paint.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import math
import os
import random
import resource
import shlex
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from textual import events
from textual._compositor import CompositorUpdate

from fwtop.core.capture_events import CaptureStats, FlowEvent
from fwtop.core.evaluator import NetContext
from fwtop.core.events import DropEvent, SourceStats
from fwtop.core.flows import FlowTableStats
from fwtop.core.frames import make_packet
from fwtop.core.iptables_syntax import parse_rule_args
from fwtop.core.model import (
    BackendStatus,
    Chain,
    Counters,
    Policy,
    Rule,
    Ruleset,
    Table,
    rule_key,
)
from fwtop.core.nftnl import CounterDump
from fwtop.service.capture import CaptureBatch
from fwtop.service.drops import DropBatch
from fwtop.service.monitor import Monitor
from fwtop.service.rules import RulesPoller, RulesView
from fwtop.ui import app as ui_app
from fwtop.ui import packets as ui_packets
from fwtop.ui.app import FwtopApp, build_app
from fwtop.ui.packets import PacketsPane

BATCH_S = 0.2  # DropStream's and CaptureStream's default batch interval
CAPTURE_MAX_PACKETS = 2_000  # CaptureStream's default max_packets per batch
DROPS_MAX_BATCH = 20_000  # DropStream's default max_batch
LOCAL = "192.0.2.10"  # the benchmark host's address (drops and packets are towards it)
TARGETS = {"latency_ms": 100.0, "rss_mb": 300.0}


# --- the ruleset and its counters -----------------------------------------------------------


def _ip(rng: random.Random, prefix: str) -> str:
    return f"{prefix}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def build_ruleset(n_rules: int, rng: random.Random) -> Ruleset:
    """An iptables-nft filter table of about `n_rules` rules: INPUT (policy drop) jumping to a
    blocklist and a services chain, then logging what falls through to NFLOG group 7; FORWARD
    (policy drop); OUTPUT (policy accept)."""
    n_out = max(1, n_rules // 100)
    n_fwd = max(1, n_rules // 10)
    n_svc = max(1, n_rules * 3 // 10)
    head = ["-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", "-i lo -j ACCEPT",
            "-p icmp --icmp-type 8 -j ACCEPT", "-p tcp --dport 22 -j ACCEPT",
            "-j blocklist", "-j services", "-p udp --dport 53 -j ACCEPT",
            "-j NFLOG --nflog-prefix fw-input-drop --nflog-group 7"]
    n_block = max(1, n_rules - n_out - n_fwd - n_svc - len(head))
    ports = [80, 443, 8080, 8443, 5432, 3306, 6379, 9090, 9100, 25, 587, 993, 2049, 111]
    texts: dict[str, list[str]] = {"INPUT": head, "blocklist": [], "services": [],
                                   "FORWARD": [], "OUTPUT": []}
    for i in range(n_block):
        note = f' -m comment --comment "abuse report {1000 + i}"' if i % 3 == 0 else ""
        texts["blocklist"].append(f"-s {_ip(rng, '198.18')}/32{note} -j DROP")
    for i in range(n_svc):
        port = ports[i % len(ports)]
        texts["services"].append(
            f"-s 10.{rng.randrange(256)}.{rng.randrange(256)}.0/24 -p tcp --dport {port} "
            f'-m comment --comment "svc-{i % 40} from office {i // 40}" -j ACCEPT')
    for _ in range(n_fwd):
        texts["FORWARD"].append(f"-s 172.16.{rng.randrange(256)}.0/24 -d 10.{rng.randrange(256)}"
                                f".0.0/16 -p tcp --dport {rng.choice(ports)} -j ACCEPT")
    for i in range(n_out):
        texts["OUTPUT"].append(f"-d 10.{i % 256}.0.1/32 -p udp --dport 53 -j ACCEPT")
    user_chains = frozenset({"blocklist", "services"})
    handle = 0
    chains = []
    for name, hook, policy in (("INPUT", "input", "drop"), ("FORWARD", "forward", "drop"),
                               ("OUTPUT", "output", "accept"), ("blocklist", None, None),
                               ("services", None, None)):
        cid = ("iptables-nft", "ip", "filter", name)
        rules = []
        for pos, text in enumerate(texts[name], 1):
            handle += 1
            matches, verdict, target, comment = parse_rule_args(shlex.split(text), user_chains)
            rules.append(Rule("iptables-nft", "ip", "filter", name, pos, handle,
                              f"-A {name} {text}", verdict, target, matches, Counters(0, 0),
                              comment, None, rule_key(cid, handle, text)))
        pol = (Policy("iptables-nft", "ip", "filter", name, policy, Counters(0, 0))  # type: ignore[arg-type]
               if policy else None)
        chains.append(Chain("iptables-nft", "ip", "filter", name, tuple(rules), hook,
                            0 if hook else None, "filter" if hook else None, pol))
    return Ruleset(tables=(Table("iptables-nft", "ip", "filter", tuple(chains)),),
                   backends=(BackendStatus("iptables-nft", True),))


class CounterLoad:
    """Stands in for NftCounterReader: one generation (no reloads), counters that move every
    dump. Established traffic and the INPUT drops follow --pps / --dps; a different random
    subset of the services, blocklist, FORWARD and OUTPUT rules is active each tick."""

    def __init__(self, ruleset: Ruleset, pps: float, dps: float, seed: int) -> None:
        self.rng = random.Random(seed)
        self.pps, self.dps = pps, dps
        self.rules: dict[tuple[str, str, str, int], list[int]] = {}
        self.by_chain: dict[str, list[tuple[str, str, str, int]]] = {}
        for chain in ruleset.chains():
            for r in chain.rules:
                assert r.handle is not None
                key = (r.family, r.table, r.chain, r.handle)
                self.rules[key] = [0, 0]
                self.by_chain.setdefault(chain.name, []).append(key)
        self.policies = {("ip", "filter", c): [0, 0] for c in ("INPUT", "FORWARD", "OUTPUT")}
        self.last = time.monotonic()
        self.dumps = 0

    def generation(self) -> int:
        return 1

    def close(self) -> None:
        pass

    def _bump(self, counter: list[int], packets: float, size: int) -> None:
        n = int(packets)
        counter[0] += n
        counter[1] += n * size

    def dump(self) -> CounterDump:
        now = time.monotonic()
        dt, self.last = now - self.last, now
        rng = self.rng
        chain = self.by_chain
        self._bump(self.rules[chain["INPUT"][0]], self.pps * dt * 0.9, 900)  # established
        self._bump(self.rules[chain["INPUT"][3]], rng.uniform(5, 50) * dt, 80)  # ssh
        self._bump(self.rules[chain["INPUT"][-1]], self.dps * dt, 60)  # NFLOG
        self._bump(self.policies[("ip", "filter", "INPUT")], self.dps * dt, 60)
        self._bump(self.policies[("ip", "filter", "FORWARD")], rng.uniform(0, 20) * dt, 60)
        for name, hot, top in (("services", 60, 2000), ("blocklist", 40, 50),
                               ("FORWARD", 20, 500), ("OUTPUT", 3, 100)):
            keys = chain.get(name, [])
            for key in rng.sample(keys, min(hot, len(keys))):
                self._bump(self.rules[key], rng.uniform(1, top) * dt, rng.choice((60, 576, 1400)))
        self.dumps += 1
        return CounterDump(rules={k: (v[0], v[1]) for k, v in self.rules.items()},
                           chains={k: (v[0], v[1]) for k, v in self.policies.items()},
                           generation=1, malformed=0)


class BenchPoller(RulesPoller):
    def _legacy_tables(self, errors: list[str]) -> tuple[Table, ...]:
        # The real poller also reads the host's iptables-legacy tables every tick; the benchmark
        # must not depend on (or show) whatever this machine has loaded.
        return ()


# --- drop and capture streams ----------------------------------------------------------------


class Paced(threading.Thread):
    """A thread that calls `tick(dt)` every BATCH_S seconds (deadline-paced like the streams)
    and keeps its own CPU time."""

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._stop_event = threading.Event()
        self.cpu_s = 0.0

    def tick(self, dt: float) -> None:
        raise NotImplementedError

    def run(self) -> None:
        last = time.monotonic()
        deadline = last + BATCH_S
        while not self._stop_event.wait(max(0.0, deadline - time.monotonic())):
            now = time.monotonic()
            self.tick(now - last)
            last = now
            deadline += BATCH_S
            if deadline < now:  # fell behind (the machine is busy): do not burst to catch up
                deadline = now + BATCH_S
            self.cpu_s = time.thread_time()

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(5.0)


class DropLoad(Paced):
    """Stands in for DropStream: NFLOG drops at `rate` per second from `sources` addresses."""

    def __init__(self, on_batch: Callable[[DropBatch], None], on_error: Callable[[str], None],
                 rate: float, sources: int, seed: int) -> None:
        super().__init__("bench-drops")
        self.on_batch = on_batch
        self.rate = rate
        self.rng = random.Random(seed)
        self.sources = [f"198.51.{i // 250 % 256}.{i % 250 + 1}" for i in range(sources)]
        self.ports = [23, 25, 80, 135, 139, 443, 445, 1433, 2323, 3306, 3389, 5060, 5432, 5900,
                      6379, 8000, 8080, 8081, 8443, 8888, 9200, 11211, 27017, 37215, 52869]
        self.generated = 0
        self.handed = 0
        self.overflow = 0
        self._carry = 0.0
        self._wall = time.time()

    def tick(self, dt: float) -> None:
        want = self.rate * dt + self._carry
        n = int(want)
        self._carry = want - n
        rng = self.rng
        now_wall = max(time.time(), self._wall + 1e-6)
        step = (now_wall - self._wall) / max(n, 1)
        mono = time.monotonic()
        events = []
        keep = min(n, DROPS_MAX_BATCH)
        for i in range(keep):
            roll = rng.random()
            proto = "tcp" if roll < 0.8 else "udp" if roll < 0.95 else "icmp"
            is_icmp = proto == "icmp"
            # Walls strictly increase: "ever on screen" counts rows newer than the last seen.
            events.append(DropEvent(
                "nflog", mono, self._wall + (i + 1) * step, prefix="fw-input-drop", group=7,
                hook="input", iif="eth0", family="ip", proto=proto, src=rng.choice(self.sources),
                dst=LOCAL, sport=None if is_icmp else rng.randrange(1024, 65536),
                dport=None if is_icmp else rng.choice(self.ports),
                icmp_type=8 if is_icmp else None, icmp_code=0 if is_icmp else None,
                tcp_flags="SYN" if proto == "tcp" else None, len=60 if proto == "tcp" else 84))
        self._wall = now_wall
        self.generated += n
        self.handed += keep
        overflow = n - keep
        self.overflow += overflow
        stats = (SourceStats("nflog", True, received=self.generated, detail="groups 7"),)
        self.on_batch(DropBatch(tuple(events), stats, overflow))


class CaptureLoad(Paced):
    """Stands in for CaptureStream (start/stop/raw): `rate` packets per second of which each
    batch hands on at most CAPTURE_MAX_PACKETS, an even sample; the rest is `shed`."""

    def __init__(self, on_batch: Callable[[CaptureBatch], None], on_error: Callable[[str], None],
                 rate: float, seed: int) -> None:
        super().__init__("bench-capture")
        self.on_batch = on_batch
        self.rate = rate
        self.rng = random.Random(seed)
        self.conns = [(f"10.{self.rng.randrange(256)}.{self.rng.randrange(256)}."
                       f"{self.rng.randrange(1, 255)}", self.rng.randrange(1024, 65536),
                       self.rng.choice((22, 80, 443, 443, 443, 8080)))
                      for _ in range(500)]
        self.seq = 0
        self.generated = 0
        self.handed = 0
        self.shed = 0
        self.flows = 0
        self._stride = 1
        self._carry = 0.0
        self._wall = time.time()

    def raw(self, seq: int) -> tuple[bytes, int, str] | None:
        return None  # no bytes kept: the details screen and `w` are not exercised

    def tick(self, dt: float) -> None:
        want = self.rate * dt + self._carry
        seen = int(want)
        self._carry = want - seen
        rng = self.rng
        now_wall = max(time.time(), self._wall + 1e-6)
        step = (now_wall - self._wall) / max(seen, 1)
        mono = time.monotonic()
        stride = self._stride
        base = self.seq
        keep = []
        for i in range(0, seen, stride):
            if len(keep) >= CAPTURE_MAX_PACKETS:
                break
            client, cport, sport = self.conns[(base + i) % len(self.conns)]
            inbound = (base + i) % 3 != 0
            src, dst = (client, LOCAL) if inbound else (LOCAL, client)
            sp, dp = (cport, sport) if inbound else (sport, cport)
            size = 52 if inbound else 1452
            keep.append(make_packet(mono, self._wall + (i + 1) * step, base + i + 1, "eth0",
                                    "in" if inbound else "out", "ip", "tcp", src, dst, sp, dp,
                                    None, None, "ACK" if inbound else "PSH,ACK", size, size + 14,
                                    None, None, None, None))
        flows = []
        for _ in range(min(40, seen)):
            roll = rng.random()
            state = ("established" if roll < 0.6 else "unanswered" if roll < 0.8
                     else "refused" if roll < 0.95 else "half-open")
            flows.append(FlowEvent(mono, now_wall, "ip", "tcp", _ip(rng, "198.51"), LOCAL,
                                   rng.randrange(1024, 65536), rng.choice((22, 80, 443, 8081)),
                                   state, f"bench: {state}"))  # type: ignore[arg-type]
        self._wall = now_wall
        self.seq += seen
        self.generated += seen
        self.handed += len(keep)
        self.shed += seen - len(keep)
        self.flows += len(flows)
        self._stride = max(1, -(-seen // CAPTURE_MAX_PACKETS))
        stats = CaptureStats(True, received=self.generated, decoded=self.generated,
                             kernel_packets=self.generated, mode="bench (synthetic)",
                             interfaces="all")
        flow_stats = FlowTableStats(len(self.conns), 0, self.flows, 0, 0, self.flows)
        self.on_batch(CaptureBatch(tuple(keep), tuple(flows), stats, flow_stats,
                                   seen - len(keep), 0))


# --- key probes ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    label: str
    key: str
    char: str | None
    handler: str  # the app method that applies the key
    marker: str | None  # text that appears on screen once it is applied (None: text goes away)
    gap: float | None = None  # seconds after the previous probe (None: --probe-every)


STEPS = (
    Step("s: busiest first", "s", "s", "action_toggle_sort", "busiest first"),
    Step("s: chain order", "s", "s", "action_toggle_sort", "chain order"),
    Step("p: pause", "p", "p", "action_toggle_pause", "PAUSED"),
    Step("p: resume", "p", "p", "action_toggle_pause", None, gap=0.5),
    # Not the placeholder's first letter: the focused box's cursor sits on it, so in the
    # terminal bytes it is wrapped in style codes while the cursor blinks on.
    Step("/: open filter", "slash", "/", "action_filter", "ilter rules: text"),
    Step("type 8", "8", "8", "_rerender", "filter '8'"),
    Step("type 0 (80)", "0", "0", "_rerender", "filter '80'"),
    Step("type 8 (808)", "8", "8", "_rerender", "filter '808'"),
    Step("type 0 (8080)", "0", "0", "_rerender", "filter '8080'"),
    Step("esc: clear filter", "escape", "\x1b", "_close_filter", None),
)


@dataclass(slots=True)
class Probe:
    step: Step
    sent: float
    handled: float | None = None
    frame: float | None = None  # end of the first frame begun after the handler returned
    marker: float | None = None  # end of the first frame showing the marker
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def latency(self) -> float | None:
        end = self.marker if self.step.marker else self.frame
        return None if end is None else end - self.sent


class Screen:
    """Wraps App._display: counts frames, renders them to terminal bytes (what a real driver
    writes; the headless driver skips it) and finishes the pending probe."""

    def __init__(self, app: FwtopApp, paint: bool) -> None:
        self.app = app
        self.paint = paint
        self.frames = 0
        self.bytes = 0
        self.paint_s = 0.0
        self.lock = threading.Lock()
        self.probe: Probe | None = None
        original = app._display

        def display(screen: Any, renderable: Any) -> None:
            start = time.perf_counter()
            original(screen, renderable)
            if renderable is None or app._batch_count:
                return
            text = ""
            if self.paint and isinstance(renderable, CompositorUpdate):
                text = renderable.render_segments(app.console)
            end = time.perf_counter()
            self.frames += 1
            self.bytes += len(text)
            self.paint_s += end - start
            with self.lock:
                p = self.probe
            if p is None:
                return
            if p.frame is None and p.handled is not None and start >= p.handled:
                p.frame = end
            if p.step.marker and p.marker is None and p.step.marker in text:
                p.marker = end
            if p.frame is not None and (p.marker is not None or not p.step.marker):
                with self.lock:
                    self.probe = None
                p.done.set()

        app._display = display  # type: ignore[method-assign]
        for name in {s.handler for s in STEPS}:
            self._wrap(name)

    def _wrap(self, name: str) -> None:
        inner = getattr(self.app, name)

        def handler(*args: Any, **kwargs: Any) -> Any:
            result = inner(*args, **kwargs)
            with self.lock:
                p = self.probe
            if p is not None and p.step.handler == name and p.handled is None:
                p.handled = time.perf_counter()
            return result

        setattr(self.app, name, handler)


class UiTime:
    """Wall time the UI thread spends in named app and Textual methods (instance wrappers; the
    thread does nothing else while inside them, so this is its busy time by activity)."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, obj: object, name: str, label: str) -> None:
        inner = getattr(obj, name)
        self.spent.setdefault(label, 0.0)
        self.calls.setdefault(label, 0)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.spent[label] += time.perf_counter() - start
                self.calls[label] += 1

        setattr(obj, name, timed)


# What the UI thread's time is split into (nested ones are part of the one above them).
TIMED = (
    ("app", "_render", "Rules pane render (app._render; may include a Drops refill)"),
    ("app", "_rerender", "Rules pane re-render on s / filter (app._rerender)"),
    ("app", "_render_drops_now", "Drops pane render (app._render_drops_now)"),
    ("app", "_rule_cell", "  of which drop attribution (app._rule_cell, per shown row)"),
    ("pane", "_take", "Packets pane render (PacketsPane._take)"),
    ("screen", "_refresh_layout", "Textual layout pass (Screen._refresh_layout, and its frame)"),
    ("screen", "_compositor_refresh", "Textual frame (Screen._compositor_refresh)"),
    ("compositor", "render_update", "  of which rendering widget lines (Compositor.render_update)"),
    ("rules", "render_lines", "    of which Rules list lines (RowList.render_lines)"),
    ("drops", "render_lines", "    of which Drops list lines"),
    ("packets", "render_lines", "    of which Packets list lines"),
    ("rules", "set_rows", "Rules list: rows handed over (RowList.set_rows)"),
    ("drops", "set_rows", "Drops list: rows handed over"),
    ("packets", "set_rows", "Packets list: rows handed over"),
    ("rules", "_segments", "Rules list: rows drawn into segments (RowList._segments)"),
    ("drops", "_segments", "Drops list: rows drawn into segments"),
    ("packets", "_segments", "Packets list: rows drawn into segments"),
)


class Keyboard(threading.Thread):
    """Presses the STEPS in a cycle through the driver, as a terminal's input thread does."""

    def __init__(self, app: FwtopApp, screen: Screen, every: float, timeout: float) -> None:
        super().__init__(name="bench-keys", daemon=True)
        self.app = app
        self.screen = screen
        self.every = every
        self.timeout = timeout
        self.probes: list[Probe] = []
        self.timeouts = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        driver = self.app._driver
        assert driver is not None
        i = 0
        while True:
            step = STEPS[i % len(STEPS)]
            if self._stop_event.wait(step.gap if step.gap is not None else self.every):
                return
            probe = Probe(step, time.perf_counter())
            with self.screen.lock:
                self.screen.probe = probe
            driver.process_message(events.Key(step.key, step.char))
            if not probe.done.wait(self.timeout):
                self.timeouts += 1
                with self.screen.lock:
                    self.screen.probe = None
            self.probes.append(probe)
            i += 1

    def stop(self) -> None:
        self._stop_event.set()
        self.join(self.timeout + 5)


# --- sampling and the report -----------------------------------------------------------------


def source_version() -> str:
    """The commit measured, and whether fwtop/ differed from it (others share the tree)."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "fwtop"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" with uncommitted changes in fwtop/" if dirty else "")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


@dataclass(slots=True)
class Sample:
    t: float
    rss: int
    cpu: float  # process user + system seconds
    threads: dict[str, float]
    load: tuple[float, float, float]
    renders: tuple[int, int, int]  # rules, drops, packets
    frames: int


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        rng = random.Random(args.seed)
        self.ruleset = build_ruleset(args.rules, rng)
        self.n_rules = sum(len(c.rules) for c in self.ruleset.chains())
        self.counters: CounterLoad | None = None
        self.polls = 0
        self.drops: DropLoad | None = None
        self.capture: CaptureLoad | None = None
        self.proc = psutil.Process()
        self.samples: list[Sample] = []
        self.lags: list[float] = []
        self.drops_on_screen = 0
        self.packets_on_screen = 0
        self.ui_time = UiTime()
        self.version = source_version()
        self.start_t = 0.0
        self.cpu0 = 0.0

    # factories handed to build_app -------------------------------------------------------

    def monitor(self, on_rules: Callable[[RulesView], None],
                on_error: Callable[[str], None]) -> Monitor:
        args = self.args

        def counted(view: RulesView) -> None:
            self.polls += 1
            on_rules(view)

        def reader() -> CounterLoad:
            self.counters = CounterLoad(self.ruleset, args.pps, args.dps, args.seed + 1)
            return self.counters

        def poller() -> RulesPoller:
            return BenchPoller(loader=lambda: self.ruleset,
                               reader_factory=reader)  # type: ignore[arg-type]

        return Monitor(counted, on_error, interval=1.0, poller_factory=poller)

    def drops_factory(self, on_batch: Callable[[DropBatch], None],
                      on_error: Callable[[str], None]) -> DropLoad:
        self.drops = DropLoad(on_batch, on_error, self.args.dps, self.args.drop_sources,
                              self.args.seed + 2)
        return self.drops

    def capture_factory(self, on_batch: Callable[[CaptureBatch], None],
                        on_error: Callable[[str], None]) -> CaptureLoad:
        self.capture = CaptureLoad(on_batch, on_error, self.args.pps, self.args.seed + 3)
        return self.capture

    # counting what reaches the screen ----------------------------------------------------

    def watch_tables(self, app: FwtopApp) -> None:
        drops_table = app.drops_table
        show_drops = drops_table.show
        newest_drop = [0.0]

        def drops_shown(*a: Any, **kw: Any) -> None:
            show_drops(*a, **kw)
            if app.drop_needle:
                return
            fresh = [e.wall for e in drops_table.events if e.wall > newest_drop[0]]
            if fresh:
                self.drops_on_screen += len(fresh)
                newest_drop[0] = max(fresh)

        drops_table.show = drops_shown  # type: ignore[method-assign]
        packets_table = app.query_one(PacketsPane).table
        show_packets = packets_table.show
        newest_seq = [0]

        def packets_shown(*a: Any, **kw: Any) -> None:
            show_packets(*a, **kw)
            fresh = [p.seq for p in packets_table.events if p.seq > newest_seq[0]]
            if fresh:
                self.packets_on_screen += len(fresh)
                newest_seq[0] = max(fresh)

        packets_table.show = packets_shown  # type: ignore[method-assign]

    def stop_load(self) -> None:
        for load in (self.capture, self.drops):
            if load is not None:
                load.stop()

    def thread_cpu(self) -> dict[str, float]:
        names = {t.native_id: t.name for t in threading.enumerate()}
        main = threading.main_thread().native_id
        out: dict[str, float] = {}
        for t in self.proc.threads():
            name = "ui (main thread)" if t.id == main else names.get(t.id, "other")
            out[name] = out.get(name, 0.0) + t.user_time + t.system_time
        return out

    def sample(self, app: FwtopApp, screen: Screen) -> Sample:
        cpu = self.proc.cpu_times()
        pane = app.query_one(PacketsPane)
        s = Sample(time.monotonic() - self.start_t, self.proc.memory_info().rss,
                   cpu.user + cpu.system - self.cpu0, self.thread_cpu(), os.getloadavg(),
                   (app.renders, app.drop_renders, pane.renders), screen.frames)
        self.samples.append(s)
        return s

    async def lag_watch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.05)
            self.lags.append(time.perf_counter() - t - 0.05)

    # the run --------------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        args = self.args
        width, height = (int(x) for x in args.size.lower().split("x"))
        app = build_app(monitor_factory=self.monitor, drops_factory=self.drops_factory,
                        capture_factory=self.capture_factory, real_drops=False,
                        real_capture=False)
        app._net_factory = lambda: NetContext(local=((LOCAL, "eth0"),))
        if args.render_interval is not None:
            # Diagnostic: the panes' minimum time between renders (fwtop: 0.1 s).
            ui_app.MIN_RENDER_INTERVAL = args.render_interval
            ui_packets.RENDER_INTERVAL = args.render_interval
        if args.no_attribution:
            # Diagnostic: the Drops pane's rule column left empty and the attribution worker
            # never asked, so no drop is run through the Evaluator (what fwtop costs without
            # that work).
            app._rule_cell = lambda event: (("", ""),)  # type: ignore[method-assign]
            app._want_visible = lambda: None  # type: ignore[method-assign]
        duration = args.minutes * 60
        print(f"fwtop TUI under load: {self.n_rules} rules, {args.pps:,.0f} packets/s, "
              f"{args.dps:,.0f} drops/s, {width}x{height}, {args.minutes:g} min; "
              f"load average at start {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
              f"{os.getloadavg()[2]:.2f}, {os.cpu_count()} CPUs; fwtop {self.version}",
              flush=True)
        async with app.run_test(size=(width, height)) as pilot:
            screen = Screen(app, paint=not args.no_paint)
            self.watch_tables(app)
            pane = app.query_one(PacketsPane)
            owners: dict[str, object] = {
                "app": app, "pane": pane, "screen": app.screen,
                "compositor": app.screen._compositor, "rules": app.table,
                "drops": app.drops_table, "packets": pane.table}
            for owner, name, label in TIMED:
                self.ui_time.wrap(owners[owner], name, label)
            deadline = time.monotonic() + 30
            while app.shown is None and time.monotonic() < deadline:
                await pilot.pause(0.05)
            self.start_t = time.monotonic()
            cpu = self.proc.cpu_times()
            self.cpu0 = cpu.user + cpu.system
            threads0 = self.thread_cpu()
            stop = asyncio.Event()
            lag_task = asyncio.create_task(self.lag_watch(stop))
            keys = Keyboard(app, screen, args.probe_every, timeout=30.0)
            profiler = cProfile.Profile() if args.profile else None
            if profiler is not None:
                profiler.enable()  # this (the UI) thread only
            keys.start()
            prev = self.sample(app, screen)
            end = self.start_t + duration
            while time.monotonic() < end:
                await asyncio.sleep(min(10.0, max(0.0, end - time.monotonic())))
                s = self.sample(app, screen)
                span = s.t - prev.t
                lat = [p.latency for p in keys.probes if p.latency is not None]
                print(f"  {s.t:6.0f} s  rss {mb(s.rss)}  cpu {(s.cpu - prev.cpu) / span:.0%}  "
                      f"renders/s rules {(s.renders[0] - prev.renders[0]) / span:.1f} "
                      f"drops {(s.renders[1] - prev.renders[1]) / span:.1f} "
                      f"packets {(s.renders[2] - prev.renders[2]) / span:.1f}  "
                      f"frames/s {(s.frames - prev.frames) / span:.1f}  "
                      f"keys {len(lat)} p95 {pct(lat, 0.95) * 1000:.0f} ms  "
                      f"load {s.load[0]:.2f}", flush=True)
                prev = s
            # Off the event loop: the key still in flight needs the loop to reach the screen.
            await asyncio.to_thread(keys.stop)
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(args.profile)
            stop.set()
            await lag_task
            final = self.sample(app, screen)  # the measured span ends here
            # Stop the load and let the UI take what is still pending, so every generated
            # event ends up either taken or counted as shed.
            await asyncio.to_thread(self.stop_load)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and pane._pending:
                await pilot.pause(0.1)
            await pilot.pause(0.5)  # queued key messages land before the app exits
            result = self.report(app, screen, keys, final, threads0)
        return result

    def report(self, app: FwtopApp, screen: Screen, keys: Keyboard, final: Sample,
               threads0: dict[str, float]) -> dict[str, Any]:
        args = self.args
        span = final.t
        pane = app.query_one(PacketsPane)
        drops, capture = self.drops, self.capture
        assert drops is not None and capture is not None
        out: dict[str, Any] = {"args": vars(args), "rules": self.n_rules, "seconds": span,
                               "fwtop": self.version}

        print(f"\n== after {span:.0f} s ({self.n_rules} rules, {args.pps:,.0f} packets/s, "
              f"{args.dps:,.0f} drops/s, terminal {args.size}) ==")
        loads = [s.load[0] for s in self.samples]
        print(f"load average (1 min) during the run: min {min(loads):.2f}, "
              f"max {max(loads):.2f}, end {final.load}")
        out["load"] = {"min": min(loads), "max": max(loads), "end": final.load}

        print("\n1. key-press repaint latency (key handed to the driver -> end of the frame "
              "that shows it)")
        rows = []
        by_label: dict[str, list[float]] = {}
        for p in keys.probes:
            if p.latency is not None:
                by_label.setdefault(p.step.label, []).append(p.latency)
        every = [p.latency for p in keys.probes if p.latency is not None]
        for step in STEPS:
            lat = by_label.get(step.label, [])
            if lat:
                rows.append({"probe": step.label, "n": len(lat),
                             "p50_ms": pct(lat, 0.5) * 1000, "p95_ms": pct(lat, 0.95) * 1000,
                             "max_ms": max(lat) * 1000})
        rows.append({"probe": "all", "n": len(every), "p50_ms": pct(every, 0.5) * 1000,
                     "p95_ms": pct(every, 0.95) * 1000,
                     "max_ms": max(every, default=float("nan")) * 1000})
        for r in rows:
            print(f"   {r['probe']:<20} n={r['n']:<4} p50 {r['p50_ms']:7.1f} ms  "
                  f"p95 {r['p95_ms']:7.1f} ms  max {r['max_ms']:7.1f} ms")
        over = sum(1 for x in every if x > TARGETS["latency_ms"] / 1000)
        print(f"   over {TARGETS['latency_ms']:.0f} ms: {over} of {len(every)}; "
              f"no frame within 30 s: {keys.timeouts}")
        # Key handled -> first frame after it: how long the screen update itself waits.
        waits = [p.frame - p.handled for p in keys.probes
                 if p.frame is not None and p.handled is not None]
        handle = [p.handled - p.sent for p in keys.probes if p.handled is not None]
        print(f"   of which key -> handler returned: p50 {pct(handle, 0.5) * 1000:.1f} ms, "
              f"p95 {pct(handle, 0.95) * 1000:.1f} ms; handler -> next frame: "
              f"p50 {pct(waits, 0.5) * 1000:.1f} ms, p95 {pct(waits, 0.95) * 1000:.1f} ms")
        out["latency"] = rows
        out["latency_over_target"] = over
        out["latency_timeouts"] = keys.timeouts
        out["key_to_handler_ms"] = {"p50": pct(handle, 0.5) * 1000,
                                    "p95": pct(handle, 0.95) * 1000}
        out["handler_to_frame_ms"] = {"p50": pct(waits, 0.5) * 1000,
                                      "p95": pct(waits, 0.95) * 1000}
        out["probes"] = [  # every key: seconds from the start, then ms of each part
            {"key": p.step.label, "at": p.sent - self.start_t,
             "latency_ms": None if p.latency is None else p.latency * 1000,
             "to_handler_ms": None if p.handled is None else (p.handled - p.sent) * 1000,
             "to_frame_ms": None if p.frame is None or p.handled is None
             else (p.frame - p.handled) * 1000}
            for p in keys.probes]

        rules_r, drops_r, pkts_r = (x / span for x in final.renders)
        lags = self.lags
        print("\n2. render rate (per second, over the run)")
        print(f"   Rules pane {rules_r:.2f} (views polled {self.polls / span:.2f}/s; "
              f"sort/filter re-renders not counted), Drops pane {drops_r:.2f}, "
              f"Packets pane {pkts_r:.2f}; frames painted {final.frames / span:.1f}/s, "
              f"terminal output {mb(screen.bytes / span)}/s"
              + (" (not painted: --no-paint)" if args.no_paint else ""))
        print(f"   event loop lag (50 ms sleep oversleep): p50 {pct(lags, 0.5) * 1000:.1f} ms, "
              f"p95 {pct(lags, 0.95) * 1000:.1f} ms, p99 {pct(lags, 0.99) * 1000:.1f} ms, "
              f"max {max(lags, default=0) * 1000:.1f} ms")
        out["renders_per_s"] = {"rules": rules_r, "drops": drops_r, "packets": pkts_r,
                                "frames": final.frames / span,
                                "terminal_bytes": screen.bytes / span}
        out["loop_lag_ms"] = {"p50": pct(lags, 0.5) * 1000, "p95": pct(lags, 0.95) * 1000,
                              "p99": pct(lags, 0.99) * 1000, "max": max(lags, default=0) * 1000}

        # Whole run, warm-up included (the counters start when the app starts).
        stream_shed = capture.shed
        pane_shed = pane.shed - stream_shed
        taken_pkts = capture.handed - pane_shed
        print("\n3. events: generated -> handed to the UI -> shed for display -> on screen "
              "(whole run)")
        print(f"   packets: captured {capture.generated:,}; handed on by the stream "
              f"{capture.handed:,} ({capture.handed / max(1, capture.generated):.1%}); "
              f"stream display sampling shed {stream_shed:,}; pane buffer shed "
              f"{pane_shed:,}; taken by the pane {taken_pkts:,}; ever on screen "
              f"{self.packets_on_screen:,} "
              f"({self.packets_on_screen / max(1, capture.generated):.1%} of captured); "
              f"the pane's title says {pane.shed:,} not listed")
        ui_shed = app.drops_shed - drops.overflow
        print(f"   drops: generated {drops.generated:,}; stream overflow {drops.overflow:,}; "
              f"shed by the UI {ui_shed:,}; logged by the UI {app.drop_log.total:,}; "
              f"ever on screen {self.drops_on_screen:,} "
              f"({self.drops_on_screen / max(1, drops.generated):.1%}); app.drops_shed "
              f"{app.drops_shed:,}")
        print(f"   flows: {capture.flows:,} flow events handed on; rules views: polled "
              f"{self.polls}, received {app.views_received}, rendered {app.renders} "
              f"(coalesced {app.views_received - app.renders})")
        out["packets"] = {"captured": capture.generated, "handed": capture.handed,
                          "stream_shed": stream_shed, "pane_buffer_shed": pane_shed,
                          "taken": taken_pkts, "on_screen": self.packets_on_screen,
                          "pane_shed_total": pane.shed}
        out["drops"] = {"generated": drops.generated, "stream_overflow": drops.overflow,
                        "ui_shed": ui_shed, "logged": app.drop_log.total,
                        "on_screen": self.drops_on_screen, "drops_shed": app.drops_shed}
        out["views"] = {"polled": self.polls, "received": app.views_received,
                        "rendered": app.renders}

        print("\n4. RSS (every 10 s)")
        rss = [(round(s.t), s.rss) for s in self.samples]
        line = ", ".join(f"{t} s {r / 1e6:.0f}" for t, r in rss)
        print(f"   MB at {line}")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(f"   end {mb(final.rss)}, peak {mb(peak)} (target under "
              f"{TARGETS['rss_mb']:.0f} MB after 10 minutes)")
        out["rss"] = {"samples": rss, "end": final.rss, "peak": peak}

        print("\n5. CPU (user + system, share of one CPU, over the measured span)")
        threads = {k: v - threads0.get(k, 0.0) for k, v in final.threads.items()}
        parts = ", ".join(f"{k} {v / span:.0%}" for k, v in sorted(threads.items(),
                                                                   key=lambda kv: -kv[1]))
        print(f"   process {final.cpu / span:.0%} ({parts})")
        print(f"   frames: {screen.paint_s:.1f} s of UI time turning compositor updates into "
              f"terminal bytes")
        print("   UI thread wall time by activity (share of the run):")
        ui = self.ui_time
        for _, _, label in TIMED:
            calls = ui.calls[label]
            if calls:
                print(f"     {label:<62} {ui.spent[label] / span:6.1%}  {calls:>7,} calls, "
                      f"{ui.spent[label] / calls * 1000:7.2f} ms each")
        out["ui_time"] = {label: {"share": ui.spent[label] / span, "calls": ui.calls[label]}
                          for _, _, label in TIMED}
        out["cpu"] = {"process": final.cpu / span,
                      "threads": {k: v / span for k, v in threads.items()},
                      "paint_s": screen.paint_s}
        for name, target, value in (("latency p95", TARGETS["latency_ms"],
                                     pct(every, 0.95) * 1000),
                                    ("RSS at the end", TARGETS["rss_mb"], final.rss / 1e6)):
            verdict = "met" if value <= target else "MISSED"
            print(f"target {name}: {value:.1f} (target {target:.0f}): {verdict}")
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--pps", type=float, default=50_000, help="captured packets per second")
    ap.add_argument("--dps", type=float, default=5_000, help="drops per second")
    ap.add_argument("--size", default="200x50", help="terminal size, COLUMNSxLINES")
    ap.add_argument("--rules", type=int, default=2_000)
    ap.add_argument("--drop-sources", type=int, default=5_000,
                    help="distinct source addresses of the drops")
    ap.add_argument("--probe-every", type=float, default=2.0, help="seconds between keys")
    ap.add_argument("--no-paint", action="store_true",
                    help="do not turn frames into terminal bytes (headless Textual's default)")
    ap.add_argument("--no-attribution", action="store_true",
                    help="diagnostic: leave the Drops pane's rule column empty (no Evaluator "
                         "run per shown drop)")
    ap.add_argument("--render-interval", type=float,
                    help="diagnostic: override the panes' minimum seconds between renders "
                         "(fwtop's own: 0.1)")
    ap.add_argument("--seed", type=int, default=8)
    ap.add_argument("--profile", help="diagnostic: cProfile the UI thread over the measured "
                                      "span into this file (slows it: for shares, not times)")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    result = asyncio.run(Bench(args).run())
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
