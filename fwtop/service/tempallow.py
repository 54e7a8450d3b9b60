"""Temporary allows end to end: plan (evaluator), re-check, write, verify, journal, janitor;
list, extend, revert, and the cleanup every fwtop start runs.

The kernel closes the hole at the deadline by itself (set element timeout, `-m time
--datestop`); the janitor and the start-up cleanup only remove the then-inert leftovers. On
firewalld the firewalld daemon closes it (its `--timeout`); the journal still records it, so
list, extend and revert work the same, and the janitor finds it gone.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from fwtop.core.evaluator import Evaluator, NetContext, Packet, Verdict
from fwtop.core.firewalld import FirewalldError
from fwtop.core.model import Rule
from fwtop.core.tempallow import AllowError, AllowRequest, Plan, build_plan, check_request
from fwtop.firewall.netns import NetnsError, resolve, run_in
from fwtop.service.journal import Journal, Record

T = TypeVar("T")


def ttl_cap() -> int:
    try:
        return int(os.environ.get("FWTOP_TTL_CAP", "3600"))
    except ValueError:
        return 3600


def _in(netns: str | None, fn: Callable[[], T]) -> T:
    ns = resolve(netns)
    return run_in(ns, fn) if ns is not None else fn()


def _probe_packet(req: AllowRequest, net: NetContext) -> Packet:
    """The packet to evaluate for the request: its source's first address, its destination or
    (when none was given) an address of the namespace of the same family."""
    src_net = req.source_network()
    family6 = src_net is not None and src_net.version == 6
    src = str(src_net.network_address) if src_net is not None else (
        "::2" if family6 else "192.0.2.1")
    dst = req.dst
    if dst is None:
        local = [a for a, dev in net.local if dev != "lo" and (":" in a) == family6]
        if req.iif:
            local = [a for a, dev in net.local if dev == req.iif and (":" in a) == family6] \
                or local
        if not local:
            raise AllowError("give --dst: this namespace has no address to evaluate against")
        dst = local[0]
    return Packet(req.proto, src, dst, None, req.dport, iif=req.iif, hook=req.hook,
                  icmp_type=8 if req.proto == "icmp" else 128 if req.proto == "icmpv6" else None,
                  icmp_code=0 if req.proto in ("icmp", "icmpv6") else None)


@dataclass(slots=True)
class Preview:
    plan: Plan
    verdict: Verdict  # why it is dropped now
    packet: Packet


def preview(req: AllowRequest, netns: str | None, now: float | None = None) -> Preview:
    """What `allow` would write, computed in the namespace; nothing changes."""
    check_request(req, ttl_cap())

    def work() -> Preview:
        from fwtop.firewall import load_ruleset
        from fwtop.firewall.routing import net_context

        net = net_context()
        pkt = _probe_packet(req, net)
        ev = Evaluator(load_ruleset())
        v = ev.evaluate(pkt, net)
        rules: tuple[Rule, ...] = ()
        if v.policy is not None:
            p = v.policy
            chain = ev.chains.get((p.backend, p.family, p.table, p.chain))
            rules = chain.rules if chain is not None else ()
        return Preview(build_plan(req, v, now or time.time(), chain_rules=rules), v, pkt)

    return _in(netns, work)


@dataclass(slots=True)
class Applied:
    record: Record
    plan: Plan
    still_dropped: str | None  # where the flow would still be dropped after the allow


def apply(prev: Preview, netns: str | None, journal: Journal | None = None,
          start_janitor: bool = True) -> Applied:
    """Re-check that the ruleset still drops the flow where the preview said, write the allow
    in one transaction, verify it with the evaluator, record it, and start the janitor."""
    journal = journal or Journal()
    plan = prev.plan
    bus = _bus() if plan.backend == "firewalld" else None
    record = Record(plan.id, "allow", time.time(), plan.expires_at, netns, plan.backend,
                    plan.family, plan.table, plan.chain, None, plan.set_name,
                    list(plan.ipt_argv), plan.text, _flow(prev, plan, bus), state="pending")
    with journal.locked() as records:  # first the record: a crash mid-write leaves a trace
        records.append(record)

    def work() -> tuple[int | None, str | None]:
        from fwtop.firewall import load_ruleset
        from fwtop.firewall import tempallow as fw
        from fwtop.firewall.routing import net_context

        net = net_context()
        now_v = Evaluator(load_ruleset()).evaluate(prev.packet, net)
        if _decider(now_v) != _decider(prev.verdict):
            raise AllowError("the ruleset changed since the preview (the flow is now "
                             f"{now_v.verdict} by {_decider(now_v) or 'nothing'}): "
                             "nothing was written; preview again")
        handle = fw.apply(plan, bus)
        if plan.backend == "firewalld":
            # firewalld's timer started when it took the rule, not at the preview.
            plan.expires_at = time.time() + plan.ttl
            from fwtop.firewall.firewalld import daemon_pid

            fw_pid[0] = daemon_pid(bus)  # a later restart of firewalld can then be told
        after = Evaluator(load_ruleset()).evaluate(prev.packet, net)
        still = None
        if after.verdict in ("drop", "reject"):
            still = (f"{after.verdict} by {_decider(after)}: another base chain or table "
                     f"drops it too; allow there as well (fwtop explain shows the path)")
        return handle, still

    fw_pid: list[int | None] = [None]
    try:
        handle, still = _in(netns, work)
    except BaseException:
        with journal.locked() as records:
            for r in records:
                if r.id == plan.id:
                    r.state, r.removed_at, r.note = "removed", time.time(), "not written"
        raise
    with journal.locked() as records:
        for r in records:
            if r.id == plan.id:
                r.state, r.handle, r.expires_at = "active", handle, plan.expires_at
                if plan.backend == "firewalld":
                    r.flow = {**r.flow, "firewalld_pid": fw_pid[0]}
                record = r
    if start_janitor:
        spawn_janitor()
    return Applied(record, plan, still)


def _decider(v: Verdict) -> str | None:
    if v.verdict not in ("drop", "reject"):
        return None
    if v.rule is not None:
        return f"{v.rule.backend} {v.rule.family} {v.rule.table} {v.rule.chain} #" \
               f"{v.rule.position} `{v.rule.text}`"
    if v.policy is not None:
        return f"the policy of {v.policy.backend} {v.policy.family} {v.policy.table} " \
               f"{v.policy.chain}"
    return None


def _bus() -> str | None:
    from fwtop.firewall.firewalld import bus_address

    return bus_address()


def _flow(prev: Preview, plan: Plan, bus: str | None = None) -> dict[str, object]:
    pkt = plan.packet
    flow: dict[str, object] = {"proto": pkt.proto, "src": plan.src, "dst": pkt.dst,
                               "dport": pkt.dport, "iif": pkt.iif, "element": plan.element}
    if plan.backend == "firewalld":
        # The D-Bus bus is recorded: the janitor and a later `fwtop temp` must reach the same
        # firewalld whatever their own environment says.
        flow.update({"zone": plan.zone, "rich_rule": plan.rich_rule, "bus": bus})
    return flow


# --- after the fact ---------------------------------------------------------------------------


def _remove(record: Record) -> str:
    """Remove one record's objects in its namespace: "removed", "absent", "gone" or (firewalld
    not answering) "unreachable"."""
    from fwtop.firewall import tempallow as fw

    def work() -> bool:
        if record.backend == "firewalld":
            from fwtop.firewall.firewalld import daemon_pid

            found = fw.remove_firewalld(str(record.flow.get("zone")),
                                        str(record.flow.get("rich_rule")),
                                        _record_bus(record))
            was = record.flow.get("firewalld_pid")
            restarted = was is not None and daemon_pid(_record_bus(record)) != was
            if not found and (record.state == "leftover" or restarted):
                orphan = _firewalld_orphan(record)
                if orphan is not None:
                    raise _Orphan(orphan)
            return found
        if record.backend == "nft":
            return fw.remove_nft(record.family, record.table, f"fwtop:{record.id}",
                                 record.set_name)
        return fw.remove_ipt(record.backend, record.family, record.table, record.chain,
                             record.ipt_argv)

    try:
        found = _in(record.netns, work)
    except NetnsError:
        return "gone"
    except FirewalldError as exc:
        record.note = str(exc)
        return "unreachable"
    except _Orphan as exc:
        record.note = (f"firewalld is back but no longer lists the rule, while the kernel still "
                       f"accepts the flow by {exc} in firewalld's table: a killed firewalld's "
                       "table is not flushed when firewalld starts again (firewalld 1.3). "
                       "`firewall-cmd --reload` rebuilds it without the rule (it also drops "
                       "every runtime-only change)")
        return "orphan"
    return "removed" if found else "absent"


class _Orphan(Exception):
    pass


def _firewalld_orphan(record: Record) -> str | None:
    """After firewalld died holding the rule: whether the kernel still accepts the recorded
    flow by a rule of firewalld's table (read only; fwtop never writes that table). Runs in the
    record's namespace."""
    from fwtop.firewall import load_ruleset
    from fwtop.firewall.routing import net_context

    f = record.flow
    try:
        src = str(ipaddress.ip_network(str(f.get("src")), strict=False).network_address)
    except ValueError:
        return None
    dport = f.get("dport")
    pkt = Packet(str(f.get("proto")), src, str(f.get("dst")), None,
                 int(dport) if isinstance(dport, int) else None,
                 iif=str(f["iif"]) if f.get("iif") else None)
    v = Evaluator(load_ruleset()).evaluate(pkt, net_context())
    # An accepted packet's verdict names no rule: the accepting rules are the path's accepts.
    accepts = [s for s in v.path if s.effect == "accept" and s.backend == "firewalld"]
    if v.verdict == "accept" and accepts:
        return f"{accepts[-1].chain} `{accepts[-1].text}`"
    return None


def _record_bus(record: Record) -> str | None:
    bus = record.flow.get("bus")
    return str(bus) if bus else None


_NOTES = {"removed": "removed", "absent": "already gone from the ruleset",
          "gone": "its namespace no longer exists"}
_FIREWALLD_NOTES = {"removed": "removed through firewalld",
                    "absent": "firewalld had already removed it (its timeout, or a reload)"}


def cleanup(journal: Journal | None = None, now: float | None = None,
            only: str | None = None, expired_only: bool = True) -> list[Record]:
    """Remove the objects of expired (or, with `only`, that one) records; returns them."""
    journal = journal or Journal()
    if not journal.path.exists():
        return []
    now = now if now is not None else time.time()
    done: list[Record] = []
    with journal.locked() as records:
        for r in records:
            if r.state not in ("active", "pending", "leftover") or r.kind != "allow":
                continue  # edits are reverted by fwtop.service.edits, never removed here
            if only is not None and r.id != only:
                continue
            if expired_only and only is None and r.expires_at > now:
                continue
            outcome = _remove(r)
            if outcome == "orphan":
                if only is not None:
                    raise AllowError(f"not reverted: {r.note}")
                continue  # stays a leftover, with the note saying what to do
            if outcome == "unreachable":
                if only is not None:
                    raise AllowError(f"not reverted: {r.note}")
                # The daemon that holds the timer is gone: if it died uncleanly its rule is
                # still in the kernel. Kept in sight (`temp list`) and checked again at every
                # fwtop start; the janitor does not wait for it.
                r.note = (f"firewalld did not answer after the deadline ({r.note}); if it "
                          "was killed, its rule stays in the kernel, also once firewalld "
                          "starts again, until a `firewall-cmd --reload`")
                if r.state != "leftover":
                    r.state = "leftover"
                    done.append(r)
                continue
            r.state = "gone" if outcome == "gone" else "removed"
            r.removed_at = time.time()
            notes = _FIREWALLD_NOTES if r.backend == "firewalld" else {}
            r.note = notes.get(outcome) or _NOTES[outcome]
            done.append(r)
        # Keep the file small: forget what was removed more than a day ago.
        records[:] = [r for r in records if r.state in ("active", "pending", "leftover")
                      or (r.removed_at or now) > now - 86400]
    return done


def active(journal: Journal | None = None) -> list[Record]:
    return [r for r in (journal or Journal()).read() if r.state in ("active", "pending")]


def leftovers(journal: Journal | None = None) -> list[Record]:
    """Allows past their deadline that fwtop could not confirm gone (firewalld unreachable)."""
    journal = journal or Journal()
    if not journal.path.exists():
        return []
    return [r for r in journal.read() if r.state == "leftover"]


def revert(allow_id: str, journal: Journal | None = None) -> Record:
    done = cleanup(journal, only=allow_id, expired_only=False)
    if not done:
        raise AllowError(f"no active temporary rule {allow_id} (see `fwtop temp list`)")
    return done[0]


def extend(allow_id: str, seconds: int, journal: Journal | None = None) -> Record:
    """Move the deadline to `seconds` from now (within the TTL cap)."""
    from fwtop.firewall import tempallow as fw

    if seconds <= 0 or seconds > ttl_cap():
        raise AllowError(f"extend by 1..{ttl_cap()} seconds (FWTOP_TTL_CAP raises the cap)")
    journal = journal or Journal()
    with journal.locked() as records:
        match = [r for r in records if r.id == allow_id and r.state == "active"]
        if not match:
            raise AllowError(f"no active temporary rule {allow_id} (see `fwtop temp list`)")
        r = match[0]
        expires = time.time() + seconds

        def work() -> list[str]:
            if r.backend == "firewalld":
                fw.extend_firewalld(str(r.flow.get("zone")), str(r.flow.get("rich_rule")),
                                    seconds, _record_bus(r))
                return r.ipt_argv
            if r.backend == "nft":
                element = str(r.flow.get("element", ""))
                assert r.set_name is not None
                fw.extend_nft(r.family, r.table, r.set_name, element, seconds)
                return r.ipt_argv
            return fw.extend_ipt(r.backend, r.family, r.table, r.chain, r.ipt_argv,
                                 f"fwtop:{r.id}", expires)

        try:
            r.ipt_argv = _in(r.netns, work)
        except NetnsError:
            raise AllowError(f"the namespace {r.netns} of {allow_id} no longer exists") from None
        # firewalld's new timer started when it took the rule again, after the calls above.
        r.expires_at = time.time() + seconds if r.backend == "firewalld" else expires
        return r


# --- the janitor ------------------------------------------------------------------------------


def spawn_janitor() -> None:
    """A detached process (own session, no terminal) that removes leftovers as they expire and
    exits when none is left. Losing it loses nothing: the kernel already closed the holes and
    the next fwtop start cleans up."""
    with contextlib.suppress(OSError):
        subprocess.Popen([sys.executable, "-m", "fwtop.service.janitor"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True,
                         env=dict(os.environ))

