"""Layer-3/4 packet headers: decode IPv4/IPv6 plus TCP, UDP, ICMP and ICMPv6 from raw bytes.

Owns the one decoder every packet-carrying source shares (NFLOG payloads now, AF_PACKET capture
later, which strips its L2 header and calls `decode_l3`). Pure and stdlib only. The bytes come
from the network, so nothing here raises on short or hostile input: a decode stops where the
bytes stop and says so in `L3Info.truncated`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from socket import AF_INET, AF_INET6, inet_ntop

from fwtop.core.protocols import IP_PROTOCOLS

BytesLike = bytes | bytearray | memoryview

# --- constants (RFC 791, RFC 8200 and the IANA protocol registry) ------------------------------

IPPROTO_HOPOPTS = 0
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_DCCP = 33
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_ESP = 50
IPPROTO_AH = 51
IPPROTO_ICMPV6 = 58
IPPROTO_NONE = 59
IPPROTO_DSTOPTS = 60
IPPROTO_SCTP = 132
IPPROTO_UDPLITE = 136

# Extension headers whose length is (hdr_ext_len + 1) * 8 bytes.
_IPV6_OPTION_HEADERS = frozenset({IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS})
# A real chain has a handful; a hostile one could be thousands of 8-byte headers.
_MAX_EXT_HEADERS = 16
# Transport protocols that start with a 16-bit source and destination port.
_PORT_PROTOCOLS = frozenset({IPPROTO_TCP, IPPROTO_UDP, IPPROTO_DCCP, IPPROTO_SCTP, IPPROTO_UDPLITE})

TCP_FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")
# Every value of the flags byte spelled once, so the hot path does one tuple index.
_TCP_FLAGS_TEXT: tuple[str, ...] = tuple(
    ",".join(name for bit, name in enumerate(TCP_FLAG_NAMES) if value & (1 << bit))
    for value in range(256)
)
_PROTO_TEXT: tuple[str, ...] = tuple(IP_PROTOCOLS.get(n, str(n)) for n in range(256))

_IPV4 = struct.Struct("!BBHHHBBH4s4s")  # ver/ihl, tos, total, id, flags/frag, ttl, proto, csum
_IPV6 = struct.Struct("!IHBB16s16s")  # ver/class/flow, payload length, next header, hops
_PORTS = struct.Struct("!HH")
_TCP_HEAD = struct.Struct("!HH9xB")  # ports, (seq, ack, data offset) skipped, flags at byte 13
_BB = struct.Struct("!BB")
# IPv4 header fields the fast path needs (ver/ihl, total, frag, proto, addresses) + 8 L4 bytes.
_IPV4_L4 = struct.Struct("!B1xH2xH1xB2x4s4sHHI")
_ADDR4: dict[bytes, str] = {}
_ADDR_CACHE_MAX = 65536
_FRAG6 = struct.Struct("!BxH")  # next header, reserved, offset/flags


@dataclass(frozen=True, slots=True)
class L3Info:
    """What the headers of one IP packet say. Fields the bytes did not reach are None.

    `length` is what the IP header claims (IPv4 total length, IPv6 40 + payload length), not how
    many bytes were seen. `protocol` is the transport protocol after any IPv6 extension headers;
    None when the extension-header chain was cut short. `fragment_offset` is in bytes; a
    non-first fragment carries no transport header, so its ports stay None."""

    family: str  # "ip" | "ip6"
    src: str
    dst: str
    length: int
    protocol: int | None
    proto: str | None  # tcp, udp, icmp, icmpv6, or the number as text
    fragment_offset: int = 0
    more_fragments: bool = False
    sport: int | None = None
    dport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    tcp_flags: str | None = None  # "SYN,ACK" style, FIN..CWR order; "" when no flag is set
    truncated: bool = False


def tcp_flags_text(flags: int) -> str:
    """The TCP flags byte as "SYN,ACK"-style text in FIN,SYN,RST,PSH,ACK,URG,ECE,CWR order."""
    return _TCP_FLAGS_TEXT[flags & 0xFF]


def decode_l3(data: BytesLike, family_hint: int | None = None) -> L3Info | None:
    """Decode the packet that starts at its IPv4 or IPv6 header.

    The version nibble decides the family; `family_hint` (AF_INET / AF_INET6, what NFLOG or an
    ethertype claimed) is accepted from callers that have one but never overrides the bytes, so
    a lying hint cannot make fwtop misread a packet. Returns None when the bytes do not hold an
    IP header with both addresses (not IP, or shorter than 20 / 40 bytes)."""
    fields = decode_l3_fields(data)
    return None if fields is None else L3Info(*fields)


# L3Info's fields in order, as a plain tuple: building a frozen dataclass costs more than the
# whole decode, and the NFLOG hot path copies the values straight into a DropEvent.
L3Fields = tuple[str, str, str, int, "int | None", "str | None", int, bool, "int | None",
                 "int | None", "int | None", "int | None", "str | None", bool]


def decode_l3_fields(data: BytesLike) -> L3Fields | None:
    """decode_l3 for the per-event hot path: the same values as a tuple in L3Info's order."""
    try:
        n = len(data)
        if n >= 28:
            # The common case in one unpack: IPv4 without options, not a fragment, with the
            # first 8 bytes of its TCP/UDP/ICMP header (what a drop rule mostly logs).
            (ver_ihl, total, frag, proto, src, dst, sport, dport,
             _l4word) = _IPV4_L4.unpack_from(data)
            # Same answers as _decode_ipv4 gives for these bytes (a unit test holds them equal).
            if ver_ihl == 0x45 and not frag & 0x3FFF and 28 <= total:
                if proto == IPPROTO_UDP:
                    return ("ip", _ADDR4.get(src) or _addr4(src), _ADDR4.get(dst) or _addr4(dst),
                            total, proto, "udp", 0, False, sport, dport, None, None, None, False)
                if proto == IPPROTO_TCP and n >= 34 and total >= 34:
                    return ("ip", _ADDR4.get(src) or _addr4(src), _ADDR4.get(dst) or _addr4(dst),
                            total, proto, "tcp", 0, False, sport, dport, None, None,
                            _TCP_FLAGS_TEXT[data[33]], False)
                if proto == IPPROTO_ICMP:
                    return ("ip", _ADDR4.get(src) or _addr4(src), _ADDR4.get(dst) or _addr4(dst),
                            total, proto, "icmp", 0, False, None, None, sport >> 8, sport & 0xFF,
                            None, False)
        if not data:
            return None
        version = data[0] >> 4
        if version == 4:
            return _decode_ipv4(data)
        if version == 6:
            return _decode_ipv6(data)
        return None
    except (struct.error, ValueError, IndexError, TypeError):  # pragma: no cover - belt and braces
        return None


def _addr4(raw: bytes) -> str:
    """inet_ntop through a bounded cache: a drop flood repeats the same few addresses."""
    text = inet_ntop(AF_INET, raw)
    if len(_ADDR4) >= _ADDR_CACHE_MAX:
        _ADDR4.clear()
    _ADDR4[raw] = text
    return text


def _decode_ipv4(data: BytesLike) -> L3Fields | None:
    n = len(data)
    if n < 20:
        return None
    ver_ihl, _tos, total, _id, frag, _ttl, proto, _csum, src, dst = _IPV4.unpack_from(data)
    ihl = (ver_ihl & 0x0F) * 4
    offset = (frag & 0x1FFF) * 8
    more = bool(frag & 0x2000)
    src_s = _ADDR4.get(src) or _addr4(src)
    dst_s = _ADDR4.get(dst) or _addr4(dst)
    proto_s = _PROTO_TEXT[proto]
    if ihl < 20:
        # A header length the kernel would have refused: the addresses are still where they
        # always are, but nothing after them can be trusted.
        return _fields("ip", src_s, dst_s, total, proto, proto_s, offset, more, truncated=True)
    if offset:
        return _fields("ip", src_s, dst_s, total, proto, proto_s, offset, more)
    # The copy range may have cut the packet, and a padded frame may carry bytes past the end.
    end = total if ihl <= total < n else n
    return _decode_l4("ip", src_s, dst_s, total, proto, proto_s, offset, more, data, ihl, end)


def _decode_ipv6(data: BytesLike) -> L3Fields | None:
    n = len(data)
    if n < 40:
        return None
    _vcf, plen, nexthdr, _hops, src, dst = _IPV6.unpack_from(data)
    src_s = inet_ntop(AF_INET6, src)
    dst_s = inet_ntop(AF_INET6, dst)
    total = plen + 40
    end = total if 40 <= total < n else n
    pos = 40
    offset = 0
    more = False
    for _ in range(_MAX_EXT_HEADERS):
        if nexthdr in _IPV6_OPTION_HEADERS or nexthdr == IPPROTO_AH:
            if pos + 2 > end:
                return _fields("ip6", src_s, dst_s, total, None, None, offset, more, truncated=True)
            nxt, hlen = _BB.unpack_from(data, pos)
            pos += (hlen + 2) * 4 if nexthdr == IPPROTO_AH else (hlen + 1) * 8
            nexthdr = nxt
        elif nexthdr == IPPROTO_FRAGMENT:
            if pos + 4 > end:
                return _fields("ip6", src_s, dst_s, total, None, None, offset, more, truncated=True)
            nxt, off_flags = _FRAG6.unpack_from(data, pos)
            offset = off_flags & 0xFFF8
            more = bool(off_flags & 1)
            pos += 8
            nexthdr = nxt
            if offset:
                return _fields("ip6", src_s, dst_s, total, nexthdr, _PROTO_TEXT[nexthdr],
                              offset, more)
        else:
            break
    else:
        # Still inside the extension headers after the limit: give up rather than walk on.
        return _fields("ip6", src_s, dst_s, total, None, None, offset, more, truncated=True)
    return _decode_l4("ip6", src_s, dst_s, total, nexthdr, _PROTO_TEXT[nexthdr], offset, more,
                      data, pos, end)


def _decode_l4(family: str, src: str, dst: str, total: int, proto: int, proto_s: str,
               offset: int, more: bool, data: BytesLike, pos: int, end: int) -> L3Fields:
    avail = end - pos
    # Literal tuples on the common paths: this runs once per logged packet.
    if proto == IPPROTO_UDP or proto == IPPROTO_TCP:
        if avail >= 14 and proto == IPPROTO_TCP:
            sport, dport, flags = _TCP_HEAD.unpack_from(data, pos)
            return (family, src, dst, total, proto, proto_s, offset, more, sport, dport, None,
                    None, _TCP_FLAGS_TEXT[flags], False)
        if avail >= 4:
            sport, dport = _PORTS.unpack_from(data, pos)
            # UDP is whole at 4 bytes for fwtop's purpose; TCP without its flags is cut short.
            return (family, src, dst, total, proto, proto_s, offset, more, sport, dport, None,
                    None, None, proto == IPPROTO_TCP)
    elif proto == IPPROTO_ICMP or proto == IPPROTO_ICMPV6:
        if avail >= 2:
            itype, icode = _BB.unpack_from(data, pos)
            return (family, src, dst, total, proto, proto_s, offset, more, None, None, itype,
                    icode, None, False)
    elif proto in _PORT_PROTOCOLS:
        if avail >= 4:
            sport, dport = _PORTS.unpack_from(data, pos)
            return _fields(family, src, dst, total, proto, proto_s, offset, more, sport, dport)
    else:
        # Not a protocol fwtop reads further (ESP, GRE, no-next-header...): nothing is missing.
        return _fields(family, src, dst, total, proto, proto_s, offset, more)
    return _fields(family, src, dst, total, proto, proto_s, offset, more, truncated=True)


def _fields(family: str, src: str, dst: str, length: int, protocol: int | None, proto: str | None,
            fragment_offset: int = 0, more_fragments: bool = False, sport: int | None = None,
            dport: int | None = None, icmp_type: int | None = None,
            icmp_code: int | None = None, tcp_flags: str | None = None,
            truncated: bool = False) -> L3Fields:
    return (family, src, dst, length, protocol, proto, fragment_offset, more_fragments, sport,
            dport, icmp_type, icmp_code, tcp_flags, truncated)
