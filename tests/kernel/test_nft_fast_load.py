"""The structure load of iptables-nft tables without nft's JSON (`fwtop.firewall.nft`).

iptables-nft tables are read from `iptables-nft-save -c` plus netlink (chains and rule handles);
the older path listed them through `nft -j list ruleset`. Real-kernel tests load the same
throwaway namespace both ways and require equal Rulesets, rule for rule; the netlink parsers
the new path uses are checked first on the recorded dumps of tests/fixtures/nftnl.
"""

from __future__ import annotations

import functools
import json
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fwtop import firewall
from fwtop.core import nftnl
from fwtop.core.iptables_syntax import parse_save
from fwtop.core.model import Ruleset
from fwtop.firewall import netns
from fwtop.firewall import nft as nft_backend
from fwtop.firewall.libnft import Nft
from fwtop.sources.nft_counters import NftCounterReader, NftNetlinkError
from tests.conftest import Namespaces, needs, ns_run

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "nftnl"
RULES_ALL = (FIX / "rules_all.bin").read_bytes()
CHAINS_ALL = (FIX / "chains_all.bin").read_bytes()
KERNEL_JSON = json.loads((FIX / "ruleset.json").read_text())["nftables"]

needs_tools = needs("ip", "nft", "iptables-nft", "ip6tables-nft", "iptables-nft-save",
                    "ip6tables-nft-save", "iptables-legacy")


# --- the parsers, on recorded dumps and synthetic bytes ----------------------------------------


def test_chain_listing_is_nft_s_own_view() -> None:
    chains: list[nftnl.ChainInfo] = []
    status = nftnl.parse_objects(CHAINS_ALL, chains=chains)
    assert status.done and not status.malformed and not status.error
    want = [o["chain"] for o in KERNEL_JSON if "chain" in o]
    assert [(c.family, c.table, c.name) for c in chains] == [
        (w["family"], w["table"], w["name"]) for w in want]
    for c, w in zip(chains, want, strict=True):
        # hook names per family as nft spells them (arp input, netdev ingress, ...)
        assert (c.hook, c.priority, c.type, c.policy) == (
            w.get("hook"), w.get("prio"), w.get("type"), w.get("policy")), c


def test_chain_handles_in_rule_order_and_other_chains_refused() -> None:
    got: list[int] = []
    status = nftnl.parse_chain_handles(RULES_ALL, "filter", "INPUT", got)
    # the dump holds every table: ip filter INPUT and ip6 filter INPUT (a real per-chain dump
    # is filtered by family in the kernel), everything else is another chain
    want = [o["rule"]["handle"] for o in KERNEL_JSON if "rule" in o
            and (o["rule"]["table"], o["rule"]["chain"]) == ("filter", "INPUT")]
    assert got == want == [5, 6, 7, 2]
    assert status.rules_seen == 20 and status.malformed == 20 - len(want)
    assert status.done and status.error is None


def test_per_chain_request_and_reply_prefix() -> None:
    table_attr = nftnl.string_attr(nftnl.NFTA_RULE_TABLE, "filter")
    request, prefix = nftnl.build_chain_rules_request(nftnl.NFPROTO_IPV4, 42, table_attr, "INPUT")
    assert request == nftnl.build_dump_request(nftnl.NFT_MSG_GETRULE, nftnl.NFPROTO_IPV4, 42,
                                               "filter", "INPUT")
    # the kernel's own reply: its first NEWRULE of ip filter INPUT starts with those bytes
    assert prefix == nftnl.chain_rule_prefix("filter", "INPUT")
    assert RULES_ALL.count(prefix) == 4  # ip and ip6 filter INPUT rules in the full dump


def _nla(nla_type: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), nla_type) + payload
    return raw + b"\x00" * ((-len(raw)) % 4)


def _msg(mtype: int, payload: bytes, seq: int = 7, flags: int = 2, family: int = 2,
         res: int = 0) -> bytes:
    body = struct.pack("=BBH", family, 0, res) + payload
    return struct.pack("=IHHII", 16 + len(body), mtype, flags, seq, 0) + body


def _rule(table: str, chain: str, handle: int, reorder: bool = False, **kw: Any) -> bytes:
    attrs = [_nla(1, table.encode() + b"\0"), _nla(2, chain.encode() + b"\0"),
             _nla(3, struct.pack(">Q", handle))]
    if reorder:
        attrs.reverse()
    return _msg(nftnl.MSG_NEWRULE, b"".join(attrs), **kw)


DONE = struct.pack("=IHHIIi", 20, nftnl.NLMSG_DONE, 2, 7, 0, 0)


def test_chain_handles_slow_path_done_errors_and_strays() -> None:
    out: list[int] = []
    buf = (_rule("t", "c", 1) + _rule("t", "c", 2, reorder=True) + _rule("t", "other", 3)
           + _rule("t", "c", 4, seq=99) + _rule("t", "c", 5, flags=2 | nftnl.NLM_F_DUMP_INTR))
    status = nftnl.parse_chain_handles(buf, "t", "c", out, seq=7)
    assert out == [1, 2, 5]
    assert (status.malformed, status.stale, status.interrupted, status.done) == (1, 1, True, False)
    assert nftnl.parse_chain_handles(DONE, "t", "c", out, seq=7).done
    err = struct.pack("=IHHIIi", 36, nftnl.NLMSG_ERROR, 0, 7, 0, -2) + b"\0" * 16
    assert nftnl.parse_chain_handles(err, "t", "c", out, seq=7).error == 2
    mixed = _rule("t", "c", 6, res=1) + _rule("t", "c", 7, res=2)
    assert nftnl.parse_chain_handles(mixed, "t", "c", out).res_mixed


def test_table_and_named_set_listings() -> None:
    tables: list[nftnl.TableKey] = []
    sets: list[nftnl.SetKey] = []
    buf = (_msg(nftnl.MSG_NEWTABLE, _nla(1, b"filter\0"))
           + _msg(nftnl.MSG_NEWTABLE, _nla(1, b"native\0"), family=1)
           + _msg(nftnl.MSG_NEWSET, _nla(1, b"native\0") + _nla(2, b"blk\0")
                  + _nla(3, struct.pack(">I", 0)), family=1)
           # the `{ 53, 123 }` of a rule: anonymous, left out as nft's listings leave it out
           + _msg(nftnl.MSG_NEWSET, _nla(1, b"filter\0") + _nla(2, b"__set0\0")
                  + _nla(3, struct.pack(">I", nftnl.NFT_SET_ANONYMOUS)))
           + DONE)
    status = nftnl.parse_objects(buf, seq=7, tables=tables, sets=sets)
    assert tables == [("ip", "filter"), ("inet", "native")]
    assert sets == [("inet", "native", "blk")]
    assert status.done and not status.malformed


@settings(max_examples=300)
@given(st.binary(max_size=600), st.integers(0, len(RULES_ALL)), st.integers(0, len(CHAINS_ALL)))
def test_parsers_never_raise(junk: bytes, cut_rules: int, cut_chains: int) -> None:
    for buf in (junk, RULES_ALL[:cut_rules], CHAINS_ALL[:cut_chains], RULES_ALL[cut_rules:]):
        nftnl.parse_chain_handles(buf, "filter", "INPUT", [])
        nftnl.parse_objects(buf, tables=[], chains=[], sets=[])


# --- both paths on a real kernel ----------------------------------------------------------------

IPTABLES = """\
*filter
:INPUT DROP [11:1100]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [3:300]
:MYCHAIN - [0:0]
:EMPTY - [0:0]
[7:700] -A INPUT -i lo -j ACCEPT
[2:120] -A INPUT -p tcp -m tcp --dport 22 -m comment --comment "ssh in" -j ACCEPT
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
[5:300] -A INPUT -s 10.0.0.0/8 -j MYCHAIN
-A INPUT -p icmp -m icmp --icmp-type echo-request -j ACCEPT
-A MYCHAIN -p udp -m multiport --dports 53,123 -m comment --comment "dns and ntp" -j ACCEPT
-A MYCHAIN -m limit --limit 5/min -j LOG --log-prefix "my drop: "
-A MYCHAIN -m statistic --mode random --probability 0.50000000000 -j RETURN
-A MYCHAIN -s 192.0.2.0/24 -j DROP
-A OUTPUT -o lo -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SVC-X - [0:0]
-A PREROUTING -d 10.96.0.10/32 -p tcp -m comment --comment "ns/svc:http cluster IP" \
-m tcp --dport 80 -j KUBE-SVC-X
-A KUBE-SVC-X -p tcp -j DNAT --to-destination 10.244.1.5:8080
-A POSTROUTING -o eth0 -j MASQUERADE
COMMIT
*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -p udp --dport 33434:33534 -j CT --notrack
COMMIT
*mangle
:PREROUTING ACCEPT [0:0]
-A PREROUTING -p tcp --tcp-flags SYN,RST SYN -j MARK --set-xmark 0x1/0xffffffff
COMMIT
"""
IP6TABLES = """*filter
:INPUT ACCEPT [0:0]
:V6 - [0:0]
-A INPUT -p ipv6-icmp -j ACCEPT
-A INPUT -j V6
-A V6 -s 2001:db8::/32 -p udp -m udp --dport 546 -m comment --comment "dhcpv6 client" -j ACCEPT
-A V6 -j REJECT --reject-with icmp6-port-unreachable
COMMIT
"""
NATIVE = """
table inet native {
  set blk { type ipv4_addr; elements = { 198.51.100.7 }; }
  chain c {
    type filter hook input priority 10; policy accept;
    ip saddr @blk counter drop comment "blocked hosts"
    udp dport 7003 counter accept comment "native rule"
  }
}
table inet firewalld {
  chain filter_INPUT {
    type filter hook input priority filter + 10; policy accept; jump filter_IN_public;
  }
  chain filter_IN_public { jump filter_IN_public_allow; }
  chain filter_IN_public_allow { tcp dport 22 ct state new,untracked accept; }
}
table ip firewalld {
  chain nat_PRE_public { ip daddr 203.0.113.1 counter; }
}
table inet filter {
  chain input { type filter hook input priority 0; policy accept; udp dport 5353 drop; }
}
"""


def _load(ns: str, *, json_path: bool) -> Ruleset:
    """load_ruleset() in `ns`, through the JSON path for iptables-nft tables if asked."""
    original = nft_backend.load
    if json_path:
        nft_backend.load = functools.partial(original, _xtables_json=True)
    try:
        return netns.run_in(netns.resolve(ns), firewall.load_ruleset)
    finally:
        nft_backend.load = original


@pytest.fixture
def mixed(namespaces: Namespaces) -> str:
    ns = namespaces.new("fast")
    ns_run(ns, "iptables-nft-restore", "-c", input=IPTABLES)
    ns_run(ns, "ip6tables-nft-restore", "-c", input=IP6TABLES)
    ns_run(ns, "nft", "-f", "-", input=NATIVE)
    # a named set in an iptables-nft table: the save cannot show it, so that table is listed
    # through nft as before
    ns_run(ns, "nft", "add", "set", "ip", "mangle", "marks", "{ type mark; }")
    return ns


@pytest.fixture
def listed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every nft listing the load runs."""
    commands: list[str] = []
    original = nft_backend._list_big

    def spy(nft: Nft, command: str, flags: int) -> str:
        commands.append(command)
        return original(nft, command, flags)

    monkeypatch.setattr(nft_backend, "_list_big", spy)
    yield commands


def _kernel_handles(ns: str, family: str, table: str) -> dict[str, list[int]]:
    data = json.loads(ns_run(ns, "nft", "-j", "-a", "list", "table", family, table).stdout)
    out: dict[str, list[int]] = {}
    for o in data["nftables"]:
        if "chain" in o:
            out.setdefault(o["chain"]["name"], [])
        elif "rule" in o:
            out.setdefault(o["rule"]["chain"], []).append(o["rule"]["handle"])
    return out


@pytest.mark.kernel
@needs_tools
def test_mixed_namespace_gives_the_same_ruleset_both_ways(mixed: str,
                                                          listed: list[str]) -> None:
    old = _load(mixed, json_path=True)
    assert "list ruleset" in listed
    listed.clear()
    new = _load(mixed, json_path=False)
    assert new == old
    assert not new.warnings

    # The iptables-nft tables were not listed through nft (mangle has a set: it was).
    assert "list ruleset" not in listed and "list tables" not in listed
    assert not [c for c in listed if c.split()[2:] in (
        ["ip", "filter"], ["ip", "nat"], ["ip", "raw"], ["ip6", "filter"])]
    assert "list table ip mangle" in listed

    tables = {(t.family, t.name): t for t in new.tables}
    assert {k: t.backend for k, t in tables.items()} == {
        ("ip", "filter"): "iptables-nft", ("ip", "nat"): "iptables-nft",
        ("ip", "raw"): "iptables-nft", ("ip", "mangle"): "iptables-nft",
        ("ip6", "filter"): "iptables-nft", ("inet", "native"): "nft",
        ("inet", "firewalld"): "firewalld", ("ip", "firewalld"): "firewalld",
        ("inet", "filter"): "nft"}
    for key in (("ip", "filter"), ("ip", "nat"), ("ip6", "filter")):
        kernel_handles = _kernel_handles(mixed, *key)
        assert {c.name: [r.handle for r in c.rules] for c in tables[key].chains} == kernel_handles
    inp = next(c for c in tables[("ip", "filter")].chains if c.name == "INPUT")
    assert [r.position for r in inp.rules] == [1, 2, 3, 4, 5]
    assert inp.rules[1].comment == "ssh in" and inp.rules[1].counters is not None
    assert (inp.rules[1].counters.packets, inp.rules[0].counters.packets) == (2, 7)  # type: ignore[union-attr]
    assert inp.rules[3].verdict == "jump" and inp.rules[3].target == "MYCHAIN"
    assert inp.policy is not None and inp.policy.verdict == "drop"
    assert inp.policy.counters is not None and inp.policy.counters.packets == 11
    assert (inp.hook, inp.priority, inp.type) == ("input", 0, "filter")
    assert inp.rules[1].key == f"iptables-nft:ip:filter:INPUT:{inp.rules[1].handle}"
    zones = {c.name: c.zone for c in tables[("inet", "firewalld")].chains}
    assert zones["filter_IN_public_allow"] == "public"

    # The counter poll reads the same handles: every counted iptables-nft rule has its key.
    def poll() -> set[str]:
        with NftCounterReader() as reader:
            dump = reader.dump()
        return {f"iptables-nft:{f}:{t}:{c}:{h}" for f, t, c, h in dump.rules}

    polled = netns.run_in(netns.resolve(mixed), poll)
    xt_keys = {r.key for r in new.rules() if r.backend == "iptables-nft"}
    assert xt_keys and xt_keys <= polled


@pytest.mark.kernel
@needs_tools
def test_native_tables_only(namespaces: Namespaces, listed: list[str]) -> None:
    ns = namespaces.new("nat")
    ns_run(ns, "nft", "-f", "-", input=NATIVE)
    old = _load(ns, json_path=True)
    listed.clear()
    new = _load(ns, json_path=False)
    assert new == old and len(new.tables) == 4
    # the table list came from netlink: `nft list tables` lists every rule of the namespace
    assert "list tables" not in listed and listed.count("list ruleset") == 1


@pytest.mark.kernel
@needs_tools
def test_a_change_during_the_read_is_read_again(mixed: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[str] = []
    original = nft_backend._start_save

    def start_and_change(family: str) -> Any:
        started.append(family)
        if len(started) == 1:
            # a commit after the generation was read: this first read must not be trusted
            subprocess.run(["iptables-nft", "-I", "MYCHAIN", "-p", "udp", "--dport", "9",
                            "-m", "comment", "--comment", "inserted meanwhile", "-j", "DROP"],
                           check=True)
        return original(family)

    monkeypatch.setattr(nft_backend, "_start_save", start_and_change)
    new = _load(mixed, json_path=False)
    assert started == ["ip", "ip6", "ip", "ip6"]
    monkeypatch.setattr(nft_backend, "_start_save", original)
    assert new == _load(mixed, json_path=True)
    assert any(r.comment == "inserted meanwhile" and r.position == 1 for r in new.rules())


@pytest.mark.kernel
@needs_tools
def test_a_ruleset_that_keeps_changing_pairs_by_counts(mixed: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[int] = []
    original = nft_backend._read_xtables

    def never_consistent(*args: Any, **kwargs: Any) -> Any:
        got = original(*args, **kwargs)
        reads.append(1)
        got.consistent = False
        return got

    monkeypatch.setattr(nft_backend, "_read_xtables", never_consistent)
    new = _load(mixed, json_path=False)
    assert len(reads) == 2
    # the second read is taken wherever every chain has as many rules in the kernel as in the
    # save, which is all the JSON path ever checked
    assert new == _load(mixed, json_path=True)


@pytest.mark.kernel
@needs_tools
def test_save_and_kernel_disagreeing_is_read_through_nft(mixed: str, listed: list[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    original = parse_save

    def drop_last_mychain_rule(text: str) -> Any:
        tables = original(text)
        out = []
        for t in tables:
            rules = list(t.rules)
            if t.name == "filter" and any(r.chain == "MYCHAIN" for r in rules):
                last = max(i for i, r in enumerate(rules) if r.chain == "MYCHAIN")
                del rules[last]
            out.append(type(t)(t.name, t.policies, t.chains, tuple(rules)))
        return out

    monkeypatch.setattr(nft_backend, "parse_save", drop_last_mychain_rule)
    old = _load(mixed, json_path=True)
    listed.clear()
    new = _load(mixed, json_path=False)
    assert new == old
    assert new.warnings == ("ip filter MYCHAIN: nft and iptables-nft-save disagree (ruleset "
                            "changed while reading); comments may be missing",)
    assert "list table ip filter" in listed


@pytest.mark.kernel
@needs_tools
def test_without_netlink_everything_goes_through_nft(mixed: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> NftCounterReader:
        raise NftNetlinkError("need root (CAP_NET_ADMIN) to read nf_tables")

    old = _load(mixed, json_path=True)
    monkeypatch.setattr(nft_backend, "NftCounterReader", refuse)
    assert _load(mixed, json_path=False) == old


def test_save_children_are_reaped_when_a_dump_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """A netlink failure mid-read must not leave iptables-nft-save running or its files open."""
    runs: list[Any] = []

    class Proc:
        def wait(self) -> int:
            runs.append("waited")
            return 0

    def fake_start(family: str) -> Any:
        out = tempfile.TemporaryFile()
        err = tempfile.TemporaryFile()
        run = nft_backend._SaveRun(family, Proc(), out, err)  # type: ignore[arg-type]
        runs.append(run)
        return run

    class Reader:
        def listing(self, *args: Any) -> Any:
            raise NftNetlinkError("boom")

    monkeypatch.setattr(nft_backend, "_start_save", fake_start)
    with pytest.raises(NftNetlinkError):
        nft_backend._read_xtables(Reader(), 1, [("ip", "filter")])  # type: ignore[arg-type]
    assert runs[1:] == ["waited"] and runs[0].out.closed and runs[0].err.closed
