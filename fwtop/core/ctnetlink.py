"""ctnetlink wire format: the conntrack table dump request and its replies, fed into a
BreakdownCounter.

Owns the byte-level knowledge of include/uapi/linux/netfilter/nfnetlink_conntrack.h as far as
fwtop reads it. Pure and stdlib only; the socket lives in fwtop.sources.conntrack. Parsing is
the breakdown's hot path (200,000 entries must take well under 2 s in Python), so an IPv4
entry whose original tuple has the kernel's usual layout (addresses, protocol, two ports) is
read with one struct call; anything else (IPv6, ICMP, zones, another kernel's layout) takes the
generic attribute walk, which gives the same answer. Never raises on hostile input: a message
that does not fit its own lengths is counted as malformed and skipped.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from fwtop.core.conntrack import BreakdownCounter
from fwtop.core.packet import BytesLike

NETLINK_NETFILTER = 12
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x01
NLM_F_DUMP = 0x300
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF

NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
MSG_CT_NEW = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW
MSG_CT_GET = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET

# enum ctattr_type
CTA_TUPLE_ORIG = 1
CTA_TUPLE_REPLY = 2
CTA_STATUS = 3
CTA_PROTOINFO = 4
CTA_TIMEOUT = 7
CTA_MARK = 8
CTA_ID = 12
CTA_ZONE = 18
CTA_TIMESTAMP = 20
# enum ctattr_tuple, ctattr_ip, ctattr_l4proto
CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2
CTA_IP_V4_SRC = 1
CTA_IP_V4_DST = 2
CTA_IP_V6_SRC = 3
CTA_IP_V6_DST = 4
CTA_PROTO_NUM = 1
CTA_PROTO_SRC_PORT = 2
CTA_PROTO_DST_PORT = 3
# enum ctattr_protoinfo, ctattr_protoinfo_tcp / _sctp / _dccp
CTA_PROTOINFO_TCP = 1
CTA_PROTOINFO_TCP_STATE = 1
# enum ctattr_tstamp
CTA_TIMESTAMP_START = 1

NLMSGHDR = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("=BBH")
_NLA = struct.Struct("=HH")
_BE16 = struct.Struct(">H")
_BE32 = struct.Struct(">I")
_BE64 = struct.Struct(">Q")
_I32 = struct.Struct("=i")

# The original tuple of an IPv4 entry with ports, as the kernel lays it out: the tuple, IP and
# V4_SRC headers; src; V4_DST header; dst; PROTO and PROTO_NUM headers; proto; 3 pad; SRC_PORT
# header; sport; 2 pad; DST_PORT header; dport; 2 pad. 52 bytes.
_ORIG4 = struct.Struct(">12s4s4s4s8sB3x4sH2x4sH2x")
_ORIG4_HEAD = struct.pack("=HHHHHH", 52, NLA_F_NESTED | CTA_TUPLE_ORIG, 20,
                          NLA_F_NESTED | CTA_TUPLE_IP, 8, CTA_IP_V4_SRC)
_ORIG4_DST = _NLA.pack(8, CTA_IP_V4_DST)
_ORIG4_PROTO = struct.pack("=HHHH", 28, NLA_F_NESTED | CTA_TUPLE_PROTO, 5, CTA_PROTO_NUM)
_ORIG4_SPORT = _NLA.pack(6, CTA_PROTO_SRC_PORT)
_ORIG4_DPORT = _NLA.pack(6, CTA_PROTO_DST_PORT)
_MSG_HEAD = 20  # nlmsghdr + nfgenmsg
# After the two tuples the kernel puts STATUS, MARK, ID, USE, TIMEOUT (8 bytes each) and, for
# TCP, PROTOINFO { TCP { STATE, ... } }: read with one struct call each when they are so.
_BLOCK5 = struct.Struct(">4sI4sI4sI4sI4sI")
_SIG5 = tuple(_NLA.pack(8, t) for t in (CTA_STATUS, CTA_MARK, CTA_ID, 11, CTA_TIMEOUT))
_TCP_PI = struct.Struct("=12sB")
_TCP_PI_SIG = struct.pack("=HHHHHH", 48, NLA_F_NESTED | CTA_PROTOINFO, 44,
                          NLA_F_NESTED | CTA_PROTOINFO_TCP, 5, CTA_PROTOINFO_TCP_STATE)
_FAST_MIN = _MSG_HEAD + 52 + 4


def dump_request(seq: int, family: int = 0) -> bytes:
    """IPCTNL_MSG_CT_GET with NLM_F_DUMP: every entry of the namespace (family 0: v4 and v6)."""
    return NLMSGHDR.pack(_MSG_HEAD, MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + \
        _NFGENMSG.pack(family, 0, 0)


@dataclass(slots=True)
class DumpStatus:
    """What a batch of reply datagrams said besides the entries."""

    done: bool = False
    error: int = 0  # a positive errno from NLMSG_ERROR
    messages: int = 0


def parse_dump_into(data: BytesLike, acc: BreakdownCounter, status: DumpStatus,
                    seq: int | None = None) -> None:
    """Feed every conntrack entry of one reply datagram into `acc`; NLMSG_DONE / NLMSG_ERROR
    (for `seq`, when given) end the dump in `status`. Stops adding once `acc` is full."""
    end = len(data)
    pos = 0
    unpack_hdr = NLMSGHDR.unpack_from
    unpack_nla = _NLA.unpack_from
    orig4 = _ORIG4.unpack_from
    block5 = _BLOCK5.unpack_from
    tcp_pi = _TCP_PI.unpack_from
    sources, dests, dports, protos, states = (acc.sources, acc.destinations, acc.dports,
                                              acc.protos, acc.states)
    keep_oldest = acc.keep_oldest
    floor = acc.oldest_floor()
    age_floor = acc.age_floor()
    fulls = acc.full_timeouts
    limit = acc.limit if acc.limit is not None else -1
    n = acc.n
    malformed = 0
    try:
        while pos + 16 <= end:
            mlen, mtype, _flags, mseq, _pid = unpack_hdr(data, pos)
            if mlen < 16 or pos + mlen > end:
                malformed += 1
                break
            nxt = pos + ((mlen + 3) & ~3)
            if mtype == NLMSG_DONE or mtype == NLMSG_ERROR:
                if seq is None or mseq == seq:
                    if mtype == NLMSG_ERROR and mlen >= 20:
                        err = -_I32.unpack_from(data, pos + 16)[0]
                        if err:
                            status.error = err
                            status.done = True
                    else:
                        status.done = True
                pos = nxt
                continue
            if mtype != MSG_CT_NEW or mlen < _MSG_HEAD + 4 or n == limit:
                pos = nxt
                continue
            status.messages += 1
            mend = pos + mlen
            p = pos + _MSG_HEAD
            rest = True
            if mlen >= _FAST_MIN:
                head, src, dhdr, dst, phdr, proto, shdr, sport, dphdr, dport = orig4(data, p)
                if (head == _ORIG4_HEAD and dhdr == _ORIG4_DST and phdr == _ORIG4_PROTO
                        and shdr == _ORIG4_SPORT and dphdr == _ORIG4_DPORT):
                    p += 52
                    rlen, rtype = unpack_nla(data, p)
                    q = p + ((rlen + 3) & ~3)
                    if rtype & NLA_TYPE_MASK == CTA_TUPLE_REPLY and q + 40 <= mend:
                        p = q
                        h1, status_bits, h2, _m, h3, _i, h4, _u, h5, timeout = block5(data, q)
                        if (h1, h2, h3, h4, h5) == _SIG5:
                            rest = False
                            state = None
                            q += 40
                            if proto == 6 and q + 13 <= mend:
                                pi, state = tcp_pi(data, q)
                                if pi == _TCP_PI_SIG:
                                    q += 48
                                else:
                                    state = _tcp_after(data, q, mend)
                            # Usually one or two attributes are left (TIMESTAMP when the
                            # namespace has nf_conntrack_timestamp=1, SYNPROXY).
                            start_ns = _timestamp_after(data, q, mend)
                else:
                    orig = _orig_tuple(data, p, mend)
                    if orig is None:
                        malformed += 1
                        pos = nxt
                        continue
                    src, dst, proto, sport, dport, p = orig
            else:
                orig = _orig_tuple(data, p, mend)
                if orig is None:
                    malformed += 1
                    pos = nxt
                    continue
                src, dst, proto, sport, dport, p = orig
            if rest:
                state, status_bits, timeout, start_ns = _rest(data, p, mend, proto)
            n += 1
            protos[proto] += 1
            sources[src] += 1
            dests[dst] += 1
            if dport is not None:
                dports[proto << 16 | dport] += 1
            if state is not None:
                states[state] += 1
            if keep_oldest:
                if start_ns is None:
                    full = fulls.get(proto << 16 | (state or 0) << 1 | (status_bits >> 2 & 1), -1)
                    if full == -1 or full - timeout > floor:
                        acc.n = n
                        acc.consider_oldest(src, dst, proto, sport, dport, state, status_bits,
                                            timeout, start_ns)
                        floor = acc.oldest_floor()
                elif -start_ns > age_floor:
                    acc.n = n
                    acc.consider_oldest(src, dst, proto, sport, dport, state, status_bits,
                                        timeout, start_ns)
                    age_floor = acc.age_floor()
            pos = nxt
    except (struct.error, IndexError, ValueError):
        malformed += 1
    acc.n = n
    acc.malformed += malformed


def _timestamp_after(data: BytesLike, p: int, end: int) -> int | None:
    if p + 4 > end:
        return None
    alen, atype = _NLA.unpack_from(data, p)
    if atype & NLA_TYPE_MASK != CTA_TIMESTAMP:
        if alen < 4 or p + ((alen + 3) & ~3) >= end:
            return None  # the last attribute (SYNPROXY, usually) and not a timestamp
        ts = _find(data, p, end, CTA_TIMESTAMP)
        return None if ts is None else _timestamp_start(data, ts[0], ts[1])
    return _timestamp_start(data, p + 4, min(p + alen, end))


def _tcp_after(data: BytesLike, p: int, end: int) -> int | None:
    """The TCP state from wherever CTA_PROTOINFO is among the attributes from `p` on."""
    pi = _find(data, p, end, CTA_PROTOINFO)
    return None if pi is None else _tcp_state(data, pi[0], pi[1])


def _rest(data: BytesLike, p: int, end: int,
          proto: int) -> tuple[int | None, int, int, int | None]:
    """State, status, timeout and creation timestamp from the attributes after the tuple."""
    unpack = _NLA.unpack_from
    state: int | None = None
    status_bits = timeout = 0
    start_ns: int | None = None
    while p + 4 <= end:
        alen, atype = unpack(data, p)
        if alen < 4:
            break
        atype &= NLA_TYPE_MASK
        if atype == CTA_STATUS and alen >= 8:
            status_bits = _BE32.unpack_from(data, p + 4)[0]
        elif atype == CTA_TIMEOUT and alen >= 8:
            timeout = _BE32.unpack_from(data, p + 4)[0]
        elif atype == CTA_PROTOINFO and proto == 6:
            state = _tcp_state(data, p + 4, min(p + alen, end))
        elif atype == CTA_TIMESTAMP:
            start_ns = _timestamp_start(data, p + 4, min(p + alen, end))
        p += (alen + 3) & ~3
    return state, status_bits, timeout, start_ns


def _find(data: BytesLike, p: int, end: int, want: int) -> tuple[int, int] | None:
    """(payload start, payload end) of the first attribute of type `want` in [p, end)."""
    unpack = _NLA.unpack_from
    while p + 4 <= end:
        alen, atype = unpack(data, p)
        if alen < 4 or p + alen > end:
            return None
        if atype & NLA_TYPE_MASK == want:
            return p + 4, p + alen
        p += (alen + 3) & ~3
    return None


def _tcp_state(data: BytesLike, p: int, end: int) -> int | None:
    tcp = _find(data, p, end, CTA_PROTOINFO_TCP)
    if tcp is None:
        return None
    st = _find(data, tcp[0], tcp[1], CTA_PROTOINFO_TCP_STATE)
    if st is None or st[1] - st[0] < 1:
        return None
    return data[st[0]]


def _timestamp_start(data: BytesLike, p: int, end: int) -> int | None:
    start = _find(data, p, end, CTA_TIMESTAMP_START)
    if start is None or start[1] - start[0] < 8:
        return None
    value: int = _BE64.unpack_from(data, start[0])[0]
    return value or None


def _orig_tuple(data: BytesLike, p: int, end: int
                ) -> tuple[bytes, bytes, int, int | None, int | None, int] | None:
    """The generic walk: (src, dst, proto, sport, dport, position after the tuple)."""
    tup = _find(data, p, end, CTA_TUPLE_ORIG)
    if tup is None:
        return None
    t0, t1 = tup
    after = t0 - 4 + ((_NLA.unpack_from(data, t0 - 4)[0] + 3) & ~3)
    ip = _find(data, t0, t1, CTA_TUPLE_IP)
    l4 = _find(data, t0, t1, CTA_TUPLE_PROTO)
    if ip is None or l4 is None:
        return None
    src = _find(data, ip[0], ip[1], CTA_IP_V4_SRC) or _find(data, ip[0], ip[1], CTA_IP_V6_SRC)
    dst = _find(data, ip[0], ip[1], CTA_IP_V4_DST) or _find(data, ip[0], ip[1], CTA_IP_V6_DST)
    num = _find(data, l4[0], l4[1], CTA_PROTO_NUM)
    if src is None or dst is None or num is None or num[1] <= num[0]:
        return None
    if src[1] - src[0] not in (4, 16) or dst[1] - dst[0] != src[1] - src[0]:
        return None
    proto = data[num[0]]
    sport = dport = None
    sp = _find(data, l4[0], l4[1], CTA_PROTO_SRC_PORT)
    dp = _find(data, l4[0], l4[1], CTA_PROTO_DST_PORT)
    if sp is not None and dp is not None and sp[1] - sp[0] >= 2 and dp[1] - dp[0] >= 2:
        sport = _BE16.unpack_from(data, sp[0])[0]
        dport = _BE16.unpack_from(data, dp[0])[0]
    return bytes(data[src[0]:src[1]]), bytes(data[dst[0]:dst[1]]), proto, sport, dport, after
