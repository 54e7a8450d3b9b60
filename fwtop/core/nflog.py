"""nfnetlink_log wire format: NFULNL_MSG_PACKET messages to DropEvents, and the config requests.

Owns the byte-level knowledge of NFLOG (include/uapi/linux/netfilter/nfnetlink_log.h): parsing
the packet messages the kernel sends a bound group, building the NFULNL_MSG_CONFIG requests that
bind a group and set its copy mode, batching and sequence numbers, and finding the NFLOG groups a
ruleset logs to. Pure and stdlib only; the socket lives in fwtop.sources.nflog. Parsing is the
per-event hot path (tens of thousands a second) and never raises: a message that does not fit its
own lengths is counted as malformed and skipped.
"""

from __future__ import annotations

import dataclasses
import operator
import re
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fwtop.core.events import DropEvent
from fwtop.core.model import Rule, Ruleset
from fwtop.core.packet import BytesLike, decode_l3_fields

# --- constants (include/uapi/linux/netlink.h, netfilter/nfnetlink.h, nfnetlink_log.h) --------

NETLINK_NETFILTER = 12

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4

NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04

NLA_TYPE_MASK = 0x3FFF

NFNETLINK_V0 = 0
NFNL_SUBSYS_ULOG = 4

NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
MSG_PACKET = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET
MSG_CONFIG = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG

# enum nfulnl_attr_type
NFULA_PACKET_HDR = 1  # struct nfulnl_msg_packet_hdr
NFULA_MARK = 2  # __be32
NFULA_TIMESTAMP = 3  # struct nfulnl_msg_packet_timestamp
NFULA_IFINDEX_INDEV = 4  # __be32
NFULA_IFINDEX_OUTDEV = 5  # __be32
NFULA_IFINDEX_PHYSINDEV = 6
NFULA_IFINDEX_PHYSOUTDEV = 7
NFULA_HWADDR = 8
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10  # NUL-terminated string
NFULA_UID = 11  # __be32
NFULA_SEQ = 12  # __be32, per group (instance)
NFULA_SEQ_GLOBAL = 13  # __be32, per network namespace
NFULA_GID = 14  # __be32
NFULA_HWTYPE = 15
NFULA_HWHEADER = 16
NFULA_HWLEN = 17
NFULA_CT = 18
NFULA_CT_INFO = 19
NFULA_VLAN = 20
NFULA_L2HDR = 21

# enum nfulnl_msg_config_cmds
NFULNL_CFG_CMD_NONE = 0
NFULNL_CFG_CMD_BIND = 1
NFULNL_CFG_CMD_UNBIND = 2
NFULNL_CFG_CMD_PF_BIND = 3
NFULNL_CFG_CMD_PF_UNBIND = 4

# enum nfulnl_attr_config
NFULA_CFG_CMD = 1  # struct nfulnl_msg_config_cmd (u8)
NFULA_CFG_MODE = 2  # struct nfulnl_msg_config_mode (be32 range, u8 mode, u8 pad), packed
NFULA_CFG_NLBUFSIZ = 3  # __be32 bytes
NFULA_CFG_TIMEOUT = 4  # __be32, 1/100 s
NFULA_CFG_QTHRESH = 5  # __be32 messages
NFULA_CFG_FLAGS = 6  # __be16

NFULNL_COPY_NONE = 0x00
NFULNL_COPY_META = 0x01
NFULNL_COPY_PACKET = 0x02
# The kernel clamps a larger copy range to this (net/netfilter/nfnetlink_log.c).
NFULNL_COPY_RANGE_MAX = 0xFFFF - 80

NFULNL_CFG_F_SEQ = 0x0001
NFULNL_CFG_F_SEQ_GLOBAL = 0x0002
NFULNL_CFG_F_CONNTRACK = 0x0004

AF_UNSPEC = 0
NFPROTO_INET = 1
NFPROTO_IPV4 = 2
NFPROTO_ARP = 3
NFPROTO_NETDEV = 5
NFPROTO_BRIDGE = 7
NFPROTO_IPV6 = 10

FAMILY_NAMES: dict[int, str] = {
    NFPROTO_INET: "inet", NFPROTO_IPV4: "ip", NFPROTO_ARP: "arp", NFPROTO_NETDEV: "netdev",
    NFPROTO_BRIDGE: "bridge", NFPROTO_IPV6: "ip6",
}

# enum nf_inet_hooks (bridge uses the same numbers); ARP and netdev number their own hooks.
INET_HOOKS: tuple[str, ...] = ("prerouting", "input", "forward", "output", "postrouting")
_HOOKS_BY_FAMILY: dict[int, tuple[str, ...]] = {
    NFPROTO_ARP: ("input", "output", "forward"),
    NFPROTO_NETDEV: ("ingress", "egress"),
}

# The kernel never sends more than NF_LOG_PREFIXLEN (128) bytes of prefix; a longer one is not
# from the kernel, and keeping it would let one message pin 64 KiB in every copy of the event.
MAX_PREFIX_BYTES = 256

# Netlink headers are host byte order; nfnetlink_log attribute payloads are big endian.
_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_NLA = struct.Struct("=HH")  # nla_len, nla_type
_BE32 = struct.Struct(">I")
_TIMESTAMP = struct.Struct(">QQ")  # sec, usec
_ERRNO = struct.Struct("=i")
_CONFIG_HEAD = struct.Struct("=IHHIIBBH")  # nlmsghdr + nfgenmsg (res_id pre-swapped)


@dataclass(frozen=True, slots=True)
class NflogParse:
    """What one receive buffer held.

    `seqs` pairs (group, NFULA_SEQ) for every event that carried a sequence number, in arrival
    order, so the reader can turn gaps into an exact lost count. `acks` are the NLMSG_ERROR
    replies as (netlink seq, errno): errno 0 is a positive acknowledgement."""

    events: tuple[DropEvent, ...]
    malformed: int = 0
    seqs: tuple[tuple[int, int], ...] = ()
    acks: tuple[tuple[int, int], ...] = ()


def hook_name(family: int, hook: int) -> str:
    """The hook as the user's firewall spells it ("input"), or its number if unknown."""
    names = _HOOKS_BY_FAMILY.get(family, INET_HOOKS)
    return names[hook] if hook < len(names) else str(hook)


# Keyed family << 8 | hook for one dict lookup per message; families above NFPROTO_NUMPROTO
# (13) and odd hook numbers are spelled on the spot.
_HOOK_TEXT: dict[int, str] = {
    fam << 8 | hook: hook_name(fam, hook) for fam in range(16) for hook in range(8)
}


def _event_factory() -> Callable[..., DropEvent]:
    """A DropEvent constructor for the hot path that takes the fields this parser fills, in
    _EVENT_ARGS order, and gives every other field its default.

    A frozen dataclass's __init__ sets each field through object.__setattr__, which costs more
    than the rest of the parse; setting the slots through their descriptors builds the identical
    object in under half the time. Generated from dataclasses.fields(DropEvent) the way
    dataclasses generates __init__, so a field added to DropEvent gets its default here; a
    DropEvent with a __post_init__ or without slots falls back to the real constructor."""
    fields = dataclasses.fields(DropEvent)
    names = [f.name for f in fields]
    if hasattr(DropEvent, "__post_init__") or not hasattr(DropEvent, "__slots__") or any(
            a not in names for a in _EVENT_ARGS):
        return DropEvent
    env: dict[str, Any] = {"_new": object.__new__, "_cls": DropEvent}
    lines = [f"def make({', '.join(_EVENT_ARGS)}):", " ev = _new(_cls)"]
    for f in fields:
        env[f"_set_{f.name}"] = getattr(DropEvent, f.name).__set__
        if f.name in _EVENT_ARGS:
            value = f.name
        elif f.default is not dataclasses.MISSING:
            env[f"_default_{f.name}"] = f.default
            value = f"_default_{f.name}"
        else:
            return DropEvent  # a required field this parser does not know: stay correct
        lines.append(f" _set_{f.name}(ev, {value})")
    lines.append(" return ev")
    exec("\n".join(lines), env)  # names come from the dataclass, never from input
    make: Callable[..., DropEvent] = env["make"]
    return make


_EVENT_ARGS = ("source", "ts", "wall", "prefix", "group", "hook", "iif", "oif", "family", "proto",
               "src", "dst", "sport", "dport", "icmp_type", "icmp_code", "tcp_flags", "len",
               "mark", "uid", "gid")
make_event = _event_factory()

# Attributes the parser has no use for (hardware header, physdev, conntrack, VLAN): the kernel
# sends several with every received packet, so they are dismissed with one set lookup.
_SKIPPED_ATTRS = frozenset({
    NFULA_IFINDEX_PHYSINDEV, NFULA_IFINDEX_PHYSOUTDEV, NFULA_HWADDR, NFULA_SEQ_GLOBAL,
    NFULA_HWTYPE, NFULA_HWHEADER, NFULA_HWLEN, NFULA_CT, NFULA_CT_INFO, NFULA_VLAN, NFULA_L2HDR,
})
# The same few prefixes arrive over and over; decoding each once saves work per event.
_PREFIX_CACHE: dict[bytes, str] = {}
_PREFIX_CACHE_MAX = 4096


def _prefix_text(raw: bytes) -> str:
    cut = raw.find(b"\x00")
    text = (raw[:cut] if cut >= 0 else raw).decode("utf-8", "replace").rstrip()
    if len(_PREFIX_CACHE) >= _PREFIX_CACHE_MAX:
        _PREFIX_CACHE.clear()
    _PREFIX_CACHE[raw] = text  # keyed by the attribute's bytes as they arrive
    return text


def parse_messages(data: BytesLike, ifnames: Mapping[int, str], ts: float,
                   wall: float) -> NflogParse:
    """Parse one or more netlink messages (one recv) into DropEvents.

    `ifnames` maps interface indexes to names; it is read with `[]`, so a mapping whose
    `__missing__` refreshes itself is honoured, and an index it still lacks becomes "if<N>".
    `ts` (monotonic) and `wall` stamp every event of this buffer; an NFULA_TIMESTAMP, when
    the kernel sends one, replaces `wall` with the packet's own time."""
    events: list[DropEvent] = []
    seqs: list[tuple[int, int]] = []
    acks: list[tuple[int, int]] = []
    malformed = parse_into(data, ifnames, ts, wall, events, seqs, acks)
    return NflogParse(tuple(events), malformed, tuple(seqs), tuple(acks))


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where every attribute of one kind of packet message sits, learned from a full walk.

    Messages logged by the same rule for the same kind of packet carry the same attributes with
    the same lengths in the same order; only the values and the payload length differ. One
    `struct` call then reads every attribute header (to verify the layout) and every value at
    once, instead of a Python loop iteration per attribute. Values are indexes into that
    result, -1 when absent; offsets are from the start of the message."""

    reader: struct.Struct
    headers: Callable[[tuple[Any, ...]], Any]  # picks the header words out of the result
    expected: Any  # what `headers` gave for the message the layout was learned from
    end: int  # where the attributes before the payload end (= message length if no payload)
    payload: int  # offset of the NFULA_PAYLOAD header, -1 if none
    prefix: int
    prefix_len: int
    hook: int
    indev: int
    outdev: int
    mark: int
    uid: int
    gid: int
    seq: int
    timestamp: int


_BE32_ATTRS = {NFULA_IFINDEX_INDEV: "indev", NFULA_IFINDEX_OUTDEV: "outdev", NFULA_MARK: "mark",
               NFULA_UID: "uid", NFULA_GID: "gid", NFULA_SEQ: "seq"}
# Most recently used layouts first; a handful covers the rules that log at any one time.
_LAYOUTS: list[_Layout] = []
_LAYOUTS_MAX = 8


def _learn_layout(data: BytesLike, pos: int, mend: int) -> _Layout | None:
    """The layout of a packet message the slow walk has just accepted, or None."""
    fmt = [">20x"]
    cursor = 20
    n_items = 0
    header_items: list[int] = []
    where = {"prefix": -1, "prefix_len": 0, "hook": -1, "indev": -1, "outdev": -1, "mark": -1,
             "uid": -1, "gid": -1, "seq": -1, "timestamp": -1}
    a = pos + 20
    payload = -1
    while a + 4 <= mend:
        alen, atype = _NLA.unpack_from(data, a)
        off = a - pos
        if atype & NLA_TYPE_MASK == NFULA_PAYLOAD:
            payload = off
            break
        fmt.append(f"{off - cursor}xI")
        header_items.append(n_items)
        n_items += 1
        cursor = off + 4
        atype &= NLA_TYPE_MASK
        # Exactly the slow walk's rules: what it would read, the layout reads (last one wins).
        if atype in _SKIPPED_ATTRS:
            pass
        elif atype == NFULA_PREFIX:
            where["prefix"] = off + 4
            where["prefix_len"] = min(alen, MAX_PREFIX_BYTES + 4) - 4
        elif alen >= 8:
            if atype == NFULA_PACKET_HDR:
                fmt.append("2xB")
                where["hook"] = n_items
                n_items += 1
                cursor += 3
            elif atype in _BE32_ATTRS:
                fmt.append("I")
                where[_BE32_ATTRS[atype]] = n_items
                n_items += 1
                cursor += 4
            elif atype == NFULA_TIMESTAMP and alen >= 20:
                fmt.append("QQ")
                where["timestamp"] = n_items
                n_items += 2
                cursor += 16
        a += (alen + 3) & ~3
    if payload >= 0:
        plen = _NLA.unpack_from(data, pos + payload)[0]
        if payload + ((plen + 3) & ~3) != mend - pos:
            return None  # something after the payload: leave such messages to the slow walk
        end = payload
    else:
        end = a - pos
        if end != mend - pos:
            return None
    if not header_items:
        return None
    reader = struct.Struct("".join(fmt))
    headers = operator.itemgetter(*header_items)
    return _Layout(reader, headers, headers(reader.unpack_from(data, pos)), end, payload,
                   where["prefix"], where["prefix_len"], where["hook"], where["indev"],
                   where["outdev"], where["mark"], where["uid"], where["gid"], where["seq"],
                   where["timestamp"])


def parse_into(data: BytesLike, ifnames: Mapping[int, str], ts: float, wall: float,
               events: list[DropEvent], seqs: list[tuple[int, int]],
               acks: list[tuple[int, int]]) -> int:
    """parse_messages for the reader's hot path: appends to the caller's lists and returns the
    number of malformed messages, so a busy reader allocates no result object per datagram.

    A message whose attribute headers match a known layout is read in one struct call (the
    fast path); any other goes through the attribute walk, which decides what is malformed and
    teaches the fast path its layout. Both give the same event for the same bytes."""
    malformed = 0
    n = len(data)
    pos = 0
    unpack_nlmsg = _NLMSGHDR.unpack_from
    unpack_nla = _NLA.unpack_from
    be32 = _BE32.unpack_from
    skipped = _SKIPPED_ATTRS
    prefixes = _PREFIX_CACHE
    layouts = _LAYOUTS
    hooks = _HOOK_TEXT
    while pos + 16 <= n:
        mlen, mtype, _flags, mseq, _pid = unpack_nlmsg(data, pos)
        mend = pos + mlen
        if mlen < 16 or mend > n:
            # A length that does not fit leaves no way to find the next message.
            return malformed + 1
        if mtype == MSG_PACKET:
            if mlen < 20:
                malformed += 1
                pos += (mlen + 3) & ~3
                continue
            family = data[pos + 16]
            group = data[pos + 18] << 8 | data[pos + 19]
            hook = prefix = iif = oif = None
            mark = uid = gid = seq = None
            ev_wall = wall
            payload = None
            known = False
            for rank, lay in enumerate(layouts):
                # --- fast path: verify the learned layout, then take every value at once ---
                if lay.end > mlen:
                    continue
                r = lay.reader.unpack_from(data, pos)
                if lay.headers(r) != lay.expected:
                    continue
                pa = lay.payload
                if pa >= 0:
                    plen, ptype = unpack_nla(data, pos + pa)
                    if (ptype & NLA_TYPE_MASK != NFULA_PAYLOAD or plen < 4
                            or pa + ((plen + 3) & ~3) != mlen):
                        continue
                    payload = data[pos + pa + 4:pos + pa + plen]
                elif lay.end != mlen:
                    continue
                if lay.hook >= 0:
                    hook = (hooks.get(family << 8 | r[lay.hook])
                            or hook_name(family, r[lay.hook]))
                if lay.prefix >= 0:
                    raw = bytes(data[pos + lay.prefix:pos + lay.prefix + lay.prefix_len])
                    prefix = prefixes.get(raw)
                    if prefix is None:
                        prefix = _prefix_text(raw)
                if lay.indev >= 0:
                    index = r[lay.indev]
                    if index:
                        try:
                            iif = ifnames[index]
                        except KeyError:
                            iif = f"if{index}"
                if lay.outdev >= 0:
                    index = r[lay.outdev]
                    if index:
                        try:
                            oif = ifnames[index]
                        except KeyError:
                            oif = f"if{index}"
                if lay.seq >= 0:
                    seq = r[lay.seq]
                if lay.timestamp >= 0:
                    sec, usec = r[lay.timestamp], r[lay.timestamp + 1]
                    if usec < 1_000_000 and sec < 1 << 40:
                        ev_wall = sec + usec / 1e6
                if lay.mark >= 0:
                    mark = r[lay.mark]
                if lay.uid >= 0:
                    uid = r[lay.uid]
                if lay.gid >= 0:
                    gid = r[lay.gid]
                known = True
                if rank:
                    # Most recently used first. Tolerant of another thread reordering the
                    # shared list meanwhile: the cache's order never changes a result.
                    try:
                        layouts.remove(lay)
                    except ValueError:
                        pass
                    layouts.insert(0, lay)
                    del layouts[_LAYOUTS_MAX:]
                break
            if not known:
                # --- slow path: walk the attributes one by one ---
                a = pos + 20
                ok = True
                while a + 4 <= mend:
                    alen, atype = unpack_nla(data, a)
                    if alen < 4 or a + alen > mend:
                        ok = False
                        break
                    atype &= NLA_TYPE_MASK
                    if atype in skipped:
                        pass
                    elif atype == NFULA_PAYLOAD:
                        payload = data[a + 4:a + alen]
                    elif atype == NFULA_PREFIX:
                        raw = bytes(data[a + 4:a + min(alen, MAX_PREFIX_BYTES + 4)])
                        prefix = prefixes.get(raw)
                        if prefix is None:
                            prefix = _prefix_text(raw)
                    elif alen >= 8:
                        if atype == NFULA_PACKET_HDR:
                            hook = (hooks.get(family << 8 | data[a + 6])
                                    or hook_name(family, data[a + 6]))
                        elif atype == NFULA_IFINDEX_INDEV:
                            index = be32(data, a + 4)[0]
                            iif = None
                            if index:
                                try:
                                    iif = ifnames[index]
                                except KeyError:
                                    iif = f"if{index}"
                        elif atype == NFULA_IFINDEX_OUTDEV:
                            index = be32(data, a + 4)[0]
                            oif = None
                            if index:
                                try:
                                    oif = ifnames[index]
                                except KeyError:
                                    oif = f"if{index}"
                        elif atype == NFULA_SEQ:
                            seq = be32(data, a + 4)[0]
                        elif atype == NFULA_TIMESTAMP:
                            if alen >= 20:
                                sec, usec = _TIMESTAMP.unpack_from(data, a + 4)
                                if usec < 1_000_000 and sec < 1 << 40:
                                    ev_wall = sec + usec / 1e6
                        elif atype == NFULA_MARK:
                            mark = be32(data, a + 4)[0]
                        elif atype == NFULA_UID:
                            uid = be32(data, a + 4)[0]
                        elif atype == NFULA_GID:
                            gid = be32(data, a + 4)[0]
                    a += (alen + 3) & ~3
                if not ok or (a < mend and any(data[a:mend])):
                    # A broken attribute, or a ragged tail that is not padding: not from the
                    # kernel.
                    malformed += 1
                    pos += (mlen + 3) & ~3
                    continue
                learned = _learn_layout(data, pos, mend)
                if learned is not None:
                    layouts.insert(0, learned)
                    del layouts[_LAYOUTS_MAX:]
            l3 = decode_l3_fields(payload) if payload is not None else None
            if l3 is not None:
                events.append(make_event(
                    "nflog", ts, ev_wall, prefix, group, hook, iif, oif, l3[0], l3[5], l3[1],
                    l3[2], l3[8], l3[9], l3[10], l3[11], l3[12], l3[3], mark, uid, gid))
            else:
                # Metadata only (copy mode meta, or not IP): the drop still happened.
                events.append(make_event(
                    "nflog", ts, ev_wall, prefix, group, hook, iif, oif,
                    FAMILY_NAMES.get(family, str(family)), None, None, None, None, None, None,
                    None, None, None, mark, uid, gid))
            if seq is not None:
                seqs.append((group, seq))
        elif mtype == NLMSG_ERROR:
            # struct nlmsgerr: int error, then the request's own header (its seq at +12).
            if mlen >= 36:
                (err,) = _ERRNO.unpack_from(data, pos + 16)
                acks.append((unpack_nlmsg(data, pos + 20)[3], -err))
            elif mlen >= 20:
                (err,) = _ERRNO.unpack_from(data, pos + 16)
                acks.append((mseq, -err))
            else:
                malformed += 1
        # NLMSG_DONE closes a batch (qthresh > 1), NOOP/OVERRUN carry nothing: skip them.
        pos += (mlen + 3) & ~3
    if pos < n and any(data[pos:n]):
        # Trailing bytes too short for a header (alignment padding is zeros and is fine).
        malformed += 1
    return malformed


# --- config requests ---------------------------------------------------------------------------


def _attr(atype: int, payload: bytes) -> bytes:
    raw = _NLA.pack(4 + len(payload), atype) + payload
    return raw + b"\x00" * (-len(raw) % 4)


def config_message(group: int, seq: int, *, family: int = AF_UNSPEC, command: int | None = None,
                   copy_mode: int | None = None, copy_range: int = 0,
                   qthresh: int | None = None, timeout_cs: int | None = None,
                   nlbufsiz: int | None = None, flags: int | None = None,
                   ack: bool = True) -> bytes:
    """One NFULNL_MSG_CONFIG request for `group` (nfgenmsg.res_id).

    The kernel applies the command first (a BIND creates the group's instance), then the mode,
    timeout, buffer size, queue threshold and flags from the same message, so the defaults
    (no sequence numbers, short copy) apply for microseconds, not for a round trip to userspace.
    The kernel ignores an NLBUFSIZ outside its ~3.7 KiB default to 128 KiB without an error."""
    attrs = b""
    if command is not None:
        attrs += _attr(NFULA_CFG_CMD, struct.pack("B", command))
    if copy_mode is not None:
        attrs += _attr(NFULA_CFG_MODE, struct.pack(">IBx", copy_range, copy_mode))
    if timeout_cs is not None:
        attrs += _attr(NFULA_CFG_TIMEOUT, _BE32.pack(timeout_cs))
    if nlbufsiz is not None:
        attrs += _attr(NFULA_CFG_NLBUFSIZ, _BE32.pack(nlbufsiz))
    if qthresh is not None:
        attrs += _attr(NFULA_CFG_QTHRESH, _BE32.pack(qthresh))
    if flags is not None:
        attrs += _attr(NFULA_CFG_FLAGS, struct.pack(">H", flags))
    nl_flags = NLM_F_REQUEST | (NLM_F_ACK if ack else 0)
    (res_id,) = struct.unpack("=H", struct.pack(">H", group & 0xFFFF))
    head = _CONFIG_HEAD.pack(20 + len(attrs), MSG_CONFIG, nl_flags, seq, 0, family & 0xFF,
                             NFNETLINK_V0, res_id)
    return head + attrs


def cmd_pf_unbind(family: int, seq: int) -> bytes:
    """Unbind the namespace's default logger for `family` (the `net.netfilter.nf_log.N`
    sysctl). Old libnetfilter_log examples send this; NFLOG rules do not need it, and it changes
    what LOG-less logging (e.g. conntrack's) goes to, so fwtop's reader never sends it."""
    return config_message(0, seq, family=family, command=NFULNL_CFG_CMD_PF_UNBIND)


def cmd_pf_bind(family: int, seq: int) -> bytes:
    """Make nfnetlink_log the namespace's default logger for `family` (see cmd_pf_unbind)."""
    return config_message(0, seq, family=family, command=NFULNL_CFG_CMD_PF_BIND)


def cmd_bind(group: int, seq: int) -> bytes:
    """Bind `group` to the sending socket. The kernel answers EBUSY if this socket already
    holds it and EPERM if another socket does."""
    return config_message(group, seq, command=NFULNL_CFG_CMD_BIND)


def cmd_unbind(group: int, seq: int) -> bytes:
    return config_message(group, seq, command=NFULNL_CFG_CMD_UNBIND)


def cfg_copy_packet(group: int, seq: int, copy_range: int) -> bytes:
    """Copy the first `copy_range` bytes of each packet (0 means as much as the kernel allows)."""
    return config_message(group, seq, copy_mode=NFULNL_COPY_PACKET, copy_range=copy_range)


def cfg_qthresh(group: int, seq: int, qthresh: int) -> bytes:
    """Send a batch once it holds `qthresh` messages (1: every packet at once)."""
    return config_message(group, seq, qthresh=qthresh)


def cfg_timeout(group: int, seq: int, timeout_cs: int) -> bytes:
    """Send a partial batch after `timeout_cs` hundredths of a second."""
    return config_message(group, seq, timeout_cs=timeout_cs)


def cfg_flags(group: int, seq: int, flags: int) -> bytes:
    """NFULNL_CFG_F_SEQ / _SEQ_GLOBAL / _CONNTRACK."""
    return config_message(group, seq, flags=flags)


def bind_and_configure(group: int, seq: int, *, copy_range: int, qthresh: int, timeout_cs: int,
                       flags: int = NFULNL_CFG_F_SEQ, nlbufsiz: int | None = None) -> bytes:
    """BIND plus copy-packet mode, batching and flags in one request (see config_message)."""
    return config_message(group, seq, command=NFULNL_CFG_CMD_BIND,
                          copy_mode=NFULNL_COPY_PACKET, copy_range=copy_range, qthresh=qthresh,
                          timeout_cs=timeout_cs, nlbufsiz=nlbufsiz, flags=flags)


# --- which groups a ruleset logs to --------------------------------------------------------------

_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
# nft prints `log [prefix ".."] group N [snaplen M] [queue-threshold Q]` (level and flags are
# syslog-only and cannot appear with group); quoted strings are blanked out before matching.
_NFT_LOG_GROUP = re.compile(
    r'\blog\b(?:\s+prefix\s+""|\s+(?:level|snaplen|queue-threshold)\s+\S+)*\s+group\s+(\d+)'
)
_XT_NFLOG = re.compile(r"(?:^|\s)(?:-j|--jump)\s+NFLOG\b(.*)$")
# python-iptables may spell option names with an underscore (legacy backend).
_XT_GROUP = re.compile(r"--nflog[-_]group\s+(\d+)")


def groups_in_ruleset(ruleset: Ruleset) -> list[int]:
    """The NFLOG groups the ruleset's rules log to, sorted: iptables `-j NFLOG [--nflog-group N]`
    (group 0 when none is given) and nft `log ... group N`."""
    return sorted(groups_of_rules(ruleset.rules()))


def groups_of_rules(rules: Iterable[Rule]) -> set[int]:
    found: set[int] = set()
    for rule in rules:
        text = _QUOTED.sub('""', rule.text)
        xt = _XT_NFLOG.search(text) if "NFLOG" in text else None
        if xt is not None:
            found.add(_xt_group(xt.group(1)))
        elif (rule.target or "").startswith("NFLOG"):
            # The target's text lost its quotes; iptables-save puts --nflog-group after the
            # prefix, so the last occurrence is the real one even if the prefix mimics it.
            found.add(_xt_group(rule.target or ""))
        elif "group" in text:
            found.update(int(m.group(1)) for m in _NFT_LOG_GROUP.finditer(text))
    return {g for g in found if g <= 0xFFFF}


def _xt_group(options: str) -> int:
    groups = _XT_GROUP.findall(options)
    return int(groups[-1]) if groups else 0
