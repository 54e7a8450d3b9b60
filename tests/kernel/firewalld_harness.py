"""A real firewalld, confined: its own network namespace, its own mount namespace with a private
/run, its own D-Bus system bus (a dbus-daemon on a socket in a temporary directory), its
configuration in that directory. It never sees the machine's firewall, bus or /etc/firewalld.

firewalld is not installed as a package (its postinst would enable and start it on the machine):
install.sh --dev extracts Debian's firewalld, python3-firewall and python3-nftables into
/opt/fwtop-firewalld/root (FWTOP_FIREWALLD_ROOT), and firewalld runs there under Debian's
/usr/bin/python3 (python3-dbus, python3-gi come from Debian).

No polkit on the private bus: firewalld's D-Bus methods then fall back to checking that the caller
is uid 0 (firewall/server/decorators.py, dbus_polkit_require_auth), which the tests are.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import Namespaces

ROOT = Path(os.environ.get("FWTOP_FIREWALLD_ROOT", "/opt/fwtop-firewalld/root"))
PYTHON = "/usr/bin/python3"  # Debian's: firewalld needs its dbus and gi modules
DIST = ROOT / "usr/lib/python3/dist-packages"

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy user="root">
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="false"/>
    <allow receive_sender="*"/>
  </policy>
  <policy context="default">
    <deny own="*"/>
    <deny send_destination="*"/>
  </policy>
</busconfig>
"""

# In the private mount namespace `ip netns exec` gives (slave of the machine's, nothing
# propagates back): a tmpfs over /run, so firewalld's /run/firewalld and any default bus
# socket are private, then firewalld itself.
LAUNCHER = """
import os, subprocess, sys
subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=4m", "fwtop-fwd-run", "/run"],
               check=True)
root = sys.argv[1]
os.environ["PYTHONPATH"] = root + "/usr/lib/python3/dist-packages"
os.execv(sys.executable, [sys.executable, root + "/usr/sbin/firewalld", *sys.argv[2:]])
"""

FIREWALL_CMD = """#!/bin/sh
PYTHONPATH={dist} exec {python} {root}/usr/bin/firewall-cmd "$@"
"""

FIREWALLD_CONF = """DefaultZone=public
CleanupOnExit=yes
CleanupModulesOnExit=no
Lockdown=no
IPv6_rpfilter=yes
IndividualCalls=no
LogDenied=off
FirewallBackend=nftables
FlushAllOnReload=yes
"""


def missing() -> str | None:
    """Why a confined firewalld cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root"
    if not (ROOT / "usr/sbin/firewalld").exists():
        return f"firewalld not extracted in {ROOT} (./install.sh --dev does it)"
    for tool in ("dbus-daemon", "dbus-send", "ip", "mount"):
        if shutil.which(tool) is None:
            return f"missing: {tool}"
    if not os.path.exists(PYTHON):
        return f"missing: {PYTHON}"
    probe = subprocess.run([PYTHON, "-c", "import dbus, gi; gi.require_version('GLib', '2.0')"],
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return "Debian's python3-dbus / python3-gi are not installed"
    return None


class ConfinedFirewalld:
    """firewalld in a namespace of its own; `stop()` ends exactly what `start()` started."""

    def __init__(self, namespaces: Namespaces, tmp: Path) -> None:
        self.namespaces = namespaces
        self.tmp = tmp
        self.ns = ""
        self.socket = tmp / "bus"
        self.etc = tmp / "etc"
        self.firewall_cmd = tmp / "bin" / "firewall-cmd"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.firewalld: subprocess.Popen[bytes] | None = None
        self.log = tmp / "firewalld.log"

    @property
    def bus(self) -> str:
        return f"unix:path={self.socket}"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment for fwtop and firewall-cmd: this bus, this firewall-cmd."""
        return dict(base if base is not None else os.environ, DBUS_SYSTEM_BUS_ADDRESS=self.bus,
                    FWTOP_FIREWALL_CMD=str(self.firewall_cmd))

    def start(self, timeout: float = 40.0) -> str:
        self.ns = self.namespaces.new("fwd")
        (self.tmp / "bus.conf").write_text(BUS_CONFIG.format(socket=self.socket))
        self._spawn(["ip", "netns", "exec", self.ns, "dbus-daemon",
                     f"--config-file={self.tmp / 'bus.conf'}", "--nofork", "--nopidfile"],
                    self.tmp / "dbus.log")
        self._wait(lambda: self.socket.exists(), 10.0, "the private dbus-daemon")
        for sub in ("zones", "services", "icmptypes", "ipsets", "helpers", "policies"):
            (self.etc / sub).mkdir(parents=True, exist_ok=True)
        (self.etc / "firewalld.conf").write_text(FIREWALLD_CONF)
        self.firewall_cmd.parent.mkdir(exist_ok=True)
        self.firewall_cmd.write_text(FIREWALL_CMD.format(dist=DIST, python=PYTHON, root=ROOT))
        self.firewall_cmd.chmod(0o755)
        (self.tmp / "launch.py").write_text(LAUNCHER)
        self.start_firewalld(timeout)
        return self.ns

    def start_firewalld(self, timeout: float = 40.0) -> None:
        self._spawn(["ip", "netns", "exec", self.ns, PYTHON, str(self.tmp / "launch.py"),
                     str(ROOT), "--nofork", "--nopid", "--system-config", str(self.etc),
                     "--default-config", str(ROOT / "usr/lib/firewalld"),
                     "--log-target", "console"], self.log, env=self.env())
        self.firewalld = self.procs[-1]
        self._wait(lambda: self.cmd("--state", check=False).stdout.strip() == "running",
                   timeout, "firewalld")
        self._check_confined()

    def kill_firewalld(self) -> None:
        """SIGKILL: no cleanup, its table (and timed rules) stay in the namespace's kernel."""
        assert self.firewalld is not None
        self.firewalld.kill()
        self.firewalld.wait(timeout=10)
        self.procs.remove(self.firewalld)
        self.firewalld = None

    def _spawn(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        with open(log, "wb") as out:
            self.procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                               stderr=subprocess.STDOUT, env=env))

    def _wait(self, ok: object, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(p.poll() is not None for p in self.procs):
                break
            if ok():  # type: ignore[operator]
                return
            time.sleep(0.2)
        tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        raise RuntimeError(f"{what} did not come up: {tail}")

    def _check_confined(self) -> None:
        """firewalld's tmpfs over /run must not be visible outside its mount namespace."""
        with open("/proc/self/mountinfo") as f:
            assert "fwtop-fwd-run" not in f.read(), "firewalld's /run leaked to the machine"

    def cmd(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(self.firewall_cmd), *argv], capture_output=True, text=True,
                              timeout=30, env=self.env(), check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"firewall-cmd {argv}: {proc.stderr.strip()}")
        return proc

    def stop(self) -> None:
        """firewalld first (SIGTERM: it removes its table), then the bus; the namespace itself
        goes with the Namespaces fixture."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        self.procs.clear()
