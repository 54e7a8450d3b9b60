"""Commit-confirmed edits end to end: preview (fresh read, plan, dry runs, impact on recent
traffic), apply (journal first, detached reverter, one transaction, the state right after),
confirm, revert, extend, and what every fwtop start does about overdue edits.

The API the TUI calls: `preview(edit, netns, traffic)` -> Preview (diff, impact, commands);
`apply(preview)` -> Record; `confirm(id)`, `revert(id)`, `extend(id, s)`; `pending()` for the
countdown. All run the kernel work in the namespace on a thread of their own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fwtop.core.edits import (
    ChainState,
    Edit,
    EditError,
    Impact,
    OwnChange,
    RuleRef,
    SshCheck,
    check_edit,
    check_rule_text,
    conntrack_flows,
    diff_lines,
    drop_packet,
    edited_ruleset,
    flow_packet,
    impact,
    model_rules,
    nft_batch,
    normalize_text,
    plan_state,
    quote_ipt,
    replay_lines,
    restore_script,
    rule_from_tokens,
    ssh_packets,
    ssh_session,
    undo_own,
)
from fwtop.core.evaluator import Evaluator, NetContext, Packet
from fwtop.core.events import DropEvent
from fwtop.core.firewalld import FirewalldEdit, FirewalldError, ZoneChange, edit_warnings, shown
from fwtop.core.model import Chain, Rule, Ruleset, UnknownMatch
from fwtop.core.tempallow import new_id
from fwtop.firewall.netns import NetnsError
from fwtop.service.journal import Journal, Record
from fwtop.service.tempallow import _in, ttl_cap

T = TypeVar("T")

ATTENTION = ("conflict",)  # edit states a human must look at
OVERDUE_GRACE_S = 2.0  # the reverter goes first; a start-up finishes what it left
MAX_REPLAY_LINES = 500_000


# --- traffic to replay ------------------------------------------------------------------------


@dataclass(slots=True)
class Traffic:
    """Recent drops (as the evaluator's packets) and accepted flows (watch `flow` lines or
    conntrack entries, turned into packets inside the namespace)."""

    drops: list[Packet] = field(default_factory=list)
    flows: list[dict[str, Any]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    conntrack: bool = True  # also take the namespace's conntrack table as accepted flows


def traffic_from_replay(path: str) -> Traffic:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [ln for _, ln in zip(range(MAX_REPLAY_LINES), f, strict=False)]
    except OSError as exc:
        raise EditError(f"--replay {path}: {exc.strerror}") from None
    drops, flows, bad = replay_lines(lines)
    packets = [p for p in (drop_packet(d) for d in drops) if p is not None]
    src = f"{len(packets)} drops and {len(flows)} accepted flows from {path}"
    if bad:
        src += f" ({bad} unreadable lines skipped)"
    return Traffic(packets, flows, [src])


def traffic_from_events(events: Iterable[DropEvent], what: str = "recent drops") -> Traffic:
    from fwtop.core.correlate import packet_of

    packets = [p for p in (packet_of(e) for e in events) if p is not None]
    return Traffic(packets, [], [f"{len(packets)} {what}"])


def observe(netns: str | None, seconds: float) -> Traffic:
    """Collect drops (NFLOG, LOG lines) in the namespace for `seconds`."""
    from fwtop.firewall.netns import resolve
    from fwtop.service.drops import DropBatch, DropSources, DropStream

    got: list[DropEvent] = []
    errors: list[str] = []

    def on_batch(batch: DropBatch) -> None:
        got.extend(batch.events[: 200_000 - len(got)])

    stream = DropStream(DropSources(groups=None, netns=resolve(netns)), on_batch, errors.append)
    stream.start()
    try:
        time.sleep(seconds)
    finally:
        stream.stop()
    t = traffic_from_events(got, f"drops observed for {seconds:g} s")
    t.sources += [f"drop source: {e}" for e in errors[:3]]
    return t


# --- preview ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Preview:
    id: str
    edit: Edit
    netns: str | None
    snapshot: ChainState  # the touched chain as read for this preview
    target: ChainState  # the chain as the edit leaves it
    own: OwnChange
    subject: str  # "delete `-p tcp ... -j DROP` from iptables-nft ip filter INPUT"
    diff: list[str]
    impact: Impact
    commands: str  # the transaction, as written
    warnings: list[str] = field(default_factory=list)
    backup: str = ""  # how the revert is guaranteed (reverter, systemd timer or not)

    def to_json(self) -> dict[str, Any]:
        s = self.snapshot
        return {"id": None, "deadline": None, "backend": s.backend, "family": s.family,
                "table": s.table, "chain": s.chain, "edit": self.edit.to_json(),
                "subject": self.subject, "diff": self.diff, "impact": self.impact.to_json(),
                "commands": self.commands.splitlines(), "warnings": self.warnings}


def _chain_candidates(ruleset: Ruleset, table: str, chain: str, family: str | None,
                      backend: str | None) -> list[Chain]:
    return [c for c in ruleset.chains() if c.table == table and c.name == chain
            and (family is None or c.family == family)
            and (backend is None or c.backend == backend)]


def _pick_chain(ruleset: Ruleset, edit: Edit, backend: str | None) -> Chain:
    ref = edit.chain_ref
    cands = _chain_candidates(ruleset, ref.table, ref.chain, ref.family, backend)
    where = f"{ref.family + ' ' if ref.family else ''}{ref.table} {ref.chain}"
    if not cands:
        raise EditError(f"no chain {where} in this namespace (see `fwtop rules`)")
    rule = edit.rule or edit.before
    if rule is not None and rule.position is not None:
        legacy = [c for c in cands if c.backend == "iptables-legacy"]
        cands = legacy or cands
    elif rule is not None and rule.handle is not None:
        cands = [c for c in cands if c.backend != "iptables-legacy"
                 and any(r.handle == rule.handle for r in c.rules)]
        if not cands:
            raise EditError(f"no rule with handle {rule.handle} in {where} (deleted meanwhile? "
                            "`fwtop rules` shows the handles)")
    if len(cands) > 1:
        ip4 = [c for c in cands if c.family == "ip"]
        if len(ip4) == 1 and all(c.family in ("ip", "ip6") for c in cands):
            cands = ip4
    if len(cands) > 1:
        names = ", ".join(f"{c.backend} {c.family}" for c in cands)
        raise EditError(f"{where} exists in several places ({names}): put the family in front "
                        "(FAMILY:TABLE:CHAIN...) or give --backend")
    found = cands[0]
    if found.backend == "firewalld":
        raise EditError(f"{where} belongs to firewalld, and fwtop never edits firewalld's "
                        "tables: edit the zone through firewalld instead, e.g. `fwtop edit "
                        "--delete firewalld:ZONE:service=NAME` or `--insert 'rule ...' --chain "
                        "firewalld:ZONE`")
    return found


def _index(chain: Chain, state: ChainState, ref: RuleRef, expect: str | None,
           what: str) -> int:
    """The 0-based index of the rule `ref` names, checked against the expected text."""
    what = f"{what}: " if what else ""
    if ref.handle is not None:
        at = next((i for i, r in enumerate(chain.rules) if r.handle == ref.handle), None)
        if at is None:
            raise EditError(f"{what}no rule with handle {ref.handle} in {state.table} "
                            f"{state.chain}")
    else:
        assert ref.position is not None
        at = ref.position - 1
        if at >= len(state.rules):
            raise EditError(f"{what}{state.table} {state.chain} has {len(state.rules)} rules, "
                            f"no #{ref.position}")
    if expect is not None:
        want = normalize_text(state.backend, expect)
        seen = {normalize_text(state.backend, state.rules[at].text),
                normalize_text(state.backend, chain.rules[at].text)}
        if want not in seen:
            elsewhere = [i for i, r in enumerate(state.rules)
                         if want in (normalize_text(state.backend, r.text),
                                     normalize_text(state.backend, chain.rules[i].text))]
            if elsewhere:
                i = elsewhere[0]
                now = (f"handle {state.rules[i].handle}" if state.rules[i].handle is not None
                       else f"#{i + 1}")
                raise EditError(f"{what}the rule moved: `{expect}` is now {now}, not "
                                f"{ref}; nothing changed, check and retry")
            raise EditError(f"{what}{ref} is `{state.rules[at].text}`, not `{expect}`; "
                            "nothing changed")
    return at


def _consistent(chain: Chain, state: ChainState) -> bool:
    """The model (for the evaluator) and the chain as read for writing are the same chain."""
    if len(chain.rules) != len(state.rules):
        return False
    if state.backend == "nft":
        return [r.handle for r in chain.rules] == [r.handle for r in state.rules]
    if state.backend == "iptables-nft":
        return [r.text for r in chain.rules] == state.texts
    return True


def _new_rule(edit: Edit, chain: Chain, ruleset: Ruleset, text: str, tokens: list[str],
              edit_id: str) -> Rule:
    from fwtop.firewall import edits as fw

    key = f"edit:{edit_id}"
    if chain.backend != "nft":
        user = frozenset(c.name for c in ruleset.chains() if c.backend == chain.backend
                         and c.family == chain.family and c.table == chain.table
                         and not c.is_base)
        rule = rule_from_tokens(chain.backend, chain.family, chain.table, chain.name, text,
                                tokens, user, key)
        jump = [tokens[i + 1] for i, t in enumerate(tokens[:-1])
                if t in ("-j", "--jump", "-g", "--goto")]
        for name in jump:
            if name in user or name in ("ACCEPT", "DROP", "RETURN", "QUEUE"):
                continue
            if rule.verdict in ("jump", "goto") or fw.xtables_target_known(
                    name, chain.family) is False:
                raise EditError(f"-j {name}: no such target, and no chain {name} in "
                                f"{chain.table}")
        return rule
    from fwtop.core.nftjson import rule_from_json

    listing = fw.table_listing(chain.family, chain.table)
    parsed, _canonical = fw.parse_nft_rule(chain.family, chain.table, chain.name, text, listing)
    if parsed is None:
        return Rule("nft", chain.family, chain.table, chain.name, 0, None, text, "unknown",
                    None, (UnknownMatch(text),), None, None, None, key)
    matches, verdict, target, _ = rule_from_json(parsed.get("expr", []))
    return Rule("nft", chain.family, chain.table, chain.name, 0, None, text, verdict, target,
                matches, None, parsed.get("comment"), None, key)


def _subject(edit: Edit, state: ChainState, index: int | None, text: str | None) -> str:
    where = f"{state.backend} {state.family} {state.table} {state.chain}"
    if edit.kind == "policy":
        return f"policy of {where}: {state.policy} -> {edit.verdict}"
    if edit.kind == "insert":
        return f"insert `{text}` into {where}"
    assert index is not None
    rule = state.rules[index].text
    if edit.kind == "delete":
        return f"delete `{rule}` from {where}"
    return f"move `{rule}` in {where}"


def _ssh_check(net: NetContext, value: str | None) -> tuple[SshCheck | None, list[Packet]]:
    sess = ssh_session(value)
    if sess is None:
        return None, []
    label = f"{sess[0]}:{sess[1]} -> {sess[2]}:{sess[3]}"
    if not net.is_local(sess[2]):
        return SshCheck(label, False, why=f"your SSH session ({label}) does not end in this "
                                          "namespace: this firewall does not see it"), []
    return SshCheck(label, True), ssh_packets(sess, net)


def preview(edit: Edit, netns: str | None, traffic: Traffic | None = None,
            backend: str | None = None, ssh_connection: str | None = None) -> Preview:
    """What the edit would change and do to recent traffic, computed in the namespace from a
    fresh read; validated by dry runs; nothing changes."""
    check_edit(edit, ttl_cap())
    traffic = traffic or Traffic()
    edit_id = new_id()
    if ssh_connection is None:
        ssh_connection = os.environ.get("SSH_CONNECTION")

    def work() -> Preview:
        from fwtop.firewall import edits as fw
        from fwtop.firewall import load_ruleset
        from fwtop.firewall.routing import net_context

        for attempt in range(3):
            ruleset = load_ruleset()
            chain = _pick_chain(ruleset, edit, backend)
            state = fw.read_chain(chain.backend, chain.family, chain.table, chain.name)
            if _consistent(chain, state):
                break
            if attempt == 2:
                raise EditError(f"{chain.table} {chain.name} keeps changing while fwtop reads "
                                "it (or iptables cannot print one of its rules): not touching it")
        net = net_context()
        index = before = None
        tokens: list[str] = []
        text = None
        if edit.rule is not None:
            index = _index(chain, state, edit.rule, edit.expect_text, "")
        if edit.before is not None:
            before = _index(chain, state, edit.before, None, "--before")
        if edit.kind == "insert":
            assert edit.text is not None
            tokens = check_rule_text(state.backend, edit.text)
            text = edit.text.strip() if state.backend == "nft" else \
                " ".join(quote_ipt(t) for t in tokens)
        target, own = plan_state(edit.kind, state, index, before, text, edit.verdict)
        warnings: list[str] = []
        # Validate both ways before anything changes: the edit, and the rules a revert re-adds.
        if state.backend == "nft":
            commands = nft_batch(state, target)
            fw.nft_dry_run(commands)
            where = f"{state.family} {state.table} {state.chain}"
            readd = "".join(f"add rule {where} {state.rules[i].text}\n" for i in own.removed)
            if readd:
                try:
                    fw.nft_dry_run(readd)
                except EditError as exc:
                    raise EditError(f"fwtop could not put this rule back from its listing, so "
                                    f"it could not revert the edit: {exc}") from None
        else:
            commands = restore_script(state, target)
            fw.restore_dry_run(state.backend, state.family, commands)
            fw.restore_dry_run(state.backend, state.family, restore_script(target, state))
        new_rule = None
        if edit.kind == "insert":
            assert text is not None
            new_rule = _new_rule(edit, chain, ruleset, text, tokens, edit_id)
            if new_rule.uncertain and state.backend == "nft":
                warnings.append("fwtop could not model the new rule's matches: its impact is "
                                "uncertain")
        edited = edited_ruleset(ruleset, chain.id, model_rules(chain, state, target, new_rule),
                                target.policy)
        flows = [p for p in (flow_packet(f, net) for f in traffic.flows) if p is not None]
        sources = list(traffic.sources)
        if traffic.conntrack:
            listing, why = fw.conntrack_listing()
            if listing is not None:
                ct = [p for p in (flow_packet(f, net) for f in conntrack_flows(listing))
                      if p is not None]
                flows += ct
                sources.append(f"{len(ct)} accepted flows from the conntrack table")
            elif why:
                sources.append(why)
        ssh, ssh_pkts = _ssh_check(net, ssh_connection)
        result = impact(Evaluator(ruleset), Evaluator(edited), net, traffic.drops, flows, ssh,
                        ssh_pkts)
        result.sources = sources
        return Preview(edit_id, edit, netns, state, target, own,
                       _subject(edit, state, index, text), diff_lines(state, target), result,
                       commands, warnings)

    prev: Preview = _in(netns, work)
    from fwtop.firewall.edits import systemd_status

    ok, why = systemd_status()
    prev.backup = f"detached reverter and a {why}" if ok else f"detached reverter; {why}"
    return prev


# --- apply ------------------------------------------------------------------------------------


def _python_env() -> dict[str, str]:
    """The environment of the processes fwtop leaves behind: they must find this fwtop
    whatever the working directory (systemd starts them in /)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _ignore_hangup() -> None:
    # Between fork and exec: an ignored signal stays ignored across exec, so not even the
    # interpreter's start-up is a window in which a SIGHUP could end the reverter.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def spawn_reverter(edit_id: str) -> int | None:
    """The reverter: its own session (no terminal, no SIGHUP, out of the caller's process
    group), so closing the terminal, dropping the SSH session or killing fwtop leaves it
    running."""
    try:
        proc = subprocess.Popen([sys.executable, "-m", "fwtop.service.reverter", edit_id],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True,
                                close_fds=True, env=_python_env(), cwd="/",
                                preexec_fn=_ignore_hangup)
    except OSError:
        return None
    return proc.pid


def _start_timer(edit_id: str, seconds: float) -> str | None:
    from fwtop.firewall import edits as fw

    ok, _ = fw.systemd_status()
    if not ok:
        return None
    err = fw.start_timer(fw.systemd_timer_argv(edit_id, seconds + OVERDUE_GRACE_S,
                                               sys.executable, _python_env()))
    return None if err else fw.timer_unit(edit_id)


def _find(records: list[Record], edit_id: str) -> Record:
    for r in records:
        if r.id == edit_id and r.kind == "edit":
            return r
    raise EditError(f"no edit {edit_id} (see `fwtop temp list`)")


def apply(prev: Preview | FirewalldPreview, journal: Journal | None = None,
          spawn: bool = True) -> Record:
    """Journal the edit, start its reverter, re-check the chain is still as previewed, write
    the edit in one transaction and record the chain right after it."""
    journal = journal or Journal()
    if isinstance(prev, FirewalldPreview):
        return apply_firewalld(prev, journal, spawn)
    check_edit(prev.edit, ttl_cap())
    s = prev.snapshot
    now = time.time()
    record = Record(prev.id, "edit", now, now + prev.edit.confirm_within, prev.netns, s.backend,
                    s.family, s.table, s.chain, text=prev.subject, state="pending",
                    snapshot=s.to_json(), after=prev.target.to_json(),
                    edit={**prev.edit.to_json(), "own": prev.own.to_json(), "planned": True})
    def work() -> ChainState:
        from fwtop.firewall import edits as fw

        current = fw.read_chain(s.backend, s.family, s.table, s.chain)
        if not current.same_as(s):
            raise EditError(f"{s.table} {s.chain} changed since the preview: nothing was "
                            "written; preview again")
        if s.backend == "nft":
            fw.write_nft(nft_batch(current, prev.target))
        else:
            fw.write_restore(s.backend, s.family, restore_script(current, prev.target))
        return fw.read_chain(s.backend, s.family, s.table, s.chain)

    def finish(r: Record, after: ChainState) -> None:
        r.after = after.to_json()
        if [normalize_text(s.backend, t) for t in after.texts] != \
                [normalize_text(s.backend, t) for t in prev.target.texts]:
            r.note = "the chain changed while fwtop wrote it: check it (fwtop rules)"

    return _write_recorded(journal, record, prev, spawn, work, finish)


def _write_recorded(journal: Journal, record: Record, prev: Preview | FirewalldPreview,
                    spawn: bool, work: Callable[[], T],
                    finish: Callable[[Record, T], None]) -> Record:
    """The one way an edit is written: its record first (a crash mid-write leaves a trace),
    then the detached reverter and the systemd timer, then `work()` inside the namespace; the
    record says "active" (and `finish` adds what the write returned), or "removed" with why
    nothing was written."""
    with journal.locked() as records:
        records.append(record)
    pid = spawn_reverter(record.id) if spawn else None
    timer = _start_timer(record.id, prev.edit.confirm_within) if spawn else None
    with journal.locked() as records:
        r = _find(records, record.id)
        r.pid, r.timer = pid, timer
        try:
            result = _in(prev.netns, work)
        except BaseException as exc:
            r.state, r.removed_at = "removed", time.time()
            r.note = f"not written: {exc}"
            if timer:
                from fwtop.firewall.edits import stop_timer

                stop_timer(record.id)
            raise
        r.state = "active"
        r.edit = {**r.edit, "planned": False}
        finish(r, result)
        return r


# --- firewalld --------------------------------------------------------------------------------
#
# firewalld keeps two configurations: runtime (what the kernel has) and permanent (its XML
# files). An edit is one runtime change of a zone, so it is undone by the exact inverse runtime
# change, which touches nothing else. Not by `firewall-cmd --reload`: a reload throws away every
# runtime-only change, other people's and fwtop's own temporary allows included. A confirm makes
# the same change in the permanent configuration (`--permanent`), not `--runtime-to-permanent`,
# which would also persist every other runtime change, temporary allows with their timeouts
# turned into permanent holes among them.


@dataclass(slots=True)
class FirewalldPreview:
    id: str
    edit: FirewalldEdit
    netns: str | None
    bus: str | None
    subject: str
    diff: list[str]
    commands: str
    warnings: list[str]
    impact: Impact = field(default_factory=Impact)
    backup: str = ""

    @property
    def chain(self) -> str:
        return f"filter_IN_{self.edit.change.zone}"

    def to_json(self) -> dict[str, Any]:
        return {"id": None, "deadline": None, "backend": "firewalld", "family": "inet",
                "table": "firewalld", "chain": self.chain, "zone": self.edit.change.zone,
                "edit": self.edit.to_json(), "subject": self.subject, "diff": self.diff,
                "impact": self.impact.to_json(), "commands": self.commands.splitlines(),
                "warnings": self.warnings}


def _fw_check(change: ZoneChange, bus: str | None, present: bool) -> None:
    """In the namespace: the firewalld on the bus is this namespace's, and the zone's runtime
    element is `present` (before the change: the opposite of what the change makes)."""
    from fwtop.firewall import firewalld

    firewalld.check_owner(bus)
    if firewalld.has(change, bus) != present:
        state = "already has" if not present else "has no"
        raise EditError(f"firewalld zone {change.zone} {state} {change.element} "
                        f"{change.value} at runtime: nothing to change")


def preview_firewalld(change: ZoneChange, confirm_within: int, netns: str | None) -> \
        FirewalldPreview:
    """What the firewalld edit would do, checked against the running firewalld; nothing
    changes."""
    from fwtop.firewall import firewalld

    edit = FirewalldEdit(change, confirm_within)
    if confirm_within <= 0 or confirm_within > ttl_cap():
        raise EditError(f"--confirm-within 1..{ttl_cap()} seconds (FWTOP_TTL_CAP raises the cap)")
    bus = firewalld.bus_address()

    def work() -> bool:
        try:
            _fw_check(change, bus, not change.present_after)
            return firewalld.has(change, bus, permanent=True)
        except FirewalldError as exc:
            raise EditError(str(exc)) from None

    in_permanent = _in(netns, work)
    sign = "+" if change.present_after else "-"
    diff = [f"--- firewalld zone {change.zone} (runtime)",
            f"+++ firewalld zone {change.zone} (runtime, after the edit)",
            f"{sign} {change.element} {change.value}"]
    warnings = edit_warnings(change)
    warnings.append(f"the permanent configuration {'has' if in_permanent else 'does not have'}"
                    f" {change.element} {change.value}; confirming makes the permanent one "
                    f"match: {shown(change.argv(permanent=True))}")
    commands = shown(change.argv())
    none = Impact(sources=["not computed for firewalld edits"])
    return FirewalldPreview(new_id(), edit, netns, bus, change.text(), diff, commands,
                            warnings, none, backup="detached reverter (the inverse runtime change: "
                                             + shown(change.inverse.argv()) + ")")


def apply_firewalld(prev: FirewalldPreview, journal: Journal | None = None,
                    spawn: bool = True) -> Record:
    """Journal the edit, start its reverter, re-check, make the runtime change."""
    from fwtop.firewall import firewalld

    journal = journal or Journal()
    change = prev.edit.change
    now = time.time()
    record = Record(prev.id, "edit", now, now + prev.edit.confirm_within, prev.netns,
                    "firewalld", "inet", "firewalld", prev.chain, text=prev.subject,
                    state="pending", flow={"zone": change.zone, "bus": prev.bus},
                    edit={**prev.edit.to_json(), "firewalld": change.to_json(),
                          "planned": True})
    def work() -> int | None:
        try:
            _fw_check(change, prev.bus, not change.present_after)
            firewalld.make(change, prev.bus)
            if firewalld.has(change, prev.bus) != change.present_after:
                raise EditError("firewalld accepted the change but does not show it")
        except FirewalldError as exc:
            raise EditError(str(exc)) from None
        return firewalld.daemon_pid(prev.bus)

    def finish(r: Record, fw_pid: int | None) -> None:
        r.flow = {**r.flow, "firewalld_pid": fw_pid}

    return _write_recorded(journal, record, prev, spawn, work, finish)


def _fw_record(r: Record) -> tuple[ZoneChange, str | None]:
    bus = r.flow.get("bus")
    return ZoneChange.from_json(r.edit["firewalld"]), (str(bus) if bus else None)


def _fw_revert(r: Record) -> tuple[str, str]:
    """Undo a firewalld edit with the inverse runtime change, unless it is undone already."""
    from fwtop.firewall import firewalld

    change, bus = _fw_record(r)

    def work() -> tuple[str, str]:
        pid = firewalld.check_owner(bus)
        if firewalld.has(change, bus) != change.present_after:
            if r.edit.get("planned"):
                return "removed", "the edit was never written"
            was = r.flow.get("firewalld_pid")
            if was is not None and was != pid and change.op == "add":
                return "reverted", (
                    "firewalld no longer has the change: it was restarted since the edit. If "
                    "it had been killed, the rules the edit made may still be in the kernel "
                    "(firewalld 1.3 does not flush the table a killed firewalld left) until "
                    "`firewall-cmd --reload`")
            return "reverted", ("already undone (a firewalld reload or restart, or someone "
                                "else): nothing to do")
        firewalld.make(change.inverse, bus)
        if firewalld.has(change, bus) == change.present_after:
            return "conflict", "firewalld did not take the inverse change"
        return "reverted", f"reverted at runtime ({shown(change.inverse.argv())})"

    try:
        return _in(r.netns, work)
    except NetnsError:
        return "gone", "its namespace no longer exists"
    except FirewalldError as exc:
        return "conflict", (f"revert failed: {exc} (firewalld unreachable: a `firewall-cmd "
                            "--reload` once it is back puts the permanent configuration back)")


def _fw_confirm(r: Record) -> str:
    """Make the confirmed edit permanent: the same change with --permanent."""
    from fwtop.firewall import firewalld

    change, bus = _fw_record(r)

    def work() -> str:
        firewalld.check_owner(bus)
        if firewalld.has(change, bus) != change.present_after:
            raise EditError("the runtime change is gone (a firewalld reload?): nothing was "
                            "made permanent")
        if firewalld.has(change, bus, permanent=True) != change.present_after:
            firewalld.make(change, bus, permanent=True)
        if firewalld.has(change, bus, permanent=True) != change.present_after:
            raise EditError("firewalld did not take the permanent change")
        return f"confirmed: made permanent ({shown(change.argv(permanent=True))})"

    try:
        return _in(r.netns, work)
    except NetnsError:
        raise EditError(f"the namespace {r.netns} no longer exists") from None
    except FirewalldError as exc:
        raise EditError(f"not confirmed: {exc}") from None


# --- after the fact ---------------------------------------------------------------------------


def _revert_locked(r: Record, why: str) -> None:
    """Undo one edit (the journal is locked by the caller); sets state and note."""
    if r.backend == "firewalld":
        state, note = _fw_revert(r)
        r.state, r.note = state, f"{why}: {note}"
        r.removed_at = time.time() if state != "conflict" else None
        if r.timer:
            from fwtop.firewall.edits import stop_timer

            stop_timer(r.id)
        return
    snapshot = ChainState.from_json(r.snapshot)
    after = ChainState.from_json(r.after)
    own = OwnChange.from_json(r.edit.get("own", {}))
    planned = bool(r.edit.get("planned"))

    def work() -> tuple[str, str]:
        from fwtop.firewall import edits as fw

        current = fw.read_chain(r.backend, r.family, r.table, r.chain)
        real_after = after
        if planned:  # fwtop stopped between writing and reading back
            if current.same_as(snapshot):
                return "removed", "the edit was never written"
            norm = [normalize_text(r.backend, t) for t in current.texts]
            if norm != [normalize_text(r.backend, t) for t in after.texts] \
                    or current.policy != after.policy:
                return "conflict", ("fwtop was interrupted while writing the edit and the "
                                    "chain is neither as before nor as planned: not touched")
            real_after = current
        undo = undo_own(snapshot, real_after, current, own)
        if undo.target is None:
            return "conflict", f"not reverted: {undo.conflict}; the chain was left as it is"
        if r.backend == "nft":
            fw.write_nft(nft_batch(current, undo.target))
        else:
            fw.write_restore(r.backend, r.family, restore_script(current, undo.target))
        result = fw.read_chain(r.backend, r.family, r.table, r.chain)
        if undo.exact and (result.texts != snapshot.texts or result.policy != snapshot.policy):
            return "reverted", "reverted, but the chain differs from the snapshot (changed " \
                               "while fwtop wrote it?)"
        return "reverted", undo.note if undo.exact else "conflict: " + undo.note

    try:
        state, note = _in(r.netns, work)
    except NetnsError:
        state, note = "gone", "its namespace no longer exists"
    except (EditError, OSError) as exc:
        state, note = "conflict", f"revert failed: {exc}"
    r.state, r.note = state, f"{why}: {note}"
    r.removed_at = time.time() if state != "conflict" else None
    if r.timer:
        from fwtop.firewall.edits import stop_timer

        stop_timer(r.id)


def revert_due(edit_id: str, journal: Journal | None = None, now: float | None = None) -> \
        Record | None:
    """The reverter's job at the deadline: revert unless confirmed (or already done)."""
    journal = journal or Journal()
    with journal.locked() as records:
        try:
            r = _find(records, edit_id)
        except EditError:
            return None
        if r.state not in ("active", "pending"):
            return None
        if r.expires_at > (now if now is not None else time.time()):
            return None
        _revert_locked(r, "deadline passed unconfirmed")
        return r


def confirm(edit_id: str, journal: Journal | None = None) -> Record:
    """Keep the edit: the reverter stands down (and, after a conflict, the chain is taken as
    it is)."""
    journal = journal or Journal()
    with journal.locked() as records:
        r = _find(records, edit_id)
        if r.state not in ("active", "pending", *ATTENTION):
            raise EditError(f"edit {edit_id} is {r.state} ({r.note}): nothing to confirm")
        was = r.state
        if r.backend == "firewalld" and was != "conflict":
            note = _fw_confirm(r)  # raises: the edit stays pending, the reverter still runs
            r.state, r.removed_at, r.note = "confirmed", time.time(), note
            if r.timer:
                from fwtop.firewall.edits import stop_timer

                stop_timer(r.id)
            return r
        r.state, r.removed_at = "confirmed", time.time()
        r.note = "confirmed: the edit stays" if was != "conflict" else \
            "confirmed: the chain stays as it is"
        if r.timer:
            from fwtop.firewall.edits import stop_timer

            stop_timer(r.id)
        return r


def revert(edit_id: str, journal: Journal | None = None) -> Record:
    """Revert now, before the deadline."""
    journal = journal or Journal()
    with journal.locked() as records:
        r = _find(records, edit_id)
        if r.state not in ("active", "pending"):
            raise EditError(f"edit {edit_id} is {r.state} ({r.note}): nothing to revert")
        _revert_locked(r, "reverted on request")
        return r


def extend(edit_id: str, seconds: int, journal: Journal | None = None) -> Record:
    """Move the deadline to `seconds` from now (within the cap)."""
    if seconds <= 0 or seconds > ttl_cap():
        raise EditError(f"extend by 1..{ttl_cap()} seconds (FWTOP_TTL_CAP raises the cap)")
    journal = journal or Journal()
    with journal.locked() as records:
        r = _find(records, edit_id)
        if r.state != "active":
            raise EditError(f"edit {edit_id} is {r.state}: nothing to extend")
        r.expires_at = time.time() + seconds
        if r.timer:
            from fwtop.firewall.edits import stop_timer

            stop_timer(r.id)
            r.timer = _start_timer(r.id, seconds)
        if not _reverter_alive(r):
            r.pid = spawn_reverter(r.id)
        return r


def is_edit(edit_id: str, journal: Journal | None = None) -> bool:
    journal = journal or Journal()
    if not journal.path.exists():
        return False
    return any(r.id == edit_id and r.kind == "edit" for r in journal.read())


def pending(journal: Journal | None = None) -> list[Record]:
    """Edits waiting for confirmation (the TUI's countdown)."""
    return [r for r in (journal or Journal()).read()
            if r.kind == "edit" and r.state in ("active", "pending")]


def attention(journal: Journal | None = None) -> list[Record]:
    """Edits whose revert stopped on a conflict: shown until confirmed."""
    journal = journal or Journal()
    if not journal.path.exists():
        return []
    return [r for r in journal.read() if r.kind == "edit" and r.state in ATTENTION]


def _reverter_alive(r: Record) -> bool:
    if not r.pid:
        return False
    try:
        with open(f"/proc/{r.pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        return False
    return b"fwtop.service.reverter" in cmd and r.id.encode() in cmd


def finish_overdue(journal: Journal | None = None, now: float | None = None) -> list[Record]:
    """At every fwtop start: revert edits whose deadline passed while no reverter did it (it
    was killed, the machine rebooted), restart missing reverters, and return those plus the
    edits that still need a human."""
    journal = journal or Journal()
    if not journal.path.exists():
        return []
    now = now if now is not None else time.time()
    done: list[Record] = []
    with journal.locked() as records:
        for r in records:
            if r.kind != "edit":
                continue
            if r.state in ATTENTION:
                done.append(r)
            elif r.state in ("active", "pending"):
                if r.expires_at + OVERDUE_GRACE_S <= now:
                    _revert_locked(r, "deadline passed while no reverter ran; reverted at "
                                      "fwtop start")
                    done.append(r)
                elif not _reverter_alive(r):
                    r.pid = spawn_reverter(r.id)
    return done


def edit_json(r: Record, prev: Preview | FirewalldPreview | None = None) -> dict[str, Any]:
    """The `fwtop edit --json` object."""
    out: dict[str, Any] = {"id": r.id, "deadline": round(r.expires_at, 3), "state": r.state,
                           "backend": r.backend, "family": r.family, "table": r.table,
                           "chain": r.chain, "subject": r.text, "note": r.note,
                           "reverter_pid": r.pid, "systemd_timer": r.timer}
    if prev is not None:
        out.update({"diff": prev.diff, "impact": prev.impact.to_json(),
                    "commands": prev.commands.splitlines(), "warnings": prev.warnings,
                    "backup": prev.backup, "edit": prev.edit.to_json()})
    return out

