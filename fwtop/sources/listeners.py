"""Who listens on a port, in the calling thread's network namespace.

psutil.net_connections reads /proc/net (the process's first thread's namespace), which is wrong
on a thread that entered another namespace; this reads /proc/thread-self/net/{tcp,udp}[6] and
maps the socket's inode to a process by scanning /proc/<pid>/fd."""

from __future__ import annotations

import os
from dataclasses import dataclass

_PROC = "/proc/thread-self/net"
TCP_LISTEN = "0A"
UDP_UNCONNECTED = "07"


@dataclass(frozen=True, slots=True)
class Listener:
    proto: str
    port: int
    inode: int
    pid: int | None
    name: str | None

    def to_json(self) -> dict[str, object]:
        return {"pid": self.pid, "name": self.name}


def _sockets(proto: str, port: int) -> list[int]:
    inodes: list[int] = []
    state = TCP_LISTEN if proto == "tcp" else UDP_UNCONNECTED
    for suffix in ("", "6"):
        try:
            with open(f"{_PROC}/{proto}{suffix}") as f:
                next(f, None)
                for line in f:
                    parts = line.split()
                    if len(parts) < 10 or parts[3] != state:
                        continue
                    local_port = int(parts[1].rsplit(":", 1)[1], 16)
                    if local_port == port:
                        inodes.append(int(parts[9]))
        except (OSError, ValueError):
            continue
    return inodes


def _owner(inodes: set[int]) -> tuple[int, str] | None:
    wanted = {f"socket:[{i}]" for i in inodes}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fd_dir = f"/proc/{entry.name}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd}") in wanted:
                    with open(f"/proc/{entry.name}/comm") as f:
                        return int(entry.name), f.read().strip()
            except OSError:
                continue
    return None


def listener(proto: str, port: int) -> Listener | None:
    """The socket listening on `proto`/`port` here (TCP LISTEN, or a bound UDP socket)."""
    if proto not in ("tcp", "udp"):
        return None
    inodes = _sockets(proto, port)
    if not inodes:
        return None
    owner = _owner(set(inodes))
    pid, name = owner if owner else (None, None)
    return Listener(proto, port, inodes[0], pid, name)
