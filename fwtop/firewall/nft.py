"""The nf_tables backend: native nftables, iptables-nft and firewalld's tables.

Native rules come from nft's JSON (`list ruleset`, or one `list table` each) with nft's own text
(from a stateless `list table`). iptables-nft rules come from `iptables-nft-save -c`, which keeps
the comment and the iptables spelling, paired chain by chain and in order with the kernel's rule
handles read over netlink; nft never lists them (see `_load_netlink`).
"""

from __future__ import annotations

import gc
import json
import locale
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import IO, Any

from fwtop.core import nftnl
from fwtop.core.iptables_syntax import SaveRule, SaveTable, parse_save
from fwtop.core.model import (
    Backend,
    Chain,
    Counters,
    Match,
    NamedSet,
    Policy,
    Rule,
    Table,
    Verdict,
    rule_key,
)
from fwtop.core.nftjson import rule_from_json
from fwtop.core.nftnl import ChainInfo
from fwtop.firewall.libnft import OUTPUT_HANDLE, OUTPUT_JSON, OUTPUT_STATELESS, Nft, NftError
from fwtop.sources.nft_counters import NftCounterReader, NftNetlinkError

XTABLES_NAMES = frozenset({"filter", "nat", "mangle", "raw", "security"})
_SAVE_COMMANDS = {"ip": "iptables-nft-save", "ip6": "ip6tables-nft-save"}
_HANDLE_RE = re.compile(r"\s*# handle (\d+)\s*$")
_CHAIN_RE = re.compile(r"^\s*chain (\S+) \{")
# firewalld names chains <table>_<HOOK>_<zone>[_suffix] (filter_IN_public_allow, nat_PRE_dmz).
_FIREWALLD_ZONE_RE = re.compile(
    r"_(?:IN|FWD|FWDI|FWDO|OUT|PRE|POST)_(.+?)(?:_(?:allow|deny|log|pre|post|dnat|snat))?$"
)


def iter_json_objects(text: str) -> Iterator[dict[str, Any]]:
    """Decode the `{"nftables": [...]}` array one element at a time, so a 50k-rule dump never
    exists as one big tree of dicts (that costs ~760 MB in Python)."""
    start = text.find("[")
    if start < 0:
        return
    decoder = json.JSONDecoder()
    i = start + 1
    n = len(text)
    while i < n:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n or text[i] == "]":
            return
        obj, i = decoder.raw_decode(text, i)
        if isinstance(obj, dict):
            yield obj


def _prio(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, dict):  # newer schemas: {"prio": {"standard": "filter", "offset": 0}}
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def rule_texts(listing: str) -> dict[tuple[str, int], str]:
    """(chain, handle) -> rule text from `nft -a -s list table ...` output."""
    out: dict[tuple[str, int], str] = {}
    chain: str | None = None
    for line in listing.splitlines():
        m = _CHAIN_RE.match(line)
        if m:
            chain = m.group(1)
            continue
        if chain is None:
            continue
        if line.strip() == "}":
            chain = None
            continue
        h = _HANDLE_RE.search(line)
        if h and not line.lstrip().startswith(("type ", "policy ")):
            out[(chain, int(h.group(1)))] = line[: h.start()].strip()
    return out


def _save_tables(family: str) -> tuple[dict[str, SaveTable], str | None]:
    cmd = _SAVE_COMMANDS.get(family)
    if cmd is None or shutil.which(cmd) is None:
        return {}, f"{cmd or 'iptables-nft-save'} not installed: iptables-nft comments unavailable"
    proc = subprocess.run([cmd, "-c"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {}, f"{cmd} failed: {proc.stderr.strip().splitlines()[0] if proc.stderr else '?'}"
    return {t.name: t for t in parse_save(proc.stdout)}, None


def _zone(table: str, chain: str) -> str | None:
    if table != "firewalld":
        return None
    m = _FIREWALLD_ZONE_RE.search(chain)
    return m.group(1) if m else None


def _verdict(policy: str | None) -> Verdict:
    return {"accept": "accept", "drop": "drop"}.get(policy or "", "unknown")  # type: ignore[return-value]


@dataclass(slots=True)
class _TableBuilder:
    """Accumulates one table's chains while the JSON streams past, converting each rule to the
    model at once so the decoded JSON of 50k rules never piles up."""

    backend: Backend
    family: str
    name: str
    texts: dict[tuple[str, int], str] = field(default_factory=dict)  # native: (chain, handle)
    save: SaveTable | None = None  # iptables-nft: paired by order within each chain
    chains: dict[str, dict[str, Any]] = field(default_factory=dict)
    rules: dict[str, list[Rule]] = field(default_factory=dict)
    sets: list[NamedSet] = field(default_factory=list)
    _saved: dict[str, list[SaveRule]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.save is not None:
            for sr in self.save.rules:
                self._saved.setdefault(sr.chain, []).append(sr)

    def reset(self) -> None:
        """Forget what was fed, to feed the table again from another listing."""
        self.chains.clear()
        self.rules.clear()
        self.sets.clear()

    def add_chain(self, c: dict[str, Any]) -> None:
        self.chains[c["name"]] = c
        self.rules.setdefault(c["name"], [])

    def add_rule(self, r: dict[str, Any]) -> None:
        chain = r["chain"]
        rules = self.rules.setdefault(chain, [])
        pos = len(rules) + 1
        handle = int(r["handle"])
        matches, verdict, target, counters = rule_from_json(r.get("expr", []))
        comment = r.get("comment")
        saved = self._saved.get(chain)
        if self.save is not None:
            text = ""
            if saved is not None and pos <= len(saved):
                sr = saved[pos - 1]
                matches, verdict, target, text, comment = (
                    sr.matches, sr.verdict, sr.target, sr.text, sr.comment)
                counters = counters or sr.counters
        else:
            text = self.texts.get((chain, handle), "")
        cid = (self.backend, self.family, self.name, chain)
        rules.append(Rule(self.backend, self.family, self.name, chain, pos, handle, text, verdict,
                          target, matches, counters, comment, _zone(self.name, chain),
                          rule_key(cid, handle, text)))

    def add_set(self, kind: str, s: dict[str, Any]) -> None:
        elems = tuple(e if isinstance(e, str) else json.dumps(e, separators=(",", ":"))
                      for e in s.get("elem", []))
        flags = s.get("flags", [])
        self.sets.append(NamedSet(self.family, self.name, s["name"], f"{kind}:{s.get('type')}",
                                  elems, tuple(flags if isinstance(flags, list) else [flags])))

    def build(self, warnings: list[str]) -> Table:
        chains: list[Chain] = []
        for name, c in self.chains.items():
            rules = self.rules.get(name, [])
            if self.save is not None and len(self._saved.get(name, [])) != len(rules):
                warnings.append(f"{self.family} {self.name} {name}: nft and iptables-nft-save "
                                "disagree (ruleset changed while reading); comments may be missing")
            policy = None
            hook = c.get("hook")
            if hook is not None:
                pol_counters = None
                if self.save is not None:
                    _, pol_counters = self.save.policies.get(name, ("", None))
                policy = Policy(self.backend, self.family, self.name, name,
                                _verdict(c.get("policy") or "accept"), pol_counters)
            chains.append(Chain(self.backend, self.family, self.name, name, tuple(rules), hook,
                                _prio(c.get("prio")), c.get("type"), policy,
                                _zone(self.name, name)))
        return Table(self.backend, self.family, self.name, tuple(chains), tuple(self.sets))


def _list_big(nft: Nft, command: str, flags: int) -> str:
    """Listings of big rulesets cost libnftables hundreds of MB while it builds them (glibc keeps
    that heap afterwards): run them in an `nft` child when the binary exists, so that memory dies
    with the child and fwtop's own footprint stays small."""
    if shutil.which("nft") is None:
        return nft.check(command, flags)
    argv = ["nft"]
    argv += ["-j"] if flags & OUTPUT_JSON else []
    argv += ["-a"] if flags & OUTPUT_HANDLE else []
    argv += ["-s"] if flags & OUTPUT_STATELESS else []
    proc = subprocess.run([*argv, *command.split()], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        first = next((ln for ln in proc.stderr.splitlines() if ln.strip()), "unknown error")
        raise NftError(f"nft {command!r} failed: {first}")
    return proc.stdout


def load(nft: Nft | None = None, *, _xtables_json: bool = False) -> tuple[list[Table], list[str]]:
    """Read every nf_tables table of the calling thread's namespace into the rule model.

    iptables-nft tables are read without listing their rules through nft (see `_load_netlink`);
    `_xtables_json` forces the older path that does, for tests comparing the two."""
    with _cycle_collection_paused():
        return _load(nft or Nft(), _xtables_json)


@contextmanager
def _cycle_collection_paused() -> Iterator[None]:
    """A big load allocates about a million small objects and no reference cycles; the cyclic
    collector would walk the growing heap hundreds of times for nothing (0.14 s of a 50,000-rule
    load). Paused for the load only, and only if it was running."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _load(nft: Nft, _xtables_json: bool) -> tuple[list[Table], list[str]]:
    if not _xtables_json:
        try:
            reader = NftCounterReader()
        except NftNetlinkError:
            reader = None  # the JSON path reports the failure in nft's words
        if reader is not None:
            try:
                with reader:
                    loaded = _load_netlink(nft, reader)
            except NftNetlinkError:
                loaded = None
            if loaded is not None:
                return loaded
    return _load_json(nft)


def _load_json(
    nft: Nft, table_names: list[tuple[str, str]] | None = None
) -> tuple[list[Table], list[str]]:
    """Every table from one `nft -j list ruleset`, iptables-nft rules paired with the save."""
    warnings: list[str] = []
    if table_names is None:
        table_names = [(o["table"]["family"], o["table"]["name"])
                       for o in iter_json_objects(_list_big(nft, "list tables", OUTPUT_JSON))
                       if "table" in o]
    saves: dict[str, dict[str, SaveTable]] = {}
    for family in ("ip", "ip6"):
        if any(f == family and n in XTABLES_NAMES for f, n in table_names):
            saves[family], warn = _save_tables(family)
            if warn:
                warnings.append(warn)
    builders = {(family, name): _json_builder(nft, family, name, saves)
                for family, name in table_names}
    _feed(builders, _list_big(nft, "list ruleset", OUTPUT_JSON | OUTPUT_HANDLE))
    return [b.build(warnings) for b in builders.values()], warnings


def _json_builder(nft: Nft, family: str, name: str,
                  saves: dict[str, dict[str, SaveTable]]) -> _TableBuilder:
    save = saves.get(family, {}).get(name) if name in XTABLES_NAMES else None
    if save is not None:
        return _TableBuilder("iptables-nft", family, name, save=save)
    listing = _list_big(nft, f"list table {family} {name}", OUTPUT_HANDLE | OUTPUT_STATELESS)
    backend: Backend = "firewalld" if name == "firewalld" else "nft"
    return _TableBuilder(backend, family, name, texts=rule_texts(listing))


def _feed(builders: dict[tuple[str, str], _TableBuilder], listing: str) -> None:
    for obj in iter_json_objects(listing):
        kind = next(iter(obj), "")
        body = obj[kind]
        if kind == "metainfo" or not isinstance(body, dict):
            continue
        key = (body.get("family"), body.get("table") if kind != "table" else body.get("name"))
        builder = builders.get(key)  # type: ignore[arg-type]
        if builder is None:
            continue  # a table created after `list tables`: the next generation reload has it
        if kind == "chain":
            builder.add_chain(body)
        elif kind == "rule":
            builder.add_rule(body)
        elif kind in ("set", "map"):
            builder.add_set(kind, body)


# --- iptables-nft tables without nft's JSON ----------------------------------------------------
#
# `nft -j list ruleset` spends seconds and hundreds of MB decoding and printing 50,000
# iptables-nft rules whose expressions fwtop then replaces with iptables-nft-save's. What the
# save lacks comes from netlink instead: the tables, each chain's hook, priority, type and
# policy, and every rule's handle, chain by chain (`NftCounterReader.listing` / `rule_handles`).
# Rule N of a chain in the kernel is line N of that chain in the save, as in the JSON path.
# Reads happen while the save runs; both are trusted only if the ruleset generation did not
# move from before the save to after the last dump.


@dataclass(slots=True)
class _SaveRun:
    """One `iptables-nft-save -c` running in the background, its output going to a file."""

    family: str
    proc: subprocess.Popen[bytes] | None = None
    out: IO[bytes] | None = None
    err: IO[bytes] | None = None
    warning: str | None = None


def _start_save(family: str) -> _SaveRun:
    cmd = _SAVE_COMMANDS[family]
    if shutil.which(cmd) is None:
        return _SaveRun(family, warning=f"{cmd} not installed: iptables-nft comments unavailable")
    try:
        out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    except OSError:
        return _SaveRun(family)  # no temporary files: run it in the foreground when finishing
    try:
        proc = subprocess.Popen([cmd, "-c"], stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    except BaseException:
        out.close()
        err.close()
        raise
    return _SaveRun(family, proc, out, err)


def _finish_save(run: _SaveRun) -> tuple[dict[str, SaveTable], str | None]:
    if run.warning is not None:
        return {}, run.warning
    if run.proc is None or run.out is None or run.err is None:
        return _save_tables(run.family)
    try:
        rc = run.proc.wait()
        run.out.seek(0)
        run.err.seek(0)
        encoding = locale.getpreferredencoding(False)
        stdout = run.out.read().decode(encoding, "backslashreplace")
        stderr = run.err.read().decode(encoding, "backslashreplace")
    finally:
        run.out.close()
        run.err.close()
    if rc != 0:
        return {}, f"{_SAVE_COMMANDS[run.family]} failed: {_first_line(stderr)}"
    return {t.name: t for t in parse_save(stdout)}, None


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else "?"


@dataclass(slots=True)
class _XtRead:
    """What one attempt read for the iptables-nft tables."""

    saves: dict[str, dict[str, SaveTable]]
    warnings: list[str]
    chains: dict[tuple[str, str], list[ChainInfo]]
    handles: dict[tuple[str, str], dict[str, list[int]]]
    named_sets: set[tuple[str, str]]
    consistent: bool


def _read_xtables(reader: NftCounterReader, generation: int | None,
                  tables: list[tuple[str, str]], last: bool = True) -> _XtRead:
    """Run the saves and read chains, sets and handles meanwhile. A read that is not the
    `last` attempt stops at the first sign of a change: it will be done again."""
    families = [f for f in ("ip", "ip6") if any(t[0] == f for t in tables)]
    runs = [_start_save(f) for f in families]
    saves: dict[str, dict[str, SaveTable]] = {}
    warnings: list[str] = []
    chains: dict[tuple[str, str], list[ChainInfo]] = {t: [] for t in tables}
    handles: dict[tuple[str, str], dict[str, list[int]]] = {}
    consistent = True
    try:
        for family in families:
            listing = reader.listing(nftnl.NFT_MSG_GETCHAIN, family, generation)
            consistent &= listing.consistent and not listing.malformed
            for c in listing.chains:
                per_table = chains.get((c.family, c.table))
                if per_table is not None:
                    per_table.append(c)
        sets = reader.listing(nftnl.NFT_MSG_GETSET, None, generation)
        consistent &= sets.consistent and not sets.malformed
        named_sets = {(f, t) for f, t, _ in sets.sets}
        for (family, table), cs in chains.items():
            if not consistent and not last:
                break
            got = reader.rule_handles(family, table, [c.name for c in cs], generation,
                                      stop_at_change=not last)
            consistent &= got.consistent and not got.malformed
            handles[(family, table)] = got.handles
    finally:
        # Always reap the children, also when a dump raised.
        for run in runs:
            found, warn = _finish_save(run)
            saves[run.family] = found
            if warn:
                warnings.append(warn)
    if consistent:
        consistent = reader.generation() == generation
    return _XtRead(saves, warnings, chains, handles, named_sets, consistent)


def _load_netlink(nft: Nft, reader: NftCounterReader) -> tuple[list[Table], list[str]] | None:
    """The load with iptables-nft tables read from netlink and the save; None if the ruleset
    kept changing too fast to read its table list at all (the caller then takes the JSON path).

    A read whose generation moved is done again once; if it moves again, each table is taken
    when every chain has as many rules in the kernel as in the save, which is all the JSON path
    ever checked, and listed through nft otherwise."""
    read: _XtRead | None = None
    table_names: list[tuple[str, str]] = []
    for attempt in range(2):
        generation = reader.generation()
        listing = reader.listing(nftnl.NFT_MSG_GETTABLE, None, generation)
        if not listing.consistent or listing.malformed:
            continue
        table_names = list(listing.tables)
        xt = [(f, n) for f, n in table_names if f in _SAVE_COMMANDS and n in XTABLES_NAMES]
        if not xt:
            return _load_json(nft, table_names)
        read = _read_xtables(reader, generation, xt, last=attempt == 1)
        if read.consistent:
            break
    if read is None:
        return None
    warnings = list(read.warnings)
    tables: dict[tuple[str, str], Table | None] = {}
    for family, name in table_names:
        save = read.saves.get(family, {}).get(name) if name in XTABLES_NAMES else None
        tables[(family, name)] = None
        if save is not None and (family, name) not in read.named_sets:
            tables[(family, name)] = _xt_table(family, name, read.chains.get((family, name), []),
                                               read.handles.get((family, name), {}), save)
    rest = [key for key, table in tables.items() if table is None]
    if rest:
        builders = {key: _json_builder(nft, key[0], key[1], read.saves) for key in rest}
        try:
            for family, name in rest:
                _feed(builders, _list_big(nft, f"list table {family} {name}",
                                          OUTPUT_JSON | OUTPUT_HANDLE))
        except NftError:
            # A table gone since the table list: one listing of everything, as the JSON path.
            for builder in builders.values():
                builder.reset()
            _feed(builders, _list_big(nft, "list ruleset", OUTPUT_JSON | OUTPUT_HANDLE))
        for key, builder in builders.items():
            tables[key] = builder.build(warnings)
    return [t for t in tables.values() if t is not None], warnings


def _xt_table(family: str, name: str, chains: list[ChainInfo], handles: dict[str, list[int]],
              save: SaveTable) -> Table | None:
    """One iptables-nft table from the kernel's chains and handles and the save's rules; None if
    a chain has a different number of rules in the two (then the JSON path reads the table)."""
    saved: dict[str, list[SaveRule]] = {}
    for sr in save.rules:
        saved.setdefault(sr.chain, []).append(sr)
    backend: Backend = "iptables-nft"
    new_rule = _new_rule
    out: list[Chain] = []
    for c in chains:
        cname = c.name
        hs = handles.get(cname, ())
        srs = saved.get(cname, ())
        if len(hs) != len(srs):
            return None
        zone = _zone(name, cname)
        rules: list[Rule] = []
        if hs:
            # rule_key() of handle 0 without its "0": the key of every rule of the chain
            prefix = rule_key((backend, family, name, cname), 0, "")[:-1]
            pos = 0
            for handle, sr in zip(hs, srs, strict=True):
                pos += 1
                rules.append(new_rule(backend, family, name, cname, pos, handle, sr.text,
                                      sr.verdict, sr.target, sr.matches, sr.counters, sr.comment,
                                      zone, f"{prefix}{handle}"))
        policy = None
        if c.hook is not None:
            _, pol_counters = save.policies.get(cname, ("", None))
            policy = Policy(backend, family, name, cname, _verdict(c.policy or "accept"),
                            pol_counters)
        out.append(Chain(backend, family, name, cname, tuple(rules), c.hook, c.priority, c.type,
                         policy, zone))
    return Table(backend, family, name, tuple(out), ())


# A frozen dataclass's __init__ sets each of Rule's 14 fields through object.__setattr__; the
# slot descriptors' own setters do the same at half the cost, which counts at 50,000 rules. If
# Rule ever changes shape, the constructor is used instead.
_RULE_FIELDS = ("backend", "family", "table", "chain", "position", "handle", "text", "verdict",
                "target", "matches", "counters", "comment", "zone", "key")
_FAST_RULES = tuple(f.name for f in fields(Rule)) == _RULE_FIELDS


def _rule_by_setters() -> Callable[..., Rule]:
    (s_backend, s_family, s_table, s_chain, s_position, s_handle, s_text, s_verdict, s_target,
     s_matches, s_counters, s_comment, s_zone, s_key) = (
        vars(Rule)[name].__set__ for name in _RULE_FIELDS)
    new = object.__new__

    def make(backend: Backend, family: str, table: str, chain: str, position: int,
             handle: int | None, text: str, verdict: Verdict, target: str | None,
             matches: tuple[Match, ...], counters: Counters | None, comment: str | None,
             zone: str | None, key: str) -> Rule:
        rule: Rule = new(Rule)
        s_backend(rule, backend)
        s_family(rule, family)
        s_table(rule, table)
        s_chain(rule, chain)
        s_position(rule, position)
        s_handle(rule, handle)
        s_text(rule, text)
        s_verdict(rule, verdict)
        s_target(rule, target)
        s_matches(rule, matches)
        s_counters(rule, counters)
        s_comment(rule, comment)
        s_zone(rule, zone)
        s_key(rule, key)
        return rule

    return make


_new_rule: Callable[..., Rule] = _rule_by_setters() if _FAST_RULES else Rule
