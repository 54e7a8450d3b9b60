"""firewalld in its own words: which zone (or policy) and which part of it a firewalld nft chain
is, the rich rule that allows one flow there, and the runtime changes fwtop makes as edits with
their inverse and their permanent form.

Pure: strings in, strings and argument lists out. fwtop never writes firewalld's nft tables; every
change goes through firewall-cmd (fwtop.firewall.firewalld), so firewalld keeps owning them.

Placement of an allow, from the chain that drops the flow (firewalld 1.x nftables layout:
<zone chain> jumps to _pre, _log, _deny, _allow, _post, then applies the zone's target):
- the zone chain itself (its target rejects) or its _allow / _post part: a rich rule of
  priority 0 (it lands in _allow, before the target);
- its _log or _deny part (a rich rule reject/drop, or an icmp block): priority -1 (lands in _pre,
  which runs before every priority-0 rich rule);
- its _pre part (a rich rule with a negative priority): the lowest priority, -32768.
Anything else (policies, firewalld's own INPUT/FORWARD chains) is refused with the reason.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

_CHAIN = re.compile(
    r"^(?P<table>filter|nat|mangle|raw)_(?P<hook>IN|FWD|FWDI|FWDO|OUT|PRE|POST)_"
    r"(?P<owner>.+?)(?:_(?P<part>allow|deny|log|pre|post|dnat|snat))?$")
PRIORITY_MIN = -32768
_SERVICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
_ZONE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_+-]{0,31}$")
_PORT = re.compile(r"^(?P<lo>\d{1,5})(?:-(?P<hi>\d{1,5}))?/(?P<proto>tcp|udp|sctp|dccp)$")


class FirewalldError(Exception):
    """A refusal or a firewall-cmd failure, in one line."""


@dataclass(frozen=True, slots=True)
class FirewalldChain:
    """What a chain of firewalld's nft table belongs to."""

    table: str  # filter, nat, mangle, raw
    hook: str  # IN, FWD, OUT, PRE, POST, ...
    kind: str  # "zone" or "policy"
    owner: str  # the zone's or policy's name
    part: str | None  # None (the zone chain itself), pre, log, deny, allow, post, ...


def parse_chain(chain: str) -> FirewalldChain | None:
    m = _CHAIN.match(chain)
    if m is None:
        return None
    owner = m.group("owner")
    kind = "zone"
    if owner.startswith("policy_"):
        kind, owner = "policy", owner[len("policy_"):]
    return FirewalldChain(m.group("table"), m.group("hook"), kind, owner, m.group("part"))


def valid_zone(name: str) -> bool:
    return bool(_ZONE.match(name))


def allow_priority(where: FirewalldChain) -> int:
    """The rich-rule priority that puts an accept in front of what drops in `where`."""
    if where.kind != "zone":
        raise FirewalldError(f"the flow is dropped by firewalld policy {where.owner!r}: fwtop "
                             "only adds temporary allows to zones (firewall-cmd --policy ... "
                             "--add-rich-rule ... --timeout does the same by hand)")
    if where.table != "filter" or where.hook != "IN":
        raise FirewalldError(f"the flow is dropped in firewalld's {where.table} {where.hook} "
                             f"chain of zone {where.owner}: fwtop's temporary allows cover "
                             "traffic to this host (zone input) only")
    if where.part in (None, "allow", "post"):
        return 0
    if where.part in ("log", "deny"):
        return -1
    return PRIORITY_MIN  # _pre: a negative-priority rich rule drops it


def _q(value: str) -> str:
    return f'"{value}"'


def rich_rule(family: str, src: str | None, dst: str | None, proto: str, dport: int | None,
              action: str = "accept", priority: int = 0) -> str:
    """A rich rule in firewalld's own canonical spelling (as `--list-rich-rules` prints it), so
    the string fwtop adds is the string it later removes: firewalld keys a rule's timer by the
    exact string it was added with."""
    fam = "ipv6" if family == "ip6" else "ipv4"
    parts = ["rule"]
    if priority:
        parts.append(f"priority={_q(str(priority))}")
    parts.append(f"family={_q(fam)}")
    if src is not None:
        net = ipaddress.ip_network(src, strict=False)
        parts.append(f"source address={_q(str(net))}")
    if dst is not None:
        parts.append(f"destination address={_q(str(ipaddress.ip_address(dst)))}")
    if dport is not None:
        parts.append(f"port port={_q(str(dport))} protocol={_q(proto)}")
    elif proto in ("icmp", "icmpv6"):
        parts.append(f"protocol value={_q('ipv6-icmp' if proto == 'icmpv6' else 'icmp')}")
    else:
        parts.append(f"protocol value={_q(proto)}")
    parts.append(action)
    return " ".join(parts)


def zone_argv(zone: str, *argv: str) -> list[str]:
    return [f"--zone={zone}", *argv]


def allow_argv(zone: str, rule: str, ttl: int) -> list[str]:
    return zone_argv(zone, f"--add-rich-rule={rule}", f"--timeout={ttl}s")


def shown(argv: list[str]) -> str:
    """An argv as a user would type it (for the preview only; fwtop never runs a shell)."""
    out = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if eq and (" " in value or '"' in value):
            out.append(f"{key}='{value}'")
        else:
            out.append(arg)
    return " ".join(["firewall-cmd", *out])


# --- edits --------------------------------------------------------------------------------------

ELEMENTS = ("service", "port", "rich-rule", "source", "icmp-block")


@dataclass(frozen=True, slots=True)
class ZoneChange:
    """One runtime change of a zone: add or remove one element."""

    zone: str
    op: str  # "add" or "remove"
    element: str  # service, port, rich-rule, source, icmp-block
    value: str

    def argv(self, permanent: bool = False) -> list[str]:
        flag = [f"--{self.op}-{self.element}={self.value}"]
        return zone_argv(self.zone, *(["--permanent"] if permanent else []), *flag)

    def query_argv(self, permanent: bool = False) -> list[str]:
        return zone_argv(self.zone, *(["--permanent"] if permanent else []),
                         f"--query-{self.element}={self.value}")

    @property
    def inverse(self) -> ZoneChange:
        return ZoneChange(self.zone, "remove" if self.op == "add" else "add", self.element,
                          self.value)

    @property
    def present_after(self) -> bool:
        """Whether the element is in the zone once the change is made."""
        return self.op == "add"

    def text(self) -> str:
        verb = "add" if self.op == "add" else "remove"
        return f"{verb} {self.element} {self.value} {'to' if verb == 'add' else 'from'} " \
               f"firewalld zone {self.zone}"

    def to_json(self) -> dict[str, Any]:
        return {"zone": self.zone, "op": self.op, "element": self.element, "value": self.value}

    @staticmethod
    def from_json(data: dict[str, Any]) -> ZoneChange:
        return ZoneChange(str(data["zone"]), str(data["op"]), str(data["element"]),
                          str(data["value"]))


def _check_value(element: str, value: str) -> str:
    value = value.strip()
    if element == "service" and not _SERVICE.match(value):
        raise FirewalldError(f"{value!r} is not a firewalld service name")
    if element == "port":
        m = _PORT.match(value)
        if m is None or not all(0 < int(p) <= 65535 for p in (m.group("lo"), m.group("hi"))
                                if p is not None):
            raise FirewalldError(f"{value!r}: a firewalld port is PORT[-PORT]/tcp|udp|sctp|dccp")
    if element == "source":
        try:
            value = str(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise FirewalldError(f"{value!r} is not an address or prefix") from None
    if element == "rich-rule" and not value.startswith("rule "):
        raise FirewalldError("a rich rule starts with `rule` (see man firewalld.richlanguage)")
    if element == "icmp-block" and not _SERVICE.match(value):
        raise FirewalldError(f"{value!r} is not an icmp type name")
    if any(c in value for c in "\n\r\0"):
        raise FirewalldError("no line breaks in a firewalld element")
    return value


def parse_element(spec: str, op: str) -> ZoneChange:
    """`firewalld:ZONE:ELEMENT=VALUE` (ELEMENT: service, port, rich-rule, source, icmp-block),
    as `fwtop edit --delete` takes it; or `firewalld:ZONE` + the rich rule for --insert."""
    head, _, rest = spec.partition(":")
    if head != "firewalld":
        raise FirewalldError(f"{spec!r}: a firewalld element is firewalld:ZONE:ELEMENT=VALUE")
    zone, _, elem = rest.partition(":")
    if not valid_zone(zone):
        raise FirewalldError(f"{zone!r} is not a firewalld zone name")
    element, eq, value = elem.partition("=")
    if not eq or element not in ELEMENTS:
        raise FirewalldError(f"{spec!r}: give firewalld:{zone}:ELEMENT=VALUE with ELEMENT one "
                             f"of {', '.join(ELEMENTS)}")
    return ZoneChange(zone, op, element, _check_value(element, value))


def parse_insert(chain: str, text: str) -> ZoneChange:
    """`--insert 'rule ...' --chain firewalld:ZONE` adds a rich rule to the zone;
    `--insert port=8080/tcp` (or service=, source=, icmp-block=) adds that element."""
    head, _, zone = chain.partition(":")
    if head != "firewalld" or not valid_zone(zone):
        raise FirewalldError(f"--chain {chain!r}: for firewalld give --chain firewalld:ZONE")
    text = text.strip()
    if text.startswith("rule "):
        return ZoneChange(zone, "add", "rich-rule", _check_value("rich-rule", text))
    return parse_element(f"firewalld:{zone}:{text}", "add")


@dataclass(frozen=True, slots=True)
class FirewalldEdit:
    """A commit-confirmed firewalld edit: one runtime zone change and its deadline."""

    change: ZoneChange
    confirm_within: int

    def to_json(self) -> dict[str, Any]:
        return {"kind": "firewalld", **self.change.to_json(),
                "confirm_within": self.confirm_within}


def edit_warnings(change: ZoneChange) -> list[str]:
    """What the user should hear before a firewalld edit."""
    out = ["firewalld edits are made at runtime; firewalld (not the kernel) holds the change "
           "and a `firewall-cmd --reload` by anyone drops it early (back to the permanent "
           "configuration)",
           "impact on recent traffic is not computed for firewalld edits (fwtop does not model "
           "how firewalld renders a zone); `fwtop explain` after applying shows the verdict"]
    if change.op == "remove" and (change.value == "ssh" or change.value.startswith("22/")):
        out.insert(0, "this removes SSH from the zone: new SSH connections through it will be "
                      "refused (established ones stay, by conntrack)")
    return out


def persistent_allow(zone: str, rule: str) -> list[str]:
    """The permanent form of a temporary firewalld allow (shown, never run)."""
    return [f"# firewalld zone {zone}, permanent configuration (then firewall-cmd --reload):",
            shown(zone_argv(zone, "--permanent", f"--add-rich-rule={rule}"))]
