"""Write, extend and remove fwtop's temporary allows, in the calling thread's namespace.

Objects are found by their `fwtop:<id>` tag (nft: the rule's and the set's comment, then the
handle; iptables: the exact rule spec, which carries the tag), never by position alone, so rules
other tools added meanwhile (docker, fail2ban) are never touched.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

from fwtop.core.firewalld import FirewalldError
from fwtop.core.tempallow import AllowError, Plan, utc_stamp
from fwtop.firewall.libnft import OUTPUT_HANDLE, OUTPUT_JSON, Nft, NftError


def _tool(backend: str, family: str) -> str:
    base = "ip6tables" if family == "ip6" else "iptables"
    name = f"{base}-legacy" if backend == "iptables-legacy" else f"{base}-nft"
    if shutil.which(name) is None:
        raise AllowError(f"{name} is not installed")
    return name


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def apply(plan: Plan, bus: str | None = None) -> int | None:
    """Write the plan in one transaction; returns the nft rule handle (None for iptables and
    firewalld)."""
    if plan.rich_rule is not None and plan.zone is not None:
        from fwtop.firewall import firewalld

        try:
            firewalld.check_owner(bus)
            firewalld.add_rich_rule(plan.zone, plan.rich_rule, plan.ttl, bus)
        except FirewalldError as exc:
            raise AllowError(str(exc)) from None
        return None
    if plan.nft_script is not None:
        nft = Nft()
        try:
            nft.check(plan.nft_script)
        except NftError as exc:
            raise AllowError(f"nft refused the change, nothing was written: {exc}") from None
        handles = find_nft_rules(nft, plan.family, plan.table, plan.tag)
        return handles[0] if handles else None
    tool = _tool(plan.backend, plan.family)
    where = ["-I", plan.chain, str(plan.ipt_position)] if plan.ipt_position else \
        ["-A", plan.chain]
    proc = _run([tool, "-t", plan.table, *where, *plan.ipt_argv])
    if proc.returncode != 0:
        raise AllowError(f"{tool} refused the change, nothing was written: "
                         f"{_first(proc.stderr)}")
    return None


def _first(text: str) -> str:
    return next((ln for ln in text.splitlines() if ln.strip()), "unknown error").strip()


def _table_json(nft: Nft, family: str, table: str) -> list[dict[str, Any]]:
    res = nft.run(f"list table {family} {table}", OUTPUT_JSON | OUTPUT_HANDLE)
    if res.rc != 0:
        return []  # the table is gone: nothing of ours is left in it
    items: list[dict[str, Any]] = json.loads(res.output).get("nftables", [])
    return items


def find_nft_rules(nft: Nft, family: str, table: str, tag: str) -> list[int]:
    return [item["rule"]["handle"] for item in _table_json(nft, family, table)
            if "rule" in item and item["rule"].get("comment") == tag]


def remove_nft(family: str, table: str, tag: str, set_name: str | None) -> bool:
    """Delete every rule of the table tagged `tag`, then its set, in one transaction; True if
    anything was there."""
    nft = Nft()
    items = _table_json(nft, family, table)
    cmds = [f"delete rule {family} {table} {item['rule']['chain']} handle "
            f"{item['rule']['handle']}" for item in items
            if "rule" in item and item["rule"].get("comment") == tag]
    for item in items:
        s = item.get("set")
        if s and s.get("name") == set_name and s.get("comment") == tag:
            cmds.append(f"delete set {family} {table} {set_name}")
    if not cmds:
        return False
    try:
        nft.check("\n".join(cmds) + "\n")
    except NftError as exc:
        raise AllowError(f"could not remove {tag}: {exc}") from None
    return True


def remove_ipt(backend: str, family: str, table: str, chain: str, argv: list[str]) -> bool:
    """`-D` with the exact spec fwtop wrote (it carries the tag), repeated while it matches."""
    tool = _tool(backend, family)
    removed = False
    for _ in range(16):
        proc = _run([tool, "-t", table, "-D", chain, *argv])
        if proc.returncode != 0:
            break
        removed = True
    return removed


def extend_nft(family: str, table: str, set_name: str, element: str, ttl: int) -> None:
    nft = Nft()
    where = f"{family} {table} {set_name}"
    batch = (f"delete element {where} {{ {element} }}\n"
             f"add element {where} {{ {element} timeout {ttl}s }}\n")
    try:
        nft.check(batch)
    except NftError:
        try:  # the element had already expired: add it again
            nft.check(f"add element {where} {{ {element} timeout {ttl}s }}\n")
        except NftError as exc:
            raise AllowError(f"could not extend: {exc}") from None


def _tagged_position(tool: str, table: str, chain: str, tag: str) -> int | None:
    proc = _run([_save_tool(tool), "-t", table])
    pos = 0
    for line in proc.stdout.splitlines():
        if line.startswith(f"-A {chain} "):
            pos += 1
            if f'"{tag}"' in line or f" {tag} " in f"{line} ":
                return pos
    return None


def _save_tool(tool: str) -> str:
    base, _, flavour = tool.partition("-")
    return f"{base}-{flavour}-save"


def extend_ipt(backend: str, family: str, table: str, chain: str, argv: list[str],
               tag: str, expires_at: float) -> list[str]:
    """Put a copy with the new deadline right where the old rule is (found by its tag), then
    delete the old one by its spec; returns the new spec."""
    tool = _tool(backend, family)
    new = list(argv)
    i = new.index("--datestop")
    new[i + 1] = utc_stamp(expires_at)
    pos = _tagged_position(tool, table, chain, tag)
    where = ["-I", chain, str(pos)] if pos else ["-A", chain]
    proc = _run([tool, "-t", table, *where, *new])
    if proc.returncode != 0:
        raise AllowError(f"could not extend: {_first(proc.stderr)}")
    remove_ipt(backend, family, table, chain, argv)
    return new


def remove_firewalld(zone: str, rule: str, bus: str | None) -> bool:
    """Remove fwtop's rich rule (by its exact text) from the zone; False if firewalld's own
    timeout (or a reload) already removed it. FirewalldError when firewalld is unreachable."""
    from fwtop.firewall import firewalld

    firewalld.check_owner(bus)
    return firewalld.remove_rich_rule(zone, rule, bus)


def extend_firewalld(zone: str, rule: str, ttl: int, bus: str | None) -> None:
    """firewalld cannot change a rule's timeout: remove the rule (which cancels its timer) and
    add it again with the new one. The flow is refused for the few milliseconds between."""
    from fwtop.firewall import firewalld

    try:
        firewalld.check_owner(bus)
        firewalld.remove_rich_rule(zone, rule, bus)
        firewalld.add_rich_rule(zone, rule, ttl, bus)
    except FirewalldError as exc:
        raise AllowError(f"could not extend: {exc}") from None
