"""The live rules model: structure reloaded only when the ruleset changes, counters every tick.

nf_tables' generation id says whether anything was committed since the last read, so a tick
normally costs one lean netlink counter dump (plus python-iptables for legacy tables, which have
no generation and are read whole). Rates are computed by `core.rates` from two snapshots.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from fwtop.core.model import Chain, Counters, Policy, Rule, Ruleset, Table
from fwtop.core.rates import CounterSnapshot, Rate, rates
from fwtop.firewall import legacy, load_ruleset
from fwtop.sources.nft_counters import NftCounterReader, NftNetlinkError


@dataclass(frozen=True, slots=True)
class RulesView:
    """Everything the Rules pane renders for one tick."""

    ts: float
    ruleset: Ruleset
    counters: dict[str, Counters]  # rule key / policy key -> counters now
    rates: dict[str, Rate]  # rule key / policy key -> delta since the last tick
    poll_cpu_s: float  # fwtop's own CPU time spent on this poll
    poll_wall_s: float
    reloaded: bool  # the structure was re-read this tick
    reloads: int
    errors: tuple[str, ...] = field(default=())


def _with_counters(tables: tuple[Table, ...], counters: dict[str, Counters]) -> tuple[Table, ...]:
    """Copy the fresh counters into the model's rules and policies (only objects that changed
    are rebuilt, so an idle 50k-rule ruleset costs dictionary look-ups, not allocations)."""
    out: list[Table] = []
    for table in tables:
        chains: list[Chain] = []
        changed_table = False
        for chain in table.chains:
            rules = list(chain.rules)
            changed = False
            for i, rule in enumerate(rules):
                c = counters.get(rule.key)
                if c is not None and c != rule.counters:
                    rules[i] = replace(rule, counters=c)
                    changed = True
            policy = chain.policy
            if policy is not None:
                pc = counters.get(policy.key)
                if pc is not None and pc != policy.counters:
                    policy = replace(policy, counters=pc)
                    changed = True
            chains.append(replace(chain, rules=tuple(rules), policy=policy) if changed else chain)
            changed_table |= changed
        out.append(replace(table, chains=tuple(chains)) if changed_table else table)
    return tuple(out)


def collect_counters(ruleset: Ruleset) -> dict[str, Counters]:
    counters: dict[str, Counters] = {}
    for rule in ruleset.rules():
        if rule.counters is not None:
            counters[rule.key] = rule.counters
    for policy in ruleset.policies():
        if policy.counters is not None:
            counters[policy.key] = policy.counters
    return counters


class RulesPoller:
    """One poll at a time, in the calling thread (which must already be in the namespace)."""

    def __init__(
        self,
        loader: Callable[[], Ruleset] = load_ruleset,
        reader_factory: Callable[[], NftCounterReader] = NftCounterReader,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._loader = loader
        self._reader_factory = reader_factory
        self._reader: NftCounterReader | None = None
        self._clock = clock
        self._ruleset: Ruleset | None = None
        self._generation: int | None = None
        self._prev: CounterSnapshot | None = None
        self._reloads = 0
        # (family, table) -> backend of nf_tables tables, to map netlink keys to rule keys
        self._nft_backend: dict[tuple[str, str], str] = {}

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _reader_or_none(self, errors: list[str]) -> NftCounterReader | None:
        if self._reader is None:
            try:
                self._reader = self._reader_factory()
            except NftNetlinkError as exc:
                errors.append(f"nft counters: {exc}")
                return None
        return self._reader

    def _reload(self) -> Ruleset:
        ruleset = self._loader()
        self._reloads += 1
        self._nft_backend = {(t.family, t.name): t.backend for t in ruleset.tables
                             if t.backend != "iptables-legacy"}
        return ruleset

    def poll(self) -> RulesView:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        errors: list[str] = []
        reader = self._reader_or_none(errors)
        generation = None
        if reader is not None:
            try:
                generation = reader.generation()
            except NftNetlinkError as exc:
                errors.append(f"nft generation: {exc}")
        reloaded = (self._ruleset is None or generation is None
                    or generation != self._generation)
        if reloaded:
            ruleset = self._reload()
            counters = collect_counters(ruleset)
        else:
            assert self._ruleset is not None
            ruleset = self._ruleset
            counters = self._poll_counters(ruleset, reader, errors)
            tables = _with_counters(tuple(t for t in ruleset.tables
                                          if t.backend != "iptables-legacy"), counters)
            legacy_tables = self._legacy_tables(errors)
            ruleset = replace(ruleset, tables=tables + legacy_tables)
            for rule in (r for t in legacy_tables for c in t.chains for r in c.rules):
                if rule.counters is not None:
                    counters[rule.key] = rule.counters
            for t in legacy_tables:
                for c in t.chains:
                    if c.policy is not None and c.policy.counters is not None:
                        counters[c.policy.key] = c.policy.counters
        if reader is not None and generation is not None:
            # Re-check: a commit between our generation read and the dump means the structure
            # we hold may be stale; the next tick reloads.
            self._generation = generation
        self._ruleset = ruleset
        now = self._clock()
        snapshot = CounterSnapshot(now, counters)
        rate_by_key = rates(self._prev, snapshot)
        self._prev = snapshot
        return RulesView(now, ruleset, counters, rate_by_key,
                         time.process_time() - cpu0, time.perf_counter() - wall0,
                         reloaded, self._reloads, tuple(errors))

    def _legacy_tables(self, errors: list[str]) -> tuple[Table, ...]:
        try:
            return tuple(legacy.load())
        except legacy.LegacyUnavailable as exc:
            errors.append(str(exc))
            return ()

    def _poll_counters(self, ruleset: Ruleset, reader: NftCounterReader | None,
                       errors: list[str]) -> dict[str, Counters]:
        counters: dict[str, Counters] = {}
        if reader is None:
            return counters
        try:
            dump = reader.dump()
        except NftNetlinkError as exc:
            errors.append(f"nft counters: {exc}")
            return collect_counters(ruleset)
        backend_of = self._nft_backend
        for (family, table, chain, handle), (packets, nbytes) in dump.rules.items():
            backend = backend_of.get((family, table))
            if backend is not None:
                counters[f"{backend}:{family}:{table}:{chain}:{handle}"] = Counters(packets, nbytes)
        for (family, table, chain), (packets, nbytes) in dump.chains.items():
            backend = backend_of.get((family, table))
            if backend is not None:
                counters[f"{backend}:{family}:{table}:{chain}:policy"] = Counters(packets, nbytes)
        return counters


def rule_of(ruleset: Ruleset, key: str) -> Rule | Policy | None:
    for rule in ruleset.rules():
        if rule.key == key:
            return rule
    for policy in ruleset.policies():
        if policy.key == key:
            return policy
    return None
