"""Captured frames: strip the link header (Ethernet with 802.1Q/802.1ad tags, Linux cooked
SLL/SLL2, raw IP) and decode the packet into a PacketEvent, with the ICMP details flows need
(echo identifier, the header an ICMP error quotes, the MTU of fragmentation-needed).

Pure and stdlib only; the bytes come from the wire, so nothing here raises on short or hostile
input: a frame that holds no IP header gives None.
"""

from __future__ import annotations

import struct

from fwtop.core.capture_events import (
    PACKET_FIELDS,
    Direction,
    Embedded,
    PacketEvent,
    PacketFields,
    fast_factory,
)
from fwtop.core.packet import (
    IPPROTO_AH,
    IPPROTO_DSTOPTS,
    IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_ROUTING,
    BytesLike,
    L3Fields,
    decode_l3_fields,
)

# Link types, by the kernel's ARPHRD_* (what AF_PACKET reports) ...
ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772
ARPHRD_NONE = 0xFFFE  # tun and other headerless devices: the frame starts at the IP header
ARPHRD_RAWIP = 519
ARPHRD_TUNNEL = 768
ARPHRD_TUNNEL6 = 769
ARPHRD_SIT = 776
ARPHRD_IPGRE = 778
ARPHRD_IP6GRE = 823
ARPHRD_PPP = 512
# ... and the pcap link types of files (and of tcpdump -i any).
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276

# fwtop's own names for how a frame starts.
LINK_ETHERNET = "ethernet"
LINK_RAW = "raw"
LINK_SLL = "sll"
LINK_SLL2 = "sll2"

_RAW_ARPHRD = frozenset({ARPHRD_NONE, ARPHRD_RAWIP, ARPHRD_TUNNEL, ARPHRD_TUNNEL6, ARPHRD_SIT,
                         ARPHRD_IPGRE, ARPHRD_IP6GRE, ARPHRD_PPP})

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
_VLAN_TPIDS = frozenset({0x8100, 0x88A8, 0x9100})
_MAX_TAGS = 4  # QinQ has two; more is hostile
_H = struct.Struct("!H")
_BB = struct.Struct("!BB")
_HH = struct.Struct("!HH")
_I = struct.Struct("!I")
_V6_OPTION_HEADERS = frozenset({IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS})

ICMP_ECHO_TYPES = frozenset({(4, 8), (4, 0), (6, 128), (6, 129)})
ICMP_ERROR_TYPES_V4 = frozenset({3, 4, 5, 11, 12})
ICMP_ERROR_TYPES_V6 = frozenset({1, 2, 3, 4})

make_packet = fast_factory(PacketEvent, PACKET_FIELDS)


def link_of_arphrd(hatype: int) -> str:
    """How frames of a device with this ARPHRD type start (loopback has an Ethernet header)."""
    return LINK_RAW if hatype in _RAW_ARPHRD else LINK_ETHERNET


def link_of_pcap(linktype: int) -> str | None:
    return {LINKTYPE_ETHERNET: LINK_ETHERNET, LINKTYPE_RAW: LINK_RAW,
            LINKTYPE_LINUX_SLL: LINK_SLL, LINKTYPE_LINUX_SLL2: LINK_SLL2}.get(linktype)


def l3_offset(frame: BytesLike, link: str = LINK_ETHERNET) -> tuple[int, int | None] | None:
    """(offset of the IP header, outermost VLAN id or None), or None when the frame carries
    no IPv4/IPv6 packet (ARP, LLDP, too short, too many tags)."""
    n = len(frame)
    if link == LINK_ETHERNET:
        pos = 12
    elif link == LINK_SLL:
        pos = 14
    elif link == LINK_SLL2:
        pos = 0
    elif link == LINK_RAW:
        if n and frame[0] >> 4 in (4, 6):
            return 0, None
        return None
    else:
        return None
    if n < pos + 2:
        return None
    etype = _H.unpack_from(frame, pos)[0]
    start = 16 if link == LINK_SLL else 20 if link == LINK_SLL2 else 14
    vlan: int | None = None
    # Cooked headers keep tags in the payload too, when the device did not strip them.
    pos = start
    for _ in range(_MAX_TAGS):
        if etype not in _VLAN_TPIDS:
            break
        if n < pos + 4:
            return None
        tci, etype = _HH.unpack_from(frame, pos)
        if vlan is None:
            vlan = tci & 0x0FFF
        pos += 4
    else:
        return None
    if etype == ETH_P_IP or etype == ETH_P_IPV6:
        return pos, vlan
    return None


def _l4_offset(l3: BytesLike, f: L3Fields) -> int | None:
    """Where the transport header starts (for ICMP details), or None (fragment, cut short)."""
    if f[6] or f[13]:  # a non-first fragment has no ICMP header; a truncated one is unsafe
        return None
    if f[0] == "ip":
        return (l3[0] & 0x0F) * 4
    pos, nexthdr, n = 40, l3[6], len(l3)
    for _ in range(16):
        if nexthdr in _V6_OPTION_HEADERS or nexthdr == IPPROTO_AH:
            if pos + 2 > n:
                return None
            nxt, hlen = _BB.unpack_from(l3, pos)
            pos += (hlen + 2) * 4 if nexthdr == IPPROTO_AH else (hlen + 1) * 8
            nexthdr = nxt
        elif nexthdr == IPPROTO_FRAGMENT:
            nexthdr = l3[pos] if pos < n else -1
            pos += 8
        else:
            return pos
    return None


def icmp_details(l3: BytesLike, f: L3Fields,
                 quoted: bool = False) -> tuple[int | None, Embedded | None, int | None]:
    """(echo identifier, quoted header of an error, MTU of fragmentation-needed /
    packet-too-big) of an ICMP/ICMPv6 packet whose decoded fields are `f`."""
    itype, icode = f[10], f[11]
    protocol = f[4]
    if itype is None or icode is None or protocol not in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        return None, None, None
    pos = _l4_offset(l3, f)
    if pos is None or pos + 8 > len(l3):
        return None, None, None
    v = 4 if protocol == IPPROTO_ICMP else 6
    if (v, itype) in ICMP_ECHO_TYPES:
        return _H.unpack_from(l3, pos + 4)[0], None, None
    errors = ICMP_ERROR_TYPES_V4 if v == 4 else ICMP_ERROR_TYPES_V6
    if quoted or itype not in errors:
        return None, None, None
    mtu: int | None = None
    if v == 4 and itype == 3 and icode == 4:
        mtu = _H.unpack_from(l3, pos + 6)[0]
    elif v == 6 and itype == 2:
        mtu = _I.unpack_from(l3, pos + 4)[0]
    inner_bytes = bytes(l3[pos + 8:])
    inner = decode_l3_fields(inner_bytes)
    if inner is None:
        return None, None, mtu
    inner_id = icmp_details(inner_bytes, inner, quoted=True)[0]
    return None, Embedded(inner[5], inner[1], inner[2], inner[8], inner[9], inner_id), mtu


def decode_fields(frame: BytesLike, link: str = LINK_ETHERNET, *, ts: float = 0.0,
                  wall: float = 0.0, seq: int = 0, iface: str | None = None,
                  direction: Direction = "in", frame_len: int | None = None,
                  vlan: int | None = None) -> PacketFields | None:
    """decode_packet's fields as a tuple in PACKET_FIELDS order (the capture's hot path)."""
    try:
        found = l3_offset(frame, link)
        if found is None:
            return None
        off, tag = found
        l3 = bytes(frame[off:])
        f = decode_l3_fields(l3)
        if f is None:
            return None
        icmp_id = embedded = mtu = None
        if f[10] is not None:
            icmp_id, embedded, mtu = icmp_details(l3, f)
        return (ts, wall, seq, iface, direction, f[0], f[5], f[1], f[2], f[8], f[9], f[10],
                f[11], f[12], f[3], len(frame) if frame_len is None else frame_len,
                vlan if vlan is not None else tag, icmp_id, embedded, mtu)
    except (struct.error, ValueError, IndexError, TypeError):  # pragma: no cover - belt and braces
        return None


def decode_packet(frame: BytesLike, link: str = LINK_ETHERNET, *, ts: float = 0.0,
                  wall: float = 0.0, seq: int = 0, iface: str | None = None,
                  direction: Direction = "in", frame_len: int | None = None,
                  vlan: int | None = None) -> PacketEvent | None:
    """One captured frame as a PacketEvent, or None when it holds no IP packet.

    `vlan` is a tag the kernel already stripped (TP_STATUS_VLAN_VALID); without one, the
    outermost tag still in the frame is reported."""
    fields = decode_fields(frame, link, ts=ts, wall=wall, seq=seq, iface=iface,
                           direction=direction, frame_len=frame_len, vlan=vlan)
    return None if fields is None else make_packet(*fields)
