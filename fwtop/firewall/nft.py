"""The nf_tables backend: native nftables, iptables-nft and firewalld's tables, from one JSON dump.

Native rules keep nft's own text (from a stateless `list table`); iptables-nft rules are paired,
chain by chain and in order, with `iptables-nft-save -c`, which restores the comment and the
iptables spelling that nft's JSON loses.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fwtop.core.iptables_syntax import SaveTable, parse_save
from fwtop.core.model import (
    Backend,
    Chain,
    NamedSet,
    Policy,
    Rule,
    Table,
    Verdict,
    rule_key,
)
from fwtop.core.nftjson import rule_from_json
from fwtop.firewall.libnft import OUTPUT_HANDLE, OUTPUT_JSON, OUTPUT_STATELESS, Nft

XTABLES_NAMES = frozenset({"filter", "nat", "mangle", "raw", "security"})
_SAVE_COMMANDS = {"ip": "iptables-nft-save", "ip6": "ip6tables-nft-save"}
_HANDLE_RE = re.compile(r"\s*# handle (\d+)\s*$")
_CHAIN_RE = re.compile(r"^\s*chain (\S+) \{")
# firewalld names chains <table>_<HOOK>_<zone>[_suffix] (filter_IN_public_allow, nat_PRE_dmz).
_FIREWALLD_ZONE_RE = re.compile(
    r"_(?:IN|FWD|FWDI|FWDO|OUT|PRE|POST)_(.+?)(?:_(?:allow|deny|log|pre|post|dnat|snat))?$"
)


@dataclass(slots=True)
class _RawChain:
    family: str
    table: str
    name: str
    hook: str | None
    prio: int | None
    type: str | None
    policy: str | None
    rules: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class _RawTable:
    family: str
    name: str
    chains: dict[str, _RawChain] = field(default_factory=dict)
    sets: list[NamedSet] = field(default_factory=list)


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


def _collect(text: str) -> dict[tuple[str, str], _RawTable]:
    tables: dict[tuple[str, str], _RawTable] = {}
    for obj in iter_json_objects(text):
        if "table" in obj:
            t = obj["table"]
            tables[(t["family"], t["name"])] = _RawTable(t["family"], t["name"])
        elif "chain" in obj:
            c = obj["chain"]
            tbl = tables.setdefault((c["family"], c["table"]), _RawTable(c["family"], c["table"]))
            tbl.chains[c["name"]] = _RawChain(
                c["family"], c["table"], c["name"], c.get("hook"), _prio(c.get("prio")),
                c.get("type"), c.get("policy"),
            )
        elif "rule" in obj:
            r = obj["rule"]
            tbl = tables.get((r["family"], r["table"]))
            if tbl is not None and r["chain"] in tbl.chains:
                tbl.chains[r["chain"]].rules.append(r)
        elif "set" in obj or "map" in obj:
            kind = "set" if "set" in obj else "map"
            s = obj[kind]
            tbl = tables.get((s["family"], s["table"]))
            if tbl is not None:
                elems = tuple(json.dumps(e, separators=(",", ":")) if not isinstance(e, str)
                              else e for e in s.get("elem", []))
                flags = s.get("flags", [])
                tbl.sets.append(NamedSet(s["family"], s["table"], s["name"],
                                         f"{kind}:{s.get('type')}", elems,
                                         tuple(flags if isinstance(flags, list) else [flags])))
    return tables


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


def _zone(table: _RawTable, chain: str) -> str | None:
    if table.name != "firewalld":
        return None
    m = _FIREWALLD_ZONE_RE.search(chain)
    return m.group(1) if m else None


def _verdict(policy: str | None) -> Verdict:
    return {"accept": "accept", "drop": "drop"}.get(policy or "", "unknown")  # type: ignore[return-value]


def _native_chains(raw: _RawTable, backend: Backend,
                  texts: dict[tuple[str, int], str]) -> list[Chain]:
    chains: list[Chain] = []
    for rc in raw.chains.values():
        zone = _zone(raw, rc.name)
        cid = (backend, rc.family, rc.table, rc.name)
        rules = []
        for pos, r in enumerate(rc.rules, 1):
            matches, verdict, target, counters = rule_from_json(r.get("expr", []))
            handle = int(r["handle"])
            text = texts.get((rc.name, handle), "")
            rules.append(Rule(backend, rc.family, rc.table, rc.name, pos, handle, text, verdict,
                              target, matches, counters, r.get("comment"), zone,
                              rule_key(cid, handle, text)))
        policy = None
        if rc.hook is not None:
            policy = Policy(backend, rc.family, rc.table, rc.name, _verdict(rc.policy or "accept"))
        chains.append(Chain(backend, rc.family, rc.table, rc.name, tuple(rules), rc.hook,
                            rc.prio, rc.type, policy, zone))
    return chains


def _xtables_chains(raw: _RawTable, save: SaveTable) -> tuple[list[Chain], list[str]]:
    """Pair nft's rules (handles, counters) with iptables-nft-save's (text, comment) by order."""
    warnings: list[str] = []
    backend: Backend = "iptables-nft"
    by_chain: dict[str, list[Any]] = {}
    for sr in save.rules:
        by_chain.setdefault(sr.chain, []).append(sr)
    chains: list[Chain] = []
    for rc in raw.chains.values():
        saved = by_chain.get(rc.name, [])
        if len(saved) != len(rc.rules):
            warnings.append(f"{rc.family} {rc.table} {rc.name}: nft and iptables-nft-save disagree "
                            "(ruleset changed while reading); comments may be missing")
            saved = []
        cid = (backend, rc.family, rc.table, rc.name)
        rules: list[Rule] = []
        for pos, r in enumerate(rc.rules, 1):
            handle = int(r["handle"])
            matches, verdict, target, counters = rule_from_json(r.get("expr", []))
            text, comment = "", r.get("comment")
            if saved:
                sr = saved[pos - 1]
                matches, verdict, target, text, comment = (
                    sr.matches, sr.verdict, sr.target, sr.text, sr.comment)
                counters = counters or sr.counters
            rules.append(Rule(backend, rc.family, rc.table, rc.name, pos, handle, text, verdict,
                              target, matches, counters, comment, None,
                              rule_key(cid, handle, text)))
        policy = None
        if rc.hook is not None:
            _, pol_counters = save.policies.get(rc.name, ("", None))
            policy = Policy(backend, rc.family, rc.table, rc.name,
                            _verdict(rc.policy or "accept"), pol_counters)
        chains.append(Chain(backend, rc.family, rc.table, rc.name, tuple(rules), rc.hook,
                            rc.prio, rc.type, policy, None))
    return chains, warnings


def load(nft: Nft | None = None) -> tuple[list[Table], list[str]]:
    """Read every nf_tables table of the calling thread's namespace into the rule model."""
    nft = nft or Nft()
    raw_tables = _collect(nft.check("list ruleset", OUTPUT_JSON | OUTPUT_HANDLE))
    warnings: list[str] = []
    saves: dict[str, dict[str, SaveTable]] = {}
    for family in ("ip", "ip6"):
        if any(f == family and n in XTABLES_NAMES for f, n in raw_tables):
            saves[family], warn = _save_tables(family)
            if warn:
                warnings.append(warn)
    tables: list[Table] = []
    for (family, name), raw in raw_tables.items():
        save = saves.get(family, {}).get(name)
        if save is not None and name in XTABLES_NAMES:
            chains, warn_x = _xtables_chains(raw, save)
            warnings += warn_x
            backend: Backend = "iptables-nft"
        else:
            backend = "firewalld" if name == "firewalld" else "nft"
            listing = nft.check(f"list table {family} {name}", OUTPUT_HANDLE | OUTPUT_STATELESS)
            chains = _native_chains(raw, backend, rule_texts(listing))
        tables.append(Table(backend, family, name, tuple(chains), tuple(raw.sets)))
    return tables, warnings

