"""fwtop.core.conntrack and fwtop.core.ctnetlink on recorded kernel output
(tests/fixtures/conntrack, re-recorded by record.py there): per-CPU statistics, growth and time
to full, alarms, the breakdown of a real dump and its stale-entry hint; plus the reader and the
monitor on a fake /proc (the module "not loaded" case), and hostile bytes that must never
raise. The real-kernel tests are tests/kernel/test_conntrack_kernel.py (a distinct basename:
the test folders are not packages)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fwtop.core import ctnetlink, loglines
from fwtop.core.conntrack import (
    Breakdown,
    BreakdownCounter,
    ConntrackStats,
    ConntrackView,
    CpuStatTotals,
    GrowthTracker,
    StatsParseError,
    eta_full,
    parse_cpu_stats,
    stale_hint,
    stat_deltas,
)
from fwtop.core.events import DropEvent

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "conntrack"
LOG_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "loglines"
TIMEOUTS = {"tcp_timeout_established": 432000, "tcp_timeout_time_wait": 120,
            "tcp_timeout_close_wait": 60, "tcp_timeout_syn_sent": 120,
            "tcp_timeout_syn_recv": 60, "udp_timeout": 30, "udp_timeout_stream": 120,
            "icmp_timeout": 30, "generic_timeout": 600}


def stats(ts: float, count: int, max_: int = 10_000, new: int | None = None,
          destroyed: int | None = None, **cpu: int) -> ConntrackStats:
    return ConntrackStats(ts=ts, wall=1e9 + ts, count=count, max=max_,
                          cpu=CpuStatTotals(cpus=2, **cpu), events_new=new,
                          events_destroyed=destroyed)


def dump(name: str, limit: int | None = None, oldest: int = 10) -> BreakdownCounter:
    acc = BreakdownCounter(TIMEOUTS, oldest=oldest, limit=limit)
    status = ctnetlink.DumpStatus()
    ctnetlink.parse_dump_into((FIXTURES / name).read_bytes(), acc, status)
    assert status.done and not status.error
    return acc


def breakdown(name: str, **kw: int) -> Breakdown:
    min_hint = kw.pop("min_hint_entries", 100)
    total = kw.pop("total", None)
    return dump(name, **kw).finish(1.0, time.time(), 0.01, total=total,
                                   min_hint_entries=min_hint)


# --- /proc/net/stat/nf_conntrack ---------------------------------------------------------------


def test_stats_sum_the_cpus_but_not_the_entries_column() -> None:
    cpu = parse_cpu_stats((FIXTURES / "stat_6.18_2cpu.txt").read_text())
    assert cpu.cpus == 2
    assert cpu.insert == 0xE + 0x35BB9
    assert (cpu.insert_failed, cpu.drop, cpu.early_drop, cpu.invalid, cpu.search_restart) == (
        0, 0, 0, 0, 0)


def test_stats_columns_are_found_by_name_in_older_kernels() -> None:
    cpu = parse_cpu_stats((FIXTURES / "stat_old_header.txt").read_text())
    assert cpu.cpus == 4
    assert cpu.insert_failed == 5
    assert cpu.drop == 1
    assert cpu.early_drop == 5
    assert cpu.invalid == 7
    assert cpu.search_restart == 5
    assert cpu.clash_resolve == 0  # no such column there


@pytest.mark.parametrize("text", ["", "garbage\n", "entries insert\n0001 zz\n",
                                  "entries insert\n0001\n", "insert entries\n1 2\n"])
def test_stats_refuse_what_is_not_the_table(text: str) -> None:
    with pytest.raises(StatsParseError):
        parse_cpu_stats(text)


@given(st.text(max_size=400))
@settings(max_examples=300, deadline=None)
def test_stats_parser_raises_only_its_own_error(text: str) -> None:
    try:
        parse_cpu_stats(text)
    except StatsParseError:
        pass


def test_stat_deltas_survive_a_per_cpu_wrap() -> None:
    before = CpuStatTotals(insert=0xFFFF_FFF0, drop=3)
    after = CpuStatTotals(insert=0x10, drop=5)
    d = stat_deltas(before, after)
    assert d["insert"] == 0x20
    assert d["drop"] == 2
    assert d["insert_failed"] == 0


# --- growth, time to full, alarms --------------------------------------------------------------


def test_growth_rate_and_time_to_full_converge_on_a_steady_fill() -> None:
    tracker = GrowthTracker(tau_s=5.0)
    first = tracker.update(stats(0.0, 1000))
    assert first.rate_per_s is None and first.eta_full_s is None
    assert first.fill == pytest.approx(0.1)
    g = first
    for t in range(1, 41):
        g = tracker.update(stats(float(t), 1000 + 100 * t, new=150 * t, destroyed=50 * t,
                                 insert=3 * t))
    assert g.rate_per_s == pytest.approx(100.0)
    assert g.new_per_s == pytest.approx(150.0)
    assert g.destroy_per_s == pytest.approx(50.0)
    assert g.deltas["insert"] == 3
    assert g.eta_full_s == pytest.approx((10_000 - 5000) / 100.0)
    assert not g.alarms
    # Without the events there are no new/destroy rates (the insert counter is not one).
    assert tracker.update(stats(41.0, 5100, insert=500)).new_per_s is None


def test_growth_is_smoothed_not_the_last_jump() -> None:
    tracker = GrowthTracker(tau_s=10.0)
    for t in range(0, 20):
        tracker.update(stats(float(t), 1000))
    g = tracker.update(stats(20.0, 1500))  # one burst of 500 in a second
    assert g.rate_per_s is not None and 0 < g.rate_per_s < 100


def test_no_eta_when_shrinking_or_unlimited_and_zero_when_full() -> None:
    tracker = GrowthTracker()
    tracker.update(stats(0.0, 5000))
    g = tracker.update(stats(1.0, 4000))
    assert g.rate_per_s == pytest.approx(-1000.0)
    assert g.eta_full_s is None
    assert eta_full(10, 0, 50.0) is None
    assert eta_full(10_000, 10_000, None) == 0.0
    assert eta_full(100, 1000, 0.01) is None
    assert stats(0.0, 5, max_=0).fill is None


def test_fill_alarm_at_ninety_percent() -> None:
    tracker = GrowthTracker()
    assert not tracker.update(stats(0.0, 8999)).alarms
    g = tracker.update(stats(1.0, 9000))
    assert [a.kind for a in g.alarms] == ["fill"]
    assert "90%" in g.alarms[0].message


def test_insert_failed_and_drop_deltas_alarm_then_clear_after_the_hold() -> None:
    tracker = GrowthTracker(hold_s=5.0)
    tracker.update(stats(0.0, 100, insert_failed=7, drop=2))
    assert not tracker.update(stats(1.0, 100, insert_failed=7, drop=2)).alarms  # totals, no delta
    g = tracker.update(stats(2.0, 100, insert_failed=9, drop=3))
    assert {a.kind for a in g.alarms} == {"insert_failed", "drop"}
    assert any("+2" in a.message for a in g.alarms)
    assert tracker.update(stats(6.0, 100, insert_failed=9, drop=3)).alarms  # still held
    assert not tracker.update(stats(8.0, 100, insert_failed=9, drop=3)).alarms


def _kmsg_event(record: bytes) -> DropEvent:
    _, ev = loglines.parse_kmsg_record(record, 5.0, 1e9)
    assert isinstance(ev, DropEvent), ev
    return ev


def test_table_full_kernel_line_raises_the_alarm() -> None:
    records = (LOG_FIXTURES / "conntrack.txt").read_bytes().splitlines()
    tracker = GrowthTracker(hold_s=10.0)
    tracker.update(stats(0.0, 10))
    expect = _kmsg_event(next(r for r in records if b"expectation" in r))
    assert not tracker.note_event(expect)  # another table: no alarm
    assert not tracker.update(stats(1.0, 10)).alarms
    assert tracker.note_event(_kmsg_event(records[0]))
    g = tracker.update(stats(6.0, 10))
    assert [a.kind for a in g.alarms] == ["table_full"]
    assert "table full" in g.alarms[0].message
    assert not tracker.update(stats(16.0, 10)).alarms


def test_other_drop_events_do_not_alarm() -> None:
    tracker = GrowthTracker()
    ev = DropEvent(source="kmsg", ts=1.0, wall=1.0, prefix="x", reason=None)
    assert not tracker.note_event(ev)
    assert tracker.note_events([ev, ev]) == 0


# --- breakdown of a recorded dump --------------------------------------------------------------


def test_breakdown_of_a_recorded_dump() -> None:
    b = breakdown("dump_timewait_ts.bin")
    assert b.dumped == b.total == 303 and not b.sampled and b.malformed == 0
    assert dict(b.by_state) == {"TIME_WAIT": 200, "ESTABLISHED": 61, "SYN_RECV": 10}
    assert dict(b.by_proto) == {"tcp": 271, "udp": 31, "icmp": 1}
    assert set(b.top_sources[:2]) == {("10.50.0.1", 67), ("10.50.0.2", 67)}
    assert b.top_sources[2] == ("10.50.0.3", 66)
    assert b.top_sources[3] == ("10.50.1.1", 60)
    assert b.top_destinations[0] == ("10.60.0.1", 200)
    assert b.top_dports[:3] == (("tcp/443", 200), ("tcp/22", 60), ("udp/53", 30))
    assert "fd50::1" in dict(breakdown("dump_timewait_ts.bin", oldest=0).top_sources
                             + dump_all_sources("dump_timewait_ts.bin"))


def dump_all_sources(name: str) -> tuple[tuple[str, int], ...]:
    return dump(name).finish(0.0, 0.0, 0.0, top=1000).top_sources


def test_breakdown_sees_ipv6_icmp_and_zoned_entries() -> None:
    sources = dict(dump_all_sources("dump_timewait_ts.bin"))
    assert sources["fd50::1"] == 1
    assert sources["10.50.4.1"] == 1  # icmp: no ports
    assert sources["10.50.5.1"] == 1  # zone 7: another tuple layout
    mixed = breakdown("dump_mixed.bin")
    assert dict(mixed.by_state) == {"TIME_WAIT": 1, "SYN_SENT": 1}
    assert dict(mixed.top_dports)["tcp/443"] == 1  # the IPv6 one


def test_fast_and_generic_paths_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    fast = dump("dump_timewait_ts.bin").finish(0.0, 1e9, 0.0, top=1000)
    monkeypatch.setattr(ctnetlink, "_ORIG4_HEAD", b"never matches")
    slow = dump("dump_timewait_ts.bin").finish(0.0, 1e9, 0.0, top=1000)
    assert fast == slow


def test_oldest_by_kernel_timestamp_when_present() -> None:
    b = breakdown("dump_timewait_ts.bin", oldest=5)
    assert b.oldest_by == "age"
    ages = [e.age_s for e in b.oldest]
    assert len(ages) == 5 and all(a is not None and a >= 0 for a in ages)
    assert ages == sorted(ages, reverse=True)  # type: ignore[type-var]


def test_oldest_by_idle_estimate_without_timestamps() -> None:
    b = breakdown("dump_mixed.bin", oldest=3)
    assert b.oldest_by == "idle"
    first = b.oldest[0]
    # SYN_SENT inserted with --timeout 100 against a 120 s state timeout: idle at least 20 s.
    assert (first.state, first.src, first.dport) == ("SYN_SENT", "fd00::1", 443)
    assert first.idle_s is not None and first.idle_s >= 20


def test_sampled_breakdown_scales_to_the_table() -> None:
    b = breakdown("dump_timewait_ts.bin", limit=100, total=303)
    assert b.dumped == 100 and b.sampled and b.total == 303
    assert sum(n for _, n in b.by_proto) == pytest.approx(303, abs=3)


def test_time_wait_hint_names_the_sysctl() -> None:
    hint = breakdown("dump_timewait_ts.bin").hint
    assert hint is not None and hint.state == "TIME_WAIT"
    assert hint.sysctl == "net.netfilter.nf_conntrack_tcp_timeout_time_wait"
    assert hint.timeout_s == 120
    assert "200 of 303" in hint.text and "30 s" in hint.text


def test_no_hint_below_the_minimum_table_size() -> None:
    assert breakdown("dump_timewait_ts.bin", min_hint_entries=1000).hint is None


def test_established_hint_says_five_days() -> None:
    hint = stale_hint({"ESTABLISHED": 9000, "TIME_WAIT": 500}, {"tcp": 9500, "udp": 500},
                      10_000, TIMEOUTS)
    assert hint is not None and hint.state == "ESTABLISHED"
    assert hint.sysctl == "net.netfilter.nf_conntrack_tcp_timeout_established"
    assert "432000 s = 5 days" in hint.text
    # A short established timeout is not what keeps them: no hint.
    assert stale_hint({"ESTABLISHED": 9000}, {"tcp": 9000}, 10_000,
                      {**TIMEOUTS, "tcp_timeout_established": 600}) is None


@pytest.mark.parametrize("by_state,by_proto,state,sysctl", [
    ({"SYN_RECV": 6000, "SYN_SENT": 1000}, {"tcp": 7000}, "half-open", "tcp_timeout_syn_recv"),
    ({"CLOSE_WAIT": 6000}, {"tcp": 6000}, "CLOSE_WAIT", "tcp_timeout_close_wait"),
    ({}, {"udp": 8000, "tcp": 2000}, "UDP", "udp_timeout"),
    ({}, {"gre": 8000}, "other protocols", "generic_timeout"),
])
def test_hints_per_dominating_kind(by_state: dict[str, int], by_proto: dict[str, int],
                                   state: str, sysctl: str) -> None:
    hint = stale_hint(by_state, by_proto, 10_000, TIMEOUTS)
    assert hint is not None and hint.state == state
    assert hint.sysctl == "net.netfilter.nf_conntrack_" + sysctl


def test_no_hint_when_nothing_dominates() -> None:
    assert stale_hint({"ESTABLISHED": 3000, "TIME_WAIT": 3000}, {"tcp": 6000, "udp": 4000},
                      10_000, TIMEOUTS) is None


@given(st.binary(max_size=600))
@settings(max_examples=400, deadline=None)
def test_dump_parser_never_raises(data: bytes) -> None:
    acc = BreakdownCounter(TIMEOUTS)
    ctnetlink.parse_dump_into(data, acc, ctnetlink.DumpStatus())
    acc.finish(0.0, 0.0, 0.0)


@given(st.integers(min_value=0, max_value=1139), st.binary(min_size=1, max_size=8))
@settings(max_examples=400, deadline=None)
def test_dump_parser_survives_corrupted_recordings(pos: int, junk: bytes) -> None:
    data = bytearray((FIXTURES / "dump_mixed.bin").read_bytes())
    data[pos:pos + len(junk)] = junk
    acc = BreakdownCounter(TIMEOUTS)
    ctnetlink.parse_dump_into(bytes(data), acc, ctnetlink.DumpStatus())
    assert acc.n <= 5
    acc.finish(0.0, 0.0, 0.0)


def test_dump_error_ends_the_dump_with_its_errno() -> None:
    seq = 77
    err = ctnetlink.NLMSGHDR.pack(36, ctnetlink.NLMSG_ERROR, 0, seq, 0) + \
        (-95).to_bytes(4, "little", signed=True) + bytes(16)
    status = ctnetlink.DumpStatus()
    ctnetlink.parse_dump_into(err, BreakdownCounter(), status, seq)
    assert status.done and status.error == 95
    other = ctnetlink.DumpStatus()
    ctnetlink.parse_dump_into(err, BreakdownCounter(), other, seq + 1)  # not our request
    assert not other.done


def test_dump_request_layout() -> None:
    req = ctnetlink.dump_request(5)
    mlen, mtype, flags, seq, _ = ctnetlink.NLMSGHDR.unpack_from(req)
    assert (mlen, len(req), mtype, flags, seq) == (20, 20, 0x0101, 0x301, 5)


# --- the view's JSON (published field names) ---------------------------------------------------


def test_view_json_has_the_published_fields() -> None:
    tracker = GrowthTracker()
    tracker.update(stats(0.0, 9000, insert=10))
    s = stats(1.0, 9200, insert=300)
    view = ConntrackView(ts=1.0, wall=s.wall, stats=s, growth=tracker.update(s),
                         history=(9000, 9200))
    out = view.to_json()
    for key in ("type", "ts", "count", "max", "fill", "rate_per_s", "eta_full_s", "stats"):
        assert key in out
    assert out["type"] == "conntrack" and out["count"] == 9200 and out["max"] == 10_000
    assert out["fill"] == pytest.approx(0.92)
    assert out["rate_per_s"] == pytest.approx(200.0)
    assert out["eta_full_s"] == pytest.approx(4.0)
    assert out["stats"]["insert"] == 300 and out["deltas"]["insert"] == 290
    assert out["new_per_s"] is None and out["destroy_per_s"] is None
    assert [a["kind"] for a in out["alarms"]] == ["fill"]
    off = ConntrackView(ts=0.0, wall=0.0, stats=None, growth=None, off_reason="not loaded")
    assert off.to_json()["running"] is False and off.to_json()["off_reason"] == "not loaded"


# --- reader and monitor on a fake /proc ----------------------------------------------------------


@pytest.fixture
def fake_proc(tmp_path: Path) -> Path:
    return tmp_path


def fill_proc(root: Path, count: int, max_: int = 1000) -> None:
    sysdir = root / "sys/net/netfilter"
    sysdir.mkdir(parents=True, exist_ok=True)
    (sysdir / "nf_conntrack_count").write_text(f"{count}\n")
    (sysdir / "nf_conntrack_max").write_text(f"{max_}\n")
    (sysdir / "nf_conntrack_buckets").write_text("1024\n")
    (sysdir / "nf_conntrack_tcp_timeout_time_wait").write_text("120\n")
    stat = root / "thread-self/net/stat"
    stat.mkdir(parents=True, exist_ok=True)
    (stat / "nf_conntrack").write_text((FIXTURES / "stat_old_header.txt").read_text())


def test_reader_says_conntrack_is_off_when_the_module_is_not_loaded(fake_proc: Path) -> None:
    from fwtop.sources.conntrack import ConntrackReader, ConntrackUnavailable

    with pytest.raises(ConntrackUnavailable) as info:
        ConntrackReader(proc_root=str(fake_proc))
    assert "nf_conntrack" in str(info.value) and "not loaded" in str(info.value)
    assert "\n" not in str(info.value)


def test_reader_reads_the_files(fake_proc: Path) -> None:
    from fwtop.sources.conntrack import ConntrackReader

    fill_proc(fake_proc, 950)
    with ConntrackReader(proc_root=str(fake_proc)) as reader:
        timeouts = reader.read_timeouts()
        s = reader.stats(timeouts)
    assert (s.count, s.max, s.buckets, s.fill) == (950, 1000, 1024, 0.95)
    assert s.cpu.insert_failed == 5 and s.stats_available
    assert timeouts == {"tcp_timeout_time_wait": 120}


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

    def wait(self, pred: object, timeout: float = 10.0) -> ConntrackView:
        assert callable(pred)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for v in self.views:
                    if pred(v):
                        return v
                left = deadline - time.monotonic()
                assert left > 0, f"no such view in {len(self.views)}: {self.errors}"
                self.cond.wait(left)


@pytest.fixture
def monitor_views(fake_proc: Path) -> Iterator[tuple[Views, Path, object]]:
    from fwtop.service.conntrack import ConntrackMonitor
    from fwtop.sources.conntrack import ConntrackReader

    views = Views()
    mon = ConntrackMonitor(views.on_view, views.on_error, interval=0.1, breakdown_every=None,
                           reader_factory=lambda: ConntrackReader(proc_root=str(fake_proc)))
    mon.start()
    try:
        yield views, fake_proc, mon
    finally:
        mon.stop()


def test_monitor_reports_off_then_running_once_the_module_loads(
        monitor_views: tuple[Views, Path, object]) -> None:
    views, root, _ = monitor_views
    off = views.wait(lambda v: not v.running)
    assert off.off_reason is not None and "not loaded" in off.off_reason
    fill_proc(root, 950)
    on = views.wait(lambda v: v.running)
    assert on.stats is not None and on.stats.count == 950
    assert on.growth is not None and [a.kind for a in on.growth.alarms] == ["fill"]
    assert not views.errors


def test_monitor_raises_the_table_full_alarm_from_handed_events(
        monitor_views: tuple[Views, Path, object]) -> None:
    from fwtop.service.conntrack import ConntrackMonitor

    views, root, mon = monitor_views
    assert isinstance(mon, ConntrackMonitor)
    fill_proc(root, 10)
    views.wait(lambda v: v.running)
    record = (LOG_FIXTURES / "conntrack.txt").read_bytes().splitlines()[0]
    _, ev = loglines.parse_kmsg_record(record, time.monotonic(), time.time())
    assert isinstance(ev, DropEvent)
    mon.note_drop_events([ev])
    alarmed = views.wait(lambda v: v.alarmed)
    assert alarmed.growth is not None and alarmed.growth.alarms[0].kind == "table_full"
