"""Real-kernel tests of the conntrack watch: entries inserted with `conntrack -I` lines in a
throwaway namespace (fed to one `conntrack -R` process: one `conntrack -I` per entry costs
2.3 ms here, 46 s for 20,000, against 0.1 s for the batch), read back by fwtop's reader, its
monitor and `fwtop watch`, and checked against the conntrack tool's own answers. The "table
full" alarm is fed a synthetic line written to /dev/kmsg (the kernel log is host-wide; the line
carries a tag so that a human reading dmesg knows it is a test's).

Nothing global is changed: nf_conntrack_max is read, never written; entries live only in the
test's namespaces, which are deleted with everything in them.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from fwtop.core.conntrack import ConntrackView, GrowthTracker
from fwtop.firewall.netns import NetNamespace, resolve, run_in
from fwtop.service.conntrack import ConntrackMonitor
from fwtop.sources.conntrack import ConntrackReader
from fwtop.sources.kmsg import KmsgReader
from tests.conftest import Namespaces, needs, ns_run

pytestmark = [pytest.mark.kernel, needs("ip", "conntrack")]

ENTRIES = 20_000
TOP_SOURCE = "10.66.1.1"
TOP_SOURCE_ENTRIES = 5_000
MAX_FILE = Path("/proc/sys/net/netfilter/nf_conntrack_max")


def insert_lines() -> tuple[str, Counter[str], Counter[str], Counter[str]]:
    """20,000 `conntrack -I` lines: 5,000 tcp ESTABLISHED from TOP_SOURCE to port 5432, 3,000
    tcp TIME_WAIT and 12,000 udp from 12,000 other sources (so TOP_SOURCE is the top one)."""
    lines: list[str] = []
    sources: Counter[str] = Counter()
    states: Counter[str] = Counter()
    protos: Counter[str] = Counter()

    def add(src: str, dst: str, proto: str, sport: int, dport: int, state: str | None) -> None:
        st = f" --state {state}" if state else ""
        lines.append(f"-I -s {src} -d {dst} -p {proto} --sport {sport} --dport {dport}{st} "
                     "--timeout 600")
        sources[src] += 1
        protos[proto] += 1
        if state:
            states[state] += 1

    for i in range(TOP_SOURCE_ENTRIES):
        add(TOP_SOURCE, "10.67.0.1", "tcp", 10_000 + i, 5432, "ESTABLISHED")
    for i in range(3_000):
        add(f"10.68.{i // 250}.{i % 250 + 1}", "10.67.0.2", "tcp", 20_000 + i, 443, "TIME_WAIT")
    for i in range(ENTRIES - TOP_SOURCE_ENTRIES - 3_000):
        add(f"10.69.{i // 250}.{i % 250 + 1}", "10.67.0.3", "udp", 30_000 + i % 30_000, 53, None)
    return "\n".join(lines) + "\n", sources, states, protos


def conntrack_count(ns: str) -> int:
    return int(ns_run(ns, "conntrack", "-C").stdout.strip())


def load(ns: str, text: str) -> float:
    started = time.monotonic()
    ns_run(ns, "conntrack", "-R", "-", input=text, timeout=120)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def filled() -> Any:
    """One namespace with the 20,000 entries, shared by the tests that only read it."""
    nss = Namespaces()
    try:
        ns = nss.new("ct")
        text, sources, states, protos = insert_lines()
        took = load(ns, text)
        yield ns, resolve(ns), sources, states, protos, took
    finally:
        nss.close()


def test_count_matches_conntrack_and_max_is_the_kernels(filled: Any) -> None:
    ns, ref, *_ = filled
    stats = run_in(ref, lambda: _read_stats())
    expected = conntrack_count(ns)
    assert expected == ENTRIES
    assert abs(stats.count - expected) <= expected * 0.01
    assert stats.max == int(MAX_FILE.read_text())
    assert stats.fill == pytest.approx(stats.count / stats.max)
    assert stats.stats_available and stats.cpu.cpus == os.cpu_count()
    # Every one of them went through the kernel's insert path.
    assert stats.cpu.insert >= ENTRIES


def _read_stats() -> Any:
    with ConntrackReader() as reader:
        return reader.stats(reader.read_timeouts())


def test_host_namespace_count_is_not_the_test_namespaces(filled: Any) -> None:
    # /proc/sys/net is per namespace: the thread outside must not see the 20,000.
    with ConntrackReader() as reader:
        outside = reader.stats().count
    assert outside == int(Path("/proc/sys/net/netfilter/nf_conntrack_count").read_text())
    inside = run_in(filled[1], lambda: _read_stats().count)
    assert inside == ENTRIES


def conntrack_list(ns: str) -> list[str]:
    return ns_run(ns, "conntrack", "-L", timeout=60).stdout.splitlines()


def test_breakdown_matches_what_was_inserted_and_conntrack_l(filled: Any) -> None:
    ns, ref, sources, states, protos, _ = filled

    def dump() -> Any:
        with ConntrackReader() as reader:
            return reader.breakdown(limit=None, top=5)

    b = run_in(ref, dump)
    assert b.dumped == ENTRIES and not b.sampled and b.malformed == 0
    assert b.top_sources[0] == (TOP_SOURCE, TOP_SOURCE_ENTRIES) == sources.most_common(1)[0]
    assert dict(b.by_state) == dict(states)
    assert dict(b.by_proto) == dict(protos)
    assert b.top_dports[0] == ("udp/53", 12_000)
    assert b.top_destinations[0] == ("10.67.0.3", 12_000)
    # The conntrack tool's own listing, counted by state, agrees entry for entry.
    listed = conntrack_list(ns)
    by_state = Counter(line.split()[3] for line in listed if line.startswith("tcp"))
    assert dict(by_state) == dict(b.by_state)
    assert len(listed) == b.dumped
    assert b.hint is not None and b.hint.state == "UDP"
    assert b.hint.sysctl == "net.netfilter.nf_conntrack_udp_timeout"


def test_sampled_breakdown_stops_early_and_scales(filled: Any) -> None:
    _, ref, *_ = filled

    def dump() -> Any:
        with ConntrackReader() as reader:
            first = reader.breakdown(limit=4_000)
            again = reader.breakdown(limit=None)  # a new socket after the cut-short dump
            return first, again

    first, again = run_in(ref, dump)
    assert first.dumped == 4_000 and first.sampled and first.total == ENTRIES
    assert sum(n for _, n in first.by_proto) == pytest.approx(ENTRIES, rel=0.01)
    # 60% of the table is udp: a fair sample of 4,000 lands well within 5 points of it.
    assert dict(first.by_proto)["udp"] == pytest.approx(12_000, rel=0.1)
    assert again.dumped == ENTRIES and not again.sampled


def write_table_full_line() -> str:
    tag = f"fwtop-test-{secrets.token_hex(3)}"
    fd = os.open("/dev/kmsg", os.O_WRONLY)
    try:
        os.write(fd, f"<4>{tag}: nf_conntrack: table full, dropping packet\n".encode())
    finally:
        os.close(fd)
    return tag


def test_table_full_kernel_line_raises_the_alarm() -> None:
    tracker = GrowthTracker()
    with KmsgReader() as reader:
        write_table_full_line()
        deadline = time.monotonic() + 5
        events = []
        while time.monotonic() < deadline and not events:
            events = [e for e in reader.read() if e.reason and "table full" in e.reason]
            time.sleep(0.05)
    assert events, "the synthetic line did not come back through KmsgReader"
    assert tracker.note_events(events) >= 1
    with ConntrackReader() as ct:
        growth = tracker.update(ct.stats())
    assert "table_full" in [a.kind for a in growth.alarms]


class Views:
    def __init__(self) -> None:
        self.views: list[ConntrackView] = []
        self.errors: list[str] = []
        self.cond = threading.Condition()

    def on_view(self, view: ConntrackView) -> None:
        with self.cond:
            self.views.append(view)
            self.cond.notify_all()

    def on_error(self, message: str) -> None:
        self.errors.append(message)

    def wait(self, pred: Any, timeout: float = 15.0) -> ConntrackView:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for v in self.views:
                    if pred(v):
                        return v
                left = deadline - time.monotonic()
                assert left > 0, f"no such view in {len(self.views)}: {self.errors}"
                self.cond.wait(left)


def test_monitor_in_a_namespace_sees_growth_breakdown_and_the_kmsg_alarm(
        namespaces: Namespaces) -> None:
    ns = namespaces.new("ct")
    ref = resolve(ns)
    assert isinstance(ref, NetNamespace)
    views = Views()
    mon = ConntrackMonitor(views.on_view, views.on_error, netns=ref, interval=0.2,
                           breakdown_every=None, kmsg=True, min_hint_entries=100)
    mon.start()
    try:
        first = views.wait(lambda v: v.running)
        assert first.stats is not None and first.stats.count == 0
        text = "".join(f"-I -s 10.70.0.1 -d 10.71.0.1 -p tcp --sport {1000 + i} --dport 80 "
                       f"--state TIME_WAIT --timeout 600\n" for i in range(2_000))
        load(ns, text)
        grown = views.wait(lambda v: v.stats is not None and v.stats.count == 2_000)
        assert grown.growth is not None and grown.growth.deltas["insert"] > 0
        mon.request_breakdown()
        with_bd = views.wait(lambda v: v.breakdown_fresh)
        assert with_bd.breakdown is not None
        assert with_bd.breakdown.top_sources[0] == ("10.70.0.1", 2_000)
        hint = with_bd.breakdown.hint
        assert hint is not None and hint.sysctl == (
            "net.netfilter.nf_conntrack_tcp_timeout_time_wait")
        write_table_full_line()
        alarmed = views.wait(lambda v: v.growth is not None and any(
            a.kind == "table_full" for a in v.growth.alarms))
        assert alarmed.stats is not None
        assert max(alarmed.history) == 2_000
    finally:
        mon.stop()
    assert not views.errors


def test_watch_json_conntrack_lines(filled: Any) -> None:
    ns, *_ = filled
    proc = subprocess.Popen(
        [sys.executable, "-m", "fwtop", "watch", "--json", "--netns", ns,
         "--conntrack-interval", "0.3", "--conntrack-breakdown", "2", "--stats-interval", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["type"] == "stats"  # the stream still starts with the sources' state
        time.sleep(1.0)
        write_table_full_line()
        time.sleep(1.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    assert lines[-1]["type"] == "stats"
    ct = [x for x in lines if x["type"] == "conntrack"]
    assert len(ct) >= 5
    for line in ct:
        assert line["count"] == ENTRIES and line["max"] == int(MAX_FILE.read_text())
        assert line["fill"] == pytest.approx(ENTRIES / line["max"], rel=1e-3)
        for key in ("ts", "rate_per_s", "eta_full_s", "stats"):
            assert key in line
        assert set(line["stats"]) >= {"insert_failed", "drop", "early_drop", "invalid",
                                      "search_restart"}
    assert ct[-1]["rate_per_s"] == 0.0 and ct[-1]["eta_full_s"] is None  # not growing
    assert any(a["kind"] == "table_full" for x in ct for a in x["alarms"])
    breakdowns = [x for x in lines if x["type"] == "conntrack_breakdown"]
    assert breakdowns and breakdowns[0]["top_sources"][0] == [TOP_SOURCE, TOP_SOURCE_ENTRIES]


def test_monitor_counts_new_and_destroy_events(namespaces: Namespaces) -> None:
    ns = namespaces.new("ct")
    views = Views()
    mon = ConntrackMonitor(views.on_view, views.on_error, netns=resolve(ns), interval=0.2,
                           breakdown_every=None, events=True)
    mon.start()
    try:
        views.wait(lambda v: v.stats is not None and v.stats.events_new == 0)
        load(ns, "".join(f"-I -s 10.72.0.1 -d 10.73.0.1 -p udp --sport {1000 + i} --dport 53 "
                         "--timeout 600\n" for i in range(500)))
        views.wait(lambda v: v.stats is not None and v.stats.events_new == 500)
        ns_run(ns, "conntrack", "-F")
        gone = views.wait(lambda v: v.stats is not None and v.stats.events_destroyed == 500
                          and v.stats.count == 0)
        assert gone.stats is not None and gone.stats.events_lost == 0
        assert gone.growth is not None and gone.growth.new_per_s is not None
    finally:
        mon.stop()
    assert not views.errors


@needs("nft", "iptables-nft-restore")
def test_lab_flood_fills_the_fw_table_with_client_flows() -> None:
    from fwtop import lab

    prefix = f"fwct{secrets.token_hex(2)}"
    host_count = Path("/proc/sys/net/netfilter/nf_conntrack_count")
    host_before = int(host_count.read_text())
    info = lab.up(prefix, scenario="conntrack-flood", traffic=False, legacy=False)
    try:
        fw = resolve(info.fw_ns)
        # The scenario's own wave (60,000 flows at 10,000/s) is bounded: it ends by itself.
        deadline = time.monotonic() + 30
        count = 0
        while time.monotonic() < deadline:
            count = run_in(fw, lambda: _read_stats().count)
            if count >= lab.FLOOD_FLOWS:
                break
            time.sleep(0.5)
        assert lab.FLOOD_FLOWS <= count <= lab.FLOOD_FLOWS + 200  # + the lab's own flows

        def dump() -> Any:
            with ConntrackReader() as reader:
                return reader.breakdown()

        b = run_in(fw, dump)
        assert b.top_sources[0][0] == info.client_ip
        assert b.top_sources[0][1] >= lab.FLOOD_FLOWS
        assert b.hint is not None and b.hint.timeout_s == lab.FLOOD_UDP_TIMEOUT
        assert all(p.startswith("udp/4") for p, _ in b.top_dports[:3])
        # Nothing of it reached the host's own table.
        assert int(host_count.read_text()) - host_before < lab.FLOOD_FLOWS // 10
        # Another wave adds its flows, and is bounded in count.
        lab.start_flood(prefix, flows=5_000, rate=20_000, max_seconds=10, wait=True)
        after = run_in(fw, lambda: _read_stats().count)
        assert count + 4_900 <= after <= count + 5_200
    finally:
        lab.down(prefix)
    assert not lab.is_up(prefix)
