"""Kernel log lines about dropped packets: the LOG target's text (iptables `-j LOG`, nft `log`,
legacy `-j TRACE`) and conntrack's "table full" warning, turned into DropEvents.

Pure and stdlib-only. Owns the text format of the kernel's nf_log_syslog logger and of a
/dev/kmsg record; the readers in fwtop.sources.kmsg only move bytes. Every entry point returns an
event, None (not a firewall line) or a LogLineError, and never raises, whatever the input.

Speed matters (a flood makes the kernel log tens of thousands of lines a second, and the
parser must not be what falls behind), so a line is matched by one compiled regex for the shape
the kernel actually prints (IN OUT ... SRC DST LEN ... PROTO SPT DPT ...); only lines that do
not fit it (ARP, truncated or hand-written lines, fragments) take the slower token-by-token
path, which gives the same answer on the lines both accept.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, fields
from typing import Any, Literal

from fwtop.core.events import DropEvent, DropSource
from fwtop.core.protocols import IP_PROTOCOLS

LogLineErrorKind = Literal["bad_record", "bad_number", "bad_address"]


@dataclass(frozen=True, slots=True)
class LogLineError:
    """A line that is a firewall (or kmsg) line but cannot be read: counted, never raised.

    `excerpt` is the start of the offending text, raw (the UI escapes it before display)."""

    kind: LogLineErrorKind
    field: str | None
    excerpt: str


@dataclass(frozen=True, slots=True)
class TraceRef:
    """Where a legacy `-j TRACE` line says the packet was: `TRACE: filter:INPUT:rule:3`.

    `kind` is the kernel's word: "rule" (rule number `rule` matched), "return" (fell off the
    end of a user chain) or "policy" (the chain's policy applied; `rule` is then the position
    after the last rule)."""

    table: str
    chain: str
    kind: str
    rule: int


@dataclass(frozen=True, slots=True)
class KmsgRecord:
    """One /dev/kmsg record's header and first line (continuation lines are dropped)."""

    seq: int
    facility: int
    level: int
    usec: int  # kernel timestamp, microseconds since boot
    message: str


LogLineResult = DropEvent | LogLineError | None

# --- building events fast --------------------------------------------------------------------

# A frozen dataclass's __init__ sets each of DropEvent's 22 fields through object.__setattr__,
# which alone costs more than parsing the line; the slot descriptors' own setters do the same
# work at a third of the cost. If events.py ever changes shape, fall back to the constructor.
_FIELDS = ("source", "ts", "wall", "prefix", "group", "hook", "iif", "oif", "family", "proto",
           "src", "dst", "sport", "dport", "icmp_type", "icmp_code", "tcp_flags", "len", "mark",
           "uid", "gid", "reason")
_FAST_EVENTS = tuple(f.name for f in fields(DropEvent)) == _FIELDS
_new = object.__new__
_setters: tuple[Any, ...] = (
    tuple(vars(DropEvent)[name].__set__ for name in _FIELDS) if _FAST_EVENTS else ())
if _FAST_EVENTS:
    (_s_source, _s_ts, _s_wall, _s_prefix, _s_group, _s_hook, _s_iif, _s_oif, _s_family,
     _s_proto, _s_src, _s_dst, _s_sport, _s_dport, _s_icmp_type, _s_icmp_code, _s_tcp_flags,
     _s_len, _s_mark, _s_uid, _s_gid, _s_reason) = _setters


def _event(source: DropSource, ts: float, wall: float, prefix: str | None, hook: str | None,
           iif: str | None, oif: str | None, family: str | None, proto: str | None,
           src: str | None, dst: str | None, sport: int | None, dport: int | None,
           icmp_type: int | None, icmp_code: int | None, tcp_flags: str | None,
           length: int | None, mark: int | None, uid: int | None, gid: int | None,
           reason: str | None) -> DropEvent:
    if not _FAST_EVENTS:
        return DropEvent(source=source, ts=ts, wall=wall, prefix=prefix, hook=hook, iif=iif,
                         oif=oif, family=family, proto=proto, src=src, dst=dst, sport=sport,
                         dport=dport, icmp_type=icmp_type, icmp_code=icmp_code,
                         tcp_flags=tcp_flags, len=length, mark=mark, uid=uid, gid=gid,
                         reason=reason)
    ev: DropEvent = _new(DropEvent)
    _s_source(ev, source)
    _s_ts(ev, ts)
    _s_wall(ev, wall)
    _s_prefix(ev, prefix)
    _s_group(ev, None)
    _s_hook(ev, hook)
    _s_iif(ev, iif)
    _s_oif(ev, oif)
    _s_family(ev, family)
    _s_proto(ev, proto)
    _s_src(ev, src)
    _s_dst(ev, dst)
    _s_sport(ev, sport)
    _s_dport(ev, dport)
    _s_icmp_type(ev, icmp_type)
    _s_icmp_code(ev, icmp_code)
    _s_tcp_flags(ev, tcp_flags)
    _s_len(ev, length)
    _s_mark(ev, mark)
    _s_uid(ev, uid)
    _s_gid(ev, gid)
    _s_reason(ev, reason)
    return ev


# --- small bounded caches --------------------------------------------------------------------
# Prefixes, interface names and addresses repeat across a flood: sharing one str object per
# distinct value keeps retained events small, and the caches make the common case a dict hit.
# Each is bounded so hostile churn (random sources) costs time, never memory.

_CACHE_MAX = 65536
_strings: dict[str, str] = {}
# raw text before IN= -> (the prefix as published, the hook a TRACE prefix names)
_prefixes: dict[str, tuple[str | None, str | None]] = {}
_addrs: dict[str, str] = {}  # valid addresses only


def _intern(s: str) -> str:
    try:
        return _strings[s]
    except KeyError:
        if len(_strings) < _CACHE_MAX and len(s) <= 256:
            _strings[s] = s
        return s


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_V4_STRICT = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")
_V6_FULL = re.compile(r"(?:[0-9a-f]{4}:){7}[0-9a-f]{4}")


def _prefix(raw: str) -> tuple[str | None, str | None]:
    prefix = _intern(raw.rstrip()) or None
    hook = _trace_hook(prefix) if prefix is not None and prefix[0] == "T" else None
    if len(_prefixes) < _CACHE_MAX and len(raw) <= 256:
        _prefixes[raw] = (prefix, hook)
    return prefix, hook


def _address(s: str) -> str | None:
    """The canonical text of an address, None if `s` is not one. IPv6 comes out compressed
    (the kernel prints all eight groups in full). Valid results are cached and shared."""
    out = _addrs.get(s)
    if out is not None:
        return out
    if ":" not in s:
        # The kernel's %pI4 is already canonical: a strict regex is all the validation needed,
        # and much cheaper than ipaddress when every line brings a new (spoofed) source.
        out = s if _V4_STRICT.fullmatch(s) else None
    elif _V6_FULL.fullmatch(s):
        out = _v6_compress(s)
    else:
        try:
            out = ipaddress.IPv6Address(s).compressed
        except ValueError:
            out = None
        if out == s:
            out = s  # share the first object rather than ipaddress's copy
    if out is not None:
        if len(_addrs) >= _CACHE_MAX:
            _addrs.clear()
        _addrs[s] = out
    return out


def _v6_compress(full: str) -> str:
    """RFC 5952 text of an address printed as eight 4-digit groups (the kernel's %pI6), as
    ipaddress would give it: leading zeros dropped, the leftmost longest run (2+) of zero
    groups as "::"."""
    groups = [g.lstrip("0") or "0" for g in full.split(":")]
    best_at, best_len, at, run = -1, 1, 0, 0
    for k, g in enumerate(groups):
        if g == "0":
            if run == 0:
                at = k
            run += 1
            if run > best_len:
                best_at, best_len = at, run
        else:
            run = 0
    if best_at < 0:
        return ":".join(groups)
    return (":".join(groups[:best_at]) + "::" + ":".join(groups[best_at + best_len:]))


# --- field vocabularies ----------------------------------------------------------------------

_PROTO_NAMES = {"TCP": "tcp", "UDP": "udp", "UDPLITE": "udplite", "ICMP": "icmp",
                "ICMPv6": "icmpv6", "SCTP": "sctp", "ESP": "esp", "AH": "ah", "GRE": "gre"}
# The order `fwtop` shows TCP flags in (tcpdump's), whatever order the kernel printed them.
_FLAG_ORDER = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")
_FLAG_SET = frozenset(_FLAG_ORDER)
_TRAILER_KEYS = frozenset({"GID", "ARK"})  # the last key of a line with --log-uid / a mark
_flag_texts: dict[str, str | None] = {}
_HOOKS = {"PREROUTING": "prerouting", "INPUT": "input", "FORWARD": "forward",
          "OUTPUT": "output", "POSTROUTING": "postrouting"}
_CONNTRACK_FULL = "table full, dropping packet"
_CONNTRACK_EXPECT_FULL = "expectation table full"
# A line longer than this is not the kernel's (LOG lines stay under 1 KiB) and skips the regex,
# whose lazy loops could otherwise go quadratic on a crafted line.
_FAST_MAX = 2048
_EXCERPT = 200


def tcp_flags_text(tokens: str) -> str | None:
    """ "ACK PSH" (any order, space separated) -> "PSH,ACK"; None when no flag is set."""
    try:
        return _flag_texts[tokens]
    except KeyError:
        pass
    present = set(tokens.split())
    text = ",".join(f for f in _FLAG_ORDER if f in present) or None
    if present <= _FLAG_SET and len(_flag_texts) < 1024:
        _flag_texts[tokens] = text
    return text


def _proto_name(raw: str) -> str:
    name = _PROTO_NAMES.get(raw)
    if name is not None:
        return name
    if raw.isdigit() and len(raw) <= 3:
        return IP_PROTOCOLS.get(int(raw), raw)
    return _intern(raw.lower())


def trace_ref(prefix: str | None) -> TraceRef | None:
    """The table/chain/rule of a `TRACE: table:chain:kind:N` prefix; None for anything else."""
    if not prefix or not prefix.startswith("TRACE: "):
        return None
    parts = prefix[7:].strip().rsplit(":", 2)
    if len(parts) != 3 or ":" not in parts[0]:
        return None
    table, _, chain = parts[0].partition(":")
    kind, num = parts[1], parts[2]
    if not (num.isascii() and num.isdigit()) or len(num) > 9 or not table or not chain:
        return None
    return TraceRef(table, chain, kind, int(num))


def _trace_hook(prefix: str | None) -> str | None:
    ref = trace_ref(prefix)
    return _HOOKS.get(ref.chain) if ref is not None else None


def _error(kind: LogLineErrorKind, field: str | None, text: str) -> LogLineError:
    return LogLineError(kind, field, text[:_EXCERPT])


# --- the fast path ---------------------------------------------------------------------------

# Addresses are only shaped here (digits, dots, hex and colons) and validated through the
# address cache after the match. Possessive token loops (`*+`) keep a failed match linear.
_ADDR = r"([0-9a-f.:]{2,39})"
# Tokens skipped between the fixed fields must not start with "[": that is where an ICMP
# error's embedded header begins, whose SRC/PROTO are not the packet's own.
_SKIP = r"(?:[^ \[][^ ]*+ )*?"
_FAST = re.compile(
    r"IN=([^ ]*+) OUT=([^ ]*+) " + _SKIP
    + rf"SRC={_ADDR} DST={_ADDR} LEN=([0-9]{{1,5}}) " + _SKIP
    + r"PROTO=([^ ]+) "
    # Ports (and TCP's flags), or ICMP's type/code, or neither; a field the regex cannot take
    # whole (an overlong number) fails the match through the lookaheads: the slow path decides.
    r"(?:SPT=([0-9]{1,5}) DPT=([0-9]{1,5}) "
    r"(?:(?:SEQ=[0-9]+ ACK=[0-9]+ )?WINDOW=[0-9]+ RES=0x[0-9a-f]+ ((?:[A-Z]{3} )*)URGP="
    r"|(?!SEQ=|WINDOW=))"
    r"|TYPE=([0-9]{1,3}) CODE=([0-9]{1,3}) "
    r"|(?!SPT=|DPT=|TYPE=|CODE=))"
)
_fast_match = _FAST.match


def parse_message(msg: str, source: DropSource = "kmsg", ts: float = 0.0,
                  wall: float = 0.0) -> LogLineResult:
    """One kernel message (no syslog or kmsg header) -> DropEvent, None, or LogLineError."""
    return _parse_span(msg, 0, len(msg), source, ts, wall)


def _parse_span(text: str, start: int, end: int, source: DropSource, ts: float,
                wall: float) -> LogLineResult:
    """parse_message of text[start:end], without copying it out first (the kmsg path)."""
    # Interface names cannot contain blanks, so the last " OUT=" is the kernel's, and the last
    # "IN=" before it starts the fields; everything before that is the prefix, which the kernel
    # glues to "IN=" as is (a prefix without a trailing blank gives "myprefixIN=eth0").
    j = text.rfind(" OUT=", start, end)
    if j < 0:
        if text.find("conntrack", start, end) >= 0:
            return _conntrack(text[start:end], source, ts, wall)
        return None
    i = text.rfind("IN=", start, j)
    if i < 0:
        return None
    if i > start:
        raw_prefix = text[start:i]
        try:
            prefix, hook = _prefixes[raw_prefix]
        except KeyError:
            prefix, hook = _prefix(raw_prefix)
    else:
        prefix = hook = None
    # No blank check between IN= and OUT= here: the regex only matches when there is none,
    # and the slow path checks it.
    m = _fast_match(text, i, end) if end - i <= _FAST_MAX else None
    if m is None:
        return _parse_slow(text[start:end], i - start, prefix, hook, source, ts, wall)
    iif, oif, src, dst, length, raw_proto, sport, dport, flags, itype, icode = m.groups()
    family = "ip6" if ":" in src else "ip"
    # .get, not try/except: a flood of spoofed sources misses every time, and raising a
    # KeyError per line would cost more than the lookup.
    src = _addrs.get(src) or _address(src)
    dst = _addrs.get(dst) or _address(dst)
    if src is None or dst is None or (":" in dst) != (family == "ip6"):
        return _error("bad_address", "SRC" if src is None else "DST", text[start:end])
    try:
        proto = _PROTO_NAMES[raw_proto]
    except KeyError:
        proto = _proto_name(raw_proto)
    tcp_flags = None
    sp = dp = ity = ico = None
    length_n = int(length)
    if sport is not None:
        sp = int(sport)
        dp = int(dport)
    elif itype is not None:
        ity = int(itype)
        ico = int(icode)
    if flags is not None:
        try:
            tcp_flags = _flag_texts[flags]
        except KeyError:
            tcp_flags = tcp_flags_text(flags)
    mark = uid = gid = None
    k = text.rfind("=", start, end)
    if text[k - 3:k] in _TRAILER_KEYS:
        # Rare trailers of the outer packet (--log-uid, a non-zero skb mark): always last.
        extra = _trailers(text[start:end], m.end() - start)
        if isinstance(extra, LogLineError):
            return extra
        mark, uid, gid = extra
    if iif:
        try:
            iif = _strings[iif]
        except KeyError:
            iif = _intern(iif)
    else:
        iif = None
    if oif:
        try:
            oif = _strings[oif]
        except KeyError:
            oif = _intern(oif)
    else:
        oif = None
    if not _FAST_EVENTS:
        return _event(source, ts, wall, prefix, hook, iif, oif, family, proto, src, dst, sp,
                      dp, ity, ico, tcp_flags, length_n, mark, uid, gid, None)
    # _event() inlined: a flood runs this line by line.
    ev: DropEvent = _new(DropEvent)
    _s_source(ev, source)
    _s_ts(ev, ts)
    _s_wall(ev, wall)
    _s_prefix(ev, prefix)
    _s_group(ev, None)
    _s_hook(ev, hook)
    _s_iif(ev, iif)
    _s_oif(ev, oif)
    _s_family(ev, family)
    _s_proto(ev, proto)
    _s_src(ev, src)
    _s_dst(ev, dst)
    _s_sport(ev, sp)
    _s_dport(ev, dp)
    _s_icmp_type(ev, ity)
    _s_icmp_code(ev, ico)
    _s_tcp_flags(ev, tcp_flags)
    _s_len(ev, length_n)
    _s_mark(ev, mark)
    _s_uid(ev, uid)
    _s_gid(ev, gid)
    _s_reason(ev, None)
    return ev


def _trailers(msg: str, start: int) -> tuple[int | None, int | None, int | None] | LogLineError:
    out: list[int | None] = []
    for key, base in ((" MARK=0x", 16), (" UID=", 10), (" GID=", 10)):
        k = msg.find(key, start)
        if k < 0:
            out.append(None)
            continue
        k += len(key)
        e = msg.find(" ", k)
        raw = msg[k:] if e < 0 else msg[k:e]
        value = _number(raw, base)
        if value is None:
            return _error("bad_number", key.strip(" =x0"), msg)
        out.append(value)
    return out[0], out[1], out[2]


def _number(raw: str, base: int = 10) -> int | None:
    # Digits only: int() would also take "-1", "+5", "1_000" and blanks.
    if not raw or len(raw) > 20 or not raw.isascii():
        return None
    if raw.strip("0123456789" if base == 10 else "0123456789abcdefABCDEF"):
        return None
    return int(raw, base)


def _conntrack(msg: str, source: DropSource, ts: float, wall: float) -> DropEvent | None:
    # "nf_conntrack: table full, dropping packet" (some kernels repeat the "nf_conntrack: "
    # prefix, older ones say "ip_conntrack: ... packet."), and the expectation table variant.
    if _CONNTRACK_FULL in msg:
        reason = "conntrack table full"
    elif _CONNTRACK_EXPECT_FULL in msg:
        reason = "conntrack expectation table full"
    else:
        return None
    return _event(source, ts, wall, None, None, None, None, None, None, None, None, None, None,
                  None, None, None, None, None, None, None, reason)


# --- the slow path: any order, any subset of fields ------------------------------------------

_NUMERIC = ("LEN", "SPT", "DPT", "TYPE", "CODE", "UID", "GID")


def _parse_slow(msg: str, i: int, prefix: str | None, hook: str | None, source: DropSource,
                ts: float, wall: float) -> LogLineResult:
    if " " in msg[i:msg.rfind(" OUT=")]:
        return None  # "IN=" and " OUT=" not of one header: not the kernel's line
    head: dict[str, str] = {}  # the IP header's fields (before PROTO=)
    l4: dict[str, str] = {}  # the transport header's and trailers' fields
    bare: list[str] = []  # flag tokens after PROTO= (SYN, ACK, ...)
    depth = 0
    cur = head
    for tok in msg[i:].split(" "):
        if not tok:
            continue
        if depth or tok[0] == "[":
            # An ICMP error's embedded header or "INCOMPLETE [20 bytes]": not this packet.
            depth = max(0, depth + tok.count("[") - tok.count("]"))
            continue
        key, eq, value = tok.partition("=")
        if not eq:
            if cur is l4:
                bare.append(key)
            continue
        if key == "PROTO" and cur is head:
            head[key] = value
            cur = l4
            continue
        if key not in cur:
            cur[key] = value
    iif = head.get("IN") or None
    oif = head.get("OUT") or None
    family: str | None = None
    src = head.get("SRC")
    dst = head.get("DST")
    if src is None and "IPSRC" in head:
        family, src, dst = "arp", head.get("IPSRC"), head.get("IPDST")
    if src is not None and dst is not None and (":" in src) != (":" in dst):
        return _error("bad_address", "DST", msg)
    if src is not None:
        family = family or ("ip6" if ":" in src else "ip")
        src = _address(src)
        if src is None:
            return _error("bad_address", "SRC", msg)
    if dst is not None:
        family = family or ("ip6" if ":" in dst else "ip")
        dst = _address(dst)
        if dst is None:
            return _error("bad_address", "DST", msg)
    nums: dict[str, int | None] = {}
    for key in _NUMERIC:
        raw = (head if key == "LEN" else l4).get(key)
        if raw is None:
            nums[key] = None
            continue
        num = _number(raw)
        if num is None:
            return _error("bad_number", key, msg)
        nums[key] = num
    mark = None
    if "MARK" in l4 or "MARK" in head:
        raw_mark = l4.get("MARK") or head.get("MARK") or ""
        mark = _number(raw_mark[2:] if raw_mark[:2] in ("0x", "0X") else raw_mark, 16)
        if mark is None:
            return _error("bad_number", "MARK", msg)
    raw_proto = head.get("PROTO")
    proto = _proto_name(raw_proto) if raw_proto else None
    tcp_flags = None
    if proto == "tcp":
        tcp_flags = tcp_flags_text(" ".join(t for t in bare if t in _FLAG_SET))
    return _event(source, ts, wall, prefix, hook, _intern(iif) if iif else None,
                  _intern(oif) if oif else None, family, proto, src, dst, nums["SPT"],
                  nums["DPT"], nums["TYPE"], nums["CODE"], tcp_flags, nums["LEN"], mark,
                  nums["UID"], nums["GID"], None)


# --- record and line framing -----------------------------------------------------------------

_UNESCAPE = re.compile(rb"\\x([0-9a-fA-F]{2})")
_SYSLOG_TS = re.compile(r"\[ *[0-9]+\.[0-9]+\] ")


def _unescape(m: re.Match[bytes]) -> bytes:
    return bytes((int(m.group(1), 16),))


def split_kmsg_record(raw: bytes) -> KmsgRecord | LogLineError:
    """A /dev/kmsg record (`prio,seq,usec,flags[,...];text\\n[ KEY=value\\n]...`).

    The kernel escapes non-printable bytes and backslashes of the text as \\xNN; they are
    restored (then decoded as UTF-8 with replacement) so a prefix reads as the rule wrote it."""
    semi = raw.find(b";")
    if semi < 0 or semi > 128:
        return _error("bad_record", None, raw[:_EXCERPT].decode("utf-8", "replace"))
    head = raw[:semi].split(b",")
    try:
        prio, seq, usec = int(head[0]), int(head[1]), int(head[2])
    except (ValueError, IndexError):
        return _error("bad_record", None, raw[:_EXCERPT].decode("utf-8", "replace"))
    nl = raw.find(b"\n", semi)
    text = raw[semi + 1:] if nl < 0 else raw[semi + 1:nl]
    if b"\\" in text:  # one byte: memchr, unlike a two-byte needle
        text = _UNESCAPE.sub(_unescape, text)
    return KmsgRecord(seq, prio >> 3, prio & 7, usec, text.decode("utf-8", "replace"))


# prio,seq,usec,flags[,caller=...]; the seq is what loss accounting needs.
_KMSG_HEAD = re.compile(r"[0-9]{1,3},([0-9]{1,20}),[0-9]{1,20},[^;]{0,100};")
_kmsg_head = _KMSG_HEAD.match


def parse_kmsg_record(raw: bytes, ts: float = 0.0,
                      wall: float = 0.0) -> tuple[int | None, LogLineResult]:
    """A /dev/kmsg record -> (its sequence number or None if unreadable, parse result)."""
    # split_kmsg_record's work, done on str in as few calls and copies as possible: this runs
    # once per record in a flood.
    text = raw.decode("utf-8", "replace")
    m = _kmsg_head(text)
    if m is None:
        return None, _error("bad_record", None, text)
    start = m.end()
    end = text.find("\n", start)
    if end < 0:
        end = len(text)
    if text.find("\\", start, end) >= 0:
        # kmsg's \xNN escapes: restore the bytes they stand for.
        rec = split_kmsg_record(raw)
        if isinstance(rec, LogLineError):
            return None, rec
        return rec.seq, parse_message(rec.message, "kmsg", ts, wall)
    return int(m.group(1)), _parse_span(text, start, end, "kmsg", ts, wall)


def strip_syslog_prefix(line: str) -> str:
    """The kernel message inside a syslog / journal / dmesg line.

    Handles `Nov 23 19:17:01 host kernel: [ 123.456] msg`, journalctl's short and
    short-monotonic (`[ 123.456789] host kernel: msg`) and dmesg (`[ 123.456] msg`). A bracket
    that is not a timestamp is kept: `[UFW BLOCK] IN=...` is ufw's prefix, not a header."""
    k = line.find("kernel: ")
    if k >= 0:
        line = line[k + 8:]
    if line[:1] == "[":
        m = _SYSLOG_TS.match(line)
        if m is not None:
            line = line[m.end():]
    return line.rstrip("\r\n")


def parse_syslog_line(line: str | bytes, source: DropSource = "logfile", ts: float = 0.0,
                      wall: float = 0.0) -> LogLineResult:
    """One line of kern.log / messages / journalctl output -> parse result."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    return parse_message(strip_syslog_prefix(line), source, ts, wall)


def parse_line(line: str | bytes, source: DropSource | None = None, ts: float = 0.0,
               wall: float = 0.0) -> LogLineResult:
    """Any one line: a /dev/kmsg record, or a syslog/journal/dmesg line; the format is guessed.

    `source` defaults to "kmsg" for kmsg records and "logfile" for the rest."""
    if isinstance(line, bytes):
        if line[:1].isdigit() and _KMSG_HEAD.match(line[:128].decode("ascii", "replace")):
            return _reframe(split_kmsg_record(line), source, ts, wall)
        line = line.decode("utf-8", "replace")
    m = _KMSG_HEAD.match(line) if line[:1].isdigit() else None
    if m is not None:
        nl = line.find("\n", m.end())
        text = line[m.end():] if nl < 0 else line[m.end():nl]
        if "\\" in text:
            rec = split_kmsg_record(line.encode("utf-8", "surrogatepass"))
            return _reframe(rec, source or "kmsg", ts, wall)
        return parse_message(text, source or "kmsg", ts, wall)
    return parse_message(strip_syslog_prefix(line), source or "logfile", ts, wall)


def _reframe(rec: KmsgRecord | LogLineError, source: DropSource | None, ts: float,
             wall: float) -> LogLineResult:
    if isinstance(rec, LogLineError):
        return rec
    return parse_message(rec.message, source or "kmsg", ts, wall)
