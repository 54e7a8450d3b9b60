"""Commit-confirmed rule edits: the request, the touched chain's states, the plan, the undo and
the impact of an edit on real traffic.

Pure. An edit (delete, move, insert, policy) touches exactly one chain. fwtop snapshots that
chain (its rules in order and its policy) before the edit and reads it again right after; at the
deadline the reverter compares the chain with that "after" state: unchanged, it is restored to
the snapshot; changed by someone else, only fwtop's own change is undone when that is
well-defined (the deleted rule goes back before the same neighbour, the inserted one is removed),
otherwise nothing is touched and the conflict is recorded.

Rule identity: nft handles where the backend has them (native nft), else the rule's text and its
place among the chain's rules (iptables-nft and legacy are rewritten chain-wise by
iptables-restore, which gives every rule of the chain a new handle anyway).
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import shlex
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast

from fwtop.core.evaluator import Evaluator, NetContext, Packet, Verdict
from fwtop.core.model import Backend, Chain, Rule, Ruleset, Table
from fwtop.core.model import Verdict as RuleVerdict

EditKind = Literal["delete", "move", "insert", "policy"]
EDIT_KINDS: tuple[EditKind, ...] = ("delete", "move", "insert", "policy")
DEFAULT_CONFIRM_S = 120
MIN_CONFIRM_S = 5
FAMILIES = ("ip", "ip6", "inet", "arp", "bridge", "netdev")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


class EditError(Exception):
    """A refusal, in one line."""


# --- addressing -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChainRef:
    table: str
    chain: str
    family: str | None = None  # None: whichever family has this table and chain

    def __str__(self) -> str:
        return ":".join(p for p in (self.family, self.table, self.chain) if p)


@dataclass(frozen=True, slots=True)
class RuleRef:
    """`table:chain:handle` (nft, iptables-nft), `table:chain:#position` (legacy), optionally
    with the family in front (`inet:filter:input:7`)."""

    table: str
    chain: str
    handle: int | None = None
    position: int | None = None
    family: str | None = None

    @property
    def chain_ref(self) -> ChainRef:
        return ChainRef(self.table, self.chain, self.family)

    def __str__(self) -> str:
        tail = f"#{self.position}" if self.position is not None else str(self.handle)
        return f"{self.chain_ref}:{tail}"


def _names(parts: list[str], what: str, spec: str) -> None:
    for p in parts:
        if not _NAME.match(p):
            raise EditError(f"{what} {spec!r}: {p!r} is not a table or chain name")


def parse_chain_ref(spec: str) -> ChainRef:
    parts = spec.split(":")
    if len(parts) == 3 and parts[0] in FAMILIES:
        family, table, chain = parts
    elif len(parts) == 2:
        family, (table, chain) = None, parts
    else:
        raise EditError(f"chain {spec!r}: write TABLE:CHAIN or FAMILY:TABLE:CHAIN "
                        "(e.g. filter:INPUT or inet:filter:input)")
    _names([table, chain], "chain", spec)
    return ChainRef(table, chain, family)


def parse_rule_ref(spec: str) -> RuleRef:
    parts = spec.split(":")
    family = None
    if len(parts) == 4 and parts[0] in FAMILIES:
        family, parts = parts[0], parts[1:]
    if len(parts) != 3:
        raise EditError(f"rule {spec!r}: write TABLE:CHAIN:HANDLE (nft, iptables-nft) or "
                        "TABLE:CHAIN:#POSITION (legacy), optionally FAMILY: in front")
    table, chain, tail = parts
    _names([table, chain], "rule", spec)
    if tail.startswith("#") and tail[1:].isdigit() and int(tail[1:]) > 0:
        return RuleRef(table, chain, None, int(tail[1:]), family)
    if tail.isdigit() and int(tail) > 0:
        return RuleRef(table, chain, int(tail), None, family)
    raise EditError(f"rule {spec!r}: {tail!r} is neither a handle (digits) nor a position (#N)")


def parse_policy(spec: str) -> tuple[ChainRef, str]:
    where, eq, verdict = spec.rpartition("=")
    if not eq or not where:
        raise EditError(f"--policy {spec!r}: write TABLE:CHAIN=VERDICT (accept or drop)")
    verdict = verdict.strip().lower()
    if verdict not in ("accept", "drop"):
        raise EditError(f"--policy {spec!r}: a chain policy is accept or drop")
    return parse_chain_ref(where), verdict


# --- the request ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Edit:
    kind: EditKind
    rule: RuleRef | None = None  # delete, move: the rule
    before: RuleRef | None = None  # move (required), insert (optional): goes before this rule
    chain: ChainRef | None = None  # insert, policy
    text: str | None = None  # insert: the rule in the backend's own syntax
    verdict: str | None = None  # policy
    expect_text: str | None = None  # the rule's text as the user saw it
    confirm_within: int = DEFAULT_CONFIRM_S

    @property
    def chain_ref(self) -> ChainRef:
        if self.rule is not None:
            return self.rule.chain_ref
        assert self.chain is not None
        return self.chain

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "rule": str(self.rule) if self.rule else None,
                "before": str(self.before) if self.before else None,
                "chain": str(self.chain) if self.chain else None, "text": self.text,
                "verdict": self.verdict, "expect_text": self.expect_text,
                "confirm_within": self.confirm_within}


def check_edit(edit: Edit, cap: int) -> None:
    """Refuse what is incomplete or contradictory before anything is read."""
    if edit.confirm_within < MIN_CONFIRM_S:
        raise EditError(f"--confirm-within {edit.confirm_within}: at least {MIN_CONFIRM_S} s, "
                        "time to check the edit and confirm it")
    if edit.confirm_within > cap:
        raise EditError(f"--confirm-within {edit.confirm_within} is over the cap of {cap} s "
                        "(FWTOP_TTL_CAP raises it)")
    if edit.kind in ("delete", "move") and edit.rule is None:
        raise EditError(f"--{edit.kind} needs a RULE")
    if edit.kind == "move":
        if edit.before is None:
            raise EditError("--move RULE needs --before RULE")
        assert edit.rule is not None
        b, r = edit.before, edit.rule
        if (b.table, b.chain) != (r.table, r.chain) or (
                b.family and r.family and b.family != r.family):
            raise EditError("--move and --before must name rules of the same chain")
        if edit.before == edit.rule:
            raise EditError("a rule cannot be moved before itself")
    if edit.kind == "insert":
        if edit.chain is None or not edit.text or not edit.text.strip():
            raise EditError("--insert TEXT needs --chain TABLE:CHAIN")
        if edit.before is not None and (edit.before.table, edit.before.chain) != (
                edit.chain.table, edit.chain.chain):
            raise EditError("--before must name a rule of the --chain")
        bad = [c for c in ("\n", "\r", "\0") if c in edit.text]
        if bad:
            raise EditError("--insert TEXT must be one rule on one line")
    if edit.kind == "policy" and (edit.chain is None or edit.verdict not in ("accept", "drop")):
        raise EditError("--policy needs TABLE:CHAIN=accept|drop")


def check_rule_text(backend: str, text: str) -> list[str]:
    """The typed rule, refused if it could smuggle in more than one rule; returns the iptables
    tokens (empty for nft)."""
    text = text.strip()
    if any(c in text for c in "\n\r\0"):
        raise EditError("the rule must be one line")
    if backend == "nft":
        if ";" in text:
            raise EditError("an nft rule for --insert may not contain ';' (one rule only)")
        if text.split()[0] in ("add", "insert", "delete", "flush", "table", "chain", "rule",
                               "replace", "create", "list", "reset", "destroy"):
            raise EditError("give the rule's body only (e.g. `tcp dport 8080 accept`), not an "
                            "nft command")
        return []
    try:
        tokens = shlex.split(text)
    except ValueError as exc:
        raise EditError(f"cannot split the rule: {exc}") from None
    if not tokens:
        raise EditError("empty rule")
    for t in tokens:
        if t in ("-A", "--append", "-I", "--insert", "-D", "--delete", "-F", "--flush", "-P",
                 "--policy", "-N", "-X", "-R", "--replace", "-t", "--table", "COMMIT"):
            raise EditError(f"give the rule's matches and target only (no {t}): e.g. "
                            "`-p tcp --dport 8080 -j ACCEPT`")
    if "-j" not in tokens and "--jump" not in tokens and "-g" not in tokens \
            and "--goto" not in tokens:
        raise EditError("the rule has no target: add -j ACCEPT / DROP / REJECT / CHAIN")
    return tokens


def quote_ipt(token: str) -> str:
    """A token as iptables-restore reads it (double quotes, backslash escapes)."""
    if token and all(c.isalnum() or c in "-_.:/,!+*@=[]%" for c in token):
        return token
    return '"' + token.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- the touched chain ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChainRule:
    text: str
    handle: int | None = None  # native nft only
    counters: tuple[int, int] | None = None  # iptables: kept across the rewrite


@dataclass(frozen=True, slots=True)
class ChainState:
    """One chain as fwtop reads and writes it: the rules in order and the policy (None for a
    regular chain)."""

    backend: str  # nft, iptables-nft, iptables-legacy
    family: str
    table: str
    chain: str
    policy: str | None
    rules: tuple[ChainRule, ...] = ()
    policy_counters: tuple[int, int] | None = None

    @property
    def texts(self) -> list[str]:
        return [r.text for r in self.rules]

    @property
    def uses_handles(self) -> bool:
        return self.backend == "nft"

    def same_as(self, other: ChainState) -> bool:
        """Same rules in the same order and the same policy, counters aside (and, for native
        nft, the same handles: a rule deleted and re-added is another rule)."""
        if self.policy != other.policy or self.texts != other.texts:
            return False
        if self.uses_handles and other.uses_handles:
            return [r.handle for r in self.rules] == [r.handle for r in other.rules]
        return True

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.backend, "family": self.family, "table": self.table,
                "chain": self.chain, "policy": self.policy,
                "policy_counters": list(self.policy_counters) if self.policy_counters else None,
                "rules": [{"text": r.text, "handle": r.handle,
                           "counters": list(r.counters) if r.counters else None}
                          for r in self.rules]}

    @staticmethod
    def from_json(data: dict[str, Any]) -> ChainState:
        def pair(v: Any) -> tuple[int, int] | None:
            return (int(v[0]), int(v[1])) if isinstance(v, list) and len(v) == 2 else None

        return ChainState(str(data["backend"]), str(data["family"]), str(data["table"]),
                          str(data["chain"]), data.get("policy"),
                          tuple(ChainRule(str(r["text"]), r.get("handle"),
                                          pair(r.get("counters")))
                                for r in data.get("rules", [])),
                          pair(data.get("policy_counters")))

    def listing(self) -> list[str]:
        """The chain as the diff shows it."""
        head = f"{self.backend} {self.family} {self.table} {self.chain}"
        lines = [head + (f" (policy {self.policy})" if self.policy else "")]
        for i, r in enumerate(self.rules, 1):
            lines.append(f"{_ident(r, i)}  {r.text}")
        return lines


def _ident(rule: ChainRule, pos: int) -> str:
    return f"h{rule.handle}" if rule.handle is not None else f"#{pos}"


_NFT_HANDLE = re.compile(r"\s*# handle (\d+)\s*$")
_NFT_CHAIN = re.compile(r"^\s*chain (\S+) \{")
_NFT_POLICY = re.compile(r"\bpolicy (\w+);")


def parse_nft_chain(listing: str, family: str, table: str, chain: str) -> ChainState:
    """`nft -a -s list chain FAMILY TABLE CHAIN` output to a ChainState."""
    policy = None
    rules: list[ChainRule] = []
    inside = False
    for line in listing.splitlines():
        m = _NFT_CHAIN.match(line)
        if m:
            inside = m.group(1) == chain
            continue
        if not inside:
            continue
        stripped = line.strip()
        if stripped == "}":
            inside = False
            continue
        if stripped.startswith("type ") and " hook " in stripped:
            pm = _NFT_POLICY.search(stripped)
            policy = pm.group(1) if pm else "accept"
            continue
        h = _NFT_HANDLE.search(line)
        if h and stripped:
            rules.append(ChainRule(line[: h.start()].strip(), int(h.group(1))))
    return ChainState("nft", family, table, chain, policy, tuple(rules))


_SAVE_COUNTERS = re.compile(r"^\[(\d+):(\d+)\]\s+")


def parse_save_chain(save: str, backend: str, family: str, table: str,
                     chain: str) -> ChainState | None:
    """One chain out of `iptables-save -c -t TABLE` output (None if the chain is not there).
    Rule texts are kept exactly as printed (minus counters and `-A CHAIN`), so they can be fed
    back to iptables-restore unchanged."""
    in_table = False
    found = False
    policy: str | None = None
    pol_counters: tuple[int, int] | None = None
    rules: list[ChainRule] = []
    prefix = f"-A {chain} "
    for raw in save.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            in_table = line[1:] == table
            continue
        if not in_table:
            continue
        if line.startswith(":"):
            parts = line[1:].split()
            if parts and parts[0] == chain:
                found = True
                policy = parts[1].lower() if len(parts) > 1 and parts[1] != "-" else None
                if len(parts) > 2:
                    m = re.match(r"\[(\d+):(\d+)\]", parts[2])
                    pol_counters = (int(m.group(1)), int(m.group(2))) if m else None
            continue
        counters = None
        m = _SAVE_COUNTERS.match(line)
        if m:
            counters = (int(m.group(1)), int(m.group(2)))
            line = line[m.end():]
        if line.startswith(prefix) or line == f"-A {chain}":
            rules.append(ChainRule(line[len(prefix):].strip(), None, counters))
    if not found:
        return None
    return ChainState(backend, family, table, chain, policy, tuple(rules), pol_counters)


def normalize_text(backend: str, text: str) -> str:
    """For comparing a rule text the user typed with the one fwtop reads: blanks, quotes, the
    implicit `-m tcp` after `-p tcp`, and `/32` / `/128` on single addresses do not matter."""
    if backend == "nft":
        return " ".join(text.replace('"', "").split())
    try:
        tokens = shlex.split(text)
    except ValueError:
        tokens = text.split()
    out: list[str] = []
    proto = None
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t in ("-p", "--protocol") and i + 1 < len(tokens):
            proto = tokens[i + 1]
        if t in ("-m", "--match") and i + 1 < len(tokens) and tokens[i + 1] == proto:
            i += 2
            continue
        if t.endswith("/32") or t.endswith("/128"):
            t = t.rsplit("/", 1)[0]
        out.append(t)
        i += 1
    return " ".join(out)


# --- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OwnChange:
    """What fwtop changed, as indices: `removed` into the snapshot's rules, `added` into the
    planned state's rules, and the policy before/after (None: unchanged)."""

    removed: tuple[int, ...] = ()
    added: tuple[int, ...] = ()
    policy: tuple[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"removed": list(self.removed), "added": list(self.added),
                "policy": list(self.policy) if self.policy else None}

    @staticmethod
    def from_json(data: dict[str, Any]) -> OwnChange:
        pol = data.get("policy")
        return OwnChange(tuple(data.get("removed", ())), tuple(data.get("added", ())),
                         (str(pol[0]), str(pol[1])) if pol else None)


def plan_state(kind: EditKind, state: ChainState, index: int | None = None,
               before: int | None = None, new_text: str | None = None,
               verdict: str | None = None) -> tuple[ChainState, OwnChange]:
    """The chain as it will be after the edit, and fwtop's own change. `index` is the 0-based
    rule being deleted/moved, `before` the 0-based rule it goes in front of (None: the end)."""
    rules = list(state.rules)
    if kind == "policy":
        if state.policy is None:
            raise EditError(f"{state.table} {state.chain} is not a base chain: it has no policy")
        assert verdict is not None
        if verdict == state.policy:
            raise EditError(f"the policy of {state.table} {state.chain} is already {verdict}")
        return replace(state, policy=verdict), OwnChange(policy=(state.policy, verdict))
    if kind == "delete":
        assert index is not None
        del rules[index]
        return replace(state, rules=tuple(rules)), OwnChange(removed=(index,))
    if kind == "move":
        assert index is not None and before is not None
        if before in (index, index + 1):
            raise EditError("the rule already sits right before that one: nothing to move")
        moved = rules[index]
        del rules[index]
        at = before - 1 if before > index else before
        # A moved rule is a new rule where it lands (nft gives it a new handle).
        rules.insert(at, ChainRule(moved.text, None, moved.counters))
        return replace(state, rules=tuple(rules)), OwnChange(removed=(index,), added=(at,))
    assert kind == "insert" and new_text is not None
    at = len(rules) if before is None else before
    rules.insert(at, ChainRule(new_text))
    return replace(state, rules=tuple(rules)), OwnChange(added=(at,))


def diff_lines(before: ChainState, after: ChainState) -> list[str]:
    """A unified-style diff of the chain: '  ' kept, '- ' removed, '+ ' added."""
    out = [f"--- {before.backend} {before.family} {before.table} {before.chain} (now)",
           f"+++ {after.backend} {after.family} {after.table} {after.chain} (after the edit)"]
    if before.policy != after.policy:
        out += [f"- policy {before.policy}", f"+ policy {after.policy}"]
    elif before.policy:
        out.append(f"  policy {before.policy}")
    a, b = before.texts, after.texts
    sm = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    for op, i1, i2, j1, j2 in sm.get_opcodes():
        if op == "equal":
            out += [f"  {_ident(before.rules[i], i + 1)}  {a[i]}" for i in range(i1, i2)]
            continue
        out += [f"- {_ident(before.rules[i], i + 1)}  {a[i]}" for i in range(i1, i2)]
        out += [f"+ #{j + 1}  {b[j]}" for j in range(j1, j2)]
    return out


# --- the undo ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Undo:
    """What the revert writes: `target` (None: nothing, see `conflict`); `exact` when the chain
    was untouched since fwtop's edit and goes back to the snapshot as it was."""

    target: ChainState | None
    exact: bool
    conflict: str | None = None
    note: str = ""


def _align(a: Sequence[ChainRule], b: Sequence[ChainRule], handles: bool) -> dict[int, int]:
    """Index in `a` -> index in `b` of the same rule: by handle for nft, else by the longest
    common subsequence of texts."""
    if handles:
        where = {r.handle: j for j, r in enumerate(b) if r.handle is not None}
        return {i: where[r.handle] for i, r in enumerate(a) if r.handle in where}
    sm = difflib.SequenceMatcher(a=[r.text for r in a], b=[r.text for r in b], autojunk=False)
    out: dict[int, int] = {}
    for blk in sm.get_matching_blocks():
        for k in range(blk.size):
            out[blk.a + k] = blk.b + k
    return out


def undo_own(snapshot: ChainState, after: ChainState, current: ChainState,
             own: OwnChange) -> Undo:
    """How to undo fwtop's edit from the chain as it is now."""
    if current.same_as(after):
        keep = {r.handle for r in current.rules if r.handle is not None}
        rules = tuple(r if r.handle in keep else replace(r, handle=None)
                      for r in snapshot.rules) if snapshot.uses_handles else snapshot.rules
        return Undo(replace(snapshot, rules=rules), True, None, "restored the snapshot")
    handles = snapshot.uses_handles
    others: list[str] = []
    # Kept snapshot rules in the planned/after state: snapshot order minus what fwtop removed.
    kept_s = [i for i in range(len(snapshot.rules)) if i not in own.removed]
    kept_a = [j for j in range(len(after.rules)) if j not in own.added]
    if len(kept_s) != len(kept_a):
        return Undo(None, False, "fwtop's own record of the edit is inconsistent")
    s_to_a = dict(zip(kept_s, kept_a, strict=True))
    a_to_c = _align(after.rules, current.rules, handles)
    cur_rules = list(current.rules)
    drop_c: set[int] = set()
    for j in own.added:
        c = a_to_c.get(j)
        if c is None:
            others.append(f"fwtop's rule `{after.rules[j].text}` was already removed")
        else:
            drop_c.add(c)
    mapped_c = set(a_to_c.values())
    inserts: list[tuple[int, ChainRule]] = []  # (index in current before which, rule)
    for i in own.removed:
        rule = snapshot.rules[i]
        dup = [c for c, r in enumerate(current.rules)
               if r.text == rule.text and c not in mapped_c]
        if dup:
            return Undo(None, False, f"the rule fwtop removed, `{rule.text}`, is in the chain "
                                     "again (someone put it back?)")
        anchor: int | None = None
        for k in range(i + 1, len(snapshot.rules)):
            c = a_to_c.get(s_to_a[k]) if k in s_to_a else None
            if c is not None and c not in drop_c:
                anchor = c
                break
        if anchor is None:
            prev = None
            for k in range(i - 1, -1, -1):
                c = a_to_c.get(s_to_a[k]) if k in s_to_a else None
                if c is not None and c not in drop_c:
                    prev = c
                    break
            if prev is not None:
                anchor = prev + 1
            elif all(c in drop_c for c in range(len(current.rules))):
                anchor = len(current.rules)
            else:
                return Undo(None, False, f"the neighbours of `{rule.text}` are gone: fwtop "
                                         "cannot tell where it belongs")
        inserts.append((anchor, replace(rule, handle=None)))
    policy = current.policy
    if own.policy is not None:
        was, made = own.policy
        if current.policy == made:
            policy = was
        else:
            return Undo(None, False, f"the policy was changed again since fwtop's edit "
                                     f"(now {current.policy}, fwtop set {made})")
    new: list[ChainRule] = []
    for c, r in enumerate(cur_rules):
        new += [ins for at, ins in inserts if at == c]
        if c not in drop_c:
            new.append(r)
    new += [ins for at, ins in inserts if at >= len(cur_rules)]
    changed = _describe_changes(after, current)
    note = "the chain was changed by someone else meanwhile (" + changed + \
           "): undid only fwtop's own change" + ("; " + "; ".join(others) if others else "")
    return Undo(replace(current, rules=tuple(new), policy=policy), False, None, note)


def _describe_changes(after: ChainState, current: ChainState) -> str:
    a_to_c = _align(after.rules, current.rules, after.uses_handles)
    gone = len(after.rules) - len(a_to_c)
    added = len(current.rules) - len(a_to_c)
    parts = []
    if added:
        parts.append(f"{added} rule(s) added")
    if gone:
        parts.append(f"{gone} rule(s) removed")
    if after.policy != current.policy:
        parts.append(f"policy {after.policy} -> {current.policy}")
    return ", ".join(parts) or "rules reordered"


# --- writing (text only; the firewall layer runs it) ------------------------------------------


def nft_batch(current: ChainState, target: ChainState) -> str:
    """One nft batch turning `current` into `target` by handle: rules of `current` missing from
    `target` are deleted, rules of `target` without a handle are inserted before the next kept
    rule (or appended), the policy is set. Rules kept keep their handles."""
    where = f"{current.family} {current.table} {current.chain}"
    keep = [r.handle for r in target.rules if r.handle is not None]
    now = [r.handle for r in current.rules if r.handle in set(keep)]
    if now != keep:
        raise EditError("the chain's rules are not in the order fwtop expected")
    lines = [f"delete rule {where} handle {r.handle}" for r in current.rules
             if r.handle not in set(keep)]
    for i, r in enumerate(target.rules):
        if r.handle is not None:
            continue
        anchor = next((x.handle for x in target.rules[i + 1:] if x.handle is not None), None)
        lines.append(f"insert rule {where} position {anchor} {r.text}" if anchor is not None
                     else f"add rule {where} {r.text}")
    if target.policy is not None and target.policy != current.policy:
        lines.append(f"chain {where} {{ policy {target.policy}; }}")
    return "".join(line + "\n" for line in lines)


def restore_script(current: ChainState, target: ChainState) -> str:
    """iptables-restore --noflush --counters input rewriting one chain in one COMMIT: its
    policy (if it changes), `-F CHAIN` and the rules of `target`. Rules that stay keep the
    counters they have now."""
    by_text: dict[str, list[tuple[int, int] | None]] = {}
    for r in current.rules:
        by_text.setdefault(r.text, []).append(r.counters)
    lines = [f"*{target.table}"]
    if target.policy is not None and target.policy != current.policy:
        pc = current.policy_counters or (0, 0)
        lines.append(f":{target.chain} {target.policy.upper()} [{pc[0]}:{pc[1]}]")
    lines.append(f"-F {target.chain}")
    for r in target.rules:
        same = by_text.get(r.text)
        c = (same.pop(0) if same else None) or (0, 0)
        lines.append(f"[{c[0]}:{c[1]}] -A {target.chain} {r.text}".rstrip())
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


# --- the edited model, for the impact ---------------------------------------------------------


def edited_ruleset(ruleset: Ruleset, chain_id: tuple[str, str, str, str],
                   rules: Sequence[Rule], policy: str | None) -> Ruleset:
    """The ruleset with one chain's rules replaced (positions renumbered) and its policy set."""
    tables: list[Table] = []
    for t in ruleset.tables:
        chains: list[Chain] = []
        for c in t.chains:
            if c.id == chain_id:
                renumbered = tuple(replace(r, position=i) for i, r in enumerate(rules, 1))
                pol = c.policy
                if pol is not None and policy is not None and pol.verdict != policy:
                    pol = replace(pol, verdict=_verdict_word(policy))
                c = replace(c, rules=renumbered, policy=pol)
            chains.append(c)
        tables.append(replace(t, chains=tuple(chains)))
    return replace(ruleset, tables=tuple(tables))


def _verdict_word(word: str) -> RuleVerdict:
    return "drop" if word == "drop" else "accept"


def model_rules(chain: Chain, state: ChainState, target: ChainState,
                new_rule: Rule | None) -> list[Rule]:
    """The model's Rule objects in `target`'s order: rules that stay are the model's own (the
    model chain lists them in the same order as `state`); the one new rule is `new_rule`."""
    if len(chain.rules) != len(state.rules):
        raise EditError(f"the chain {state.chain} changed while fwtop read it: try again")
    pool: dict[str, list[Rule]] = {}
    for mr, sr in zip(chain.rules, state.rules, strict=True):
        pool.setdefault(sr.text, []).append(mr)
    out: list[Rule] = []
    for r in target.rules:
        got = pool.get(r.text)
        if got:
            out.append(got.pop(0))
        elif new_rule is not None:
            out.append(new_rule)
            new_rule = None
        else:  # pragma: no cover - a target only adds the new rule or a moved one
            raise EditError("fwtop could not map the edited chain onto its model")
    return out


# --- impact -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImpactGroup:
    count: int
    proto: str
    src: str  # a prefix (or one address)
    dst: str | None
    dport: int | None

    def text(self, what: str, outcome: str) -> str:
        to = f" to :{self.dport}" if self.dport is not None else ""
        return f"{self.count} {what} from {self.src}{to} ({self.proto}) would now be {outcome}"

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "proto": self.proto, "src": self.src, "dst": self.dst,
                "dport": self.dport}


@dataclass(frozen=True, slots=True)
class SshCheck:
    """The user's own SSH session evaluated against the edited ruleset."""

    session: str  # "client:port -> server:port"
    checked: bool
    cut: bool = False
    new_refused: bool = False  # a new SSH connection from the same client would be refused
    why: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"session": self.session, "checked": self.checked, "cut": self.cut,
                "new_refused": self.new_refused, "why": self.why}


@dataclass(slots=True)
class Impact:
    drops_seen: int = 0
    drops_now_accepted: int = 0
    drops_still_dropped: int = 0
    drops_uncertain: int = 0
    drops_not_dropped_now: int = 0  # the evaluator says accepted already (ruleset changed?)
    flows_seen: int = 0
    flows_now_dropped: int = 0
    flows_uncertain: int = 0
    established_cut: int = 0
    accepted_groups: list[ImpactGroup] = field(default_factory=list)
    dropped_groups: list[ImpactGroup] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)  # per distinct packet, capped
    ssh: SshCheck | None = None
    sources: list[str] = field(default_factory=list)  # where the traffic came from

    def summary(self) -> list[str]:
        out: list[str] = []
        if not self.drops_seen and not self.flows_seen:
            out.append("no recent traffic to replay (give --replay FILE or --observe S)")
        out += [g.text("drops", "accepted") for g in self.accepted_groups]
        if self.drops_seen:
            out.append(f"{self.drops_now_accepted} of {self.drops_seen} recent drops would now be "
                       f"accepted, {self.drops_still_dropped} still dropped"
                       + (f", {self.drops_uncertain} uncertain" if self.drops_uncertain else "")
                       + (f", {self.drops_not_dropped_now} accepted by the ruleset as it is "
                          "(it changed since they were dropped?)"
                          if self.drops_not_dropped_now else ""))
        out += [g.text("flows accepted now", "dropped") for g in self.dropped_groups]
        if self.flows_seen:
            out.append(f"{self.flows_now_dropped} of {self.flows_seen} flows accepted now would "
                       "be dropped"
                       + (f" ({self.established_cut} established ones cut)"
                          if self.established_cut else "")
                       + (f", {self.flows_uncertain} uncertain" if self.flows_uncertain else ""))
        if self.ssh is not None and self.ssh.checked and (self.ssh.cut or self.ssh.new_refused):
            out.append("WARNING: " + self.ssh.why)
        return out

    def to_json(self) -> dict[str, Any]:
        return {"drops_seen": self.drops_seen, "drops_now_accepted": self.drops_now_accepted,
                "drops_still_dropped": self.drops_still_dropped,
                "drops_uncertain": self.drops_uncertain,
                "drops_not_dropped_now": self.drops_not_dropped_now,
                "flows_seen": self.flows_seen, "flows_now_dropped": self.flows_now_dropped,
                "flows_uncertain": self.flows_uncertain,
                "established_cut": self.established_cut,
                "accepted_groups": [g.to_json() for g in self.accepted_groups],
                "dropped_groups": [g.to_json() for g in self.dropped_groups],
                "changes": self.changes, "ssh": self.ssh.to_json() if self.ssh else None,
                "sources": self.sources, "summary": self.summary()}


def _blocked(v: Verdict) -> bool:
    return v.verdict in ("drop", "reject")


def _group(packets: Iterable[tuple[Packet, int]]) -> list[ImpactGroup]:
    """Drops/flows grouped by protocol, destination port and source /24 (/64), the source shown
    as the smallest prefix that holds every grouped address."""
    groups: dict[tuple[str, int | None, str], list[tuple[Packet, int]]] = {}
    for pkt, n in packets:
        try:
            ip = ipaddress.ip_address(pkt.src)
        except ValueError:
            continue
        wide = ipaddress.ip_network(f"{ip}/{24 if ip.version == 4 else 64}", strict=False)
        groups.setdefault((pkt.proto, pkt.dport, str(wide)), []).append((pkt, n))
    out: list[ImpactGroup] = []
    for (proto, dport, _), items in groups.items():
        addrs = sorted({ipaddress.ip_address(p.src) for p, _ in items})
        lo, hi = addrs[0], addrs[-1]
        net = ipaddress.ip_network(lo)
        while hi not in net:
            net = net.supernet()
        dsts = {p.dst for p, _ in items}
        out.append(ImpactGroup(sum(n for _, n in items), proto,
                               str(lo) if lo == hi else str(net),
                               dsts.pop() if len(dsts) == 1 else None, dport))
    out.sort(key=lambda g: -g.count)
    return out


def _change(pkt: Packet, n: int, old: Verdict, new: Verdict) -> dict[str, Any]:
    return {"proto": pkt.proto, "src": pkt.src, "dst": pkt.dst, "sport": pkt.sport,
            "dport": pkt.dport, "count": n, "now": old.verdict, "after": new.verdict,
            "certain": old.certain and new.certain}


def impact(old: Evaluator, new: Evaluator, net: NetContext, drops: Iterable[Packet],
           flows: Iterable[Packet] = (), ssh: SshCheck | None = None,
           ssh_packets: Sequence[Packet] = (), max_changes: int = 200) -> Impact:
    """Replay recent drops and currently accepted flows through the ruleset as it is and as
    it would be; an SshCheck with `checked` set is completed from `ssh_packets` (the session's
    established packets both ways, then a new connection)."""
    out = Impact()
    drop_counts = Counter(drops)
    accepted: list[tuple[Packet, int]] = []
    for pkt, n in drop_counts.items():
        out.drops_seen += n
        before, after = old.evaluate(pkt, net), new.evaluate(pkt, net)
        if not after.certain:
            out.drops_uncertain += n
        elif _blocked(after):
            out.drops_still_dropped += n
        elif _blocked(before) or not before.certain:
            out.drops_now_accepted += n
            accepted.append((pkt, n))
        else:  # the ruleset as it is accepts it already: not this edit's doing
            out.drops_not_dropped_now += n
        if before.verdict != after.verdict and len(out.changes) < max_changes:
            out.changes.append(_change(pkt, n, before, after))
    out.accepted_groups = _group(accepted)
    flow_counts = Counter(flows)
    dropped: list[tuple[Packet, int]] = []
    for pkt, n in flow_counts.items():
        out.flows_seen += n
        before = old.evaluate(pkt, net)
        after = new.evaluate(pkt, net)
        if not after.certain:
            out.flows_uncertain += n
        elif _blocked(after) and not _blocked(before):
            out.flows_now_dropped += n
            dropped.append((pkt, n))
            est = replace(pkt, ct_state="established")
            if _blocked(new.evaluate(est, net)):
                out.established_cut += n
        if before.verdict != after.verdict and len(out.changes) < max_changes:
            out.changes.append(_change(pkt, n, before, after))
    out.dropped_groups = _group(dropped)
    if ssh is not None and ssh.checked and ssh_packets:
        out.ssh = check_ssh(old, new, net, ssh, ssh_packets)
    else:
        out.ssh = ssh
    return out


def ssh_session(value: str | None) -> tuple[str, int, str, int] | None:
    """SSH_CONNECTION ("client_ip client_port server_ip server_port") as a tuple."""
    if not value:
        return None
    parts = value.split()
    if len(parts) != 4 or not parts[1].isdigit() or not parts[3].isdigit():
        return None
    try:
        ipaddress.ip_address(parts[0])
        ipaddress.ip_address(parts[2])
    except ValueError:
        return None
    return parts[0], int(parts[1]), parts[2].split("%")[0], int(parts[3])


def ssh_packets(session: tuple[str, int, str, int], net: NetContext) -> list[Packet]:
    """The session's packets as the server's firewall sees them: in (established), out
    (established), and a new connection from the same client."""
    client, cport, server, sport = session
    iif = net.route(client)
    inbound = Packet("tcp", client, server, cport, sport, iif=iif, hook="input",
                     ct_state="established")
    outbound = Packet("tcp", server, client, sport, cport, oif=iif, hook="output",
                      ct_state="established")
    fresh = replace(inbound, ct_state="new")
    return [inbound, outbound, fresh]


def check_ssh(old: Evaluator, new: Evaluator, net: NetContext, ssh: SshCheck,
              packets: Sequence[Packet]) -> SshCheck:
    inbound, outbound, fresh = packets
    cut_dirs = [name for name, p in (("incoming", inbound), ("outgoing", outbound))
                if _blocked(new.evaluate(p, net)) and not _blocked(old.evaluate(p, net))]
    refused = _blocked(new.evaluate(fresh, net)) and not _blocked(old.evaluate(fresh, net))
    if cut_dirs:
        why = (f"this edit would cut your own SSH session {ssh.session} "
               f"({' and '.join(cut_dirs)} packets dropped)")
    elif refused:
        why = (f"your SSH session {ssh.session} would survive, but a new SSH connection from "
               "your address would be refused")
    else:
        why = f"your SSH session {ssh.session} is not affected"
    return replace(ssh, cut=bool(cut_dirs), new_refused=refused, why=why)


# --- recorded traffic -------------------------------------------------------------------------

ACCEPTED_FLOW_STATES = frozenset({"established", "answered", "refused", "half-open"})


def replay_lines(lines: Iterable[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """`fwtop watch --json` lines to (drop objects, accepted flow objects, unreadable lines).
    Never raises on a bad line: it is counted."""
    import json

    drops: list[dict[str, Any]] = []
    flows: list[dict[str, Any]] = []
    bad = 0
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if not isinstance(obj, dict):
            bad += 1
            continue
        if obj.get("type") == "drop":
            drops.append(obj)
        elif obj.get("type") == "flow" and obj.get("state") in ACCEPTED_FLOW_STATES:
            flows.append(obj)
    return drops, flows, bad


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def _endpoints(obj: dict[str, Any]) -> tuple[str, str, str] | None:
    """(src, dst, proto) of a recorded line, or None unless both addresses are valid."""
    src, dst, proto = _str(obj.get("src")), _str(obj.get("dst")), _str(obj.get("proto"))
    if src is None or dst is None or proto is None:
        return None
    try:
        ipaddress.ip_address(src)
        ipaddress.ip_address(dst)
    except ValueError:
        return None
    return src, dst, proto


def drop_packet(obj: dict[str, Any]) -> Packet | None:
    """A drop line as the evaluator's packet (as `correlate.packet_of` does for live events)."""
    ends = _endpoints(obj)
    if ends is None:
        return None
    src, dst, proto = ends
    hook = obj.get("hook") if obj.get("hook") in ("input", "forward", "output") else None
    return Packet(proto=proto, src=src, dst=dst, sport=_int(obj.get("sport")),
                  dport=_int(obj.get("dport")), icmp_type=_int(obj.get("icmp_type")),
                  icmp_code=_int(obj.get("icmp_code")), iif=_str(obj.get("iif")),
                  oif=_str(obj.get("oif")), hook=hook, post_nat=hook is not None)


def flow_packet(obj: dict[str, Any], net: NetContext) -> Packet | None:
    """An accepted flow (a `flow` line, or a conntrack entry) as the packet that opened it."""
    ends = _endpoints(obj)
    if ends is None:
        return None
    src, dst, proto = ends
    iif = None if net.is_local(src) else net.route(src)
    return Packet(proto=proto, src=src, dst=dst, sport=_int(obj.get("sport")),
                  dport=_int(obj.get("dport")), icmp_type=_int(obj.get("icmp_type")),
                  icmp_code=_int(obj.get("icmp_code")), iif=iif)


_CT_FIELD = re.compile(r"\b(src|dst|sport|dport|type|code)=(\S+)")


def conntrack_flows(text: str, limit: int = 5000) -> list[dict[str, Any]]:
    """`conntrack -L` output: each entry's original direction (the side that opened it)."""
    out: list[dict[str, Any]] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3 or parts[0] in ("conntrack",):
            continue
        seen: dict[str, str] = {}
        for m in _CT_FIELD.finditer(line):
            if m.group(1) in seen:
                continue  # the reply direction repeats the keys
            seen[m.group(1)] = m.group(2)
        if "src" not in seen or "dst" not in seen:
            continue
        obj: dict[str, Any] = {"proto": parts[0], "src": seen["src"], "dst": seen["dst"]}
        for k, name in (("sport", "sport"), ("dport", "dport"), ("type", "icmp_type"),
                        ("code", "icmp_code")):
            if seen.get(k, "").isdigit():
                obj[name] = int(seen[k])
        out.append(obj)
        if len(out) >= limit:
            break
    return out


def rule_from_tokens(backend: str, family: str, table: str, chain: str, text: str,
                     tokens: list[str], user_chains: frozenset[str], key: str) -> Rule:
    """The model's Rule for a typed iptables rule (position is set by edited_ruleset)."""
    from fwtop.core.iptables_syntax import parse_rule_args

    matches, verdict, target, comment = parse_rule_args(tokens, user_chains)
    return Rule(cast(Backend, backend), family, table, chain, 0, None, text, verdict, target,
                matches, None, comment, None, key)

