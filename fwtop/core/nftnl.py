"""nf_tables netlink wire format: builds dump requests and parses the replies.

Owns the byte-level knowledge of nfnetlink / nf_tables messages that the rule
counter poll needs (rules, chains, generation). Pure and stdlib only: bytes in,
typed results out, no I/O. Every parser tolerates hostile input: a message that
does not fit its declared lengths is counted as malformed and skipped, nothing
raises.

Only what the counter poll needs is decoded: a rule's table, chain, handle and
the bytes/packets of its first ``counter`` expression; a chain's table, name and
NFTA_CHAIN_COUNTERS; the generation id. Everything else is skipped by length,
because at 50,000 rules this loop is the per-tick hot path. The structure
listings at the end (tables, chains with their hooks, named sets, every rule's
handle) serve the load of iptables-nft tables (fwtop.firewall.nft).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

RuleKey = tuple[str, str, str, int]  # (family, table, chain, handle)
ChainKey = tuple[str, str, str]  # (family, table, chain)

# --- constants (include/uapi/linux/netlink.h, netfilter/nfnetlink.h, nf_tables.h)

NETLINK_NETFILTER = 12

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3

NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH

NLA_F_NESTED = 0x8000
NLA_F_NET_BYTEORDER = 0x4000
NLA_TYPE_MASK = 0x3FFF

NFNETLINK_V0 = 0
NFNL_SUBSYS_NFTABLES = 10

NFT_MSG_NEWTABLE = 0
NFT_MSG_GETTABLE = 1
NFT_MSG_NEWCHAIN = 3
NFT_MSG_GETCHAIN = 4
NFT_MSG_NEWRULE = 6
NFT_MSG_GETRULE = 7
NFT_MSG_NEWGEN = 15
NFT_MSG_GETGEN = 16

NFTA_LIST_ELEM = 1

NFTA_RULE_TABLE = 1
NFTA_RULE_CHAIN = 2
NFTA_RULE_HANDLE = 3
NFTA_RULE_EXPRESSIONS = 4

NFTA_EXPR_NAME = 1
NFTA_EXPR_DATA = 2

NFTA_COUNTER_BYTES = 1
NFTA_COUNTER_PACKETS = 2

NFTA_CHAIN_TABLE = 1
NFTA_CHAIN_HANDLE = 2
NFTA_CHAIN_NAME = 3
NFTA_CHAIN_COUNTERS = 8

NFTA_GEN_ID = 1

NFPROTO_UNSPEC = 0
NFPROTO_INET = 1
NFPROTO_IPV4 = 2
NFPROTO_ARP = 3
NFPROTO_NETDEV = 5
NFPROTO_BRIDGE = 7
NFPROTO_IPV6 = 10

FAMILY_NAMES: dict[int, str] = {
    NFPROTO_INET: "inet",
    NFPROTO_IPV4: "ip",
    NFPROTO_ARP: "arp",
    NFPROTO_NETDEV: "netdev",
    NFPROTO_BRIDGE: "bridge",
    NFPROTO_IPV6: "ip6",
}
FAMILY_NUMBERS: dict[str, int] = {name: num for num, name in FAMILY_NAMES.items()}

_NFT = NFNL_SUBSYS_NFTABLES << 8
MSG_NEWRULE = _NFT | NFT_MSG_NEWRULE
MSG_NEWCHAIN = _NFT | NFT_MSG_NEWCHAIN
MSG_NEWGEN = _NFT | NFT_MSG_NEWGEN

# Netlink headers are host byte order; nf_tables attribute payloads are big endian.
_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_NFGENMSG = struct.Struct("=BBH")  # family, version, res_id (be16 read separately)
_NLA = struct.Struct("=HH")  # nla_len, nla_type
_BE16 = struct.Struct(">H")
_BE32 = struct.Struct(">I")
_BE64 = struct.Struct(">Q")
_I32 = struct.Struct("=i")
_NATIVE16 = struct.Struct("=H")

# The kernel always emits an expression's NFTA_EXPR_NAME first, as a NUL-terminated
# string; matching these 12 bytes in one C call avoids decoding every expression name.
_COUNTER_NAME_ATTR = _NLA.pack(12, NFTA_EXPR_NAME) + b"counter\x00"

# The kernel's exact layout of a counter expression after its name: NFTA_EXPR_DATA
# (28 bytes) holding NFTA_COUNTER_BYTES then NFTA_COUNTER_PACKETS. One unpack reads
# both values; the three headers (as big-endian u32 of their native bytes) verify it.
_CTR_FAST = struct.Struct(">IIQIQ")


def _hdr_be32(nla_len: int, nla_type: int) -> int:
    return int(_BE32.unpack(_NLA.pack(nla_len, nla_type))[0])


def _hdr_native32(nla_len: int, nla_type: int) -> int:
    return int(struct.unpack("=I", _NLA.pack(nla_len, nla_type))[0])


_HDR_CTR_DATA = _hdr_be32(28, 2)
_HDR_CTR_BYTES = _hdr_be32(12, 1)
_HDR_CTR_PACKETS = _hdr_be32(12, 2)
_HDR_HANDLE = _hdr_native32(12, 3)  # NFTA_RULE_HANDLE, u64
_HDR_POSITION = _hdr_native32(12, 6)  # NFTA_RULE_POSITION, u64

_HDR_LEN = 16
_NFGEN_LEN = 4
_MAX_CACHE = 4096


@dataclass(frozen=True, slots=True)
class CounterDump:
    """One consistent read of rule and base-chain counters."""

    rules: dict[RuleKey, tuple[int, int]]  # (packets, bytes) of the rule's first counter
    chains: dict[ChainKey, tuple[int, int]]  # NFTA_CHAIN_COUNTERS (packets, bytes)
    generation: int | None  # NFTA_GEN_ID the dump belongs to
    malformed: int
    retries: int = 0  # dumps restarted because the ruleset changed underneath
    interrupted: bool = False  # True if even the last attempt saw a concurrent change


@dataclass(frozen=True, slots=True)
class ChunkStatus:
    """What one buffer of netlink messages said besides the parsed objects."""

    malformed: int = 0
    done: bool = False  # NLMSG_DONE seen: the dump is complete
    error: int | None = None  # errno (positive) from NLMSG_ERROR / NLMSG_DONE; 0 = ACK
    interrupted: bool = False  # some message carried NLM_F_DUMP_INTR
    generation: int | None = None  # NFTA_GEN_ID of an NFT_MSG_NEWGEN message
    res_id: int | None = None  # nfgenmsg.res_id of rule/chain messages (gen & 0xffff)
    res_mixed: bool = False  # rule/chain messages of this buffer carried different res_ids
    stale: int = 0  # messages skipped because their sequence number was not the expected one
    rules_seen: int = 0  # NFT_MSG_NEWRULE messages, with a counter or not


# Decoded names by raw attribute payload: a ruleset repeats a handful of table and
# chain names tens of thousands of times, so decode each once and share the str.
_names: dict[bytes, str] = {}
# (table, chain) by the raw bytes of the adjacent TABLE and CHAIN attributes.
_pairs: dict[bytes, tuple[str, str]] = {}


def _name(raw: bytes) -> str:
    s = _names.get(raw)
    if s is None:
        nul = raw.find(b"\x00")
        # Names are arbitrary bytes to the kernel; backslashreplace keeps distinct
        # names distinct and stays printable.
        s = (raw if nul < 0 else raw[:nul]).decode("utf-8", "backslashreplace")
        if len(_names) >= _MAX_CACHE:
            _names.clear()  # bound memory under hostile input
        _names[raw] = s
    return s


def _pair(raw: bytes, table_attr_len: int) -> tuple[str, str]:
    tc = (_name(raw[4:table_attr_len]), _name(raw[((table_attr_len + 3) & ~3) + 4 :]))
    if len(_pairs) >= _MAX_CACHE:
        _pairs.clear()
    _pairs[raw] = tc
    return tc


def _family_name(num: int) -> str:
    return FAMILY_NAMES.get(num) or str(num)


# nfgen_family is a u8: index a tuple instead of a dict lookup per rule.
_FAM_BY_NUM: tuple[str, ...] = tuple(_family_name(i) for i in range(256))


def build_request(
    msg_type: int,
    family: int,
    seq: int,
    flags: int,
    attrs: bytes = b"",
) -> bytes:
    """One nfnetlink nf_tables request: nlmsghdr + nfgenmsg + attributes."""
    length = _HDR_LEN + _NFGEN_LEN + len(attrs)
    hdr = _NLMSGHDR.pack(length, _NFT | msg_type, flags, seq & 0xFFFFFFFF, 0)
    return hdr + _NFGENMSG.pack(family & 0xFF, NFNETLINK_V0, 0) + attrs


def string_attr(nla_type: int, value: str) -> bytes:
    """A NUL-terminated string attribute, padded to 4 bytes."""
    return _string_attr(nla_type, value)


def _string_attr(nla_type: int, value: str) -> bytes:
    payload = value.encode() + b"\x00"
    pad = (-len(payload)) % 4
    return _NLA.pack(4 + len(payload), nla_type) + payload + b"\x00" * pad


def build_dump_request(
    msg_type: int, family: int, seq: int, table: str | None = None, chain: str | None = None
) -> bytes:
    """A NLM_F_DUMP request for NFT_MSG_GET{TABLE,CHAIN,RULE,...}.

    ``table`` goes in as attribute type 1 (NFTA_RULE_TABLE / NFTA_CHAIN_TABLE) and
    ``chain`` as NFTA_RULE_CHAIN (2). The kernel filters rule dumps by both (the
    chain only together with a table; with NFPROTO_UNSPEC it stops after the first
    table of that name). Chain dumps ignore them.
    """
    attrs = b"" if table is None else _string_attr(NFTA_RULE_TABLE, table)
    if chain is not None:
        attrs += _string_attr(NFTA_RULE_CHAIN, chain)
    return build_request(msg_type, family, seq, NLM_F_REQUEST | NLM_F_DUMP, attrs)


def build_getgen_request(seq: int) -> bytes:
    """NFT_MSG_GETGEN with an ACK, so the reply's end is unambiguous."""
    return build_request(NFT_MSG_GETGEN, NFPROTO_UNSPEC, seq, NLM_F_REQUEST | NLM_F_ACK)


def parse_messages(
    buf: bytes,
    rules: dict[RuleKey, tuple[int, int]] | None = None,
    chains: dict[ChainKey, tuple[int, int]] | None = None,
    *,
    seq: int | None = None,
    chain_names: list[ChainKey] | None = None,
) -> ChunkStatus:
    """Parse a buffer of netlink messages (one or more recv() results).

    NFT_MSG_NEWRULE messages go into ``rules`` (if given); NFT_MSG_NEWCHAIN goes
    into ``chains`` when it carries counters and into ``chain_names`` in any case;
    NFT_MSG_NEWGEN into the status. Control messages (DONE, ERROR) and DUMP_INTR are reported in the
    returned status. With ``seq``, messages carrying another sequence number
    (leftovers of an abandoned request) are skipped and counted as stale.

    A rule's counter is found the way the kernel lays it out: a list element
    whose first attribute is NFTA_EXPR_NAME "counter" (NUL-terminated). An
    element that names itself otherwise is not recognised.
    """
    n = len(buf)
    off = 0
    malformed = 0
    stale = 0
    done = False
    error: int | None = None
    interrupted = False
    generation: int | None = None
    res_raw = -1
    res_mixed = False
    rules_seen = 0

    # Offsets are always multiples of 4 (message and attribute lengths are padded),
    # so native u16/u32 views indexed by offset>>1 / offset>>2 read the netlink
    # headers several times faster than struct.unpack_from.
    mv = memoryview(buf)
    w16 = mv[: n & ~1].cast("H")
    w32 = mv[: n & ~3].cast("I")
    be64 = _BE64.unpack_from
    find = buf.find
    pairs = _pairs
    fam_names = _FAM_BY_NUM
    counter_attr = _COUNTER_NAME_ATTR
    ctr_unpack = _CTR_FAST.unpack_from
    hdr_handle = _HDR_HANDLE
    hdr_position = _HDR_POSITION
    hdr_ctr_data = _HDR_CTR_DATA
    hdr_ctr_bytes = _HDR_CTR_BYTES
    hdr_ctr_packets = _HDR_CTR_PACKETS

    while off + _HDR_LEN <= n:
        i2 = off >> 1
        mlen = w32[off >> 2]
        if mlen < _HDR_LEN or off + mlen > n:
            # The length chain is broken; nothing after this point can be framed.
            malformed += 1
            break
        mtype = w16[i2 + 2]
        end = off + mlen
        nxt = off + ((mlen + 3) & ~3)
        if seq is not None and w32[(off >> 2) + 2] != seq:
            stale += 1
            off = nxt
            continue
        if w16[i2 + 3] & NLM_F_DUMP_INTR:
            interrupted = True

        if mtype == MSG_NEWRULE:
            if mlen < _HDR_LEN + _NFGEN_LEN:
                malformed += 1
                off = nxt
                continue
            rules_seen += 1
            r = w16[i2 + 9]
            if r != res_raw:
                if res_raw >= 0:
                    res_mixed = True
                res_raw = r
            p = off + 20
            ts = te = cs = ce = 0
            handle = -1
            es = ee = 0
            # Fast path for the kernel's attribute order: TABLE, CHAIN, HANDLE,
            # [POSITION], EXPRESSIONS. Any surprise falls through to the generic walk.
            if p + 4 <= end and w16[(p >> 1) + 1] == NFTA_RULE_TABLE:
                te = p + w16[p >> 1]
                cs = (te + 3) & ~3
                if te > p + 4 and cs + 4 <= end and w16[(cs >> 1) + 1] == NFTA_RULE_CHAIN:
                    ce = cs + w16[cs >> 1]
                    ph = (ce + 3) & ~3
                    if ce > cs + 4 and ph + 16 <= end and w32[ph >> 2] == hdr_handle:
                        handle = be64(buf, ph + 4)[0]
                        pe = ph + 12
                        if pe + 16 <= end and w32[pe >> 2] == hdr_position:
                            pe += 12
                        if pe + 4 <= end and (w16[(pe >> 1) + 1] & NLA_TYPE_MASK) == 4:
                            ee = pe + w16[pe >> 1]
                            if pe + 4 <= ee <= end:
                                es = pe + 4
                                ts = p
            if not ts:
                ts = te = cs = ce = es = ee = 0
                handle = -1
                bad = False
                while p + 4 <= end:
                    i = p >> 1
                    alen = w16[i]
                    if alen < 4 or p + alen > end:
                        bad = True
                        break
                    atype = w16[i + 1] & NLA_TYPE_MASK
                    if atype == NFTA_RULE_EXPRESSIONS:
                        es = p + 4
                        ee = p + alen
                    elif atype == NFTA_RULE_TABLE:
                        ts = p
                        te = p + alen
                    elif atype == NFTA_RULE_CHAIN:
                        cs = p
                        ce = p + alen
                    elif atype == NFTA_RULE_HANDLE:
                        if alen != 12:
                            bad = True
                            break
                        handle = be64(buf, p + 4)[0]
                    p += (alen + 3) & ~3
                if bad or not te or not ce or handle < 0:
                    malformed += 1
                    off = nxt
                    continue
            # The first counter: find() jumps to the first candidate, then walking the
            # element lengths up to it confirms it starts a top-level expression (the
            # same bytes occur inside e.g. dynset's own expression list, or as a lookup
            # of a set named "counter"). "or 4" guarantees progress on zero lengths.
            f = find(counter_attr, es, ee) if es else -1
            q = es
            while f >= 0:
                while q + 4 < f:
                    q += ((w16[q >> 1] + 3) & ~3) or 4
                if q + 4 == f:
                    break
                f = find(counter_attr, q + 4, ee)
            if f < 0:
                off = nxt
                continue  # no counter expression: not part of the dump
            eend = q + w16[q >> 1]
            if eend > ee or eend < f + 12:
                malformed += 1
                off = nxt
                continue
            pk = by = -1
            if f + 40 <= eend:  # NAME (12) + DATA (28)
                dh, bh, by, ph_, pk = ctr_unpack(buf, f + 12)
                if dh != hdr_ctr_data or bh != hdr_ctr_bytes or ph_ != hdr_ctr_packets:
                    pk = by = -1
            if pk < 0:
                parsed_ctr = _parse_expr_counter(buf, f + 12, eend)
                if parsed_ctr is None:
                    malformed += 1
                    off = nxt
                    continue
                pk, by = parsed_ctr
            if rules is not None:
                # Kernel order puts CHAIN right after TABLE: one slice covers both and
                # keys a cache of the decoded pair.
                if cs == ((te + 3) & ~3):
                    raw = buf[ts:ce]
                    tc = pairs.get(raw)
                    if tc is None:
                        tc = _pair(raw, te - ts)
                else:
                    tc = (_name(buf[ts + 4 : te]), _name(buf[cs + 4 : ce]))
                rules[(fam_names[buf[off + 16]], tc[0], tc[1], handle)] = (pk, by)

        elif mtype == MSG_NEWCHAIN:
            if mlen < _HDR_LEN + _NFGEN_LEN:
                malformed += 1
                off = nxt
                continue
            r = w16[i2 + 9]
            if r != res_raw:
                if res_raw >= 0:
                    res_mixed = True
                res_raw = r
            parsed = _parse_chain(buf, off + 20, end)
            if parsed is None:
                malformed += 1
            else:
                key = (fam_names[buf[off + 16]], parsed[0], parsed[1])
                if chain_names is not None:
                    chain_names.append(key)
                if parsed[2] is not None and chains is not None:
                    chains[key] = parsed[2]

        elif mtype == MSG_NEWGEN:
            g = _parse_gen(buf, off + 20, end) if mlen >= _HDR_LEN + _NFGEN_LEN else None
            if g is None:
                malformed += 1
            else:
                generation = g

        elif mtype == NLMSG_DONE:
            done = True
            # A failed dump reports its errno in the DONE payload.
            if mlen >= _HDR_LEN + 4:
                rc = _I32.unpack_from(buf, off + 16)[0]
                if rc < 0:
                    error = -rc

        elif mtype == NLMSG_ERROR:
            if mlen < _HDR_LEN + 4:
                malformed += 1
            else:
                rc = _I32.unpack_from(buf, off + 16)[0]
                error = -rc if rc <= 0 else rc
                if rc == 0:
                    done = True  # an ACK ends a non-dump request
        # Anything else (NOOP, other nf_tables objects) is skipped by length.
        off = nxt

    if 0 < n - off and not malformed:
        malformed += 1  # trailing bytes too short for a header
    w16.release()
    w32.release()
    mv.release()
    res_id = None
    if res_raw >= 0:
        res_id = _BE16.unpack(_NATIVE16.pack(res_raw))[0]
    return ChunkStatus(
        malformed=malformed,
        done=done,
        error=error,
        interrupted=interrupted,
        generation=generation,
        res_id=res_id,
        res_mixed=res_mixed,
        stale=stale,
        rules_seen=rules_seen,
    )


def _parse_chain(buf: bytes, p: int, end: int) -> tuple[str, str, tuple[int, int] | None] | None:
    """(table, chain, counters) of one NEWCHAIN payload; None if malformed."""
    nla_unpack = _NLA.unpack_from
    traw: bytes | None = None
    craw: bytes | None = None
    counters: tuple[int, int] | None = None
    while p + 4 <= end:
        alen, atype = nla_unpack(buf, p)
        if alen < 4 or p + alen > end:
            return None
        atype &= NLA_TYPE_MASK
        if atype == NFTA_CHAIN_TABLE:
            traw = buf[p + 4 : p + alen]
        elif atype == NFTA_CHAIN_NAME:
            craw = buf[p + 4 : p + alen]
        elif atype == NFTA_CHAIN_COUNTERS:
            counters = _parse_counter(buf, p + 4, p + alen)
            if counters is None:
                return None
        p += (alen + 3) & ~3
    if traw is None or craw is None:
        return None
    return _name(traw), _name(craw), counters


def _parse_expr_counter(buf: bytes, p: int, end: int) -> tuple[int, int] | None:
    """(packets, bytes) from the attributes after a counter's NFTA_EXPR_NAME."""
    while p + 4 <= end:
        alen, atype = _NLA.unpack_from(buf, p)
        if alen < 4 or p + alen > end:
            return None
        if (atype & NLA_TYPE_MASK) == NFTA_EXPR_DATA:
            return _parse_counter(buf, p + 4, p + alen)
        p += (alen + 3) & ~3
    return None


def _parse_counter(buf: bytes, p: int, end: int) -> tuple[int, int] | None:
    """(packets, bytes) of nested NFTA_COUNTER_* attributes; None if incomplete."""
    pk: int | None = None
    by: int | None = None
    while p + 4 <= end:
        alen, atype = _NLA.unpack_from(buf, p)
        if alen < 4 or p + alen > end:
            return None
        atype &= NLA_TYPE_MASK
        if atype == NFTA_COUNTER_BYTES and alen == 12:
            by = _BE64.unpack_from(buf, p + 4)[0]
        elif atype == NFTA_COUNTER_PACKETS and alen == 12:
            pk = _BE64.unpack_from(buf, p + 4)[0]
        p += (alen + 3) & ~3
    if pk is None or by is None:
        return None
    return pk, by


def _parse_gen(buf: bytes, p: int, end: int) -> int | None:
    while p + 4 <= end:
        alen, atype = _NLA.unpack_from(buf, p)
        if alen < 4 or p + alen > end:
            return None
        if (atype & NLA_TYPE_MASK) == NFTA_GEN_ID and alen == 8:
            return int(_BE32.unpack_from(buf, p + 4)[0])
        p += (alen + 3) & ~3
    return None


def parse_rule_messages(
    buf: bytes, into: dict[RuleKey, tuple[int, int]], *, seq: int | None = None
) -> int:
    """Add the counters of every NEWRULE message in ``buf`` to ``into``; returns malformed count."""
    return parse_messages(buf, into, None, seq=seq).malformed


def parse_chain_messages(
    buf: bytes, into: dict[ChainKey, tuple[int, int]], *, seq: int | None = None
) -> int:
    """Add NFTA_CHAIN_COUNTERS of every NEWCHAIN message to ``into``; returns malformed count."""
    return parse_messages(buf, None, into, seq=seq).malformed


def parse_gen(buf: bytes) -> int | None:
    """NFTA_GEN_ID of the first NFT_MSG_NEWGEN message in ``buf``, or None."""
    return parse_messages(buf).generation


# --- structure listings: tables, chains, named sets and every rule's handle ------------------
#
# The structure load of iptables-nft tables needs, besides iptables-nft-save's text, what only
# the kernel knows: which chains a table has (base chain hook, priority, type, policy) and each
# rule's handle, in order. Unlike the counter poll these parsers keep every rule, counter or not.

TableKey = tuple[str, str]  # (family, table)
SetKey = tuple[str, str, str]  # (family, table, set)

NFT_MSG_GETSET = 10
NFT_MSG_NEWSET = 9
MSG_NEWTABLE = _NFT | NFT_MSG_NEWTABLE
MSG_NEWSET = _NFT | NFT_MSG_NEWSET

NFTA_TABLE_NAME = 1
NFTA_CHAIN_HOOK = 4
NFTA_CHAIN_POLICY = 5
NFTA_CHAIN_TYPE = 7
NFTA_HOOK_HOOKNUM = 1
NFTA_HOOK_PRIORITY = 2
NFTA_SET_TABLE = 1
NFTA_SET_NAME = 2
NFTA_SET_FLAGS = 3
NFT_SET_ANONYMOUS = 0x1

# Hook numbers as nft names them (nft's hooknum2str), per family.
_INET_HOOKS = ("prerouting", "input", "forward", "output", "postrouting", "ingress")
HOOK_NAMES: dict[int, tuple[str, ...]] = {
    NFPROTO_IPV4: _INET_HOOKS,
    NFPROTO_IPV6: _INET_HOOKS,
    NFPROTO_INET: _INET_HOOKS,
    NFPROTO_BRIDGE: _INET_HOOKS,
    NFPROTO_ARP: ("input", "output", "forward"),
    NFPROTO_NETDEV: ("ingress", "egress"),
}
_POLICIES = {0: "drop", 1: "accept"}  # NF_DROP, NF_ACCEPT
_U16N = struct.Struct("=H")
_U32N = struct.Struct("=I")
_BE32S = struct.Struct(">i")


@dataclass(frozen=True, slots=True)
class ChainInfo:
    """A chain as NFT_MSG_NEWCHAIN describes it; hook, priority, type and policy only for base
    chains, in the words `nft -j list chains` uses."""

    family: str
    table: str
    name: str
    hook: str | None = None
    priority: int | None = None
    type: str | None = None
    policy: str | None = None  # "accept" | "drop"


@dataclass(frozen=True, slots=True)
class Listing:
    """One dump of tables, chains or named sets, in the kernel's order."""

    tables: tuple[TableKey, ...] = ()
    chains: tuple[ChainInfo, ...] = ()
    sets: tuple[SetKey, ...] = ()
    consistent: bool = True  # every reply belonged to the generation asked about, none was cut
    malformed: int = 0


@dataclass(frozen=True, slots=True)
class RuleHandles:
    """The handle of every rule of some chains of one table, by chain, each in rule order."""

    handles: dict[str, list[int]]
    consistent: bool = True
    malformed: int = 0
    requests: int = 0


def _control(buf: bytes, off: int, mlen: int, mtype: int) -> tuple[bool, int | None, bool]:
    """(done, errno, malformed) of an NLMSG_DONE / NLMSG_ERROR message."""
    if mlen < _HDR_LEN + 4:
        return mtype == NLMSG_DONE, None, mtype == NLMSG_ERROR
    rc = _I32.unpack_from(buf, off + 16)[0]
    if mtype == NLMSG_DONE:
        return True, (-rc if rc < 0 else None), False
    return rc == 0, (-rc if rc <= 0 else rc), False


def chain_rule_prefix(table: str, chain: str) -> bytes:
    """The bytes every NEWRULE payload of ``table``/``chain`` starts with after its nfgenmsg in
    the kernel's layout: NFTA_RULE_TABLE (padded), then NFTA_RULE_CHAIN (unpadded)."""
    return build_chain_rules_request(NFPROTO_UNSPEC, 0, string_attr(NFTA_RULE_TABLE, table),
                                     chain)[1]


def build_chain_rules_request(
    family: int, seq: int, table_attr: bytes, chain: str
) -> tuple[bytes, bytes]:
    """build_dump_request(NFT_MSG_GETRULE, family, seq, table, chain), and the
    chain_rule_prefix of its replies (the request spells the names as the replies do).
    ``table_attr`` is string_attr(NFTA_RULE_TABLE, table): one table is dumped chain by chain."""
    c = _string_attr(NFTA_RULE_CHAIN, chain)
    attrs = table_attr + c
    hdr = _NLMSGHDR.pack(_HDR_LEN + _NFGEN_LEN + len(attrs), _NFT | NFT_MSG_GETRULE,
                         NLM_F_REQUEST | NLM_F_DUMP, seq & 0xFFFFFFFF, 0)
    request = hdr + _NFGENMSG.pack(family & 0xFF, NFNETLINK_V0, 0) + attrs
    return request, table_attr + c[: _NLA.unpack_from(c)[0]]


_DONE_STATUS = ChunkStatus(done=True)


def parse_chain_handles(
    buf: bytes,
    table: str,
    chain: str,
    out: list[int],
    *,
    seq: int | None = None,
    prefix: bytes | None = None,
) -> ChunkStatus:
    """Append the handle of every NFT_MSG_NEWRULE message in ``buf`` (the reply to a dump of
    one chain) to ``out``, in order. A rule of another table or chain counts as malformed.

    ``prefix`` is chain_rule_prefix(table, chain), passed in by callers that parse many
    buffers of one chain: the names are then compared as bytes, never decoded."""
    n = len(buf)
    if n == _HDR_LEN + 4:  # the usual last datagram of a dump: nothing but NLMSG_DONE
        mlen, mtype, mflags, mseq, _pid = _NLMSGHDR.unpack_from(buf)
        if (mtype == NLMSG_DONE and mlen == n and not mflags & NLM_F_DUMP_INTR
                and (seq is None or mseq == seq) and _I32.unpack_from(buf, _HDR_LEN)[0] == 0):
            return _DONE_STATUS
    if prefix is None:
        prefix = chain_rule_prefix(table, chain)
    off = 0
    malformed = stale = rules_seen = 0
    done = interrupted = res_mixed = False
    error: int | None = None
    res_raw = -1
    plen = len(prefix)
    ph_off = (plen + 3) & ~3
    hdr_unpack = _NLMSGHDR.unpack_from
    u32 = _U32N.unpack_from
    u16 = _U16N.unpack_from
    be64 = _BE64.unpack_from
    hdr_handle = _HDR_HANDLE
    append = out.append
    while off + _HDR_LEN <= n:
        mlen, mtype, mflags, mseq, _pid = hdr_unpack(buf, off)
        if mlen < _HDR_LEN or off + mlen > n:
            malformed += 1
            break
        end = off + mlen
        nxt = off + ((mlen + 3) & ~3)
        if seq is not None and mseq != seq:
            stale += 1
            off = nxt
            continue
        if mflags & NLM_F_DUMP_INTR:
            interrupted = True
        if mtype == MSG_NEWRULE:
            if mlen < _HDR_LEN + _NFGEN_LEN:
                malformed += 1
                off = nxt
                continue
            rules_seen += 1
            r = u16(buf, off + 18)[0]
            if r != res_raw:
                if res_raw >= 0:
                    res_mixed = True
                res_raw = r
            p = off + 20
            ph = p + ph_off
            if (ph + 12 <= end and buf[p : p + plen] == prefix
                    and u32(buf, ph)[0] == hdr_handle):
                append(be64(buf, ph + 4)[0])
            else:
                key = _rule_key_slow(buf, off, end)
                if key is None or key[1] != table or key[2] != chain:
                    malformed += 1
                else:
                    append(key[3])
        elif mtype == NLMSG_DONE or mtype == NLMSG_ERROR:
            d, e, bad = _control(buf, off, mlen, mtype)
            done = done or d
            if e is not None:
                error = e
            malformed += bad
        off = nxt
    if 0 < n - off and not malformed:
        malformed += 1
    res_id = None
    if res_raw >= 0:
        res_id = _BE16.unpack(_NATIVE16.pack(res_raw))[0]
    return ChunkStatus(malformed=malformed, done=done, error=error, interrupted=interrupted,
                       res_id=res_id, res_mixed=res_mixed, stale=stale, rules_seen=rules_seen)


def _rule_key_slow(buf: bytes, off: int, end: int) -> RuleKey | None:
    """A NEWRULE message's key by a full attribute walk; None if malformed."""
    p = off + 20
    traw: bytes | None = None
    craw: bytes | None = None
    handle = -1
    while p + 4 <= end:
        alen, atype = _NLA.unpack_from(buf, p)
        if alen < 4 or p + alen > end:
            return None
        atype &= NLA_TYPE_MASK
        if atype == NFTA_RULE_TABLE:
            traw = buf[p + 4 : p + alen]
        elif atype == NFTA_RULE_CHAIN:
            craw = buf[p + 4 : p + alen]
        elif atype == NFTA_RULE_HANDLE:
            if alen != 12:
                return None
            handle = _BE64.unpack_from(buf, p + 4)[0]
        p += (alen + 3) & ~3
    if traw is None or craw is None or handle < 0:
        return None
    return (_FAM_BY_NUM[buf[off + 16]], _name(traw), _name(craw), handle)


def parse_objects(
    buf: bytes,
    *,
    seq: int | None = None,
    tables: list[TableKey] | None = None,
    chains: list[ChainInfo] | None = None,
    sets: list[SetKey] | None = None,
) -> ChunkStatus:
    """Parse NEWTABLE, NEWCHAIN and NEWSET messages (replies to GETTABLE / GETCHAIN / GETSET
    dumps) into the given lists, in order. Anonymous sets (the `{ 53, 123 }` of a rule) are
    left out, as nft's listings leave them out. Control messages, DUMP_INTR and res_id as in
    parse_messages; res_id covers all three kinds here."""
    n = len(buf)
    off = 0
    malformed = stale = 0
    done = interrupted = res_mixed = False
    error: int | None = None
    res_raw = -1
    hdr_unpack = _NLMSGHDR.unpack_from
    u16 = _U16N.unpack_from
    while off + _HDR_LEN <= n:
        mlen, mtype, mflags, mseq, _pid = hdr_unpack(buf, off)
        if mlen < _HDR_LEN or off + mlen > n:
            malformed += 1
            break
        end = off + mlen
        nxt = off + ((mlen + 3) & ~3)
        if seq is not None and mseq != seq:
            stale += 1
            off = nxt
            continue
        if mflags & NLM_F_DUMP_INTR:
            interrupted = True
        if mtype in (MSG_NEWTABLE, MSG_NEWCHAIN, MSG_NEWSET):
            if mlen < _HDR_LEN + _NFGEN_LEN:
                malformed += 1
                off = nxt
                continue
            r = u16(buf, off + 18)[0]
            if r != res_raw:
                if res_raw >= 0:
                    res_mixed = True
                res_raw = r
            fam = buf[off + 16]
            if mtype == MSG_NEWCHAIN:
                info = _chain_info(buf, fam, off + 20, end)
                if info is None:
                    malformed += 1
                elif chains is not None:
                    chains.append(info)
                off = nxt
                continue
            attrs = _attrs(buf, off + 20, end)
            ok = attrs is not None
            if attrs is not None:
                if mtype == MSG_NEWTABLE:
                    t = attrs.get(NFTA_TABLE_NAME)
                    ok = t is not None
                    if t is not None and tables is not None:
                        tables.append((_FAM_BY_NUM[fam], _name(buf[t[0] : t[1]])))
                else:
                    s = _set_key(buf, fam, attrs)
                    ok = s is not False
                    if isinstance(s, tuple) and sets is not None:
                        sets.append(s)
            if not ok:
                malformed += 1
        elif mtype == NLMSG_DONE or mtype == NLMSG_ERROR:
            d, e, bad = _control(buf, off, mlen, mtype)
            done = done or d
            if e is not None:
                error = e
            malformed += bad
        off = nxt
    if 0 < n - off and not malformed:
        malformed += 1
    res_id = None
    if res_raw >= 0:
        res_id = _BE16.unpack(_NATIVE16.pack(res_raw))[0]
    return ChunkStatus(malformed=malformed, done=done, error=error, interrupted=interrupted,
                       res_id=res_id, res_mixed=res_mixed, stale=stale)


def _attrs(buf: bytes, p: int, end: int) -> dict[int, tuple[int, int]] | None:
    """Payload (start, end) of each top-level attribute by type; None if the lengths are bad."""
    out: dict[int, tuple[int, int]] = {}
    nla_unpack = _NLA.unpack_from
    while p + 4 <= end:
        alen, atype = nla_unpack(buf, p)
        if alen < 4 or p + alen > end:
            return None
        out[atype & NLA_TYPE_MASK] = (p + 4, p + alen)
        p += (alen + 3) & ~3
    return out


def _chain_info(buf: bytes, fam: int, p: int, end: int) -> ChainInfo | None:
    """One NEWCHAIN payload; None if malformed. Chain names are decoded directly: unlike
    table names they rarely repeat, and would only churn the shared name cache."""
    nla_unpack = _NLA.unpack_from
    traw: bytes | None = None
    craw: bytes | None = None
    hook_at = hook_end = 0
    ctype: str | None = None
    policy: str | None = None
    while p + 4 <= end:
        alen, atype = nla_unpack(buf, p)
        if alen < 4 or p + alen > end:
            return None
        atype &= NLA_TYPE_MASK
        if atype == NFTA_CHAIN_TABLE:
            traw = buf[p + 4 : p + alen]
        elif atype == NFTA_CHAIN_NAME:
            craw = buf[p + 4 : p + alen]
        elif atype == NFTA_CHAIN_HOOK:
            hook_at, hook_end = p + 4, p + alen
        elif atype == NFTA_CHAIN_TYPE:
            ctype = _name(buf[p + 4 : p + alen])
        elif atype == NFTA_CHAIN_POLICY and alen == 8:
            code = _BE32.unpack_from(buf, p + 4)[0]
            policy = _POLICIES.get(code, str(code))
        p += (alen + 3) & ~3
    if traw is None or craw is None:
        return None
    nul = craw.find(b"\x00")
    name = (craw if nul < 0 else craw[:nul]).decode("utf-8", "backslashreplace")
    if not hook_at:
        return ChainInfo(_FAM_BY_NUM[fam], _name(traw), name)
    hook_attrs = _attrs(buf, hook_at, hook_end)
    if hook_attrs is None:
        return None
    hook: str | None = None
    prio: int | None = None
    num = hook_attrs.get(NFTA_HOOK_HOOKNUM)
    if num is not None and num[1] - num[0] == 4:
        hooknum = _BE32.unpack_from(buf, num[0])[0]
        names = HOOK_NAMES.get(fam, ())
        hook = names[hooknum] if hooknum < len(names) else "unknown"
    pr = hook_attrs.get(NFTA_HOOK_PRIORITY)
    if pr is not None and pr[1] - pr[0] == 4:
        prio = _BE32S.unpack_from(buf, pr[0])[0]
    return ChainInfo(_FAM_BY_NUM[fam], _name(traw), name, hook, prio, ctype, policy)


def _set_key(buf: bytes, fam: int, attrs: dict[int, tuple[int, int]]) -> SetKey | bool:
    """The key of a named set; True for an anonymous one (skipped), False if malformed."""
    t = attrs.get(NFTA_SET_TABLE)
    s = attrs.get(NFTA_SET_NAME)
    if t is None or s is None:
        return False
    fl = attrs.get(NFTA_SET_FLAGS)
    if fl is not None and fl[1] - fl[0] == 4:
        if _BE32.unpack_from(buf, fl[0])[0] & NFT_SET_ANONYMOUS:
            return True
    return (_FAM_BY_NUM[fam], _name(buf[t[0] : t[1]]), _name(buf[s[0] : s[1]]))
