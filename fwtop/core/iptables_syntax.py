"""Parse iptables rule syntax (`iptables-save` lines and their arguments) into the rule model.

Used for iptables-nft rules (read from `iptables-nft-save -c`) and for legacy rules (rendered
from python-iptables into the same syntax), so both backends share one set of predicates.
"""

from __future__ import annotations

import datetime
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


# Rulesets repeat a few counter values ([0:0] above all) and a few protocol, port and state
# matches tens of thousands of times: these values are immutable, so equal ones are shared.
_MAX_SHARED = 4096
_shared_counters: dict[str, Counters | None] = {}
_shared_matches: dict[tuple[object, ...], Match] = {}


def _counters(token: str) -> Counters | None:
    got = _shared_counters.get(token, False)
    if got is not False:
        return got  # type: ignore[return-value]
    inner = token.strip("[]")
    p, _, b = inner.partition(":")
    result = Counters(int(p), int(b)) if p.isdigit() and b.isdigit() else None
    if len(_shared_counters) >= _MAX_SHARED:
        _shared_counters.clear()
    _shared_counters[token] = result
    return result


def _share(key: tuple[object, ...], match: Match) -> Match:
    if len(_shared_matches) >= _MAX_SHARED:
        _shared_matches.clear()
    _shared_matches[key] = match
    return match


def _utc_seconds(text: str) -> float | None:
    """`-m time` dates (iptables prints them as UTC without a zone): epoch seconds."""
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


# Options parse_rule_args turns into predicates, by kind; every one of them takes a value.
_K_PROTO, _K_SRC, _K_DST, _K_IIF, _K_OIF, _K_MODULE, _K_JUMP, _K_GOTO = range(1, 9)
_K_DPORT, _K_SPORT, _K_STATE, _K_ICMP, _K_SRC_RANGE, _K_DST_RANGE, _K_COMMENT, _K_DATE = (
    range(9, 17))
_OPTION_KINDS: dict[str, int] = {
    "-p": _K_PROTO, "--protocol": _K_PROTO,
    "-s": _K_SRC, "--source": _K_SRC, "-d": _K_DST, "--destination": _K_DST,
    "-i": _K_IIF, "--in-interface": _K_IIF, "-o": _K_OIF, "--out-interface": _K_OIF,
    "-m": _K_MODULE, "--match": _K_MODULE,
    "-j": _K_JUMP, "--jump": _K_JUMP, "-g": _K_GOTO, "--goto": _K_GOTO,
    "--dport": _K_DPORT, "--destination-port": _K_DPORT, "--dports": _K_DPORT,
    "--destination-ports": _K_DPORT, "--ports": _K_DPORT,
    "--sport": _K_SPORT, "--source-port": _K_SPORT, "--sports": _K_SPORT,
    "--source-ports": _K_SPORT,
    "--state": _K_STATE, "--ctstate": _K_STATE,
    "--icmp-type": _K_ICMP, "--icmpv6-type": _K_ICMP,
    "--src-range": _K_SRC_RANGE, "--dst-range": _K_DST_RANGE,
    "--comment": _K_COMMENT,
    "--datestart": _K_DATE, "--datestop": _K_DATE,  # only after `-m time`
}


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
    unknown_opts: dict[str, list[str]] | None = None
    negate = False
    i = 0
    n = len(tokens)
    kind_of = _OPTION_KINDS.get
    shared = _shared_matches

    while i < n:
        tok = tokens[i]
        if tok == "!":
            negate = True
            i += 1
            continue
        kind = kind_of(tok, 0)
        if kind == _K_DATE and module != "time":
            kind = 0
        if kind:
            i += 1
            val = tokens[i] if i < n else ""
            if kind == _K_COMMENT:
                comment = val
            elif kind == _K_MODULE:
                module = val
                if module not in MODELLED_MODULES:
                    if unknown_opts is None:
                        unknown_opts = {}
                    unknown_opts.setdefault(module, [])
            elif kind == _K_JUMP or kind == _K_GOTO:
                name = val
                rest = tokens[i + 1 :]
                if name in BUILTIN_VERDICTS:
                    verdict = BUILTIN_VERDICTS[name]
                    target = " ".join([name, *rest]) if rest else None
                elif name in NAT_TARGETS:
                    verdict = "accept"
                    target = " ".join([name, *rest])
                elif name not in user_chains and (
                        rest or user_chains or name in EXTENSION_TARGETS):
                    # An extension target (LOG, NFLOG, MARK, ...): it acts and the packet goes on.
                    target = " ".join([name, *rest])
                else:
                    verdict = "goto" if kind == _K_GOTO else "jump"
                    target = name
                break
            elif kind == _K_PROTO:
                proto = val.lower()
                key: tuple[object, ...] = (kind, proto, negate)
                m = shared.get(key)
                matches.append(m if m is not None else _share(key, ProtoMatch((proto,), negate)))
            elif kind == _K_SRC or kind == _K_DST:
                matches.append(AddrMatch("src" if kind == _K_SRC else "dst",
                                         tuple(val.split(",")), None, negate))
            elif kind == _K_DPORT or kind == _K_SPORT:
                key = (kind, val, proto, negate)
                m = shared.get(key)
                if m is None:
                    m = _share(key, PortMatch("dport" if kind == _K_DPORT else "sport",
                                              _ports(val), None, proto, negate))
                matches.append(m)
            elif kind == _K_IIF or kind == _K_OIF:
                key = (kind, val, negate)
                m = shared.get(key)
                if m is None:
                    m = _share(key, IfaceMatch("iif" if kind == _K_IIF else "oif", (val,),
                                               negate))
                matches.append(m)
            elif kind == _K_STATE:
                key = (kind, val, negate)
                m = shared.get(key)
                if m is None:
                    m = _share(key, CtStateMatch(tuple(s.lower() for s in val.split(",")),
                                                 negate))
                matches.append(m)
            elif kind == _K_ICMP:
                fam = "icmpv6" if tok == "--icmpv6-type" else "icmp"
                type_s, _, code_s = val.partition("/")
                num = icmp_type_number(fam, type_s)
                if num is None:
                    matches.append(UnknownMatch(f"{tok} {val}"))
                else:
                    code = int(code_s) if code_s.isdigit() else None
                    matches.append(IcmpMatch(fam, (num,), code, negate))
            elif kind == _K_SRC_RANGE or kind == _K_DST_RANGE:
                matches.append(AddrMatch("src" if kind == _K_SRC_RANGE else "dst", (val,), None,
                                         negate))
            else:  # _K_DATE, after -m time
                when = _utc_seconds(val)
                if when is None:
                    matches.append(UnknownMatch(f"-m time {tok} {val}"))
                elif tok == "--datestart":
                    matches.append(TimeMatch(start=when, negate=negate))
                else:
                    matches.append(TimeMatch(stop=when, negate=negate))
        elif tok.startswith("-") and module is not None and module not in MODELLED_MODULES:
            if unknown_opts is None:
                unknown_opts = {}
            opts = unknown_opts.setdefault(module, [])
            if negate:
                opts.append("!")
            opts.append(tok)
            if i + 1 < n and not tokens[i + 1].startswith("-") and tokens[i + 1] != "!":
                i += 1
                opts.append(tokens[i])
        elif tok.startswith("-"):
            # An option of a modelled module fwtop does not interpret (e.g. --tcp-flags).
            args = [tok]
            while i + 1 < n and not tokens[i + 1].startswith("-") and tokens[i + 1] != "!":
                i += 1
                args.append(tokens[i])
            matches.append(UnknownMatch(("! " if negate else "") + " ".join(args)))
        negate = False
        i += 1

    if unknown_opts:
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
# strings (comments, log prefixes) standing alone between blanks is split around its quotes,
# anything else goes to shlex.


def _split(line: str) -> list[str] | None:
    if "\\" not in line and "'" not in line:
        if '"' not in line:
            return line.split()
        parts = line.split('"')
        last = len(parts) - 1
        if last & 1 == 0:  # balanced quotes
            tokens: list[str] = []
            for k in range(0, last, 2):
                before, quoted, after = parts[k], parts[k + 1], parts[k + 2]
                # A quote glued to other text (a"b", "a""b") joins words: let shlex decide.
                if ((before[-1:].isspace() or (k == 0 and not before))
                        and (after[:1].isspace() or (k + 2 == last and not after))):
                    tokens += before.split()
                    tokens.append(quoted)
                else:
                    break
            else:
                tokens += parts[last].split()
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
