"""The drop-reason tracepoint reader: every packet netfilter drops, rule or policy, logged or not.

Owns a tracefs instance of fwtop's own (`instances/fwtop-<pid>`: its own ring buffer, so the
system's main trace buffer and other tracing users are left alone), with `skb/kfree_skb` enabled
and filtered in the kernel to `reason == NETFILTER_DROP` (the number is read from the event's
format file, never assumed), and reads the instance's trace_pipe.

Limits, by the kernel's design: the tracepoint is host-wide (it fires for every network
namespace) and carries no namespace, no rule and no 5-tuple, only the ethertype, so it says
"netfilter dropped an IPv4 packet" and nothing more; it needs root in the host. The instance is
removed on close(), by an atexit handler, and as a stale leftover by the next fwtop to start
once its pid is gone (a crash cannot leave it behind for good).
"""

from __future__ import annotations

import atexit
import errno
import os
import re
import time
from pathlib import Path

from fwtop.core.events import DropEvent, SourceStats

TRACEFS_ROOTS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
EVENT = "events/skb/kfree_skb"
INSTANCE_PREFIX = "fwtop-"
REASON = "NETFILTER_DROP"
_BUFFER_KB = 4096  # per CPU: a few seconds of a heavy drop flood between two reads
_CHUNK = 1 << 16
_MAX_PARTIAL = 1 << 16
_FAMILIES = {0x0800: "ip", 0x86DD: "ip6", 0x0806: "arp"}
_STATS_EVERY_S = 0.5
_INSTANCE_NAME = re.compile(r"fwtop-(\d+)(?:-\d+)?")


class TracepointUnavailable(Exception):
    """The tracepoint cannot be used here; the message is one line meant for the user."""


def tracefs_root() -> str | None:
    """Where tracefs is mounted (fwtop never mounts it itself), or None."""
    for root in TRACEFS_ROOTS:
        if os.path.isdir(os.path.join(root, "instances")) and \
                os.path.exists(os.path.join(root, "trace_pipe")):
            return root
    return None


def drop_reason_number(format_text: str, name: str = REASON) -> int | None:
    """The value of `name` in the event format's `__print_symbolic(REC->reason, {12, "..."})`."""
    m = re.search(r"\{\s*(\d+)\s*,\s*\"" + re.escape(name) + r"\"\s*\}", format_text)
    return int(m.group(1)) if m else None


def _probe() -> tuple[str, int]:
    """(tracefs root, NETFILTER_DROP's number) or TracepointUnavailable with the reason."""
    if os.geteuid() != 0:
        raise TracepointUnavailable("the drop-reason tracepoint needs root")
    root = tracefs_root()
    if root is None:
        raise TracepointUnavailable(
            "tracefs is not mounted at /sys/kernel/tracing or /sys/kernel/debug/tracing "
            "(mount -t tracefs nodev /sys/kernel/tracing to enable drop reasons)")
    fmt_path = os.path.join(root, EVENT, "format")
    try:
        fmt = Path(fmt_path).read_text()
    except FileNotFoundError:
        raise TracepointUnavailable("this kernel has no skb:kfree_skb tracepoint") from None
    except OSError as exc:
        raise TracepointUnavailable(f"cannot read {fmt_path}: {exc.strerror}") from None
    if "reason" not in fmt:
        raise TracepointUnavailable("skb:kfree_skb has no drop reason on this kernel (< 5.17)")
    number = drop_reason_number(fmt)
    if number is None:
        raise TracepointUnavailable(f"this kernel's drop reasons have no {REASON}")
    return root, number


def available() -> tuple[bool, str | None]:
    """Whether DropReasonTracepoint can start here, and if not why (one line)."""
    try:
        _probe()
    except TracepointUnavailable as exc:
        return False, str(exc)
    return True, None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_instances(root: str) -> list[str]:
    """Remove fwtop-<pid> instances whose process is gone; returns the names removed."""
    removed: list[str] = []
    base = os.path.join(root, "instances")
    try:
        names = os.listdir(base)
    except OSError:
        return removed
    for name in names:
        m = _INSTANCE_NAME.fullmatch(name)
        if m is None or int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))):
            continue
        try:
            os.rmdir(os.path.join(base, name))
            removed.append(name)
        except OSError:
            pass  # in use or already gone: nothing of ours to force
    return removed


def parse_trace_line(line: str, ts: float, wall: float) -> DropEvent | None:
    """One trace_pipe line of skb:kfree_skb -> DropEvent (None for anything else)."""
    k = line.find("kfree_skb: ")
    if k < 0:
        return None
    p = line.find(" protocol=", k)
    family = None
    if p >= 0:
        end = line.find(" ", p + 10)
        raw = line[p + 10:end] if end >= 0 else line[p + 10:]
        try:
            family = _FAMILIES.get(int(raw, 0))
        except ValueError:
            family = None
    return DropEvent(source="tracepoint", ts=ts, wall=wall, family=family, reason=REASON)


def _lost_marker(line: str) -> int:
    # "CPU:1 [LOST 42 EVENTS]": the ring wrapped before we read it.
    m = re.search(r"\[LOST (\d+) EVENTS\]", line)
    return int(m.group(1)) if m else 0


class DropReasonTracepoint:
    """Reads NETFILTER_DROP events from a tracefs instance of fwtop's own (host-wide)."""

    def __init__(self, buffer_kb: int = _BUFFER_KB) -> None:
        root, number = _probe()
        remove_stale_instances(root)
        self.reason_number = number
        self.instance = self._make_instance(root)
        self._fd = -1
        self._partial = b""
        self.received = 0
        self.lost_markers = 0
        self._lost = 0
        self._stats_at = 0.0
        self._closed = False
        atexit.register(self.close)
        try:
            self._write("buffer_size_kb", str(buffer_kb), required=False)
            # Wake a poller on the first event, not when the buffer is half full.
            self._write("buffer_percent", "0", required=False)
            self._write(f"{EVENT}/filter", f"reason == {number}")
            self._write(f"{EVENT}/enable", "1")
            self._fd = os.open(os.path.join(self.instance, "trace_pipe"),
                               os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            self.close()
            raise TracepointUnavailable(
                f"cannot enable skb:kfree_skb in {self.instance}: {exc.strerror}") from None
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _make_instance(root: str) -> str:
        base = os.path.join(root, "instances")
        for n in range(100):
            name = f"{INSTANCE_PREFIX}{os.getpid()}" + (f"-{n}" if n else "")
            path = os.path.join(base, name)
            try:
                os.mkdir(path)
                return path
            except FileExistsError:
                continue  # a second reader in this process
            except OSError as exc:
                raise TracepointUnavailable(
                    f"cannot create a tracefs instance in {base}: {exc.strerror}") from None
        raise TracepointUnavailable(f"too many fwtop tracefs instances in {base}")

    def _write(self, rel: str, value: str, required: bool = True) -> None:
        try:
            with open(os.path.join(self.instance, rel), "w") as f:
                f.write(value)
        except OSError:
            if required:
                raise

    def fileno(self) -> int:
        return self._fd

    def read(self, max_lines: int = 4096) -> list[DropEvent]:
        out: list[DropEvent] = []
        if self._fd < 0:
            return out
        ts, wall = time.monotonic(), time.time()
        lines = 0
        while lines < max_lines:
            try:
                chunk = os.read(self._fd, _CHUNK)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            if not chunk:
                break
            *complete, self._partial = (self._partial + chunk).split(b"\n")
            if len(self._partial) > _MAX_PARTIAL:
                self._partial = b""
            for raw in complete:
                lines += 1
                line = raw.decode("utf-8", "replace")
                ev = parse_trace_line(line, ts, wall)
                if ev is not None:
                    out.append(ev)
                elif "LOST" in line:
                    self.lost_markers += _lost_marker(line)
        self.received += len(out)
        return out

    def _ring_lost(self) -> int:
        """Overruns and dropped events of this instance's ring, summed over CPUs."""
        total = 0
        base = os.path.join(self.instance, "per_cpu")
        try:
            cpus = os.listdir(base)
        except OSError:
            return self._lost
        for cpu in cpus:
            try:
                text = Path(base, cpu, "stats").read_text()
            except OSError:
                continue
            for line in text.splitlines():
                key, _, value = line.partition(":")
                if key in ("overrun", "dropped events"):
                    try:
                        total += int(value)
                    except ValueError:
                        pass
        return total

    def stats(self) -> SourceStats:
        now = time.monotonic()
        if self._fd >= 0 and now - self._stats_at >= _STATS_EVERY_S:
            self._stats_at = now
            # The [LOST N EVENTS] markers and the ring's counters report the same losses;
            # whichever saw more is the better count.
            self._lost = max(self._ring_lost(), self.lost_markers)
        return SourceStats("tracepoint", running=self._fd >= 0, received=self.received,
                           lost=self._lost,
                           detail=f"skb:kfree_skb reason == {self.reason_number} ({REASON}), "
                                  "host-wide: no namespace, rule or addresses")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        try:
            self._write(f"{EVENT}/enable", "0", required=False)
        except Exception:
            pass
        # rmdir of an instance fails with EBUSY while a file of it is still open somewhere.
        for _ in range(50):
            try:
                os.rmdir(self.instance)
                return
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    return
                time.sleep(0.02)

    def __enter__(self) -> DropReasonTracepoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
