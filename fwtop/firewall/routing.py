"""The routing facts the evaluator needs, read in the calling thread's network namespace: which
addresses are local (and on which interface) and the routes (for the forward path's output
interface). /proc/thread-self/net is the thread's own namespace, so this works on a thread that
entered another namespace; getifaddrs (psutil) opens its netlink socket there too."""

from __future__ import annotations

import ipaddress
import socket

import psutil

from fwtop.core.evaluator import NetContext, Route

_PROC = "/proc/thread-self/net"


def _hex_ipv4(text: str) -> str:
    return str(ipaddress.IPv4Address(int(text, 16).to_bytes(4, "little")))


def routes_v4(path: str = f"{_PROC}/route") -> list[Route]:
    out: list[Route] = []
    try:
        with open(path) as f:
            next(f, None)
            for line in f:
                parts = line.split()
                if len(parts) < 8:
                    continue
                dev, dest, _gw, flags, metric, mask = (parts[0], parts[1], parts[2],
                                                       int(parts[3], 16), int(parts[6]), parts[7])
                if not flags & 0x1:  # RTF_UP
                    continue
                net = ipaddress.IPv4Network(f"{_hex_ipv4(dest)}/{_hex_ipv4(mask)}", strict=False)
                out.append(Route(str(net), dev, metric))
    except OSError:
        pass
    return out


def routes_v6(path: str = f"{_PROC}/ipv6_route") -> list[Route]:
    out: list[Route] = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) < 10:
                    continue
                dest, plen, metric, dev = parts[0], int(parts[1], 16), int(parts[5], 16), parts[9]
                addr = ipaddress.IPv6Address(bytes.fromhex(dest))
                if dev == "lo" and plen == 128:
                    continue  # local and anycast entries, not a way out
                out.append(Route(f"{addr}/{plen}", dev, metric))
    except OSError:
        pass
    return out


def local_addresses() -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for dev, addrs in psutil.net_if_addrs().items():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                out.append((a.address.split("%")[0], dev))
    return out


def net_context() -> NetContext:
    """Local addresses and routes of the calling thread's namespace."""
    return NetContext(tuple(local_addresses()), tuple(routes_v4() + routes_v6()))
