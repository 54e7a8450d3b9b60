"""The kernel LOG-line reader: /dev/kmsg (or journald, or a syslog file) -> DropEvents.

Owns the byte stream and its losses; the text format is fwtop.core.loglines'. /dev/kmsg is
opened non-blocking at its end, so only records written after start-up are read, one record per
read(). When a burst overwrites the kernel's ring before fwtop reads it, read() fails once with
EPIPE and continues at the oldest record still there: the jump in sequence numbers is the exact
number of records lost (of any kind: the ring holds all kernel messages, not only LOG lines).

Namespaces. /dev/kmsg is host-wide: it shows LOG lines of every network namespace, but a
non-init namespace's LOG lines are only written at all when the global sysctl
net.netfilter.nf_log_all_netns is 1 (see log_all_netns_state). With `interfaces`, only lines
whose IN= or OUT= is one of those names are kept. The kernel prints names, not namespaces, so a
line from another namespace that has an interface of the same name (eth0, lo, ...) passes the
filter too: that is a limit of the LOG format, not something fwtop can resolve. Lines without
any interface (conntrack's "table full", which is per host anyway) always pass.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import time
from collections import Counter
from collections.abc import Collection, Sequence
from typing import Literal

from fwtop.core import loglines
from fwtop.core.events import DropEvent, SourceStats
from fwtop.core.loglines import LogLineError

KMSG_PATH = "/dev/kmsg"
LOG_ALL_NETNS = "/proc/sys/net/netfilter/nf_log_all_netns"
LOG_FILES = ("/var/log/kern.log", "/var/log/messages")
# The kernel's own cap on one record as /dev/kmsg prints it (CONSOLE_EXT_LOG_MAX is 8 KiB);
# a smaller buffer makes read() fail with EINVAL on a long record.
_RECORD_BUF = 16384
_MAX_RECORD_BUF = 1 << 20
# Reading the whole ring once to learn the current sequence number is bounded by this.
_MAX_DRAIN = 1_000_000
_PIPE_CHUNK = 1 << 16
_MAX_PARTIAL = 1 << 20  # a "line" longer than this from a pipe is cut (and counted)

Mode = Literal["kmsg", "journal", "logfile"]


class KmsgError(Exception):
    """No way to read kernel LOG lines; the message is one line meant for the user."""


# Where to find the init network namespace: pid 1's, or kthreadd's (pid 2, a kernel thread, so
# always in the init namespace) where pid 1 is not inspectable (some VM and container inits).
_INIT_NETNS_PATHS = ("/proc/1/ns/net", "/proc/2/ns/net")


def _init_netns_path() -> str | None:
    for path in _INIT_NETNS_PATHS:
        try:
            os.stat(path)
            return path
        except OSError:
            continue
    return None


def in_init_netns() -> bool:
    """Whether the calling thread is in the init (host) network namespace."""
    path = _init_netns_path()
    try:
        mine = os.stat("/proc/thread-self/ns/net")
        init = os.stat(path) if path is not None else None
    except OSError:
        init = None
    if init is None:
        return True  # cannot tell (no /proc, or not root): assume the host
    return (mine.st_dev, mine.st_ino) == (init.st_dev, init.st_ino)


def _read_log_all_netns() -> str:
    try:
        with open(LOG_ALL_NETNS) as f:
            return f.read().strip()
    except FileNotFoundError:
        pass
    # The sysctl exists only in the init namespace's /proc/sys/net, and that view follows the
    # reading thread's namespace: read it from a thread that has entered the init namespace.
    from fwtop.firewall.netns import NetNamespace, run_in

    path = _init_netns_path()
    if path is None:
        raise OSError(errno.EACCES, "cannot find the init network namespace")

    def read() -> str:
        with open(LOG_ALL_NETNS) as f:
            return f.read().strip()

    return run_in(NetNamespace("init", path), read)


def log_all_netns_state(in_init_ns: bool, netns: str | None = None) -> tuple[bool, str | None]:
    """Whether LOG lines of the reader's target namespace reach the kernel log, and if not why.

    The init namespace's always do. Any other namespace's only with the global sysctl
    net.netfilter.nf_log_all_netns=1. When the sysctl cannot be read the answer is "yes" (the
    reader costs nothing if nothing comes), with the reason as a warning."""
    if in_init_ns:
        return True, None
    where = f"namespace {netns}" if netns else "this network namespace"
    try:
        value = _read_log_all_netns()
    except Exception as exc:  # any failure here is a warning, never fatal
        return True, (f"cannot read net.netfilter.nf_log_all_netns ({exc}): LOG lines from "
                      f"{where} may not be logged")
    if value == "1":
        return True, None
    return False, (f"LOG lines from {where} are not logged: net.netfilter.nf_log_all_netns="
                   f"{value or '?'} (set it to 1 to see them)")


def _journald_running() -> bool:
    return os.path.exists("/run/systemd/journal/socket")


class KmsgReader:
    """Kernel LOG lines as DropEvents, from /dev/kmsg or, when that is unreadable, from
    `journalctl -k -f` or by following /var/log/kern.log or /var/log/messages.

    `path` may also name a regular file (followed like a syslog file). Not thread-safe: one
    reader per thread. `fileno()` becomes readable when there is something to read()."""

    def __init__(self, interfaces: Collection[str] | None = None, path: str = KMSG_PATH,
                 log_files: Sequence[str] = LOG_FILES, journal: bool = True) -> None:
        self._interfaces = frozenset(interfaces) if interfaces is not None else None
        self.path = path
        self._fd = -1
        self._proc: subprocess.Popen[bytes] | None = None
        self._partial = b""
        self._bufsize = _RECORD_BUF
        self.received = 0  # events handed out
        self.records = 0  # records / lines read, firewall or not
        self.lost = 0  # records the kernel overwrote before we read them
        self.malformed = 0
        self.filtered = 0  # firewall lines of other interfaces (other namespaces)
        self.epipes = 0
        self.errors: Counter[str] = Counter()
        self.last_error: LogLineError | None = None
        self.base_seq: int | None = None  # sequence number of the first record we may read
        self.next_seq: int | None = None  # the one we expect next
        self._off_reason: str | None = None
        self.mode: Mode
        failures: list[str] = []
        try:
            self._open_kmsg(path)
            return
        except OSError as exc:
            failures.append(f"{path}: {exc.strerror or exc}")
        except _NotACharDevice:
            self._follow_file(path)
            return
        if journal and shutil.which("journalctl") and _journald_running():
            try:
                self._start(["journalctl", "-k", "-f", "-n", "0", "-o", "short-monotonic",
                             "--all", "--no-pager"], "journal")
                return
            except OSError as exc:
                failures.append(f"journalctl: {exc.strerror or exc}")
        else:
            failures.append("journald: not running" if journal else "journal: disabled")
        for candidate in log_files:
            if os.access(candidate, os.R_OK):
                try:
                    self._follow_file(candidate)
                    return
                except OSError as exc:
                    failures.append(f"{candidate}: {exc.strerror or exc}")
            else:
                failures.append(f"{candidate}: not readable")
        raise KmsgError("cannot read kernel log lines (" + "; ".join(failures) + ")")

    # --- opening

    def _open_kmsg(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISCHR(os.fstat(fd).st_mode):
                raise _NotACharDevice
            os.lseek(fd, 0, os.SEEK_END)
            self.base_seq = _next_record_seq(path)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.next_seq = self.base_seq
        self.mode = "kmsg"

    def _follow_file(self, path: str) -> None:
        if shutil.which("tail") is None:
            raise KmsgError(f"cannot follow {path}: `tail` is not installed")
        # tail -F follows the file across log rotation; -n 0: only lines written from now on.
        self._start(["tail", "-n", "0", "-F", path], "logfile")
        self.path = path

    def _start(self, argv: list[str], mode: Mode) -> None:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, close_fds=True)
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        self._proc = proc
        self._fd = proc.stdout.fileno()
        self.mode = mode
        self.path = argv[-1] if mode == "logfile" else "journalctl -k"

    # --- the reader protocol

    def fileno(self) -> int:
        return self._fd

    def read(self, max_records: int = 1024) -> list[DropEvent]:
        if self._fd < 0:
            return []
        if self._proc is None:
            return self._read_kmsg(max_records)
        return self._read_pipe(max_records)

    def _read_kmsg(self, max_records: int) -> list[DropEvent]:
        out: list[DropEvent] = []
        fd = self._fd
        read = os.read
        parse = loglines.parse_kmsg_record
        ts, wall = time.monotonic(), time.time()
        for _ in range(max_records):
            try:
                raw = read(fd, self._bufsize)
            except BlockingIOError:
                break
            except BrokenPipeError:
                # Overwritten before we read it; the next read() returns the oldest record
                # left, and its sequence number says how many we missed.
                self.epipes += 1
                continue
            except OSError as exc:
                # EINVAL: the record is larger than the buffer, and the kernel keeps offering
                # the same record until a read is large enough. Cannot happen with 16 KiB
                # (the kernel's own cap is 8 KiB), but never spin on it.
                if exc.errno == errno.EINVAL and self._bufsize < _MAX_RECORD_BUF:
                    self._bufsize *= 2
                    continue
                if exc.errno == errno.EINVAL:
                    self._count_error(LogLineError("bad_record", None, "record too long"))
                    break
                raise
            if not raw:
                break
            seq, result = parse(raw, ts, wall)
            self.records += 1
            if seq is not None:
                if self.next_seq is not None and seq > self.next_seq:
                    self.lost += seq - self.next_seq
                if self.next_seq is None or seq >= self.next_seq:
                    self.next_seq = seq + 1
            if result is None:
                continue
            if isinstance(result, LogLineError):
                self._count_error(result)
                continue
            self._keep(result, out)
        return out

    def _read_pipe(self, max_records: int) -> list[DropEvent]:
        out: list[DropEvent] = []
        source: Literal["journal", "logfile"] = "journal" if self.mode == "journal" else "logfile"
        ts, wall = time.monotonic(), time.time()
        lines = 0
        while lines < max_records:
            try:
                chunk = os.read(self._fd, _PIPE_CHUNK)
            except BlockingIOError:
                break
            if not chunk:
                self._stopped()
                break
            data = self._partial + chunk
            *complete, self._partial = data.split(b"\n")
            if len(self._partial) > _MAX_PARTIAL:
                self._count_error(LogLineError("bad_record", None, "line too long"))
                self._partial = b""
            for line in complete:
                lines += 1
                self.records += 1
                result = loglines.parse_syslog_line(line, source, ts, wall)
                if result is None:
                    continue
                if isinstance(result, LogLineError):
                    self._count_error(result)
                    continue
                self._keep(result, out)
        return out

    def _keep(self, ev: DropEvent, out: list[DropEvent]) -> None:
        ifs = self._interfaces
        if ifs is not None and (ev.iif is not None or ev.oif is not None) \
                and ev.iif not in ifs and ev.oif not in ifs:
            self.filtered += 1
            return
        self.received += 1
        out.append(ev)

    def _count_error(self, err: LogLineError) -> None:
        self.malformed += 1
        self.errors[err.kind] += 1
        self.last_error = err

    def _stopped(self) -> None:
        proc = self._proc
        code = proc.poll() if proc is not None else None
        self._off_reason = f"{self.path} stopped (exit status {code})"
        self._close_fd()

    def stats(self) -> SourceStats:
        parts = [self.path]
        if self.lost:
            parts.append(f"{self.lost} kernel log records overwritten before fwtop read them "
                         "(not all were LOG lines)")
        if self.filtered:
            parts.append(f"{self.filtered} lines of other interfaces skipped")
        if self.errors:
            parts.append("unreadable: " + ", ".join(f"{k} {n}" for k, n in
                                                     sorted(self.errors.items())))
        if self.mode != "kmsg":
            parts.append("losses cannot be counted on this path")
        return SourceStats(self.mode, running=self._fd >= 0, received=self.received,
                           lost=self.lost, malformed=self.malformed, off_reason=self._off_reason,
                           detail="; ".join(parts))

    def _close_fd(self) -> None:
        if self._fd >= 0 and self._proc is None:
            os.close(self._fd)
        self._fd = -1

    def close(self) -> None:
        self._close_fd()
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=2)
            if proc.stdout is not None:
                proc.stdout.close()

    def __enter__(self) -> KmsgReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _NotACharDevice(Exception):
    """Internal: `path` is a regular file, to be followed rather than read as /dev/kmsg."""


def _next_record_seq(path: str) -> int | None:
    """The sequence number the next kernel record will get, learnt by reading the ring to its
    end on a second descriptor (a seek to the end does not tell it). Called after the reader's
    own descriptor seeked to the end, so a record written in between makes this at most an
    overestimate: the loss count can then only err low, by records written during start-up."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    last: int | None = None
    try:
        for _ in range(_MAX_DRAIN):
            try:
                raw = os.read(fd, _RECORD_BUF)
            except BlockingIOError:
                break
            except (BrokenPipeError, InterruptedError):
                continue
            except OSError:
                break
            if not raw:
                break
            head = raw[:raw.find(b";")].split(b",")
            if len(head) >= 2 and head[1].isdigit():
                last = int(head[1])
    finally:
        os.close(fd)
    return None if last is None else last + 1
