"""Temporary allow rules whose expiry the kernel enforces: the request, its checks, the plan.

Pure: from an evaluator verdict (which rule or policy drops the flow) to the exact change for
that backend, shown to the user before anything is written.

- native nft chains: an `accept` rule placed right before the deciding rule (or at the end of the
  chain when its policy decides) that matches through a set with `flags timeout` in the same
  table; the flow is the set's one element, with the TTL as its timeout. When the element
  expires the rule matches nothing, whatever happened to fwtop.
- firewalld chains: a rich rule in the zone that owns the dropping chain, added at runtime through
  firewall-cmd with `--timeout`. firewalld never sees fwtop write its nft tables; the timer is the
  firewalld daemon's (not the kernel's): if firewalld dies uncleanly the rule stays in the kernel,
  even after firewalld starts again (firewalld 1.3 does not flush a table a killed firewalld
  left; measured), until a `firewall-cmd --reload`; a `--reload` also drops it early.
  Rich rules have no comment: the `fwtop:<id>` tag lives in fwtop's journal, and the rule is
  found by its exact text in its zone.
- iptables-nft and iptables-legacy chains: an ACCEPT rule with `-m time --datestop <UTC>`.
  (Not an nft set inside an iptables-nft table: iptables-nft-save prints such a rule without the
  set match, as `-m comment --comment ... -j ACCEPT`, i.e. allow-all, so a user's save/restore
  would silently open everything. Measured here with iptables 1.8.9.)

Every object carries the `fwtop:<id>` tag in its comment; removal finds objects by that tag and
by handle, never by position.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from fwtop.core.evaluator import Packet, Verdict
from fwtop.core.firewalld import (
    FirewalldError,
    allow_argv,
    allow_priority,
    parse_chain,
    persistent_allow,
    rich_rule,
    shown,
)
from fwtop.core.model import Rule

TAG_PREFIX = "fwtop:"
DEFAULT_TTL_CAP = 3600
_ID = re.compile(r"^[0-9a-f]{8}$")


class AllowError(Exception):
    """A refusal, in one line."""


def new_id() -> str:
    return secrets.token_hex(4)


def valid_id(text: str) -> bool:
    return bool(_ID.match(text))


def tag(allow_id: str) -> str:
    return f"{TAG_PREFIX}{allow_id}"


@dataclass(frozen=True, slots=True)
class AllowRequest:
    proto: str
    src: str | None  # address or prefix; None = any source (needs any_source)
    dst: str | None = None
    dport: int | None = None
    iif: str | None = None
    ttl: int = 0
    any_source: bool = False
    hook: str | None = None

    def source_network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        if self.src is None:
            return None
        return ipaddress.ip_network(self.src, strict=False)


def check_request(req: AllowRequest, ttl_cap: int = DEFAULT_TTL_CAP) -> None:
    """Refuse what is missing, malformed or wider than asked."""
    if req.ttl <= 0:
        raise AllowError("a temporary allow needs --ttl SECONDS (the kernel closes it then)")
    if req.ttl > ttl_cap:
        raise AllowError(f"--ttl {req.ttl} is over the cap of {ttl_cap} s "
                         "(FWTOP_TTL_CAP raises it); make a permanent change instead")
    if req.proto not in ("tcp", "udp", "icmp", "icmpv6", "sctp"):
        raise AllowError(f"--proto {req.proto!r}: use tcp, udp, sctp, icmp or icmpv6")
    if req.dport is not None and req.proto not in ("tcp", "udp", "sctp"):
        raise AllowError("--dport only goes with tcp, udp or sctp")
    if req.dport is not None and not 0 < req.dport <= 65535:
        raise AllowError(f"--dport {req.dport}: ports are 1-65535")
    try:
        net = req.source_network()
    except ValueError:
        raise AllowError(f"--src {req.src!r} is not an address or prefix") from None
    if net is None or net.prefixlen == 0:
        if not req.any_source:
            raise AllowError("that allow would admit every source address: give --src, or "
                             "--any-source if that is really what you want")
    if req.dst is not None:
        try:
            ipaddress.ip_address(req.dst)
        except ValueError:
            raise AllowError(f"--dst {req.dst!r} is not an address") from None
    if req.dport is None and req.proto in ("tcp", "udp", "sctp"):
        raise AllowError("give --dport: an allow for every port is wider than a flow")


@dataclass(slots=True)
class Plan:
    """What will be written, where, and the exact commands (shown before anything changes)."""

    id: str
    backend: str  # nft, iptables-nft, iptables-legacy, firewalld
    family: str
    table: str
    chain: str
    before: Rule | None  # the deciding rule the allow goes in front of; None = end of chain
    ttl: int
    expires_at: float
    packet: Packet  # the flow as the deciding chain sees it (after DNAT)
    nft_script: str | None = None  # native nft: one atomic batch
    ipt_argv: list[str] = field(default_factory=list)  # iptables: the rule spec (no -I/-A)
    ipt_position: int | None = None  # iptables: insert at this position (None = append)
    set_name: str | None = None
    element: str | None = None  # native nft: the set element (for extend)
    text: str = ""  # the rule as the backend will list it, roughly
    src: str = ""
    zone: str | None = None  # firewalld: the zone the rich rule goes to
    rich_rule: str | None = None  # firewalld: the rule, exactly as added (and removed)

    @property
    def tag(self) -> str:
        return tag(self.id)

    def commands(self) -> list[str]:
        """Human-readable commands equivalent to what fwtop will do."""
        if self.nft_script is not None:
            return [line for line in self.nft_script.splitlines() if line.strip()]
        if self.rich_rule is not None and self.zone is not None:
            return [shown(allow_argv(self.zone, self.rich_rule, self.ttl))]
        tool = _ipt_tool(self.backend, self.family)
        where = (["-I", self.chain, str(self.ipt_position)] if self.ipt_position
                 else ["-A", self.chain])
        return [" ".join([tool, "-t", self.table, *where, *[_quote(a) for a in self.ipt_argv]])]

    def summary(self) -> str:
        """Where the allow goes and who enforces its expiry (shown before the commands)."""
        if self.backend == "firewalld":
            return (f"fwtop will ask firewalld to add, in zone {self.zone} (the zone of "
                    f"{self.chain}), a rich rule that expires in {self.ttl} s; the firewalld "
                    "daemon enforces that timeout (not the kernel), fwtop writes nothing to "
                    "firewalld's tables:")
        where = f"before #{self.before.position}" if self.before else "at the end"
        return (f"fwtop will add, in {self.backend} {self.family} {self.table} {self.chain} "
                f"{where} (expires in {self.ttl} s, enforced by the kernel):")

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "expires_at": round(self.expires_at, 3), "backend": self.backend,
                "family": self.family, "table": self.table, "chain": self.chain,
                "handle": None, "text": self.text, "commands": self.commands(),
                **({"zone": self.zone, "enforced_by": "the firewalld daemon"}
                   if self.backend == "firewalld" else {})}


def _quote(arg: str) -> str:
    return f'"{arg}"' if (" " in arg or not arg) else arg


def _ipt_tool(backend: str, family: str) -> str:
    base = "ip6tables" if family == "ip6" else "iptables"
    return f"{base}-legacy" if backend == "iptables-legacy" else f"{base}-nft"


def utc_stamp(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch))


def _before_trailing_logs(chain_rules: tuple[Rule, ...]) -> Rule | None:
    """When a policy decides, the allow goes before the chain's trailing LOG/NFLOG rules (the
    usual "log what is about to be dropped" block), or the allowed packets would still be
    logged as drops."""
    first = None
    for rule in reversed(chain_rules):
        if rule.verdict != "continue":
            break
        first = rule
    return first


def build_plan(req: AllowRequest, verdict: Verdict, now: float,
               allow_id: str | None = None, chain_rules: tuple[Rule, ...] = ()) -> Plan:
    """The tightest allow for the flow `verdict` was computed for, in the chain that drops it
    (`chain_rules`: that chain's rules, when a policy decides)."""
    if verdict.verdict not in ("drop", "reject"):
        raise AllowError(f"fwtop's evaluation says this flow is not dropped by the firewall "
                         f"(verdict {verdict.verdict}); nothing to allow"
                         + ("" if verdict.certain else " (not certain: see `fwtop explain`)"))
    rule = verdict.rule
    if rule is not None:
        backend, family, table, chain = rule.backend, rule.family, rule.table, rule.chain
    elif verdict.policy is not None:
        p = verdict.policy
        backend, family, table, chain = p.backend, p.family, p.table, p.chain
    else:  # pragma: no cover - a drop always names its rule or policy
        raise AllowError("cannot tell which chain drops this flow")
    pkt = verdict.packet or verdict.original
    assert pkt is not None
    allow_id = allow_id or new_id()
    src = req.src if req.src is not None else ("::/0" if pkt.family == "ip6" else "0.0.0.0/0")
    net = ipaddress.ip_network(src, strict=False)
    fam = "ip6" if net.version == 6 else "ip"
    if family not in (fam, "inet"):
        raise AllowError(f"the dropping chain is {family}, the source is {fam}")
    before = rule if rule is not None else _before_trailing_logs(chain_rules)
    plan = Plan(allow_id, backend, family, table, chain, before, req.ttl, now + req.ttl, pkt,
                src=str(net))
    # The flow as the dropping chain sees it: after DNAT in forward, so the translated address
    # and port (the user asked for the address they connect to).
    dst = pkt.dst if req.dst is not None else None
    dport = pkt.dport if req.dport is not None else None
    if backend == "nft":
        _nft_plan(plan, req, fam, net, dst, dport)
    elif backend == "firewalld":
        _firewalld_plan(plan, req, fam, net, dst, dport)
    else:
        _ipt_plan(plan, req, net, dst, dport)
    return plan


def _nft_plan(plan: Plan, req: AllowRequest, fam: str, net: Any, dst: str | None,
              dport: int | None) -> None:
    set_name = f"fwtop_{plan.id}"
    addr_type = "ipv6_addr" if fam == "ip6" else "ipv4_addr"
    prefix = net.prefixlen != net.max_prefixlen
    types = [addr_type, "inet_proto"]
    keys = [f"{fam} saddr", "meta l4proto"]
    elem = [str(net) if prefix else str(net.network_address), req.proto]
    if dport is not None:
        types.append("inet_service")
        keys.append("th dport")
        elem.append(str(dport))
    flags = "interval, timeout" if prefix else "timeout"
    where = f"{plan.family} {plan.table}"
    matches = []
    if req.iif:
        matches.append(f'iifname "{req.iif}"')
    if dst is not None:
        matches.append(f"{fam} daddr {dst}")
    matches.append(" . ".join(keys) + f" @{set_name}")
    body = " ".join(matches) + f' accept comment "{plan.tag}"'
    place = (f"insert rule {where} {plan.chain} position {plan.before.handle}"
             if plan.before is not None and plan.before.handle is not None
             else f"add rule {where} {plan.chain}")
    plan.set_name = set_name
    plan.element = " . ".join(elem)
    plan.nft_script = (
        f"add set {where} {set_name} {{ type {' . '.join(types)}; flags {flags}; "
        f'comment "{plan.tag}"; }}\n'
        f"add element {where} {set_name} {{ {' . '.join(elem)} timeout {plan.ttl}s }}\n"
        f"{place} {body}\n")
    plan.text = body


def _firewalld_plan(plan: Plan, req: AllowRequest, fam: str, net: Any, dst: str | None,
                    dport: int | None) -> None:
    """A rich rule in the zone of the dropping chain, placed by priority (see
    fwtop.core.firewalld); never a write to firewalld's tables."""
    where = parse_chain(plan.chain)
    if where is None:
        raise AllowError(f"{plan.chain} is one of firewalld's own chains, not a zone's: fwtop "
                         "cannot place a temporary allow there through firewalld")
    try:
        priority = allow_priority(where)
    except FirewalldError as exc:
        raise AllowError(str(exc)) from None
    src = None if net.prefixlen == 0 else str(net)
    plan.zone = where.owner
    plan.rich_rule = rich_rule(fam, src, dst, req.proto, dport, "accept", priority)
    plan.before = None  # placement is firewalld's, by priority
    plan.text = plan.rich_rule


def _ipt_plan(plan: Plan, req: AllowRequest, net: Any, dst: str | None,
              dport: int | None) -> None:
    argv: list[str] = []
    if req.iif:
        argv += ["-i", req.iif]
    argv += ["-s", str(net)]
    if dst is not None:
        argv += ["-d", dst]
    argv += ["-p", req.proto]
    if dport is not None:
        argv += ["-m", req.proto, "--dport", str(dport)]
    argv += ["-m", "time", "--datestop", utc_stamp(plan.expires_at),
             "-m", "comment", "--comment", plan.tag, "-j", "ACCEPT"]
    plan.ipt_argv = argv
    plan.ipt_position = plan.before.position if plan.before is not None else None
    plan.text = " ".join(_quote(a) for a in argv)


def persistent_form(backend: str, family: str, table: str, chain: str, ipt_argv: list[str],
                    flow: dict[str, object]) -> list[str]:
    """The same allow as a permanent rule in the backend's own persistent file syntax (shown,
    never written: where it goes is the user's decision)."""
    if backend == "firewalld":
        return persistent_allow(str(flow.get("zone")), str(flow.get("rich_rule")))
    if backend == "nft":
        fam = "ip6" if ":" in str(flow.get("src", "")) else "ip"
        parts = [f"{fam} saddr {flow.get('src')}"]
        if flow.get("iif"):
            parts.insert(0, f'iifname "{flow["iif"]}"')
        parts.append(f"meta l4proto {flow.get('proto')}")
        if flow.get("dport") is not None:
            parts.append(f"th dport {flow.get('dport')}")
        return [f"# in table {family} {table}, chain {chain} (e.g. /etc/nftables.conf):",
                " ".join(parts) + " accept"]
    spec: list[str] = []
    skip = 0
    for i, arg in enumerate(ipt_argv):
        if skip:
            skip -= 1
            continue
        if arg == "-m" and i + 1 < len(ipt_argv) and ipt_argv[i + 1] in ("time", "comment"):
            skip = 3  # -m time --datestop X, -m comment --comment TAG
            continue
        spec.append(_quote(arg))
    where = "/etc/iptables/rules.v6" if family == "ip6" else "/etc/iptables/rules.v4"
    return [f"# in *{table} of {where} (iptables-save format), before the rule it must pass:",
            f"-A {chain} " + " ".join(spec)]
