"""Real-kernel tests of fwtop.sources.nflog: NFLOG + DROP rules in a throwaway namespace.

Two namespaces joined by a veth pair (both ends inside them, never the host's): a sender and a
receiver whose firewall logs to NFLOG and drops. The reader runs on a thread that entered the
receiver; the traffic tests check fwtop's count against the kernel's own rule counter there.
Subnets 10.61.10-15.x and fd61:10::/64.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from fwtop.core.events import DropEvent
from fwtop.firewall import netns
from fwtop.sources.nflog import NflogError, NflogReader
from tests.conftest import Namespaces, needs, ns_run

pytestmark = [pytest.mark.kernel, needs("ip", "nft", "iptables-nft", "iptables-nft-save")]

COUNT = 400


@dataclass
class Pair:
    sender: str
    receiver: str
    sender_if: str
    receiver_if: str
    src: str
    dst: str


def make_pair(namespaces: Namespaces, subnet: int) -> Pair:
    a, b = namespaces.new("nfl"), namespaces.new("nfl")
    src, dst = f"10.61.{subnet}.1", f"10.61.{subnet}.2"
    ia, ib = namespaces.veth(a, b, f"{src}/24", f"{dst}/24")
    return Pair(a, b, ia, ib, src, dst)


@dataclass
class Collector:
    """A reader living on its own thread inside a namespace, collecting until told to stop."""

    ns: str
    groups: list[int]
    reader_kwargs: dict[str, int] = field(default_factory=dict)
    events: list[DropEvent] = field(default_factory=list)
    reader: NflogReader | None = None
    error: BaseException | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    paused: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        try:
            netns.enter(netns.NetNamespace(self.ns, f"/run/netns/{self.ns}"))
            self.reader = NflogReader(self.groups, **self.reader_kwargs)
        except BaseException as exc:
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        with self.reader:
            while not self.stop.is_set():
                if self.paused.is_set():
                    time.sleep(0.01)
                    continue
                self.events.extend(self.reader.read(timeout=0.05))

    def wait_for(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.events) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # anything beyond n would show up now


@pytest.fixture
def collect() -> Iterator[Callable[..., Collector]]:
    started: list[tuple[Collector, threading.Thread]] = []

    def start(ns: str, groups: list[int], **kwargs: int) -> Collector:
        c = Collector(ns, groups, kwargs)
        t = threading.Thread(target=c.run, name=f"nflog-{ns}", daemon=True)
        t.start()
        started.append((c, t))
        c.ready.wait(10)
        if c.error is not None:
            raise c.error
        return c

    yield start
    for c, t in started:
        c.stop.set()
        t.join(5)


def send_udp(ns: str, dst: str, dport: int, sports: range) -> None:
    """One datagram from each source port, so every event can be matched to its packet."""

    def work() -> None:
        fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
        for sport in sports:
            with socket.socket(fam, socket.SOCK_DGRAM) as s:
                s.bind(("", sport))
                s.sendto(b"fwtop-kernel-test", (dst, dport))

    netns.run_in(netns.resolve(ns), work)


def iptables_counter(ns: str, needle: str) -> int:
    out = ns_run(ns, "iptables-nft-save", "-c").stdout
    for line in out.splitlines():
        if needle in line:
            m = re.match(r"\[(\d+):\d+\]", line)
            assert m, line
            return int(m.group(1))
    raise AssertionError(f"no rule with {needle!r} in {out}")


def nft_log_counter(ns: str, group: int) -> int:
    data = json.loads(ns_run(ns, "nft", "-j", "list", "ruleset").stdout)
    for item in data["nftables"]:
        exprs = item.get("rule", {}).get("expr", [])
        if any(e.get("log", {}).get("group") == group for e in exprs):
            return sum(e["counter"]["packets"] for e in exprs if "counter" in e)
    raise AssertionError(f"no log group {group} rule")


def assert_events(events: list[DropEvent], *, src: str, dst: str, sports: range, dport: int,
                  prefix: str, group: int, iif: str, family: str = "ip") -> None:
    assert sorted(e.sport for e in events) == list(sports)  # each packet exactly once
    for e in events:
        assert (e.source, e.family, e.proto, e.src, e.dst, e.dport) == (
            "nflog", family, "udp", src, dst, dport)
        assert (e.prefix, e.group, e.hook, e.iif, e.oif) == (prefix, group, "input", iif, None)


def test_iptables_nflog_drop_events_match_kernel_counter(
        namespaces: Namespaces, collect: Callable[..., Collector]) -> None:
    p = make_pair(namespaces, 10)
    ns_run(p.receiver, "iptables-nft", "-A", "INPUT", "-p", "udp", "--dport", "9999", "-j",
           "NFLOG", "--nflog-group", "5", "--nflog-prefix", "t-drop")
    ns_run(p.receiver, "iptables-nft", "-A", "INPUT", "-p", "udp", "--dport", "9999", "-j",
           "DROP")
    c = collect(p.receiver, [5])
    sports = range(41000, 41000 + COUNT)
    send_udp(p.sender, p.dst, 9999, sports)
    c.wait_for(COUNT)
    assert c.reader is not None
    stats = c.reader.stats()
    assert (len(c.events), stats.received, stats.lost, stats.malformed) == (COUNT, COUNT, 0, 0)
    assert_events(c.events, src=p.src, dst=p.dst, sports=sports, dport=9999, prefix="t-drop",
                  group=5, iif=p.receiver_if)
    assert iptables_counter(p.receiver, "--nflog-group 5") == COUNT
    assert iptables_counter(p.receiver, "-j DROP") == COUNT
    assert stats.detail == "groups 5"


def test_nft_log_group_two_groups_one_socket_ipv4_and_ipv6(
        namespaces: Namespaces, collect: Callable[..., Collector]) -> None:
    p = make_pair(namespaces, 11)
    ns_run(p.sender, "ip", "-6", "addr", "add", "fd61:10::1/64", "dev", p.sender_if, "nodad")
    ns_run(p.receiver, "ip", "-6", "addr", "add", "fd61:10::2/64", "dev", p.receiver_if, "nodad")
    ns_run(p.receiver, "nft", "-f", "-", input="""table inet fwt {
        chain input {
            type filter hook input priority 0; policy accept;
            ip daddr 10.61.11.2 udp dport 9999 counter log group 6 prefix "n-drop" drop
            ip6 daddr fd61:10::2 udp dport 9999 counter log group 7 prefix "n-drop6" drop
        }
    }
    """)
    c = collect(p.receiver, [6, 7])
    sports = range(42000, 42000 + COUNT)
    sports6 = range(43000, 43050)
    send_udp(p.sender, p.dst, 9999, sports)
    send_udp(p.sender, "fd61:10::2", 9999, sports6)
    c.wait_for(COUNT + len(sports6))
    assert c.reader is not None
    stats = c.reader.stats()
    assert (stats.received, stats.lost, stats.malformed) == (COUNT + 50, 0, 0)
    v4 = [e for e in c.events if e.group == 6]
    v6 = [e for e in c.events if e.group == 7]
    assert len(v4) + len(v6) == len(c.events)
    assert_events(v4, src=p.src, dst=p.dst, sports=sports, dport=9999, prefix="n-drop", group=6,
                  iif=p.receiver_if)
    assert_events(v6, src="fd61:10::1", dst="fd61:10::2", sports=sports6, dport=9999,
                  prefix="n-drop6", group=7, iif=p.receiver_if, family="ip6")
    assert nft_log_counter(p.receiver, 6) == COUNT
    assert nft_log_counter(p.receiver, 7) == len(sports6)


def test_overrun_is_counted_exactly_by_sequence_gaps(
        namespaces: Namespaces, collect: Callable[..., Collector]) -> None:
    """A tiny receive buffer and a reader that does not read: the kernel drops messages. ENOBUFS
    only says "some"; the next message's NFULA_SEQ says exactly how many."""
    p = make_pair(namespaces, 12)
    ns_run(p.receiver, "iptables-nft", "-A", "INPUT", "-p", "udp", "--dport", "9999", "-j",
           "NFLOG", "--nflog-group", "8")
    ns_run(p.receiver, "iptables-nft", "-A", "INPUT", "-p", "udp", "--dport", "9999", "-j",
           "DROP")
    c = collect(p.receiver, [8], rcvbuf=16384)
    c.paused.set()
    time.sleep(0.1)
    send_udp(p.sender, p.dst, 9999, range(44000, 44000 + COUNT))
    c.paused.clear()
    time.sleep(0.5)
    assert c.reader is not None
    before = c.reader.stats()
    assert 0 < before.received < COUNT
    assert before.lost >= 1  # ENOBUFS seen; the exact number is not known yet
    assert "lower bound" in (before.detail or "")
    # One more packet: its sequence number reveals the gap at the tail of the burst.
    send_udp(p.sender, p.dst, 9999, range(45000, 45001))
    c.wait_for(before.received + 1)
    after = c.reader.stats()
    kernel = iptables_counter(p.receiver, "--nflog-group 8")
    assert kernel == COUNT + 1
    assert after.received + after.lost == kernel
    assert c.events[-1].sport == 45000
    assert "ENOBUFS" in (after.detail or "")
    assert "lower bound" not in (after.detail or "")


def test_group_bound_elsewhere_gives_clear_error(namespaces: Namespaces) -> None:
    ns = netns.resolve(namespaces.new("nfl"))
    first = netns.run_in(ns, lambda: NflogReader([9]))
    try:
        with pytest.raises(NflogError) as err:
            netns.run_in(ns, lambda: NflogReader([3, 9]))
        assert str(err.value) == "NFLOG group 9 is already bound by another program (ulogd?)"
        # The failed reader released group 3 again: a third one can take it.
        netns.run_in(ns, lambda: NflogReader([3])).close()
    finally:
        first.close()
    # Closing released group 9.
    netns.run_in(ns, lambda: NflogReader([9])).close()


def test_unknown_interface_index_refreshes_names(
        namespaces: Namespaces, collect: Callable[..., Collector]) -> None:
    """An interface created after the reader started is named, not shown as if<N>."""
    p = make_pair(namespaces, 13)
    ns_run(p.receiver, "nft", "-f", "-", input="""table inet fwt {
        chain input {
            type filter hook input priority 0; policy accept;
            udp dport 9999 log group 4 prefix "late" drop
        }
    }
    """)
    c = collect(p.receiver, [4])
    time.sleep(1.1)  # past the reader's refresh rate limit
    _ia, ib = namespaces.veth(p.sender, p.receiver, "10.61.14.1/24", "10.61.14.2/24")
    send_udp(p.sender, "10.61.14.2", 9999, range(46000, 46003))
    c.wait_for(3)
    assert [e.iif for e in c.events] == [ib] * 3


def test_group_out_of_range() -> None:
    with pytest.raises(NflogError, match="out of range"):
        NflogReader([70000])


@needs("setpriv")
def test_without_root_says_so(namespaces: Namespaces) -> None:
    name = namespaces.new("nfl")
    code = ("from fwtop.sources.nflog import NflogReader, NflogError\n"
            "try:\n    NflogReader([5])\nexcept NflogError as e:\n    print(e)\n")
    out = ns_run(name, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                 "--inh-caps=-all", "--bounding-set=-all", sys.executable, "-c", code,
                 check=False)
    assert out.stdout.strip() == "reading NFLOG needs root (CAP_NET_ADMIN)", out.stderr


def test_ruleset_groups_seen_by_the_reader_helper(namespaces: Namespaces) -> None:
    """groups_in_ruleset on a ruleset fwtop's own loader read from the kernel."""
    from fwtop.core.model import Ruleset
    from fwtop.core.nflog import groups_in_ruleset
    from fwtop.firewall import nft

    name = namespaces.new("nfl")
    ns_run(name, "iptables-nft", "-A", "INPUT", "-p", "udp", "-j", "NFLOG", "--nflog-group", "5",
           "--nflog-prefix", "x --nflog-group 9")
    ns_run(name, "iptables-nft", "-A", "INPUT", "-p", "tcp", "-j", "NFLOG")
    ns_run(name, "nft", "-f", "-", input="""table inet fwt {
        chain input {
            type filter hook input priority 0; policy accept;
            udp dport 1 log prefix "group 12" group 6
            udp dport 2 log prefix "syslog only"
        }
    }
    """)
    tables, _warnings = netns.run_in(netns.resolve(name), nft.load)
    assert groups_in_ruleset(Ruleset(tables=tuple(tables))) == [0, 5, 6]


def test_fixed_batches_and_the_flush_timeout(
        namespaces: Namespaces, collect: Callable[..., Collector]) -> None:
    """qthresh 64 with 100 packets: one full batch, and the rest flushed by the 10 ms timeout."""
    p = make_pair(namespaces, 15)
    ns_run(p.receiver, "nft", "-f", "-", input="""table inet fwt {
        chain input {
            type filter hook input priority 0; policy accept;
            udp dport 9999 counter log group 3 prefix "batched" drop
        }
    }
    """)
    c = collect(p.receiver, [3], qthresh=64)
    send_udp(p.sender, p.dst, 9999, range(47000, 47100))
    c.wait_for(100, timeout=5)
    assert c.reader is not None
    assert (len(c.events), c.reader.stats().lost) == (100, 0)
    assert sorted(e.sport for e in c.events) == list(range(47000, 47100))
    assert nft_log_counter(p.receiver, 3) == 100


def test_adaptive_queue_threshold_follows_the_rate(namespaces: Namespaces) -> None:
    """The default reader batches about 1 ms of a group's events; the kernel takes the change."""
    ns = netns.resolve(namespaces.new("nfl"))
    reader = netns.run_in(ns, lambda: NflogReader([9, 10]))
    try:
        assert reader.queue_thresholds() == {9: 1, 10: 1}
        reader._adapt_at = time.monotonic() - 1.0
        reader._adapt()  # a second without reading: a fresh window starts
        # As if the kernel had numbered 10,000 messages of group 9 in the last 0.2 s: 50,000/s.
        reader._next_seq[9] = 10_000
        reader._adapt_at = time.monotonic() - 0.2
        reader._adapt()
        q = reader.queue_thresholds()
        assert 13 <= q[9] <= 15 and q[10] == 1  # 0.3 ms worth of events
        # A quiet window right after: a starved reader's view, so the batch size holds...
        reader._adapt_at = time.monotonic() - 0.1
        reader._adapt()
        assert reader.queue_thresholds()[9] == q[9]
        # ...until a whole hold time has passed with no window asking for more.
        for _ in range(2):
            reader._hold_since -= 1.0
            reader._adapt_at = time.monotonic() - 0.1
            reader._adapt()
        assert reader.queue_thresholds() == {9: 1, 10: 1}
        assert reader.read() == [] and reader.stats().malformed == 0
    finally:
        reader.close()
