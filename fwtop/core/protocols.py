"""Protocol names and numbers the firewalls spell in words: ICMP types, IP protocols."""

from __future__ import annotations

ICMP_TYPES: dict[str, int] = {
    "echo-reply": 0, "destination-unreachable": 3, "source-quench": 4, "redirect": 5,
    "echo-request": 8, "router-advertisement": 9, "router-solicitation": 10, "time-exceeded": 11,
    "parameter-problem": 12, "timestamp-request": 13, "timestamp-reply": 14,
    "info-request": 15, "info-reply": 16, "address-mask-request": 17, "address-mask-reply": 18,
    # iptables aliases
    "ping": 8, "pong": 0, "ttl-exceeded": 11, "fragmentation-needed": 3,
}
ICMPV6_TYPES: dict[str, int] = {
    "destination-unreachable": 1, "packet-too-big": 2, "time-exceeded": 3,
    "parameter-problem": 4, "echo-request": 128, "echo-reply": 129,
    "mld-listener-query": 130, "mld-listener-report": 131, "mld-listener-done": 132,
    "nd-router-solicit": 133, "nd-router-advert": 134, "nd-neighbor-solicit": 135,
    "nd-neighbor-advert": 136, "nd-redirect": 137, "router-solicitation": 133,
    "router-advertisement": 134, "neighbour-solicitation": 135, "neighbour-advertisement": 136,
    "neighbor-solicitation": 135, "neighbor-advertisement": 136, "ping": 128, "pong": 129,
}
# ICMP codes some names imply (iptables `--icmp-type fragmentation-needed` is 3/4).
ICMP_IMPLIED_CODES: dict[str, int] = {"fragmentation-needed": 4}

IP_PROTOCOLS: dict[int, str] = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp",
                                136: "udplite", 47: "gre", 50: "esp", 51: "ah"}


def icmp_type_number(family: str, name: str) -> int | None:
    """The number of an ICMP/ICMPv6 type given by name or number; None if unknown."""
    if name.isdigit():
        return int(name)
    table = ICMPV6_TYPES if family == "icmpv6" else ICMP_TYPES
    return table.get(name.lower())
