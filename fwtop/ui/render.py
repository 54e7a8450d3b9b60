"""What the Rules pane and the header show for one RulesView, as plain data.

Rows are tuples of (text, style) segments whose text is already terminal-safe, so the table
widget diffs cheap tuples each tick and builds Rich `Text` only for cells that changed. Nothing
here touches Textual; kernel-supplied strings never reach Rich markup.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fwtop.core.model import BackendStatus, Chain, Counters, Rule
from fwtop.core.rates import ZERO_RATE, Rate
from fwtop.service.rules import RulesView

Segment = tuple[str, str]  # (terminal-safe text, Rich style)
Cell = tuple[Segment, ...]


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    label: str
    width: int | None  # None: as wide as its content (text columns)


COLUMNS: tuple[Column, ...] = (
    Column("pos", "#", None),
    Column("pkts", "pkts", 6),
    Column("bytes", "bytes", 6),
    Column("dpkts", "Δpkt/s", 6),
    Column("dbytes", "Δbyte/s", 7),
    Column("verdict", "verdict", 8),  # "continue"
    # The rule text before the comment: it is what identifies the rule, and at 100 columns a
    # comment column in front of it pushed it off the screen.
    Column("rule", "rule", None),
    Column("comment", "comment", None),
)
COLUMN_KEYS: tuple[str, ...] = tuple(c.key for c in COLUMNS)
TEXT_COLUMNS: frozenset[str] = frozenset(c.key for c in COLUMNS if c.width is None)
COMMENT_MAX = 40
VERDICT_WIDTH = 8  # longer comments are cut in the table (a details view comes later)


@dataclass(frozen=True, slots=True)
class RowSpec:
    key: str  # DataTable row key: the rule's key, or "chain|<backend>|<family>|<table>|<chain>"
    kind: str  # "chain" | "rule"
    cells: tuple[Cell, ...]  # one per COLUMNS entry
    pps: float  # for sort-by-activity


# --- terminal safety ----------------------------------------------------------------------------

# C0/C1 controls (ESC starts every terminal escape sequence), DEL, and the invisible Unicode
# formatting characters that can reorder or hide text (bidi overrides, zero-width marks).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


def _escape_char(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(text: str | None) -> str:
    """`text` with every control or invisible formatting character spelled as an escape
    (`\\x1b`), so kernel- or attacker-supplied strings print literally. The result must still be
    wrapped in `rich.text.Text`, never parsed as markup."""
    if not text:
        return ""
    return _UNSAFE.sub(_escape_char, text)


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


# --- numbers ------------------------------------------------------------------------------------


def human_count(n: float) -> str:
    """Packets (and packets per second) in at most 6 characters: 999, 1.2k, 34.5M."""
    if n < 0:
        return "-" + human_count(-n)
    if n < 1000:
        if isinstance(n, int) or float(n).is_integer():
            return str(int(n))
        return f"{n:.1f}" if n < 100 else str(round(n))
    for unit in ("k", "M", "G", "T", "P"):
        n /= 1000.0
        if n < 999.5:
            return f"{n:.1f}{unit}" if n < 99.95 else f"{n:.0f}{unit}"
    return f"{n:.0f}P"


def human_bytes(n: float) -> str:
    """Bytes in at most 6 characters, powers of 1024 like top: 512, 1.2K, 34M."""
    if n < 1024:
        return str(round(n))
    for unit in ("K", "M", "G", "T", "P"):
        n /= 1024.0
        if n < 1023.5:
            return f"{n:.1f}{unit}" if n < 99.95 else f"{n:.0f}{unit}"
    return f"{n:.0f}P"


# --- styles -------------------------------------------------------------------------------------

VERDICT_COLOR: dict[str, str] = {
    "drop": "red",
    "reject": "red",
    "accept": "green",
    "queue": "yellow",
    "jump": "cyan",
    "goto": "cyan",
    "return": "magenta",
    "continue": "default",
    "unknown": "yellow",
}
DIM = "dim"


def verdict_color(verdict: str) -> str:
    return VERDICT_COLOR.get(verdict, "yellow")


def _verdict_word(rule: Rule) -> str:
    """The verdict, or for a rule that only logs or rewrites (verdict continue) its target's
    name (log, nflog, mark), cut to the column."""
    if rule.verdict == "continue" and rule.target and rule.target.split():
        return clip(safe(rule.target.split()[0]).lower(), VERDICT_WIDTH)
    return rule.verdict


# --- rows ---------------------------------------------------------------------------------------

BACKEND_SHORT: dict[str, str] = {
    "nft": "nft", "iptables-nft": "ipt", "iptables-legacy": "leg", "firewalld": "fwd",
}


def chain_row_key(chain: Chain) -> str:
    return "chain|" + "|".join(chain.id)


def chain_label(chain: Chain) -> str:
    return safe(f"{chain.backend} {chain.family} {chain.table} {chain.name}")


def _chain_short(chain: Chain) -> str:
    short = BACKEND_SHORT.get(chain.backend, chain.backend)
    return safe(f"{short} {chain.family} {chain.table}/{chain.name}")


def _counter_cells(counters: Counters | None, rate: Rate, hot_style: str) -> list[Cell]:
    if counters is None:  # a regular chain: no policy, nothing counted
        return [(("", ""),)] * 4
    else:
        pkts: Cell = ((human_count(counters.packets), hot_style),)
        nbytes: Cell = ((human_bytes(counters.bytes), hot_style if hot_style else DIM),)
    if rate.packets > 0 or rate.bytes > 0:
        dp: Cell = ((human_count(rate.pps), hot_style),)
        db: Cell = ((human_bytes(rate.bps), hot_style),)
    else:
        dp = db = (("·", DIM),)
    return [pkts, nbytes, dp, db]


def chain_row(chain: Chain, view: RulesView, flat: bool) -> RowSpec:
    policy = chain.policy
    label: list[Segment] = [(_chain_short(chain) if flat else chain_label(chain), "bold cyan")]
    if policy is None:
        counters, rate, verdict = None, ZERO_RATE, ""
    else:
        counters = view.counters.get(policy.key, policy.counters)
        rate = view.rates.get(policy.key, ZERO_RATE)
        verdict = policy.verdict
        # the policy first: it is what decides the packets no rule took
        label.append(("  policy ", DIM))
        label.append((verdict, f"bold {verdict_color(verdict)}"))
    if chain.hook is not None:
        prio = "" if chain.priority is None else f" prio {chain.priority}"
        kind = f"{chain.type} " if chain.type and chain.type != "filter" else ""
        label.append((safe(f"  {kind}hook {chain.hook}{prio}"), DIM))
    else:
        label.append(("  regular chain", DIM))
    hot = rate.packets > 0
    color = verdict_color(verdict) if verdict else "cyan"
    hot_style = f"bold {color}" if hot else "bold"
    cells: list[Cell] = [(("policy" if flat else "chain", DIM),)]
    cells += _counter_cells(counters, rate, hot_style)
    cells.append(((verdict, f"{'bold ' if hot else ''}{color}" if verdict else ""),))
    cells.append(tuple(label))
    cells.append((("", ""),))
    return RowSpec(chain_row_key(chain), "chain", tuple(cells), rate.pps)


RULE_TEXT = next(i for i, c in enumerate(COLUMNS) if c.key == "rule")  # the rule's text cell


def rule_row(rule: Rule, chain: Chain, view: RulesView, flat: bool) -> RowSpec:
    counters = view.counters.get(rule.key, rule.counters)
    rate = view.rates.get(rule.key, ZERO_RATE)
    hot = rate.packets > 0
    color = verdict_color(rule.verdict)
    hot_color = color if color != "default" else "yellow"
    hot_style = f"bold {hot_color}" if hot else ""
    pos = str(rule.position) if rule.handle is None else f"{rule.position} h{rule.handle}"
    cells: list[Cell] = [((pos, DIM),)]
    cells += _counter_cells(counters, rate, hot_style)
    cells.append(((_verdict_word(rule), f"bold {hot_color}" if hot else color),))
    text: list[Segment] = []
    if flat:
        text.append((_chain_short(chain) + " › ", DIM))
    text.append((safe(rule.text), hot_style))
    cells.append(tuple(text))
    cells.append(((clip(safe(rule.comment), COMMENT_MAX), "italic" if not hot else hot_style),))
    return RowSpec(rule.key, "rule", tuple(cells), rate.pps)


def _fresh(hit: _Entry, rule: Rule, counters: Counters | None, rate: Rate) -> bool:
    """A cached row still shows this rule with these counters and this rate."""
    old_rule, old_counters, old_rate, _, _ = hit
    return (old_counters == counters and (old_rate is rate or old_rate == rate)
            and (old_rule is rule or _static(old_rule) == _static(rule)))


def _reorder_row(row: RowSpec, chain: Chain, flat: bool) -> RowSpec:
    """rule_row()'s row for the other order: the same cells, with or without the chain's name
    before the rule's text."""
    cells = list(row.cells)
    text = cells[RULE_TEXT]
    cells[RULE_TEXT] = (((_chain_short(chain) + " › ", DIM), *text) if flat else text[1:])
    return RowSpec(row.key, row.kind, tuple(cells), row.pps)


def _rule_matches(rule: Rule, needle: str) -> bool:
    for hay in (rule.text, rule.comment, rule.chain, rule.table, rule.target):
        if hay and needle in hay.lower():
            return True
    return False


def _static(rule: Rule) -> tuple[object, ...]:
    return (rule.text, rule.comment, rule.position, rule.handle, rule.verdict, rule.target)


# A cached row: the rule and the counters and rate it was made with, the layout (flat or not),
# and the row.
_Entry = tuple[Rule, Counters | None, Rate, bool, RowSpec]


class RowsBuilder:
    """Builds the rows of each tick, reusing the previous tick's row of every rule whose
    counters, rate and text did not change (most of a big ruleset is idle), so a tick costs
    dictionary look-ups for idle rules instead of formatting. Each order (chain order, busiest
    first) has its own rows, and a rule a filter hides is still kept current, so `s`, and
    clearing a filter, show rows that are ready: the keys that change the whole pane cost
    look-ups too."""

    def __init__(self) -> None:
        self._caches: dict[bool, dict[str, _Entry]] = {}
        self._cache: dict[str, _Entry] = {}
        self._checked: dict[bool, RulesView] = {}  # the view each order's rows were made for
        self._current = False  # rows() is given the view its order's rows were made for

    def _rule_row(self, rule: Rule, chain: Chain, view: RulesView, flat: bool,
                  cache: dict[str, _Entry]) -> RowSpec:
        hit = self._cache.get(rule.key)
        if self._current and hit is not None and hit[0] is rule:
            cache[rule.key] = hit  # made for this very view (a filter typed or cleared)
            return hit[4]
        counters = view.counters.get(rule.key, rule.counters)
        rate = view.rates.get(rule.key, ZERO_RATE)
        if hit is not None and _fresh(hit, rule, counters, rate):
            cache[rule.key] = hit
            return hit[4]
        other = self._caches.get(not flat, {}).get(rule.key)
        if other is not None and _fresh(other, rule, counters, rate):
            # The other order's row is current (the key `s` was just pressed): the two differ
            # only in the chain named before the rule's text.
            row = _reorder_row(other[4], chain, flat)
        else:
            row = rule_row(rule, chain, view, flat)
        cache[rule.key] = (rule, counters, rate, flat, row)
        return row

    def rows(self, view: RulesView, needle: str = "", by_activity: bool = False) -> list[RowSpec]:
        """The rows to show, in display order.

        Chain order: each chain's header row (its policy's counters) followed by its rules.
        By activity: one flat list of rules and policies, busiest first (ties keep chain
        order), each rule prefixed with its chain. `needle` keeps rules whose text, comment,
        chain, table or target contains it (case-insensitive), and the chains holding them."""
        needle = needle.strip().lower()
        self._cache = self._caches.get(by_activity, {})
        self._current = self._checked.get(by_activity) is view
        rows: list[RowSpec] = []
        seen: set[str] = set()
        cache: dict[str, _Entry] = {}  # only what this view has: reloads do not pile up

        def add(row: RowSpec) -> None:
            # rule_key() makes keys unique in a sane ruleset; a duplicate must not crash the UI
            key = row.key
            n = 1
            while key in seen:
                n += 1
                key = f"{row.key}#dup{n}"
            seen.add(key)
            rows.append(row if key == row.key else RowSpec(key, row.kind, row.cells, row.pps))

        for table in view.ruleset.tables:
            for chain in table.chains:
                made = [(r, self._rule_row(r, chain, view, by_activity, cache))
                        for r in chain.rules]
                if not needle:
                    if not by_activity or chain.policy is not None:
                        add(chain_row(chain, view, by_activity))
                    for _, row in made:
                        add(row)
                    continue
                kept = [row for r, row in made if _rule_matches(r, needle)]
                if not kept and not (needle in chain.name.lower()
                                     or needle in chain.table.lower()):
                    continue
                if not by_activity or chain.policy is not None:
                    add(chain_row(chain, view, by_activity))
                for row in kept:
                    add(row)
        self._caches[by_activity] = cache
        self._checked[by_activity] = view
        if by_activity:
            order = {row.key: i for i, row in enumerate(rows)}
            rows.sort(key=lambda row: (-row.pps, order[row.key]))
        return rows


def rows_for(view: RulesView, needle: str = "", by_activity: bool = False) -> list[RowSpec]:
    """The rows of one view, without reuse (see RowsBuilder.rows)."""
    return RowsBuilder().rows(view, needle, by_activity)


# --- header -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeaderState:
    host: str
    netns: str  # the namespace's name, or "host"
    lab: bool = False
    paused: bool = False
    backends: tuple[BackendStatus, ...] = ()
    rules: int | None = None  # None until the first poll arrived
    poll_cpu_ms: float | None = None
    poll_wall_ms: float | None = None
    by_activity: bool = False
    waiting: bool = False  # a newer view is held back by the pause


def header_segments(state: HeaderState) -> list[Segment]:
    segs: list[Segment] = [(" fwtop ", "bold reverse")]
    if state.lab:
        segs += [(" ", ""), (" LAB ", "bold black on yellow")]
    if state.paused:
        segs += [(" ", ""), (" PAUSED ", "bold white on red")]
        if state.waiting:
            segs.append((" (newer data held)", "dim"))
    segs += [("  host ", DIM), (safe(state.host), "bold"),
             ("  ns ", DIM), (safe(state.netns), "bold")]
    if state.backends:
        segs.append(("  │", DIM))
        for b in state.backends:
            segs.append((f" {b.backend} ", ""))
            if not b.available:
                segs.append(("✗", "bold red"))
            elif b.reason:  # readable but empty: nothing of this backend is loaded
                segs.append(("–", DIM))
            else:
                segs.append(("✓", "bold green"))
    if state.rules is not None:
        segs += [("  │ ", DIM), (str(state.rules), "bold"), (" rules", "")]
    if state.poll_cpu_ms is not None:
        segs += [("  │ poll ", DIM), (f"{state.poll_cpu_ms:.1f} ms", "bold"), (" cpu", DIM)]
    if state.rules is None:
        segs.append(("  │ waiting for the first poll…", "italic"))
    return segs


def backend_notes(backends: Iterable[BackendStatus]) -> list[str]:
    """One line per backend that is off or empty, with the reason (tooltip and help screen)."""
    out = []
    for b in backends:
        if not b.available:
            out.append(f"{b.backend}: off ({safe(b.reason) or 'unavailable'})")
        elif b.reason:
            out.append(f"{b.backend}: {safe(b.reason)}")
        else:
            out.append(f"{b.backend}: read")
    return out


def status_segments(errors: Sequence[str], warnings: Sequence[str], note: str) -> list[Segment]:
    segs: list[Segment] = []
    if errors:
        segs.append(("error: ", "bold red"))
        segs.append((safe(" | ".join(errors)), "red"))
    elif warnings:
        segs.append(("warning: ", "bold yellow"))
        segs.append((safe(" | ".join(warnings)), "yellow"))
    if note:
        if segs:
            segs.append(("   ", ""))
        segs.append((safe(note), DIM))
    return segs
