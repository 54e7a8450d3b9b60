"""firewall-cmd, thinly: run it (argument lists, never a shell), turn its failures into one-line
messages, and check that the firewalld it reaches is the one that owns the namespace fwtop works
in (firewall-cmd talks D-Bus, which knows nothing of network namespaces).

FWTOP_FIREWALL_CMD names the firewall-cmd to run (default: firewall-cmd on PATH); the D-Bus
system bus is DBUS_SYSTEM_BUS_ADDRESS as usual, or the `bus` a journal record carries.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from fwtop.core.firewalld import FirewalldError, ZoneChange, zone_argv

TIMEOUT_S = 30.0
_FIREWALLD = "org.fedoraproject.FirewallD1"
_UINT = re.compile(r"uint32\s+(\d+)")


def bus_address() -> str | None:
    """The bus firewall-cmd will use (None: the machine's system bus)."""
    return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or None


def _command() -> list[str]:
    cmd = os.environ.get("FWTOP_FIREWALL_CMD", "firewall-cmd")
    if shutil.which(cmd) is None:
        raise FirewalldError(f"{cmd} is not installed (firewalld's command-line client)")
    return [cmd]


def _env(bus: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if bus:
        env["DBUS_SYSTEM_BUS_ADDRESS"] = bus
    return env


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "no message"


def run(argv: list[str], bus: str | None = None, check: bool = True) -> \
        subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run([*_command(), *argv], capture_output=True, text=True,
                              timeout=TIMEOUT_S, check=False, env=_env(bus))
    except subprocess.TimeoutExpired:
        raise FirewalldError(f"firewall-cmd {' '.join(argv)}: no answer from firewalld in "
                             f"{TIMEOUT_S:g} s") from None
    if check and proc.returncode != 0:
        raise FirewalldError(f"firewall-cmd {' '.join(argv)}: "
                             f"{_one_line(proc.stderr or proc.stdout)}")
    return proc


def query(argv: list[str], bus: str | None = None) -> bool:
    """firewall-cmd --query-*: exit 0 = yes, 1 = no, anything else is an error."""
    proc = run(argv, bus, check=False)
    if proc.returncode in (0, 1):
        return proc.returncode == 0
    raise FirewalldError(f"firewall-cmd {' '.join(argv)}: {_one_line(proc.stderr or proc.stdout)}")


def running(bus: str | None = None) -> bool:
    try:
        proc = run(["--state"], bus, check=False)
    except FirewalldError:
        return False
    return proc.returncode == 0 and proc.stdout.strip() == "running"


def daemon_pid(bus: str | None = None) -> int | None:
    """The pid of the process that owns firewalld's name on the bus (None: cannot tell)."""
    tool = shutil.which("dbus-send")
    if tool is None:
        return None
    argv = [tool, "--system", "--print-reply", "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus", "org.freedesktop.DBus.GetConnectionUnixProcessID",
            f"string:{_FIREWALLD}"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S,
                              check=False, env=_env(bus))
    except subprocess.TimeoutExpired:
        return None
    m = _UINT.search(proc.stdout)
    return int(m.group(1)) if m else None


def check_owner(bus: str | None = None) -> int:
    """Refuse unless the firewalld on the bus runs in the calling thread's network namespace
    (fwtop's work runs in a thread that entered the target namespace)."""
    pid = daemon_pid(bus)
    if pid is None:
        if not running(bus):
            raise FirewalldError("firewalld is not running (or not reachable on D-Bus"
                                 f"{' at ' + bus if bus else ''}): nothing was changed")
        raise FirewalldError("cannot tell which network namespace that firewalld runs in "
                             "(dbus-send missing or no answer): nothing was changed")
    try:
        theirs = os.stat(f"/proc/{pid}/ns/net").st_ino
        ours = os.stat("/proc/thread-self/ns/net").st_ino
    except OSError as exc:
        raise FirewalldError(f"cannot read firewalld's network namespace: {exc}") from None
    if theirs != ours:
        raise FirewalldError("the firewalld reachable on D-Bus manages another network "
                             "namespace than this one (set DBUS_SYSTEM_BUS_ADDRESS to the "
                             "bus of this namespace's firewalld): nothing was changed")
    return pid


def add_rich_rule(zone: str, rule: str, timeout: int, bus: str | None = None) -> None:
    """Add a rich rule at runtime with firewalld's own timeout. Refused when the zone already
    has it: that rule is someone else's, and removing "ours" later would remove theirs.
    (firewalld answers ALREADY_ENABLED, exit 0, and sets no timer on the existing rule.)"""
    argv = zone_argv(zone, f"--add-rich-rule={rule}", f"--timeout={timeout}s")
    proc = run(argv, bus)
    if "ALREADY_ENABLED" in proc.stderr + proc.stdout:
        raise FirewalldError(f"firewalld zone {zone} already has `{rule}` (not fwtop's): "
                             "nothing was added")


def remove_rich_rule(zone: str, rule: str, bus: str | None = None) -> bool:
    """Remove the exact rule fwtop added (firewalld also cancels its timer); False if it was
    gone already (its timeout fired, or a reload dropped it)."""
    proc = run(zone_argv(zone, f"--remove-rich-rule={rule}"), bus)
    return "NOT_ENABLED" not in proc.stderr + proc.stdout  # a warning, exit 0


def has(change: ZoneChange, bus: str | None = None, permanent: bool = False) -> bool:
    """Whether the zone holds the change's element (runtime, or the permanent config)."""
    return query(change.query_argv(permanent), bus)


def make(change: ZoneChange, bus: str | None = None, permanent: bool = False) -> None:
    run(change.argv(permanent), bus)
