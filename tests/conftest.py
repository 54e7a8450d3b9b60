"""Shared fixtures: throwaway network namespaces that are always deleted, and root checks."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from fwtop.core.model import Rule

ROOT = os.geteuid() == 0


def needs(*binaries: str) -> pytest.MarkDecorator:
    """Skip unless root and every binary is installed (CI installs them all, so nothing skips)."""
    missing = [b for b in binaries if shutil.which(b) is None]
    reason = "needs root" if not ROOT else f"missing: {', '.join(missing)}"
    return pytest.mark.skipif(not ROOT or bool(missing), reason=reason)


def ns_run(ns: str, *argv: str, input: str | None = None, check: bool = True,
           timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a command inside a namespace (argument list, never a shell string)."""
    proc = subprocess.run(["ip", "netns", "exec", ns, *argv], input=input, text=True,
                          capture_output=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} in {ns} failed: {proc.stderr.strip()}")
    return proc


class Namespaces:
    """Creates namespaces with unique names and deletes every one of them on close."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def new(self, tag: str = "t") -> str:
        name = f"fwt{tag}{secrets.token_hex(3)}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.names.append(name)
        ns_run(name, "ip", "link", "set", "lo", "up")
        return name

    def veth(self, a: str, b: str, addr_a: str, addr_b: str) -> tuple[str, str]:
        """A veth pair with one end in each namespace (never in the host's)."""
        suffix = secrets.token_hex(2)
        ia, ib = f"va{suffix}", f"vb{suffix}"
        ns_run(a, "ip", "link", "add", ia, "type", "veth", "peer", "name", ib, "netns", b)
        ns_run(a, "ip", "addr", "add", addr_a, "dev", ia)
        ns_run(b, "ip", "addr", "add", addr_b, "dev", ib)
        ns_run(a, "ip", "link", "set", ia, "up")
        ns_run(b, "ip", "link", "set", ib, "up")
        return ia, ib

    def close(self) -> None:
        for name in self.names:
            # Processes started inside would keep the namespace alive: end them first.
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
            for pid in pids.stdout.split():
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", name], check=False)
        self.names.clear()


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    nss = Namespaces()
    try:
        yield nss
    finally:
        nss.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI every dependency is installed, so a skipped test means a broken install step."""
    if os.environ.get("CI") != "true":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter is not None else 0
    if skipped and exitstatus == 0:
        print(f"\nCI: {skipped} test(s) skipped; everything is installed here, so that fails")
        session.exitstatus = 1


def input_rule(pos: int, text: str) -> Rule:
    """An iptables-nft `filter INPUT` rule at position `pos` from its iptables arguments, as
    the loader would model it (for tests that build a Ruleset by hand)."""
    from fwtop.core.iptables_syntax import parse_rule_args
    from fwtop.core.model import Counters, rule_key

    matches, verdict, target, comment = parse_rule_args(text.split())
    cid = ("iptables-nft", "ip", "filter", "INPUT")
    return Rule("iptables-nft", "ip", "filter", "INPUT", pos, pos + 3, "-A INPUT " + text,
                verdict, target, matches, Counters(0, 0), comment, None,
                rule_key(cid, pos + 3, text))
