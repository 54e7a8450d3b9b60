"""Firewall backends: read every backend of the calling thread's namespace into one Ruleset."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from fwtop.core.model import BackendStatus, Ruleset, Table
from fwtop.firewall import legacy, nft
from fwtop.firewall.libnft import Nft, NftError


class FirewallError(Exception):
    """Reading the firewall failed in a way the user must fix (one line, no traceback)."""


def require_root() -> None:
    if os.geteuid() != 0:
        raise FirewallError("fwtop reads the kernel's firewall and needs root: run it with sudo")


def load_ruleset() -> Ruleset:
    """Every table of every backend found (nft, iptables-nft, firewalld, legacy) in one model.

    A backend that cannot be read is reported in `backends` with the reason, not raised, so
    one missing tool never hides the others."""
    tables: list[Table] = []
    warnings: list[str] = []
    status: list[BackendStatus] = []
    try:
        nft_tables, nft_warnings = nft.load(Nft())
        tables += nft_tables
        warnings += nft_warnings
        found = {t.backend for t in nft_tables}
        status.append(BackendStatus("nft", True))
        status.append(BackendStatus("iptables-nft", True,
                                    None if "iptables-nft" in found else "no iptables-nft tables"))
        if "firewalld" in found:
            status.append(BackendStatus("firewalld", True))
    except NftError as exc:
        status.append(BackendStatus("nft", False, str(exc)))
        status.append(BackendStatus("iptables-nft", False, str(exc)))
    ok, reason = legacy.available()
    if ok:
        try:
            tables += legacy.load()
            live = legacy.live_tables("ip") + legacy.live_tables("ip6")
            status.append(BackendStatus("iptables-legacy", True,
                                        None if live else "no legacy tables"))
        except legacy.LegacyUnavailable as exc:
            status.append(BackendStatus("iptables-legacy", False, str(exc)))
    else:
        status.append(BackendStatus("iptables-legacy", False, reason))
    _return_freed_memory()
    return Ruleset(tuple(tables), tuple(status), None, tuple(warnings))


def _return_freed_memory() -> None:
    """A big ruleset's listings are decoded and dropped; glibc keeps that heap unless asked, and
    fwtop is a long-running monitor whose footprint users watch."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
