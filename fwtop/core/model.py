"""One rule model for every backend: tables, chains, rules, policies and their match predicates.

Everything here is immutable and stdlib-only, so the evaluator, the JSON output and the UI all read
the same objects whichever backend (nft, iptables-nft, iptables-legacy, firewalld) produced them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Backend = Literal["nft", "iptables-nft", "iptables-legacy", "firewalld"]
BACKENDS: tuple[Backend, ...] = ("nft", "iptables-nft", "iptables-legacy", "firewalld")

# The verdict words both worlds share, in nft's spelling. Targets that only rewrite or log
# (DNAT, LOG, MARK, ...) keep going: their verdict is "continue" and `target` names them.
Verdict = Literal[
    "accept", "drop", "reject", "queue", "return", "jump", "goto", "continue", "unknown"
]
TERMINAL_VERDICTS: frozenset[str] = frozenset({"accept", "drop", "reject", "queue"})


@dataclass(frozen=True, slots=True)
class Counters:
    packets: int
    bytes: int


# --- match predicates -------------------------------------------------------------------------
# Each predicate is a plain value; `negate` inverts it. Anything fwtop cannot model becomes an
# UnknownMatch that keeps its text, so a later evaluator answers "uncertain" instead of guessing.


@dataclass(frozen=True, slots=True)
class ProtoMatch:
    """Layer-4 protocol (`-p tcp`, `meta l4proto`, `ip protocol`)."""

    protos: tuple[str, ...]
    negate: bool = False


@dataclass(frozen=True, slots=True)
class AddrMatch:
    """Source or destination address: prefixes (`10.0.0.0/8`), ranges (`a-b`) or a named set."""

    field: str  # "src" | "dst"
    values: tuple[str, ...] = ()
    set_name: str | None = None
    negate: bool = False


@dataclass(frozen=True, slots=True)
class PortMatch:
    """Source or destination port: inclusive ranges (a single port is (p, p)) or a named set."""

    field: str  # "sport" | "dport"
    ranges: tuple[tuple[int, int], ...] = ()
    set_name: str | None = None
    proto: str | None = None
    negate: bool = False


@dataclass(frozen=True, slots=True)
class IfaceMatch:
    """Input or output interface; a trailing `+` (iptables) or `*` (nft) is a wildcard."""

    field: str  # "iif" | "oif"
    names: tuple[str, ...]
    negate: bool = False


@dataclass(frozen=True, slots=True)
class IcmpMatch:
    """ICMP or ICMPv6 type (by number, None = any) and optional code."""

    family: str  # "icmp" | "icmpv6"
    types: tuple[int, ...] = ()
    code: int | None = None
    negate: bool = False


@dataclass(frozen=True, slots=True)
class CtStateMatch:
    """Connection tracking state: new, established, related, invalid, untracked."""

    states: tuple[str, ...]
    negate: bool = False


@dataclass(frozen=True, slots=True)
class ConcatMatch:
    """Several packet fields looked up together in a set (`ip saddr . th dport @allowed`).
    `fields` name them: src, dst, proto, sport, dport, iif, oif. Either a named set or the
    anonymous set's elements, each a tuple of values as text."""

    fields: tuple[str, ...]
    set_name: str | None = None
    values: tuple[tuple[str, ...], ...] = ()
    negate: bool = False


@dataclass(frozen=True, slots=True)
class TimeMatch:
    """iptables `-m time` limited to what a clock can decide: `--datestart` / `--datestop`
    (UTC, seconds since the epoch). Other time options stay UnknownMatch."""

    start: float | None = None
    stop: float | None = None
    negate: bool = False


@dataclass(frozen=True, slots=True)
class UnknownMatch:
    """A match fwtop does not model. `stateful` marks matches whose outcome depends on history
    (limit, recent, hashlimit, connmark, quota) rather than on the packet."""

    text: str
    stateful: bool = False


Match = (
    ProtoMatch | AddrMatch | PortMatch | IfaceMatch | IcmpMatch | CtStateMatch | ConcatMatch
    | TimeMatch | UnknownMatch
)


# --- rules, chains, tables --------------------------------------------------------------------

ChainId = tuple[str, str, str, str]  # (backend, family, table, chain)


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule as the kernel holds it. `position` is 1-based within its chain; `handle` is the
    nft handle (None for legacy). `key` identifies the rule across reloads: the handle where the
    kernel gives one, else the rule's text plus its occurrence among identical texts."""

    backend: Backend
    family: str
    table: str
    chain: str
    position: int
    handle: int | None
    text: str
    verdict: Verdict
    target: str | None = None  # jump/goto chain, or the non-terminal target's name (LOG, DNAT)
    matches: tuple[Match, ...] = ()
    counters: Counters | None = None
    comment: str | None = None
    zone: str | None = None  # firewalld zone, when the chain name reveals it
    key: str = ""  # identity across reloads; see rule_key()

    @property
    def chain_id(self) -> ChainId:
        return (self.backend, self.family, self.table, self.chain)

    @property
    def uncertain(self) -> bool:
        return any(isinstance(m, UnknownMatch) for m in self.matches)


@dataclass(frozen=True, slots=True)
class Policy:
    """A base chain's default verdict, first-class because it drops as much as any rule."""

    backend: Backend
    family: str
    table: str
    chain: str
    verdict: Verdict
    counters: Counters | None = None

    @property
    def key(self) -> str:
        return f"{self.backend}:{self.family}:{self.table}:{self.chain}:policy"


@dataclass(frozen=True, slots=True)
class Chain:
    backend: Backend
    family: str
    table: str
    name: str
    rules: tuple[Rule, ...] = ()
    hook: str | None = None  # None for a regular (non-base) chain
    priority: int | None = None
    type: str | None = None  # filter, nat, route
    policy: Policy | None = None
    zone: str | None = None

    @property
    def id(self) -> ChainId:
        return (self.backend, self.family, self.table, self.name)

    @property
    def is_base(self) -> bool:
        return self.hook is not None


@dataclass(frozen=True, slots=True)
class NamedSet:
    """An nft set or map, kept so the evaluator can resolve `@name` references."""

    family: str
    table: str
    name: str
    type: str
    elements: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Table:
    backend: Backend
    family: str
    name: str
    chains: tuple[Chain, ...] = ()
    sets: tuple[NamedSet, ...] = ()


@dataclass(frozen=True, slots=True)
class BackendStatus:
    """Whether a backend was read, and if not, why (shown in the header and in `rules --json`)."""

    backend: Backend
    available: bool
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Ruleset:
    tables: tuple[Table, ...] = ()
    backends: tuple[BackendStatus, ...] = ()
    generation: int | None = None  # nft ruleset generation when read
    warnings: tuple[str, ...] = field(default=())

    def chains(self) -> list[Chain]:
        return [c for t in self.tables for c in t.chains]

    def rules(self) -> list[Rule]:
        return [r for t in self.tables for c in t.chains for r in c.rules]

    def policies(self) -> list[Policy]:
        return [c.policy for c in self.chains() if c.policy is not None]

    def backends_found(self) -> list[Backend]:
        found = {t.backend for t in self.tables}
        return [b for b in BACKENDS if b in found]


def rule_key(chain: ChainId, handle: int | None, text: str, occurrence: int = 0) -> str:
    """A rule's identity across reloads: its nft handle where the kernel gives one; for legacy
    rules, the chain plus its text plus its occurrence among identical texts, so inserting another
    rule above does not shift every later rule's identity the way a position would."""
    backend, family, table, name = chain
    if handle is not None:
        return f"{backend}:{family}:{table}:{name}:{handle}"
    return f"{backend}:{family}:{table}:{name}:{text}#{occurrence}"
