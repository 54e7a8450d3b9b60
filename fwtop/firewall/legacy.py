"""The iptables-legacy backend (x_tables), read through python-iptables.

Only tables the kernel lists in /proc/net/ip{,6}_tables_names are read: opening any other table
would create it. Each rule is rendered in iptables-save's spelling and parsed by the same code as
iptables-nft rules, so both backends give the same predicates.
"""

from __future__ import annotations

import ipaddress
import os
import threading
from typing import Any

from fwtop.core.iptables_syntax import parse_rule_args
from fwtop.core.model import Backend, Chain, Counters, Policy, Rule, Table, Verdict, rule_key

BACKEND: Backend = "iptables-legacy"
# /proc/net follows the main thread's namespace; thread-self follows the reading thread's, which
# is the one that entered the namespace being read.
_NAMES_FILES = {"ip": "/proc/thread-self/net/ip_tables_names",
                "ip6": "/proc/thread-self/net/ip6_tables_names"}
_BUILTIN_POLICIES: dict[str, Verdict] = {"ACCEPT": "accept", "DROP": "drop"}


class LegacyUnavailable(Exception):
    """python-iptables or its C libraries are missing; the message says which."""


def live_tables(family: str) -> list[str]:
    """Tables that exist in the kernel for this family (reading others would create them)."""
    try:
        with open(_NAMES_FILES[family]) as f:
            return [ln.strip() for ln in f if ln.strip()]
    except OSError:
        return []


def _iptc() -> Any:
    try:
        import iptc  # type: ignore[import-untyped]
    except Exception as exc:  # python-iptables raises several kinds when libxtables is missing
        raise LegacyUnavailable(f"python-iptables unusable: {exc}") from None
    return iptc


def _quote(value: str) -> str:
    if value and all(c.isalnum() or c in "-_.:/,!+*@=" for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _addr(value: str | None) -> tuple[bool, str] | None:
    if not value:
        return None
    negate = value.startswith("!")
    value = value.lstrip("!")
    if value in ("0.0.0.0/0.0.0.0", "::/0", "0.0.0.0/0"):
        return None
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        return negate, value
    if net.prefixlen == net.max_prefixlen:
        return negate, f"{net.network_address}/{net.prefixlen}"
    return negate, str(net)


def rule_tokens(rule: Any) -> list[str]:
    """A python-iptables rule as iptables-save's argument tokens (without `-A CHAIN`)."""
    tokens: list[str] = []
    for opt, value in (("-s", rule.src), ("-d", rule.dst)):
        addr = _addr(value)
        if addr is not None:
            tokens += (["!"] if addr[0] else []) + [opt, addr[1]]
    for opt, value in (("-i", rule.in_interface), ("-o", rule.out_interface)):
        if value:
            tokens += (["!", opt, value[1:]] if value.startswith("!") else [opt, value])
    proto = rule.protocol
    if proto and proto not in ("ip", "ipv6", "all", "0"):
        tokens += (["!", "-p", proto[1:]] if proto.startswith("!") else ["-p", proto])
    for match in rule.matches:
        tokens += ["-m", match.name]
        for key, vals in match.get_all_parameters().items():
            vals = list(vals)
            if vals and vals[0] == "!":
                tokens += ["!", f"--{key}", *vals[1:]]
            else:
                tokens += [f"--{key}", *vals]
    target = rule.target
    if target is not None and target.name:
        tokens += ["-j", target.name]
        for key, vals in target.get_all_parameters().items():
            tokens += [f"--{key}", *vals]
    return tokens


def _load_table(iptc: Any, family: str, name: str) -> Table:
    table = iptc.Table(name) if family == "ip" else iptc.Table6(name)
    table.refresh()
    chain_objs = list(table.chains)
    user_chains = frozenset(c.name for c in chain_objs if not c.is_builtin())
    chains: list[Chain] = []
    for ch in chain_objs:
        cid = (BACKEND, family, name, ch.name)
        seen: dict[str, int] = {}
        rules: list[Rule] = []
        for pos, r in enumerate(ch.rules, 1):
            tokens = rule_tokens(r)
            text = " ".join(_quote(t) for t in tokens)
            matches, verdict, target, comment = parse_rule_args(tokens, user_chains)
            packets, nbytes = r.get_counters()
            occurrence = seen.get(text, 0)
            seen[text] = occurrence + 1
            rules.append(Rule(BACKEND, family, name, ch.name, pos, None, text, verdict, target,
                              matches, Counters(packets, nbytes), comment, None,
                              rule_key(cid, None, text, occurrence)))
        policy = None
        hook = None
        if ch.is_builtin():
            hook = ch.name.lower()
            pol = ch.get_policy()
            p_packets, p_bytes = ch.get_counters()
            verdict_p = _BUILTIN_POLICIES.get(pol.name if pol else "", "unknown")
            policy = Policy(BACKEND, family, name, ch.name, verdict_p, Counters(p_packets, p_bytes))
        chains.append(Chain(BACKEND, family, name, ch.name, tuple(rules), hook,
                            _LEGACY_PRIORITY.get(name), name, policy))
    return Table(BACKEND, family, name, tuple(chains))


# x_tables' fixed hook priorities (NF_IP_PRI_*), so legacy chains sort among nft base chains.
_LEGACY_PRIORITY = {"raw": -300, "mangle": -150, "nat": -100, "filter": 0, "security": 50}


# python-iptables keeps process-wide state in libxtables (the loaded match/target modules and
# the current family): two threads walking tables at once livelock in xtables.find_match. The
# rules poller and the drop readers both load rulesets, so every use goes through this lock.
_IPTC_LOCK = threading.Lock()


def load() -> list[Table]:
    """Every live legacy table (IPv4 and IPv6) of the calling thread's namespace."""
    names = {fam: live_tables(fam) for fam in _NAMES_FILES}
    if not any(names.values()):
        return []
    tables: list[Table] = []
    with _IPTC_LOCK:
        iptc = _iptc()
        for family, tnames in names.items():
            for name in tnames:
                tables.append(_load_table(iptc, family, name))
    return tables


def available() -> tuple[bool, str | None]:
    if not os.path.exists(_NAMES_FILES["ip"]):
        return False, "kernel has no x_tables (ip_tables module not loaded)"
    try:
        _iptc()
    except LegacyUnavailable as exc:
        return False, str(exc)
    return True, None

