"""Real-kernel tests of the LOG-line reader (fwtop.sources.kmsg) and the drop-reason tracepoint
(fwtop.sources.tracepoint), in throwaway namespaces joined by veth pairs (10.62.20-29.x).

The one global setting touched is net.netfilter.nf_log_all_netns (LOG lines of a non-init
namespace are only logged with it set to 1); the `log_all_netns` fixture restores the previous
value in a finally. Our own tracefs instance is removed by the reader and checked here.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fwtop.core.events import DropEvent
from fwtop.firewall.netns import NetNamespace, run_in
from fwtop.sources import kmsg, tracepoint
from fwtop.sources.kmsg import KmsgError, KmsgReader, in_init_netns, log_all_netns_state
from tests.conftest import Namespaces, needs, ns_run

pytestmark = [pytest.mark.kernel, needs("ip", "nft", "iptables-nft")]

SYSCTL = Path("/proc/sys/net/netfilter/nf_log_all_netns")

SENDER = """
import socket, sys
dst, dport, sport, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("", sport))
for _ in range(count):
    s.sendto(b"fwtop", (dst, dport))
"""


def send_udp(ns: str, dst: str, dport: int, sport: int, count: int) -> None:
    ns_run(ns, sys.executable, "-c", SENDER, dst, str(dport), str(sport), str(count),
           timeout=60)


def set_log_all_netns(value: str) -> Callable[[], Iterator[None]]:
    def fixture() -> Iterator[None]:
        if not SYSCTL.exists():
            pytest.skip("kernel has no net.netfilter.nf_log_all_netns")
        old = SYSCTL.read_text().strip()
        try:
            SYSCTL.write_text(value)
            yield
        finally:
            SYSCTL.write_text(old)
    return fixture


log_all_netns_on = pytest.fixture(set_log_all_netns("1"))
log_all_netns_off = pytest.fixture(set_log_all_netns("0"))


def read_until(reader: KmsgReader, done: Callable[[list[DropEvent]], bool],
               timeout: float = 15.0, quiet: float | None = None) -> list[DropEvent]:
    """Read until `done(events)`, or (with `quiet`) until nothing came for that long."""
    events: list[DropEvent] = []
    deadline = time.monotonic() + timeout
    last_new = time.monotonic()
    while time.monotonic() < deadline:
        batch = reader.read(4096)
        if batch:
            events.extend(batch)
            last_new = time.monotonic()
        if done(events):
            break
        if quiet is not None and time.monotonic() - last_new > quiet:
            break
        if not batch:
            time.sleep(0.02)
    return events


def nft_counter_packets(ns: str, table: str, chain: str) -> int:
    out = ns_run(ns, "nft", "-j", "list", "chain", "inet", table, chain).stdout
    total = 0
    for item in json.loads(out)["nftables"]:
        for expr in item.get("rule", {}).get("expr", []):
            if "counter" in expr:
                total += expr["counter"]["packets"]
    return total


def kernel_log_buffer_size() -> int:
    """log_buf_len: syslog(SYSLOG_ACTION_SIZE_BUFFER), i.e. what `dmesg` can ever hold."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    size = int(libc.klogctl(10, None, 0))
    return size if size > 0 else 1 << 17


@pytest.fixture
def pair(namespaces: Namespaces) -> tuple[str, str, str, str]:
    a, b = namespaces.new("k"), namespaces.new("k")
    net = 20 + secrets.randbelow(10)
    ia, ib = namespaces.veth(a, b, f"10.62.{net}.1/24", f"10.62.{net}.2/24")
    ns_run(a, "ip", "neigh", "replace", f"10.62.{net}.2", "lladdr",
           ns_run(b, "cat", f"/sys/class/net/{ib}/address").stdout.strip(), "dev", ia)
    return a, b, ia, ib


def net_of(ns: str, ifname: str) -> str:
    out = ns_run(ns, "ip", "-j", "-4", "addr", "show", "dev", ifname).stdout
    return str(json.loads(out)[0]["addr_info"][0]["local"])


# --- LOG lines ------------------------------------------------------------------------------


def test_log_lines_of_a_namespace_with_the_right_five_tuple(
        pair: tuple[str, str, str, str], log_all_netns_on: None) -> None:
    a, b, ia, ib = pair
    src, dst = net_of(a, ia), net_of(b, ib)
    ns_run(b, "iptables-nft", "-A", "INPUT", "-p", "udp", "--dport", "5999", "-j", "LOG",
           "--log-prefix", "fwt-log: ")
    ns_run(b, "iptables-nft", "-A", "INPUT", "-p", "udp", "--dport", "5999", "-j", "DROP")
    # The same packets logged on their way out of `a`: another interface, filtered away.
    ns_run(a, "iptables-nft", "-A", "OUTPUT", "-p", "udp", "--dport", "5999", "-j", "LOG",
           "--log-prefix", "fwt-log: ")
    visible, reason = run_in(NetNamespace(b, f"/run/netns/{b}"),
                             lambda: log_all_netns_state(in_init_netns(), b))
    assert (visible, reason) == (True, None)
    with KmsgReader(interfaces={ib}) as reader:
        assert reader.mode == "kmsg" and reader.base_seq is not None
        send_udp(a, dst, 5999, 41999, 200)
        events = read_until(reader, lambda evs: len(evs) >= 200)
        time.sleep(0.2)
        events += reader.read()
        stats = reader.stats()
    ours = [ev for ev in events if ev.prefix == "fwt-log:"]
    assert len(ours) == 200, stats
    for ev in ours:
        assert (ev.source, ev.family, ev.proto) == ("kmsg", "ip", "udp")
        assert (ev.src, ev.sport, ev.dst, ev.dport) == (src, 41999, dst, 5999)
        assert (ev.iif, ev.oif, ev.len) == (ib, None, 33)
    assert reader.filtered >= 200  # a's OUTPUT lines (OUT=ia) are not this namespace's
    assert stats.running and stats.received == len(events) and stats.malformed == 0


def test_burst_beyond_the_ring_is_counted_as_lost(
        pair: tuple[str, str, str, str], log_all_netns_on: None) -> None:
    a, b, _, ib = pair
    dst = net_of(b, ib)
    ns_run(b, "nft", "-f", "-", input="""
table inet fwtk {
  chain in {
    type filter hook input priority 0;
    udp dport 5998 counter log prefix "fwt-burst: " drop
  }
}
""")
    ring = kernel_log_buffer_size()
    # A LOG line takes ~250 bytes of the ring: send ~20 rings' worth, bounded.
    sent = min(200_000, max(10_000, 20 * ring // 250))
    with KmsgReader(interfaces={ib}) as reader:
        start = time.monotonic()
        send_udp(a, dst, 5998, 41998, sent)  # nothing is read meanwhile
        send_s = time.monotonic() - start
        counter = nft_counter_packets(b, "fwtk", "in")
        events = read_until(reader, lambda evs: False, timeout=30, quiet=1.0)
        stats = reader.stats()
    assert send_s < 60
    ours = sum(1 for ev in events if ev.prefix == "fwt-burst:")
    assert reader.base_seq is not None and reader.next_seq is not None
    written = reader.next_seq - reader.base_seq  # every kernel record of the window (seq)
    others_written = written - counter  # the rule counter is the truth for our lines
    others_read = reader.records - ours
    lost_others = others_written - others_read
    print(f"\nring {ring} B; sent {sent} in {send_s:.2f}s; LOG rule counter {counter}; "
          f"read {ours} of ours + {others_read} other records; lost {reader.lost} "
          f"(EPIPE {reader.epipes}x); other records written {others_written}")
    assert counter > 0 and ours > 0
    assert reader.lost > 0 and stats.lost == reader.lost and reader.epipes > 0
    assert ours < counter  # the ring really overflowed
    # Nothing silently missing: every line the kernel wrote was read or counted as lost.
    assert ours + reader.lost >= counter
    # The slack is exactly the other kernel records (not ours) that were lost too; on a quiet
    # machine there are none and the sum is exact.
    assert 0 <= lost_others <= others_written
    assert ours + reader.lost == counter + lost_others
    if others_written == 0:
        assert ours + reader.lost == counter


def test_log_all_netns_zero_means_namespace_lines_are_not_logged(
        pair: tuple[str, str, str, str], log_all_netns_off: None) -> None:
    a, b, _, ib = pair
    dst = net_of(b, ib)
    ns_run(b, "nft", "-f", "-", input="""
table inet fwtk {
  chain in {
    type filter hook input priority 0;
    udp dport 5997 counter log prefix "fwt-hidden: " drop
  }
}
""")
    visible, reason = run_in(NetNamespace(b, f"/run/netns/{b}"),
                             lambda: log_all_netns_state(in_init_netns(), b))
    assert visible is False
    assert reason == (f"LOG lines from namespace {b} are not logged: "
                      "net.netfilter.nf_log_all_netns=0 (set it to 1 to see them)")
    assert log_all_netns_state(True) == (True, None)  # the host's own lines always are
    assert run_in(NetNamespace(b, f"/run/netns/{b}"), in_init_netns) is False
    assert in_init_netns() is True
    # And the kernel indeed writes nothing for them.
    with KmsgReader(interfaces={ib}) as reader:
        send_udp(a, dst, 5997, 41997, 20)
        assert nft_counter_packets(b, "fwtk", "in") == 20
        events = read_until(reader, lambda evs: False, timeout=2, quiet=0.5)
    assert [ev for ev in events if ev.prefix == "fwt-hidden:"] == []


def test_conntrack_table_full_line() -> None:
    """A synthetic, recognisable line written to /dev/kmsg (the table itself is global)."""
    tag = f"fwtop-test-{secrets.token_hex(3)}"
    with KmsgReader() as reader:
        fd = os.open("/dev/kmsg", os.O_WRONLY)
        try:
            os.write(fd, f"<4>{tag}: nf_conntrack: table full, dropping packet\n".encode())
        finally:
            os.close(fd)
        events = read_until(reader, lambda evs: any(ev.reason for ev in evs), timeout=5)
    full = [ev for ev in events if ev.reason == "conntrack table full"]
    assert full and full[0].source == "kmsg" and full[0].src is None


@needs("tail")
def test_follows_a_syslog_file(tmp_path: Path) -> None:
    log = tmp_path / "kern.log"
    log.write_text("Nov 23 19:00:00 h kernel: [ 1.0] old line IN=x OUT= SRC=1.1.1.1 "
                   "DST=1.1.1.2 LEN=20 PROTO=UDP SPT=1 DPT=2 \n")
    line = ("Nov 23 19:17:01 h kernel: [ 2.5] fwt-file: IN=eth9 OUT= SRC=10.62.30.1 "
            "DST=10.62.30.2 LEN=60 TOS=0x00 PREC=0x00 TTL=64 ID=1 DF PROTO=TCP SPT=40000 "
            "DPT=22 WINDOW=64240 RES=0x00 SYN URGP=0 \n")
    with KmsgReader(interfaces={"eth9"}, path=str(log)) as reader:
        assert reader.mode == "logfile"
        time.sleep(0.5)  # tail starts at the end: the old line is not news
        with log.open("a") as f:
            f.write(line)
            f.write("Nov 23 19:17:01 h kernel: [ 2.6] unrelated IN=eth0 OUT= SRC=1.1.1.1 "
                    "DST=1.1.1.2 LEN=20 PROTO=UDP SPT=1 DPT=2 \n")
            f.write("Nov 23 19:17:01 h kernel: [ 2.7] broken IN=eth9 OUT= SRC=10.62.30.999 "
                    "DST=10.62.30.2 LEN=20 PROTO=UDP SPT=1 DPT=2 \n")
        events = read_until(reader, lambda evs: len(evs) >= 1, timeout=10)
        time.sleep(0.3)
        events += reader.read()
        stats = reader.stats()
    assert [(ev.source, ev.prefix, ev.dport, ev.tcp_flags) for ev in events] == \
        [("logfile", "fwt-file:", 22, "SYN")]
    assert reader.filtered == 1 and stats.malformed == 1 and stats.source == "logfile"
    assert reader._proc is None  # the tail process is gone


def test_no_source_at_all_is_a_clear_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-kmsg")
    with pytest.raises(KmsgError, match="cannot read kernel log lines"):
        KmsgReader(path=missing, journal=False, log_files=(str(tmp_path / "nope.log"),))
    assert kmsg.LOG_ALL_NETNS.endswith("nf_log_all_netns")


# --- the drop-reason tracepoint -------------------------------------------------------------

tp_available, tp_reason = tracepoint.available()
needs_tracepoint = pytest.mark.skipif(not tp_available, reason=tp_reason or "")


@needs_tracepoint
def test_tracepoint_sees_policy_drops_without_any_log_rule(
        pair: tuple[str, str, str, str]) -> None:
    a, b, _, ib = pair
    dst = net_of(b, ib)
    ns_run(b, "nft", "-f", "-", input="""
table inet fwtk {
  chain in { type filter hook input priority 0; policy drop; }
}
""")
    with tracepoint.DropReasonTracepoint() as tp:
        instance = tp.instance
        assert os.path.isdir(instance)
        assert Path(instance, "events/skb/kfree_skb/filter").read_text().strip() == \
            f"reason == {tp.reason_number}"
        send_udp(a, dst, 5996, 41996, 50)
        events: list[DropEvent] = []
        deadline = time.monotonic() + 10
        while len(events) < 50 and time.monotonic() < deadline:
            events += tp.read()
            time.sleep(0.05)
        stats = tp.stats()
    # Host-wide: other namespaces' drops may add more, never fewer.
    assert len(events) >= 50
    assert all(ev.source == "tracepoint" and ev.reason == "NETFILTER_DROP" for ev in events)
    assert sum(1 for ev in events if ev.family == "ip") >= 50
    assert stats.received == len(events) and stats.running
    assert not os.path.exists(instance)  # removed on close


@needs_tracepoint
def test_tracepoint_counts_what_its_ring_lost(pair: tuple[str, str, str, str]) -> None:
    a, b, _, ib = pair
    dst = net_of(b, ib)
    ns_run(b, "nft", "-f", "-", input="""
table inet fwtk {
  chain in { type filter hook input priority 0; policy drop; }
}
""")
    sent = 20_000
    # A tiny ring (one page per CPU), not read while the burst runs.
    with tracepoint.DropReasonTracepoint(buffer_kb=8) as tp:
        send_udp(a, dst, 5995, 41995, sent)
        time.sleep(0.3)
        events: list[DropEvent] = []
        while batch := tp.read():
            events += batch
        tp._stats_at = 0.0  # stats() rereads the ring's counters at most twice a second
        stats = tp.stats()
    print(f"\ntracepoint burst: sent {sent}, read {len(events)}, lost {stats.lost}")
    assert stats.lost > 0
    # Host-wide: other namespaces' drops can only add to what was read or lost.
    assert len(events) + stats.lost >= sent


@needs_tracepoint
def test_tracepoint_removes_stale_instances_of_dead_fwtops() -> None:
    root = tracepoint.tracefs_root()
    assert root is not None
    proc = subprocess.Popen(["true"])
    proc.wait()
    dead = proc.pid  # a pid that has just exited
    stale = os.path.join(root, "instances", f"fwtop-{dead}")
    os.mkdir(stale)
    try:
        with tracepoint.DropReasonTracepoint() as tp:
            assert not os.path.exists(stale)
            assert os.path.basename(tp.instance) == f"fwtop-{os.getpid()}"
            with tracepoint.DropReasonTracepoint() as second:  # two readers in one process
                assert second.instance != tp.instance
            assert not os.path.exists(second.instance)
    finally:
        if os.path.exists(stale):
            os.rmdir(stale)


def test_tracepoint_format_parsing() -> None:
    fmt = ('print fmt: "reason: %s", __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, '
           '{ 77, "NETFILTER_DROP" }, { 78, "OTHERHOST" })')
    assert tracepoint.drop_reason_number(fmt) == 77
    assert tracepoint.drop_reason_number("no symbols here") is None
    line = ("          <idle>-0       [001] ..s1.  1234.567890: kfree_skb: skbaddr=00000000abcd "
            "rx_sk=0000000000000000 protocol=34525 location=nft_do_chain+0x5ad/0x610 "
            "reason: NETFILTER_DROP")
    ev = tracepoint.parse_trace_line(line, 1.0, 2.0)
    assert ev is not None and (ev.family, ev.reason, ev.source) == ("ip6", "NETFILTER_DROP",
                                                                    "tracepoint")
    assert tracepoint.parse_trace_line("CPU:1 [LOST 42 EVENTS]", 1.0, 2.0) is None
    assert tracepoint._lost_marker("CPU:1 [LOST 42 EVENTS]") == 42
