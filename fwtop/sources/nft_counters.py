"""Kernel reader for nf_tables rule and chain counters over raw netlink.

Owns one NETLINK_NETFILTER socket (bound to the network namespace of the thread
that created it) and the request/receive loop: NFT_MSG_GETGEN for the cheap
"did anything change" check, and NFT_MSG_GETCHAIN + NFT_MSG_GETRULE dumps for the
counters, planned so the kernel's dump cost stays low on big rulesets. The same
socket lists tables, chains and named sets and every rule's handle for the
structure load of iptables-nft tables (``listing``, ``rule_handles``). All byte
decoding is in :mod:`fwtop.core.nftnl`; this module does I/O, planning, retries
and error mapping only.

Why the planning: the kernel resumes a rule dump for every ~32 KiB datagram by
walking the dumped tables' rule lists from the start up to where it stopped, so
one dump of R rules costs O(R^2 / rules-per-datagram) in the kernel (0.84 s of
system time for 50,000 rules in one table on the reference machine). Dumping
per chain bounds that walk by the chain's size; it costs one request per chain.
The reader picks, per table, whichever its cost model says is cheaper, using the
rule counts it saw on the previous dump.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterable
from types import TracebackType

from fwtop.core import nftnl
from fwtop.core.nftnl import ChainInfo, ChainKey, CounterDump, Listing, RuleHandles, RuleKey

_RCVBUF = 8 << 20
_SO_RCVBUFFORCE = 33  # asm-generic/socket.h; not exported by the socket module
# One datagram never exceeds this: the kernel caps dump skbs at 32 KiB unless a
# single object is larger, and a rule is bounded by NFT_RULE_MAXEXPRS.
_RECV_BUF = 1 << 20
_TIMEOUT_S = 10.0
_MAX_ATTEMPTS = 4
# Errors that mean "the ruleset changed while we were reading": dump again.
_RETRY_ERRNOS = frozenset({errno.EINTR, errno.EBUSY, errno.EAGAIN, errno.ENOBUFS})

# Cost model, measured on the reference machine (kernel 6.18, 2 cores); only the
# ratio matters. Skipping one already-dumped rule when the kernel resumes a dump:
_SKIP_NS = 40
# One extra dump request (send, NLMSG_DONE, Python bookkeeping):
_REQUEST_NS = 20_000
_DUMP_CHUNK = 32 * 1024
# With no sizes known yet, split a table into per-chain dumps when it has at most
# this many chains (the extra requests then cost well under a millisecond).
_SPLIT_UNKNOWN_MAX_CHAINS = 32


class NftNetlinkError(Exception):
    """A netlink failure, with a one-line message meant for the user."""

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_


def _error_message(err: int, what: str) -> str:
    if err in (errno.EPERM, errno.EACCES):
        return "need root (CAP_NET_ADMIN) to read nf_tables"
    if err in (errno.EPROTONOSUPPORT, errno.EOPNOTSUPP, errno.EAFNOSUPPORT):
        return "nf_tables not available in this kernel"
    if err == errno.ENOENT:
        return f"{what}: no such table or chain"
    return f"{what}: {os.strerror(err)} (errno {err})"


class _Retry(Exception):
    """Internal: the dump was interrupted by a concurrent ruleset change."""


def _family_number(name: str) -> int:
    num = nftnl.FAMILY_NUMBERS.get(name)
    if num is not None:
        return num
    return int(name) if name.isdigit() else nftnl.NFPROTO_UNSPEC


class NftCounterReader:
    """Reads nf_tables counters of the namespace the creating thread is in.

    Not thread-safe: one reader per polling thread.
    """

    def __init__(self) -> None:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, nftnl.NETLINK_NETFILTER)
        except OSError as exc:
            code = exc.errno or 0
            raise NftNetlinkError(_error_message(code, "netlink socket"), code) from exc
        try:
            try:
                # FORCE ignores net.core.rmem_max but needs CAP_NET_ADMIN.
                sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _RCVBUF)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            sock.bind((0, 0))
            sock.settimeout(_TIMEOUT_S)
        except OSError as exc:
            sock.close()
            code = exc.errno or 0
            raise NftNetlinkError(_error_message(code, "netlink socket"), code) from exc
        self._sock: socket.socket | None = sock
        self._buf = bytearray(_RECV_BUF)
        self._view = memoryview(self._buf)
        self._seq = int.from_bytes(os.urandom(2), "big") << 8
        # Planning state from the previous dump: rules per chain, bytes per rule
        # message, and the generation those were seen in.
        self._sizes: dict[ChainKey, int] = {}
        self._msg_bytes = 512
        self._sizes_gen: int | None = None
        self.requests = 0  # dump requests sent by the last dump() (for benchmarks)

    # --- lifecycle

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> NftCounterReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- public reads

    def generation(self) -> int | None:
        """The ruleset generation id; it changes on every committed transaction."""
        seq = self._next_seq()
        gen: int | None = None
        replies = self._exchange(nftnl.build_getgen_request(seq))
        while True:
            status = nftnl.parse_messages(next(replies), seq=seq)
            if status.generation is not None:
                gen = status.generation
            if status.error:
                raise NftNetlinkError(_error_message(status.error, "get generation"), status.error)
            if status.done:
                return gen

    def dump(
        self, family: str | None = None, table: str | None = None, chain: str | None = None
    ) -> CounterDump:
        """Counters of every rule (its first counter expression) and base chain.

        ``family``/``table``/``chain`` restrict the dump; ``chain`` needs both
        others. Every reply is checked against the generation read first (and for
        NLM_F_DUMP_INTR); on a concurrent commit the whole read is restarted, at
        most _MAX_ATTEMPTS times, and the result says how often and whether it
        still ended inconsistent.
        """
        fam = self._family(family)
        if chain is not None and (family is None or table is None):
            raise ValueError("a chain filter needs family and table")
        retries = 0
        while True:
            rules: dict[RuleKey, tuple[int, int]] = {}
            chains: dict[ChainKey, tuple[int, int]] = {}
            malformed = 0
            consistent = True
            gen: int | None = None
            try:
                gen = self.generation()
                malformed, consistent = self._read(fam, table, chain, gen, rules, chains)
            except _Retry:
                consistent = False
            if consistent or retries + 1 >= _MAX_ATTEMPTS:
                break
            retries += 1
        return CounterDump(
            rules=rules,
            chains=chains,
            generation=gen,
            malformed=malformed,
            retries=retries,
            interrupted=not consistent,
        )

    def listing(
        self, msg_type: int, family: str | None = None, generation: int | None = None
    ) -> Listing:
        """Every table (NFT_MSG_GETTABLE), chain (GETCHAIN) or named set (GETSET) of the
        namespace, or of one family, in the kernel's order.

        With ``generation``, replies of another generation or cut by NLM_F_DUMP_INTR, and a
        dump the kernel refused because the ruleset was changing, make the result
        inconsistent (the caller decides whether to read again); other errors raise.
        """
        if msg_type not in (nftnl.NFT_MSG_GETTABLE, nftnl.NFT_MSG_GETCHAIN, nftnl.NFT_MSG_GETSET):
            raise ValueError(f"not a table, chain or set dump: {msg_type}")
        seq = self._next_seq()
        req = nftnl.build_dump_request(msg_type, self._family(family), seq)
        tables: list[tuple[str, str]] = []
        chains: list[ChainInfo] = []
        sets: list[tuple[str, str, str]] = []
        expect = None if generation is None else generation & 0xFFFF
        consistent = True
        malformed = 0
        replies = self._exchange(req)
        while True:
            try:
                chunk = next(replies)
            except NftNetlinkError as exc:
                if exc.errno in _RETRY_ERRNOS:
                    self._drain()
                    consistent = False
                    break
                raise
            status = nftnl.parse_objects(chunk, seq=seq, tables=tables, chains=chains, sets=sets)
            malformed += status.malformed
            if status.interrupted or status.res_mixed or (
                    expect is not None and status.res_id not in (None, expect)):
                consistent = False
            if status.error:
                self._drain()
                if status.error in _RETRY_ERRNOS:
                    consistent = False
                    break
                raise NftNetlinkError(_error_message(status.error, "nf_tables dump"), status.error)
            if status.done:
                break
        return Listing(tuple(tables), tuple(chains), tuple(sets), consistent, malformed)

    def rule_handles(
        self,
        family: str,
        table: str,
        chains: Iterable[str],
        generation: int | None = None,
        *,
        stop_at_change: bool = False,
    ) -> RuleHandles:
        """The handle of every rule of ``chains`` of one table, each chain's rules in order,
        counter or not: one dump request per chain, so the kernel never re-walks the rest of
        the table (see the module docstring).

        Consistency as in :meth:`listing`; a chain or table that vanished (ENOENT) also makes
        the result inconsistent and ends the read, as does any inconsistency with
        ``stop_at_change`` (for a caller that will read everything again anyway).
        """
        fam = self._family(family)
        sock = self._sock
        if sock is None:
            raise NftNetlinkError("nf_tables reader is closed")
        expect = None if generation is None else generation & 0xFFFF
        table_attr = nftnl.string_attr(nftnl.NFTA_RULE_TABLE, table)
        build = nftnl.build_chain_rules_request
        view, bufsize = self._view, len(self._buf)
        recv_into, send = sock.recv_into, sock.send
        parse = nftnl.parse_chain_handles
        handles: dict[str, list[int]] = {}
        malformed = requests = 0
        consistent = True
        try:
            for chain in chains:
                seq = self._next_seq()
                out = handles[chain] = []
                request, match = build(fam, seq, table_attr, chain)
                send(request)
                requests += 1
                while True:
                    n = recv_into(view, 0, socket.MSG_TRUNC)
                    if n > bufsize:
                        raise NftNetlinkError(
                            f"netlink message of {n} bytes exceeds the receive buffer")
                    status = parse(bytes(view[:n]), table, chain, out, seq=seq, prefix=match)
                    malformed += status.malformed
                    if status.interrupted or status.res_mixed or (
                            expect is not None and status.res_id not in (None, expect)):
                        consistent = False
                    if status.error:
                        self._drain()
                        if status.error in _RETRY_ERRNOS or status.error == errno.ENOENT:
                            return RuleHandles(handles, False, malformed, requests)
                        raise NftNetlinkError(
                            _error_message(status.error, "nf_tables dump"), status.error)
                    if status.done:
                        break
                if stop_at_change and not consistent:
                    break
        except TimeoutError as exc:
            raise NftNetlinkError(f"nf_tables did not answer within {_TIMEOUT_S:.0f} s") from exc
        except OSError as exc:
            code = exc.errno or 0
            if code in _RETRY_ERRNOS:
                self._drain()
                return RuleHandles(handles, False, malformed, requests)
            raise NftNetlinkError(_error_message(code, "netlink"), code) from exc
        return RuleHandles(handles, consistent, malformed, requests)

    def dump_raw(
        self,
        msg_type: int,
        family: str | None = None,
        table: str | None = None,
        chain: str | None = None,
    ) -> bytes:
        """The raw reply datagrams of one dump request, concatenated (for fixtures)."""
        seq = self._next_seq()
        req = nftnl.build_dump_request(msg_type, self._family(family), seq, table, chain)
        out: list[bytes] = []
        for chunk in self._exchange(req):
            out.append(chunk)
            if nftnl.parse_messages(chunk, seq=seq).done:
                break
        return b"".join(out)

    def getgen_raw(self) -> bytes:
        """The raw reply of one NFT_MSG_GETGEN request (for fixtures)."""
        seq = self._next_seq()
        out: list[bytes] = []
        for chunk in self._exchange(nftnl.build_getgen_request(seq)):
            out.append(chunk)
            if nftnl.parse_messages(chunk, seq=seq).done:
                break
        return b"".join(out)

    # --- planning

    def _read(
        self,
        fam: int,
        table: str | None,
        chain: str | None,
        gen: int | None,
        rules: dict[RuleKey, tuple[int, int]],
        chains: dict[ChainKey, tuple[int, int]],
    ) -> tuple[int, bool]:
        """One attempt: chain dump, then the planned rule dumps. (malformed, consistent)"""
        self.requests = 0
        names: list[ChainKey] = []
        malformed, consistent, _ = self._dump_into(
            nftnl.NFT_MSG_GETCHAIN, fam, gen, chains=chains, chain_names=names
        )
        if table is not None:
            for key in [k for k in chains if k[1] != table or (chain and k[2] != chain)]:
                del chains[key]
        by_table: dict[tuple[str, str], list[str]] = {}
        for f, t, c in names:
            if (table is None or t == table) and (chain is None or c == chain):
                by_table.setdefault((f, t), []).append(c)

        same_gen = gen is not None and gen == self._sizes_gen
        total_bytes = total_msgs = 0
        # Sizes of chains skipped below stay valid within the same generation.
        sizes: dict[ChainKey, int] = dict(self._sizes) if same_gen else {}
        whole_tables: set[tuple[str, str]] = set()
        for (f, t), cnames in by_table.items():
            fnum = _family_number(f)
            if same_gen:
                # Same generation as last time: a chain that had no counter rule
                # still has none, so it need not be dumped at all.
                cnames = [c for c in cnames if self._sizes.get((f, t, c), 1) > 0]
                if not cnames:
                    continue
            split = chain is not None or self._split(f, t, cnames)
            targets: list[str | None] = list(cnames) if split else [None]
            for target in targets:
                before = len(rules)
                m, ok, (nbytes, nmsgs) = self._dump_into(
                    nftnl.NFT_MSG_GETRULE, fnum, gen, t, target, rules=rules
                )
                malformed += m
                consistent &= ok
                total_bytes += nbytes
                total_msgs += nmsgs
                if target is not None:
                    sizes[(f, t, target)] = len(rules) - before
            if not split:
                whole_tables.add((f, t))
                for c in cnames:
                    sizes[(f, t, c)] = 0
        if whole_tables:
            for rf, rt, rc, _h in rules:
                if (rf, rt) in whole_tables:
                    sizes[(rf, rt, rc)] = sizes.get((rf, rt, rc), 0) + 1
        if consistent:
            if total_msgs:
                self._msg_bytes = max(64, total_bytes // total_msgs)
            if table is None and chain is None:
                self._sizes = sizes
            else:
                self._sizes.update(sizes)
            self._sizes_gen = gen
        return malformed, consistent

    def _split(self, family: str, table: str, cnames: list[str]) -> bool:
        """True if per-chain dumps of this table are cheaper than one table dump."""
        if len(cnames) <= 1:
            return False
        known = [self._sizes.get((family, table, c)) for c in cnames]
        if any(s is None for s in known):
            return len(cnames) <= _SPLIT_UNKNOWN_MAX_CHAINS
        sizes = [s or 0 for s in known]
        per_chunk = max(1, _DUMP_CHUNK // self._msg_bytes)
        total = sum(sizes)
        table_ns = _SKIP_NS * total * total / (2 * per_chunk)
        split_ns = _SKIP_NS * sum(s * s for s in sizes) / (2 * per_chunk)
        split_ns += (len(cnames) - 1) * _REQUEST_NS
        return split_ns < table_ns

    # --- internals

    @staticmethod
    def _family(family: str | None) -> int:
        if family is None:
            return nftnl.NFPROTO_UNSPEC
        try:
            return nftnl.FAMILY_NUMBERS[family]
        except KeyError:
            raise ValueError(f"unknown nf_tables family {family!r}") from None

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    def _dump_into(
        self,
        msg_type: int,
        family: int,
        gen: int | None,
        table: str | None = None,
        chain: str | None = None,
        *,
        rules: dict[RuleKey, tuple[int, int]] | None = None,
        chains: dict[ChainKey, tuple[int, int]] | None = None,
        chain_names: list[ChainKey] | None = None,
    ) -> tuple[int, bool, tuple[int, int]]:
        """Run one dump to NLMSG_DONE: (malformed, consistent, (bytes, rule messages))."""
        seq = self._next_seq()
        self.requests += 1
        req = nftnl.build_dump_request(msg_type, family, seq, table, chain)
        malformed = 0
        consistent = True
        nbytes = nrules = 0
        expect_res = None if gen is None else gen & 0xFFFF
        replies = self._exchange(req)
        while True:
            try:
                chunk = next(replies)
            except NftNetlinkError as exc:
                if exc.errno in _RETRY_ERRNOS:
                    self._drain()
                    raise _Retry from exc
                raise
            status = nftnl.parse_messages(chunk, rules, chains, seq=seq, chain_names=chain_names)
            malformed += status.malformed
            nbytes += len(chunk)
            nrules += status.rules_seen
            # nfgenmsg.res_id of dump replies is the low 16 bits of the generation
            # the kernel dumped: a mismatch means a commit after our GETGEN.
            if status.interrupted or status.res_mixed:
                consistent = False
            elif expect_res is not None and status.res_id not in (None, expect_res):
                consistent = False
            if status.error:
                self._drain()
                if status.error in _RETRY_ERRNOS:
                    raise _Retry
                if status.error == errno.ENOENT and msg_type == nftnl.NFT_MSG_GETRULE:
                    # The table or chain went away since the chain dump.
                    raise _Retry
                raise NftNetlinkError(_error_message(status.error, "nf_tables dump"), status.error)
            if status.done:
                return malformed, consistent, (nbytes, nrules)

    def _drain(self) -> None:
        """Read off the rest of an abandoned reply: the kernel refuses a new dump
        (EBUSY) while the old one is still running on this socket."""
        sock = self._sock
        if sock is None:
            return
        sock.setblocking(False)
        try:
            while True:
                try:
                    if sock.recv_into(self._view) == 0:
                        break
                except OSError:  # EAGAIN: nothing left
                    break
        finally:
            sock.settimeout(_TIMEOUT_S)

    def _exchange(self, request: bytes) -> _Replies:
        sock = self._sock
        if sock is None:
            raise NftNetlinkError("nf_tables reader is closed")
        try:
            sock.sendto(request, (0, 0))
        except OSError as exc:
            code = exc.errno or 0
            raise NftNetlinkError(_error_message(code, "netlink send"), code) from exc
        return _Replies(sock, self._buf, self._view)


class _Replies:
    """Iterator over reply datagrams (as bytes) until the caller stops."""

    __slots__ = ("_buf", "_sock", "_view")

    def __init__(self, sock: socket.socket, buf: bytearray, view: memoryview) -> None:
        self._sock = sock
        self._buf = buf
        self._view = view

    def __iter__(self) -> _Replies:
        return self

    def __next__(self) -> bytes:
        try:
            # MSG_TRUNC makes recv report the datagram's real size. EINTR is retried
            # by Python itself (PEP 475).
            n = self._sock.recv_into(self._view, 0, socket.MSG_TRUNC)
        except TimeoutError as exc:
            raise NftNetlinkError(f"nf_tables did not answer within {_TIMEOUT_S:.0f} s") from exc
        except OSError as exc:
            code = exc.errno or 0
            raise NftNetlinkError(_error_message(code, "netlink receive"), code) from exc
        if n > len(self._buf):
            raise NftNetlinkError(f"netlink message of {n} bytes exceeds the receive buffer")
        return bytes(self._view[:n])
