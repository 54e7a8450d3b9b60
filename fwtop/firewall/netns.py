"""Network namespaces: resolve `--netns NAME|PID` and run work inside one.

setns() moves only the calling thread; sockets it opens and processes it forks stay in that
namespace afterwards. The CLI enters once at start-up (before any thread exists), so every
reader and subprocess of that fwtop inherits it; tests and the service use `run_in`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"
T = TypeVar("T")


class NetnsError(Exception):
    """A namespace that does not exist or cannot be entered (message is one line for the user)."""


@dataclass(frozen=True, slots=True)
class NetNamespace:
    """A network namespace by the name the user gave and the path of its nsfs file."""

    name: str
    path: str

    def __str__(self) -> str:
        return self.name


def resolve(spec: str | None) -> NetNamespace | None:
    """None is fwtop's own namespace; digits are a PID; anything else a name in /run/netns."""
    if spec is None or spec == "":
        return None
    if spec.isdigit():
        path = f"/proc/{spec}/ns/net"
        if not os.path.exists(path):
            raise NetnsError(f"no process {spec}: cannot use its network namespace")
        return NetNamespace(f"pid {spec}", path)
    if "/" in spec or spec in (".", ".."):
        raise NetnsError(f"bad namespace name {spec!r}")
    path = os.path.join(NETNS_RUN_DIR, spec)
    if not os.path.exists(path):
        raise NetnsError(f"network namespace {spec!r} not found (see `ip netns list`)")
    return NetNamespace(spec, path)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _setns(fd: int) -> None:
    if _libc().setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        if err == 1:
            raise NetnsError("entering a network namespace needs root (CAP_SYS_ADMIN)")
        raise NetnsError(f"setns failed: {os.strerror(err)}")


def enter(ns: NetNamespace) -> None:
    """Move the calling thread into `ns` for good."""
    try:
        fd = os.open(ns.path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NetnsError(f"cannot open namespace {ns.name}: {exc.strerror}") from None
    try:
        _setns(fd)
    finally:
        os.close(fd)


@contextmanager
def entered(ns: NetNamespace | None) -> Iterator[None]:
    """Run a block with the calling thread inside `ns`, then return it to where it was."""
    if ns is None:
        yield
        return
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter(ns)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def run_in(ns: NetNamespace | None, fn: Callable[[], T]) -> T:
    """Call `fn` on a fresh thread inside `ns` and return its result (or raise its exception),
    leaving the caller's own thread where it is."""
    if ns is None:
        return fn()
    box: dict[str, object] = {}

    def worker() -> None:
        try:
            enter(ns)
            box["result"] = fn()
        except BaseException as exc:  # handed back to the caller's thread below
            box["error"] = exc

    thread = threading.Thread(target=worker, name=f"netns-{ns.name}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


def interface_names() -> dict[int, str]:
    """Index -> name of the interfaces of the calling thread's namespace."""
    return {idx: name for idx, name in _if_nameindex()}


def _if_nameindex() -> list[tuple[int, str]]:
    import socket

    try:
        return socket.if_nameindex()
    except OSError:
        return []
