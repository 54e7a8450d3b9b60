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

from fwtop.core.iptables_syntax import SaveRule, SaveTable, parse_save
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
from fwtop.firewall.libnft import OUTPUT_HANDLE, OUTPUT_JSON, OUTPUT_STATELESS, Nft, NftError

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


def load(nft: Nft | None = None) -> tuple[list[Table], list[str]]:
    """Read every nf_tables table of the calling thread's namespace into the rule model."""
    nft = nft or Nft()
    warnings: list[str] = []
    table_names = [(o["table"]["family"], o["table"]["name"])
                   for o in iter_json_objects(_list_big(nft, "list tables", OUTPUT_JSON))
                   if "table" in o]
    saves: dict[str, dict[str, SaveTable]] = {}
    for family in ("ip", "ip6"):
        if any(f == family and n in XTABLES_NAMES for f, n in table_names):
            saves[family], warn = _save_tables(family)
            if warn:
                warnings.append(warn)
    builders: dict[tuple[str, str], _TableBuilder] = {}
    for family, name in table_names:
        save = saves.get(family, {}).get(name) if name in XTABLES_NAMES else None
        if save is not None:
            builders[(family, name)] = _TableBuilder("iptables-nft", family, name, save=save)
        else:
            listing = _list_big(nft, f"list table {family} {name}",
                                OUTPUT_HANDLE | OUTPUT_STATELESS)
            backend: Backend = "firewalld" if name == "firewalld" else "nft"
            builders[(family, name)] = _TableBuilder(backend, family, name,
                                                     texts=rule_texts(listing))
    for obj in iter_json_objects(_list_big(nft, "list ruleset", OUTPUT_JSON | OUTPUT_HANDLE)):
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
    return [b.build(warnings) for b in builders.values()], warnings
