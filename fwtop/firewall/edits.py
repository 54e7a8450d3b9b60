"""Read and rewrite one chain, in the calling thread's namespace, each write one transaction:
one nft batch (native nft, rules kept by handle) or one `iptables-restore --noflush` COMMIT with
`-F CHAIN` and the chain's rules (iptables-nft and legacy). Also: the dry runs that validate an
edit before anything changes, the model of a typed nft rule (parsed by nft itself in a private,
empty network namespace), the conntrack listing for the impact, and systemd's transient timer.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import shutil
import subprocess
import threading
from typing import Any

from fwtop.core.edits import ChainState, EditError, parse_nft_chain, parse_save_chain
from fwtop.firewall.libnft import OUTPUT_HANDLE, OUTPUT_JSON, OUTPUT_STATELESS, Nft, NftError

CLONE_NEWNET = 0x40000000


def _run(argv: list[str], stdin: str | None = None,
         timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout,
                          check=False)


def _first(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "unknown error")


def ipt_tool(backend: str, family: str, kind: str) -> str:
    """iptables-nft-save, ip6tables-legacy-restore, ..."""
    base = "ip6tables" if family == "ip6" else "iptables"
    flavour = "legacy" if backend == "iptables-legacy" else "nft"
    name = f"{base}-{flavour}-{kind}"
    if shutil.which(name) is None:
        raise EditError(f"{name} is not installed")
    return name


# --- reading ----------------------------------------------------------------------------------


def read_chain(backend: str, family: str, table: str, chain: str) -> ChainState:
    if backend == "nft":
        res = Nft().run(f"list chain {family} {table} {chain}", OUTPUT_HANDLE | OUTPUT_STATELESS)
        if res.rc != 0:
            raise EditError(f"no chain {family} {table} {chain}: {_first(res.error)}")
        return parse_nft_chain(res.output, family, table, chain)
    proc = _run([ipt_tool(backend, family, "save"), "-c", "-t", table])
    if proc.returncode != 0:
        raise EditError(f"cannot read {family} {table}: {_first(proc.stderr)}")
    state = parse_save_chain(proc.stdout, backend, family, table, chain)
    if state is None:
        raise EditError(f"no chain {chain} in the {backend} {family} {table} table")
    return state


def table_listing(family: str, table: str) -> str:
    return Nft().check(f"list table {family} {table}", OUTPUT_STATELESS)


# --- validating -------------------------------------------------------------------------------


def nft_dry_run(batch: str) -> None:
    """`nft -c`: the batch as the kernel would take it, nothing committed."""
    if shutil.which("nft") is not None:
        proc = _run(["nft", "-c", "-f", "-"], stdin=batch)
        if proc.returncode != 0:
            raise EditError(f"nft refused it: {_first(proc.stderr)}")
        return
    lib = ctypes.CDLL(ctypes.util.find_library("nftables") or "libnftables.so.1")
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_set_dry_run.argtypes = [ctypes.c_void_p, ctypes.c_bool]
    lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    ctx = lib.nft_ctx_new(0)
    try:
        lib.nft_ctx_set_dry_run(ctx, True)
        lib.nft_ctx_buffer_error(ctx)
        if lib.nft_run_cmd_from_buffer(ctx, batch.encode()) != 0:
            err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
            raise EditError(f"nft refused it: {_first(err)}")
    finally:
        lib.nft_ctx_free(ctx)


def restore_argv(backend: str, family: str, test: bool = False) -> list[str]:
    argv = [ipt_tool(backend, family, "restore"), "--noflush", "--counters", "-w", "10"]
    return [*argv, "--test"] if test else argv


def restore_dry_run(backend: str, family: str, script: str) -> None:
    """`iptables-restore --test`: legacy checks it against the kernel's table; iptables-nft only
    parses it (the real write is one nft transaction, so a refusal there changes nothing)."""
    proc = _run(restore_argv(backend, family, test=True), stdin=script)
    if proc.returncode != 0:
        raise EditError(f"{ipt_tool(backend, family, 'restore')} refused it: "
                        f"{_first(proc.stderr)}")


def xtables_target_known(name: str, family: str) -> bool | None:
    """Whether iptables has a target extension called `name` (None: cannot tell here).
    iptables-nft-restore --test does not look: it would take `-j TYPO` for a chain and only the
    kernel would refuse it."""
    import glob

    dirs = [os.environ.get("XTABLES_LIBDIR", ""), *glob.glob("/usr/lib/*/xtables"),
            "/usr/lib/xtables", "/usr/lib64/xtables", "/lib/xtables", "/usr/local/lib/xtables"]
    found = [d for d in dirs if d and os.path.isdir(d)]
    if not found:
        return None
    prefixes = ("libxt_", "libip6t_" if family == "ip6" else "libipt_")
    return any(os.path.exists(os.path.join(d, f"{p}{name}.so")) for d in found for p in prefixes)


# --- writing ----------------------------------------------------------------------------------


def write_nft(batch: str) -> None:
    if not batch.strip():
        return
    try:
        Nft().check(batch)
    except NftError as exc:
        raise EditError(f"nft refused the change, nothing was written: {exc}") from None


def write_restore(backend: str, family: str, script: str) -> None:
    proc = _run(restore_argv(backend, family), stdin=script)
    if proc.returncode != 0:
        raise EditError(f"{ipt_tool(backend, family, 'restore')} refused the change, nothing "
                        f"was written: {_first(proc.stderr)}")


# --- a typed nft rule, parsed by nft ----------------------------------------------------------


def _scratch_table(listing: str) -> str:
    """The table's listing made loadable in an empty namespace: base chains become regular
    chains (no hooks, devices or flowtables needed), table flags (owner, dormant) go."""
    out: list[str] = []
    skip_block = 0
    for line in listing.splitlines():
        s = line.strip()
        if skip_block:
            skip_block += s.count("{") - s.count("}")
            continue
        if s.startswith("flowtable "):
            skip_block = s.count("{") - s.count("}")
            continue
        if s.startswith("type ") and " hook " in s:
            continue
        if s.startswith("devices ") or (line.startswith("\tflags ") and not
                                        line.startswith("\t\t")):
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def _in_scratch_namespace(fn: Any) -> Any:
    """Run `fn` on a thread that has a network namespace of its own, empty, which the kernel
    removes when the thread ends: nothing of it touches any real firewall."""
    box: dict[str, Any] = {}

    def worker() -> None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            if libc.unshare(CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
            box["result"] = fn()
        except BaseException as exc:  # handed back below
            box["error"] = exc

    t = threading.Thread(target=worker, name="fwtop-scratch-netns", daemon=True)
    t.start()
    t.join(30)
    if "error" in box:
        raise box["error"]
    return box.get("result")


def parse_nft_rule(family: str, table: str, chain: str, text: str,
                   listing: str) -> tuple[dict[str, Any] | None, str | None]:
    """nft's own JSON and listing of a typed rule, from a copy of its table in a private empty
    namespace; (None, None) when even that cannot load it (then the impact is uncertain)."""

    def work() -> tuple[dict[str, Any] | None, str | None]:
        nft = Nft()
        where = f"{family} {table} {chain}"
        attempts = [_scratch_table(listing) + f"add rule {where} {text}\n",
                    f"add table {family} {table}\nadd chain {where}\nadd rule {where} {text}\n"]
        for batch in attempts:
            if nft.run(batch).rc == 0:
                break
            nft.run(f"delete table {family} {table}")
        else:
            return None, None
        res = nft.run(f"list chain {where}", OUTPUT_JSON | OUTPUT_HANDLE)
        txt = nft.run(f"list chain {where}", OUTPUT_STATELESS | OUTPUT_HANDLE)
        rules = [o["rule"] for o in json.loads(res.output).get("nftables", []) if "rule" in o]
        if not rules:
            return None, None
        state = parse_nft_chain(txt.output, family, table, chain)
        return rules[-1], state.rules[-1].text if state.rules else None

    try:
        result: tuple[dict[str, Any] | None, str | None] = _in_scratch_namespace(work)
    except (OSError, NftError, ValueError):
        return None, None
    return result


# --- traffic ----------------------------------------------------------------------------------


def conntrack_listing() -> tuple[str | None, str | None]:
    """`conntrack -L` of the calling thread's namespace: (text, None) or (None, why not)."""
    if shutil.which("conntrack") is None:
        return None, "conntrack (conntrack-tools) is not installed: accepted flows come only " \
                     "from --replay flow lines"
    proc = _run(["conntrack", "-L"], timeout=15)
    if proc.returncode != 0:
        return None, f"conntrack -L failed: {_first(proc.stderr)}"
    return proc.stdout, None


# --- systemd, the second line of defence ------------------------------------------------------


def systemd_status() -> tuple[bool, str]:
    """Whether a transient systemd timer can back the reverter up, and if not, why."""
    if shutil.which("systemd-run") is None:
        return False, "systemd-run is not installed"
    try:
        with open("/proc/1/comm") as f:
            init = f.read().strip()
    except OSError:
        init = "?"
    if init != "systemd" or not os.path.isdir("/run/systemd/system"):
        return False, f"no systemd timer: PID 1 is {init}, not systemd"
    return True, "systemd transient timer"


def timer_unit(edit_id: str) -> str:
    return f"fwtop-revert-{edit_id}"


def systemd_timer_argv(edit_id: str, seconds: float, python: str, env: dict[str, str]) -> list[str]:
    argv = ["systemd-run", "--quiet", "--collect", f"--unit={timer_unit(edit_id)}",
            f"--on-active={max(1, int(seconds + 0.999))}s", "--timer-property=AccuracySec=1s"]
    for key in ("FWTOP_STATE_DIR", "PYTHONPATH"):
        if key in env:
            argv.append(f"--setenv={key}={env[key]}")
    return [*argv, python, "-m", "fwtop.service.reverter", edit_id, "--now"]


def start_timer(argv: list[str]) -> str | None:
    proc = _run(argv)
    return None if proc.returncode == 0 else _first(proc.stderr)


def stop_timer(edit_id: str) -> None:
    if shutil.which("systemctl") is not None:
        _run(["systemctl", "stop", f"{timer_unit(edit_id)}.timer"], timeout=10)
