"""Parse iptables rule syntax (`iptables-save` lines and their arguments) into the rule model.

Used for iptables-nft rules (read from `iptables-nft-save -c`) and for legacy rules (rendered
from python-iptables into the same syntax), so both backends share one set of predicates.
"""

from __future__ import annotations

import datetime
import re
import shlex
from dataclasses import dataclass

from fwtop.core.model import (
    AddrMatch,
    Counters,
    CtStateMatch,
    IcmpMatch,
    IfaceMatch,
    Match,
    PortMatch,
    ProtoMatch,
    TimeMatch,
    UnknownMatch,
    Verdict,
)
from fwtop.core.protocols import icmp_type_number

# Match modules whose outcome depends on history or on state a single packet does not carry.
STATEFUL_MODULES = frozenset(
    {"limit", "recent", "hashlimit", "connmark", "connlimit", "quota", "statistic", "time", "mark",
     "connbytes", "conntrack-helper", "helper", "owner", "set", "socket", "rpfilter", "u32", "bpf"}
)
# Modules whose options fwtop turns into predicates; anything else is kept as UnknownMatch.
MODELLED_MODULES = frozenset(
    {"tcp", "udp", "sctp", "udplite", "multiport", "state", "conntrack", "icmp", "icmp6",
     "icmpv6", "iprange", "comment", "time"}
)
BUILTIN_VERDICTS: dict[str, Verdict] = {
    "ACCEPT": "accept", "DROP": "drop", "REJECT": "reject", "RETURN": "return",
    "QUEUE": "queue", "NFQUEUE": "queue",
}
# Targets that act and let the packet go on (or, for NAT, end the nat chain with accept).
NAT_TARGETS = frozenset({"DNAT", "SNAT", "MASQUERADE", "REDIRECT", "NETMAP"})
EXTENSION_TARGETS = frozenset(
    {"LOG", "NFLOG", "ULOG", "MARK", "CONNMARK", "CT", "TRACE", "TCPMSS", "CLASSIFY", "NOTRACK",
     "DSCP", "TOS", "TTL", "HL", "SET", "AUDIT", "CHECKSUM", "TEE", "SECMARK", "CONNSECMARK",
     "SYNPROXY", "TPROXY", "IDLETIMER", "LED", "HMARK", "CLUSTERIP", "ECN"}
)


@dataclass(frozen=True, slots=True)
class SaveRule:
    """One `-A CHAIN ...` line of iptables-save output, parsed."""

    chain: str
    text: str  # the arguments after `-A CHAIN`, as iptables-save prints them
    verdict: Verdict
    target: str | None
    matches: tuple[Match, ...]
    comment: str | None
    counters: Counters | None


@dataclass(frozen=True, slots=True)
class SaveTable:
    name: str
    policies: dict[str, tuple[str, Counters | None]]  # chain -> (POLICY or "-", counters)
    chains: tuple[str, ...]  # every chain in declaration order, builtin first
    rules: tuple[SaveRule, ...]


def _ports(spec: str) -> tuple[tuple[int, int], ...]:
    ranges: list[tuple[int, int]] = []
    for part in spec.split(","):
        lo, _, hi = part.partition(":")
        try:
            a = int(lo) if lo else 0
            b = int(hi) if hi else (65535 if _ else a)
        except ValueError:
            continue
        ranges.append((a, b))
    return tuple(ranges)


def _counters(token: str) -> Counters | None:
    inner = token.strip("[]")
    p, _, b = inner.partition(":")
    if p.isdigit() and b.isdigit():
        return Counters(int(p), int(b))
    return None


def _utc_seconds(text: str) -> float | None:
    """`-m time` dates (iptables prints them as UTC without a zone): epoch seconds."""
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def parse_rule_args(
    tokens: list[str], user_chains: frozenset[str] = frozenset()
) -> tuple[tuple[Match, ...], Verdict, str | None, str | None]:
    """Turn iptables rule arguments (without `-A CHAIN`) into (matches, verdict, target, comment).

    `user_chains` names the table's own chains, so `-j NAME` is a jump rather than a target.
    Never raises: options it does not understand become UnknownMatch so nothing is lost."""
    matches: list[Match] = []
    verdict: Verdict = "continue"
    target: str | None = None
    comment: str | None = None
    proto: str | None = None
    module: str | None = None
    unknown_opts: dict[str, list[str]] = {}
    negate = False
    i = 0
    n = len(tokens)

    def value() -> str:
        nonlocal i
        i += 1
        return tokens[i] if i < n else ""

    while i < n:
        tok = tokens[i]
        if tok == "!":
            negate = True
            i += 1
            continue
        if tok in ("-p", "--protocol"):
            proto = value().lower()
            matches.append(ProtoMatch((proto,), negate))
        elif tok in ("-s", "--source", "-d", "--destination"):
            field = "src" if tok in ("-s", "--source") else "dst"
            matches.append(AddrMatch(field, tuple(value().split(",")), None, negate))
        elif tok in ("-i", "--in-interface", "-o", "--out-interface"):
            field_if = "iif" if tok in ("-i", "--in-interface") else "oif"
            matches.append(IfaceMatch(field_if, (value(),), negate))
        elif tok in ("-m", "--match"):
            module = value()
            if module not in MODELLED_MODULES:
                unknown_opts.setdefault(module, [])
        elif tok in ("-j", "--jump", "-g", "--goto"):
            name = value()
            rest = tokens[i + 1 :]
            if name in BUILTIN_VERDICTS:
                verdict = BUILTIN_VERDICTS[name]
                target = " ".join([name, *rest]) if rest else None
            elif name in NAT_TARGETS:
                verdict = "accept"
                target = " ".join([name, *rest])
            elif name not in user_chains and (rest or user_chains or name in EXTENSION_TARGETS):
                # An extension target (LOG, NFLOG, MARK, ...): it acts and the packet goes on.
                target = " ".join([name, *rest])
            else:
                verdict = "goto" if tok in ("-g", "--goto") else "jump"
                target = name
            break
        elif tok in ("--dport", "--destination-port", "--sport", "--source-port"):
            field_p = "dport" if tok in ("--dport", "--destination-port") else "sport"
            matches.append(PortMatch(field_p, _ports(value()), None, proto, negate))
        elif tok in ("--dports", "--destination-ports", "--sports", "--source-ports", "--ports"):
            field_p = "sport" if tok in ("--sports", "--source-ports") else "dport"
            matches.append(PortMatch(field_p, _ports(value()), None, proto, negate))
        elif tok in ("--state", "--ctstate"):
            states = tuple(s.lower() for s in value().split(","))
            matches.append(CtStateMatch(states, negate))
        elif tok in ("--icmp-type", "--icmpv6-type"):
            fam = "icmpv6" if tok == "--icmpv6-type" else "icmp"
            spec = value()
            type_s, _, code_s = spec.partition("/")
            num = icmp_type_number(fam, type_s)
            if num is None:
                matches.append(UnknownMatch(f"{tok} {spec}"))
            else:
                code = int(code_s) if code_s.isdigit() else None
                matches.append(IcmpMatch(fam, (num,), code, negate))
        elif tok in ("--src-range", "--dst-range"):
            field_r = "src" if tok == "--src-range" else "dst"
            matches.append(AddrMatch(field_r, (value(),), None, negate))
        elif tok == "--comment":
            comment = value()
        elif tok in ("--datestart", "--datestop") and module == "time":
            when = _utc_seconds(value())
            if when is None:
                matches.append(UnknownMatch(f"-m time {tok} {tokens[i]}"))
            elif tok == "--datestart":
                matches.append(TimeMatch(start=when, negate=negate))
            else:
                matches.append(TimeMatch(stop=when, negate=negate))
        elif tok.startswith("-") and module is not None and module not in MODELLED_MODULES:
            opts = unknown_opts.setdefault(module, [])
            if negate:
                opts.append("!")
            opts.append(tok)
            if i + 1 < n and not tokens[i + 1].startswith("-") and tokens[i + 1] != "!":
                opts.append(value())
        elif tok.startswith("-"):
            # An option of a modelled module fwtop does not interpret (e.g. --tcp-flags).
            args = [tok]
            while i + 1 < n and not tokens[i + 1].startswith("-") and tokens[i + 1] != "!":
                args.append(value())
            matches.append(UnknownMatch(("! " if negate else "") + " ".join(args)))
        negate = False
        i += 1

    for mod, opts in unknown_opts.items():
        text = " ".join(["-m", mod, *opts])
        matches.append(UnknownMatch(text, stateful=mod in STATEFUL_MODULES))
    return tuple(matches), verdict, target, comment


def parse_save_line(line: str, user_chains: frozenset[str] = frozenset()) -> SaveRule | None:
    """Parse `[p:b] -A CHAIN args...` (counters optional). None if it is not a rule line."""
    tokens = _split(line)
    if tokens is None:
        return None
    counters = None
    if tokens and tokens[0].startswith("["):
        counters = _counters(tokens[0])
        tokens = tokens[1:]
    if len(tokens) < 2 or tokens[0] != "-A":
        return None
    chain = tokens[1]
    args = tokens[2:]
    matches, verdict, target, comment = parse_rule_args(args, user_chains)
    # Keep iptables-save's own spelling, minus the counters and the -A CHAIN prefix.
    text = line.split("-A " + chain, 1)[-1].strip()
    return SaveRule(chain, text, verdict, target, matches, comment, counters)


# iptables-save quotes only with double quotes and escapes only inside them; a line with no
# quote or backslash at all splits on blanks exactly as shlex would, a line with plain "..."
# strings (comments, log prefixes) is split by this pattern, anything else goes to shlex.
_PLAIN_TOKEN = re.compile(r'"([^"\\]*)"|(\S+)')


def _split(line: str) -> list[str] | None:
    if "\\" not in line and "'" not in line:
        if '"' not in line:
            return line.split()
        tokens: list[str] = []
        end = 0
        for m in _PLAIN_TOKEN.finditer(line):
            between = line[end:m.start()]
            quoted = m.group(1) is not None
            if between.strip() or (not quoted and '"' in m.group(2)) or (quoted and (
                    (m.start() > 0 and not line[m.start() - 1].isspace())
                    or (m.end() < len(line) and not line[m.end()].isspace()))):
                break  # quotes glued to other text: let shlex decide
            tokens.append(m.group(1) if m.group(1) is not None else m.group(2))
            end = m.end()
        else:
            if not line[end:].strip():
                return tokens
    try:
        return shlex.split(line)
    except ValueError:
        return None


def parse_save(output: str) -> list[SaveTable]:
    """Parse whole `iptables-save -c` output into tables; unknown lines are skipped."""
    tables: list[SaveTable] = []
    name: str | None = None
    policies: dict[str, tuple[str, Counters | None]] = {}
    chains: list[str] = []
    rules: list[SaveRule] = []
    user_chains: frozenset[str] | None = None  # recomputed only after a chain line
    for raw in output.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            name, policies, chains, rules = line[1:], {}, [], []
            user_chains = None
        elif line.startswith(":") and name is not None:
            parts = line[1:].split()
            if len(parts) >= 2:
                chains.append(parts[0])
                policies[parts[0]] = (parts[1], _counters(parts[2]) if len(parts) > 2 else None)
                user_chains = None
        elif line == "COMMIT" and name is not None:
            tables.append(SaveTable(name, policies, tuple(chains), tuple(rules)))
            name = None
        elif name is not None and ("-A " in line):
            if user_chains is None:
                # Per table, not per rule: kube-proxy makes a chain per service and endpoint,
                # and recomputing this per line made a 50k-rule load quadratic (152 s).
                builtin = {c for c, (pol, _) in policies.items() if pol != "-"}
                user_chains = frozenset(chains) - builtin
            rule = parse_save_line(line, user_chains)
            if rule is not None:
                rules.append(rule)
    return tables
