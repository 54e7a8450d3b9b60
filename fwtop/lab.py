"""Throwaway network-namespace lab with a deliberately broken firewall, for demos and tests.

Three namespaces joined by veth pairs: ``<prefix>-client`` -> ``<prefix>-fw`` ->
``<prefix>-backend``. The fw namespace carries the seed guide's classic mistakes (rule ordering,
default DROP without the allow, DNAT without the FORWARD accept, ICMP blocked, wrong port, a
legacy-iptables drop next to the nft rules), small listeners answer on the service ports, and a
rate- and time-bounded traffic generator in the client keeps the counters moving. Nothing here
touches the root network namespace: every interface, sysctl and rule is created inside the lab
namespaces, and ``down`` removes them, the processes running in them and the state file.

Command line: ``python -m fwtop.lab up|down|status|scenarios|flood|serve|traffic|probe``.
The ``conntrack-flood`` scenario and ``flood`` fill the fw namespace's conntrack table with a
bounded wave of UDP flows from the client (count, rate and time capped; lab addresses only).
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import ipaddress
import itertools
import json
import logging
import os
import re
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "fwlab"
DEFAULT_SUPERNET = "10.77.0.0/16"
STATE_DIR = Path("/run/fwtop")
NETNS_DIR = Path("/run/netns")  # where iproute2 mounts named namespaces
NFLOG_GROUP = 7
MAX_RATE = 1000.0
DEFAULT_RATE = 10.0
DEFAULT_MAX_SECONDS = 4 * 3600.0
MAX_SECONDS_LIMIT = 7 * 86400.0
TCP_PROBE_TIMEOUT = 0.5

# Namespace names become "<prefix>-backend"; a short lowercase prefix keeps them readable and
# safe as file names under /run/netns.
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,15}$")
_SRC_ROOT = str(Path(__file__).resolve().parent.parent)


class LabError(Exception):
    """A lab operation failed; the message is one line meant for the user."""


@dataclass(frozen=True)
class Lab:
    prefix: str
    client_ns: str
    fw_ns: str
    backend_ns: str
    scenario: str
    legacy: bool
    legacy_reason: str = ""
    supernet: str = DEFAULT_SUPERNET
    client_net: str = "10.77.1.0/24"
    backend_net: str = "10.77.2.0/24"
    client_ip: str = "10.77.1.2"
    fw_client_ip: str = "10.77.1.1"
    fw_backend_ip: str = "10.77.2.1"
    backend_ip: str = "10.77.2.2"
    # The namespaces are isolated from everything else, so fixed ULA prefixes cannot clash.
    client_ip6: str = "fd77:1::2"
    fw_client_ip6: str = "fd77:1::1"
    fw_backend_ip6: str = "fd77:2::1"
    backend_ip6: str = "fd77:2::2"
    client_if: str = "to-fw"
    fw_client_if: str = "to-client"
    fw_backend_if: str = "to-backend"
    backend_if: str = "to-fw"
    pids: tuple[int, ...] = ()
    traffic_pid: int | None = None
    state_file: str = ""

    @property
    def namespaces(self) -> tuple[str, str, str]:
        return (self.client_ns, self.fw_ns, self.backend_ns)


@dataclass(frozen=True)
class Scenario:
    """What to load into the fw namespace. Add new ones to SCENARIOS."""

    name: str
    description: str
    iptables_nft: Callable[[Lab], str]  # iptables-nft-restore input
    nft: Callable[[Lab], str]  # nft -f input
    legacy: Callable[[Lab], str] | None = None  # iptables-legacy-restore input
    fw_tcp: tuple[int, ...] = (22, 8080, 5432, 9090)
    fw_udp: tuple[int, ...] = (514,)
    backend_tcp: tuple[int, ...] = (80,)
    traffic_args: tuple[str, ...] = ()  # extra `traffic` arguments, e.g. other ports
    fw_sysctls: tuple[tuple[str, str], ...] = ()  # applied inside the fw namespace only
    setup: Callable[[Lab], None] | None = None  # runs after rules and listeners are up


# --------------------------------------------------------------------------------------------
# Scenarios


def _log_rules(chain: str, tag: str) -> list[str]:
    return [
        f'-A {chain} -j NFLOG --nflog-group {NFLOG_GROUP} --nflog-prefix "fwlab-{tag}-drop"',
        f'-A {chain} -m limit --limit 20/second -j LOG --log-prefix "fwlab-{tag}-drop: "',
    ]


def _default_iptables(lab: Lab) -> str:
    lines = [
        "*filter",
        ":INPUT DROP [0:0]",
        ":FORWARD DROP [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        '-A INPUT -i lo -m comment --comment "allow loopback" -j ACCEPT',
        "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED"
        ' -m comment --comment "allow established" -j ACCEPT',
        '-A INPUT -p tcp -m tcp --dport 22 -m comment --comment "allow ssh" -j ACCEPT',
        # Mistake 1: the DROP shadows the ACCEPT below it.
        '-A INPUT -p tcp -m tcp --dport 8080 -m comment --comment "block scanners" -j DROP',
        '-A INPUT -p tcp -m tcp --dport 8080 -m comment --comment "allow app" -j ACCEPT',
        # Mistake 5: the service listens on 9090.
        '-A INPUT -p tcp -m tcp --dport 9091 -m comment --comment "allow metrics" -j ACCEPT',
        # Allowed here so that the legacy table's drop is the only thing stopping syslog.
        '-A INPUT -p udp -m udp --dport 514 -m comment --comment "allow syslog" -j ACCEPT',
        # Allowed here, yet the native nft chain drops pings first: both base chains run.
        '-A INPUT -p icmp -m comment --comment "allow icmp" -j ACCEPT',
        # Mistake 2: nothing allows tcp 5432, so the policy drops it.
        *_log_rules("INPUT", "input"),
        "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED"
        ' -m comment --comment "allow established" -j ACCEPT',
        # Mistake 3: after DNAT the forwarded packet's dport is 80, never 8081.
        '-A FORWARD -p tcp -m tcp --dport 8081 -m comment --comment "allow port forward" -j ACCEPT',
        *_log_rules("FORWARD", "fwd"),
        "COMMIT",
    ]
    return "\n".join(lines) + "\n"


def _nat_table(lab: Lab) -> str:
    return f"""table ip fwlab_nat {{
	chain prerouting {{
		type nat hook prerouting priority -100; policy accept;
		tcp dport 8081 counter dnat to {lab.backend_ip}:80 comment "port forward to backend web"
	}}
}}
"""


def _default_nft(lab: Lab) -> str:
    # Mistake 4: ping and destination-unreachable (PMTU discovery) dropped before iptables runs.
    return _nat_table(lab) + f"""table inet fwlab_filter {{
	chain input {{
		type filter hook input priority -10; policy accept;
		icmp type echo-request counter log group {NFLOG_GROUP} prefix "fwlab-noping" \
			comment "log pings"
		icmp type echo-request counter drop comment "no ping"
		icmp type destination-unreachable counter drop \
			comment "drop icmp unreachable (breaks PMTU discovery)"
	}}
}}
"""


def _default_legacy(lab: Lab) -> str:
    # Mistake 6: a legacy x_tables rule that nft-only tools never show.
    return "\n".join([
        "*filter",
        ":INPUT ACCEPT [0:0]",
        ":FORWARD ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        '-A INPUT -p udp -m udp --dport 514 -m comment --comment "legacy: drop syslog" -j DROP',
        "COMMIT",
    ]) + "\n"


def _fixed_iptables(lab: Lab) -> str:
    lines = [
        "*filter",
        ":INPUT DROP [0:0]",
        ":FORWARD DROP [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        '-A INPUT -i lo -m comment --comment "allow loopback" -j ACCEPT',
        "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED"
        ' -m comment --comment "allow established" -j ACCEPT',
        '-A INPUT -p tcp -m tcp --dport 22 -m comment --comment "allow ssh" -j ACCEPT',
        '-A INPUT -p tcp -m tcp --dport 8080 -m comment --comment "allow app" -j ACCEPT',
        f"-A INPUT -s {lab.client_net} -p tcp -m tcp --dport 5432"
        ' -m comment --comment "allow database from clients" -j ACCEPT',
        '-A INPUT -p tcp -m tcp --dport 9090 -m comment --comment "allow metrics" -j ACCEPT',
        '-A INPUT -p udp -m udp --dport 514 -m comment --comment "allow syslog" -j ACCEPT',
        '-A INPUT -p icmp -m comment --comment "allow icmp" -j ACCEPT',
        *_log_rules("INPUT", "input"),
        "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED"
        ' -m comment --comment "allow established" -j ACCEPT',
        f"-A FORWARD -d {lab.backend_ip}/32 -p tcp -m tcp --dport 80 -m conntrack --ctstate DNAT"
        ' -m comment --comment "allow port forward" -j ACCEPT',
        *_log_rules("FORWARD", "fwd"),
        "COMMIT",
    ]
    return "\n".join(lines) + "\n"


def _fixed_nft(lab: Lab) -> str:
    return _nat_table(lab) + """table inet fwlab_filter {
	chain input {
		type filter hook input priority -10; policy accept;
		icmp type echo-request limit rate over 50/second counter drop comment "ping flood"
	}
}
"""


# The conntrack-flood scenario: the client sends one UDP datagram per flow (distinct source
# and destination ports) to FLOOD_PORTS on the fw, which accepts them, so every one becomes a
# conntrack entry in the fw namespace; its udp timeout is raised there so they stay 2 minutes.
FLOOD_PORT_BASE = 40000
FLOOD_PORTS = 1000
FLOOD_FLOWS = 60_000
FLOOD_RATE = 10_000.0
FLOOD_MAX_FLOWS = 200_000
FLOOD_MAX_RATE = 50_000.0
FLOOD_MAX_SECONDS = 600.0
FLOOD_UDP_TIMEOUT = 120


def _flood_iptables(lab: Lab) -> str:
    last = FLOOD_PORT_BASE + FLOOD_PORTS - 1
    accept = (f"-A INPUT -s {lab.client_net} -p udp -m udp --dport {FLOOD_PORT_BASE}:{last}"
              ' -m comment --comment "flood sink: every flow is a conntrack entry" -j ACCEPT')
    lines = _fixed_iptables(lab).splitlines()
    at = next(i for i, line in enumerate(lines) if "--dport 514" in line)
    return "\n".join([*lines[:at], accept, *lines[at:]]) + "\n"


def _start_flood_wave(lab: Lab) -> None:
    start_flood(lab.prefix, wait=False)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            name="default",
            description="the seed guide's classic mistakes: rule ordering, default DROP without "
            "the allow, DNAT without FORWARD accept, ICMP blocked, wrong port, legacy drop",
            iptables_nft=_default_iptables,
            nft=_default_nft,
            legacy=_default_legacy,
        ),
        Scenario(
            name="fixed",
            description="the same services with every mistake corrected (for comparison)",
            iptables_nft=_fixed_iptables,
            nft=_fixed_nft,
        ),
        Scenario(
            name="conntrack-flood",
            description=f"the fixed firewall, and a bounded wave of {FLOOD_FLOWS:,} UDP flows "
            "from the client fills the fw's conntrack table (entries stay 120 s); "
            "`python -m fwtop.lab flood` sends another wave",
            iptables_nft=_flood_iptables,
            nft=_fixed_nft,
            fw_sysctls=(("net.netfilter.nf_conntrack_udp_timeout", str(FLOOD_UDP_TIMEOUT)),),
            setup=_start_flood_wave,
        ),
    )
}


# --------------------------------------------------------------------------------------------
# Helpers


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise LabError(f"`{name}` not found in PATH; install {_PACKAGE_OF.get(name, name)}")
    return path


_PACKAGE_OF = {
    "ip": "iproute2",
    "nft": "nftables",
    "iptables-nft-restore": "iptables",
    "iptables-legacy-restore": "iptables",
}


def _run(args: list[str], *, stdin: str | None = None, timeout: float = 20.0,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except FileNotFoundError as exc:
        raise LabError(f"`{args[0]}` not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"`{' '.join(args[:6])}` timed out after {timeout:g} s") from exc
    if check and proc.returncode != 0:
        raise LabError(f"`{' '.join(args[:6])}` failed: {_first_line(proc.stderr or proc.stdout)}")
    return proc


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return "no output"


def _ns_exec(ns: str, args: list[str], *, stdin: str | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run([_tool("ip"), "netns", "exec", ns, *args], stdin=stdin, check=check)


def _ns_names(prefix: str) -> tuple[str, str, str]:
    return (f"{prefix}-client", f"{prefix}-fw", f"{prefix}-backend")


def _check_prefix(prefix: str) -> None:
    if not _PREFIX_RE.match(prefix):
        raise LabError(f"invalid lab prefix {prefix!r}: use 1-16 lowercase letters/digits, "
                       "starting with a letter")


def _require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (it creates network namespaces and firewall rules); "
                       "run it with sudo")


def _scenario(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        valid = ", ".join(sorted(SCENARIOS))
        raise LabError(f"unknown scenario {name!r}; valid scenarios: {valid}") from None


def _check_rate(rate: float) -> float:
    if not (rate > 0 and rate <= MAX_RATE):
        raise LabError(f"traffic rate must be > 0 and <= {MAX_RATE:g} probes/s, got {rate:g}")
    return float(rate)


def _plan(prefix: str, scenario: str, supernet: str) -> Lab:
    try:
        net = ipaddress.IPv4Network(supernet, strict=True)
    except ValueError as exc:
        raise LabError(f"invalid supernet {supernet!r}: {exc}") from None
    if net.prefixlen > 22 or not net.is_private:
        raise LabError(f"supernet {supernet} must be a private IPv4 network of /22 or larger")
    subnets = net.subnets(new_prefix=24)
    next(subnets)
    client_net, backend_net = next(subnets), next(subnets)
    client, backend = list(client_net.hosts()), list(backend_net.hosts())
    client_ns, fw_ns, backend_ns = _ns_names(prefix)
    return Lab(
        prefix=prefix, client_ns=client_ns, fw_ns=fw_ns, backend_ns=backend_ns,
        scenario=scenario, legacy=False, supernet=str(net),
        client_net=str(client_net), backend_net=str(backend_net),
        client_ip=str(client[1]), fw_client_ip=str(client[0]),
        fw_backend_ip=str(backend[0]), backend_ip=str(backend[1]),
        state_file=str(_state_path(prefix)),
    )


def _state_path(prefix: str) -> Path:
    return STATE_DIR / f"lab-{prefix}.json"


def _write_state(lab: Lab) -> None:
    STATE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = _state_path(lab.prefix)
    tmp = path.with_suffix(".tmp")
    data = dataclasses.asdict(lab)
    data["written_at"] = time.time()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def _read_state(prefix: str) -> Lab | None:
    try:
        data = json.loads(_state_path(prefix).read_text())
        known = {f.name for f in dataclasses.fields(Lab)}
        fields = {k: v for k, v in data.items() if k in known}
        fields["pids"] = tuple(int(p) for p in fields.get("pids", ()))
        return Lab(**fields)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        log.warning("ignoring unreadable lab state file %s: %s", _state_path(prefix), exc)
        return None


def _existing_netns() -> set[str]:
    out = _run([_tool("ip"), "netns", "list"]).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _netns_pids(ns: str) -> set[int]:
    proc = _run([_tool("ip"), "netns", "pids", ns], check=False)
    return {int(tok) for tok in proc.stdout.split() if tok.isdigit()}


# Processes this Python process started: reaped by down() so no zombies are left behind.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True
    # An orphaned zombie waits for init to reap it; it no longer runs.
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _is_lab_process(pid: int, prefix: str) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    args = [a.decode(errors="replace") for a in argv]
    if "fwtop.lab" not in args:
        return False
    return any(a == "--prefix" and b == prefix for a, b in itertools.pairwise(args))


def _terminate(pids: Iterable[int], grace: float = 2.0) -> None:
    pending = {p for p in pids if p > 1 and p != os.getpid()}
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        for pid in list(pending):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pending.discard(pid)
        deadline = time.monotonic() + wait
        while pending and time.monotonic() < deadline:
            pending = {p for p in pending if _alive(p)}
            if pending:
                time.sleep(0.05)
        if not pending:
            break
    for pid in pids:
        child = _CHILDREN.pop(pid, None)
        if child is not None:
            try:
                child.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                log.warning("process %d did not exit after SIGKILL", pid)
    if pending:
        log.warning("processes still running after SIGKILL: %s", sorted(pending))


def _spawn(ns: str, args: list[str]) -> int:
    """Start `python -m fwtop.lab ARGS` detached inside NS; wait until it says it is ready."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_SRC_ROOT, env.get("PYTHONPATH")) if p)
    cmd = [_tool("ip"), "netns", "exec", ns, sys.executable, "-m", "fwtop.lab", *args]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, env=env)
    _CHILDREN[proc.pid] = proc
    assert proc.stdout is not None and proc.stderr is not None
    line = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if sel.select(timeout=15.0):
            line = proc.stdout.readline()
    if line.strip() != b"ready":
        try:
            proc.wait(timeout=2.0)  # it closed stdout: it is exiting with its error on stderr
        except subprocess.TimeoutExpired:
            pass
        _terminate([proc.pid])
        err = proc.stderr.read().decode(errors="replace").strip()
        msg = err.splitlines()[-1] if err else f"no ready signal (exit code {proc.returncode})"
        raise LabError(f"`{args[0]}` in {ns} did not start: {msg}")
    proc.stdout.close()
    proc.stderr.close()
    return proc.pid


def _write_sysctls(ns: str, settings: Iterable[tuple[str, str]]) -> None:
    settings = list(settings)
    if not settings:
        return
    sysctl = shutil.which("sysctl")
    if sysctl:
        _ns_exec(ns, [sysctl, "-q", "-w", *(f"{k}={v}" for k, v in settings)])
        return
    # No procps: /proc/sys/net belongs to the opener's namespace, so write it from inside.
    code = ("import sys\nfor kv in sys.argv[1:]:\n k, v = kv.split('=', 1)\n"
            " open('/proc/sys/' + k.replace('.', '/'), 'w').write(v)\n")
    _ns_exec(ns, [sys.executable, "-c", code, *(f"{k}={v}" for k, v in settings)])


# --------------------------------------------------------------------------------------------
# Public API


def is_up(prefix: str = DEFAULT_PREFIX) -> bool:
    """True when all three lab namespaces exist."""
    _check_prefix(prefix)
    return set(_ns_names(prefix)) <= _existing_netns()


def current(prefix: str = DEFAULT_PREFIX) -> Lab | None:
    """The running lab as recorded in its state file, or None when it is not up."""
    _check_prefix(prefix)
    if not is_up(prefix):
        return None
    return _read_state(prefix)


def up(prefix: str = DEFAULT_PREFIX, scenario: str = "default", traffic: bool = True,
       rate: float = DEFAULT_RATE, *, supernet: str = DEFAULT_SUPERNET,
       legacy: bool = True, max_seconds: float = DEFAULT_MAX_SECONDS) -> Lab:
    """Build the lab (tearing down an old one with the same prefix first) and return it."""
    _check_prefix(prefix)
    scen = _scenario(scenario)
    if traffic:
        _check_rate(rate)
        if not 0 < max_seconds <= MAX_SECONDS_LIMIT:
            raise LabError(f"max_seconds must be in (0, {MAX_SECONDS_LIMIT:g}]")
    lab = _plan(prefix, scenario, supernet)
    _require_root()
    ip, nft, ipt = _tool("ip"), _tool("nft"), _tool("iptables-nft-restore")
    if down(prefix):
        log.info("lab %s was already (partly) up: removed it first", prefix)
    try:
        return _build(lab, scen, ip, nft, ipt, traffic=traffic, rate=rate, legacy=legacy,
                      max_seconds=max_seconds)
    except BaseException as exc:
        try:
            down(prefix)
        except Exception as cleanup_exc:  # report the original failure, not the cleanup one
            log.error("cleanup after failed `up` also failed: %s", cleanup_exc)
        if isinstance(exc, LabError):
            raise
        if isinstance(exc, Exception):
            raise LabError(f"lab setup failed: {exc}") from exc
        raise


def _build(lab: Lab, scen: Scenario, ip: str, nft: str, ipt: str, *, traffic: bool, rate: float,
           legacy: bool, max_seconds: float) -> Lab:
    for ns in lab.namespaces:
        _run([ip, "netns", "add", ns])
    _write_state(lab)  # from here on `down` can find everything even if we die

    # Both ends are created directly inside the lab namespaces: nothing appears in the root one.
    _run([ip, "link", "add", lab.client_if, "netns", lab.client_ns, "type", "veth",
          "peer", "name", lab.fw_client_if, "netns", lab.fw_ns])
    _run([ip, "link", "add", lab.backend_if, "netns", lab.backend_ns, "type", "veth",
          "peer", "name", lab.fw_backend_if, "netns", lab.fw_ns])
    c_len = ipaddress.IPv4Network(lab.client_net).prefixlen
    b_len = ipaddress.IPv4Network(lab.backend_net).prefixlen
    batches = {
        lab.client_ns: [
            "link set lo up", f"link set {lab.client_if} up",
            f"addr add {lab.client_ip}/{c_len} dev {lab.client_if}",
            f"addr add {lab.client_ip6}/64 dev {lab.client_if} nodad",
            f"route add default via {lab.fw_client_ip}",
            f"route add default via {lab.fw_client_ip6}",
        ],
        lab.fw_ns: [
            "link set lo up", f"link set {lab.fw_client_if} up", f"link set {lab.fw_backend_if} up",
            f"addr add {lab.fw_client_ip}/{c_len} dev {lab.fw_client_if}",
            f"addr add {lab.fw_backend_ip}/{b_len} dev {lab.fw_backend_if}",
            f"addr add {lab.fw_client_ip6}/64 dev {lab.fw_client_if} nodad",
            f"addr add {lab.fw_backend_ip6}/64 dev {lab.fw_backend_if} nodad",
        ],
        lab.backend_ns: [
            "link set lo up", f"link set {lab.backend_if} up",
            f"addr add {lab.backend_ip}/{b_len} dev {lab.backend_if}",
            f"addr add {lab.backend_ip6}/64 dev {lab.backend_if} nodad",
            f"route add default via {lab.fw_backend_ip}",
            f"route add default via {lab.fw_backend_ip6}",
        ],
    }
    for ns, cmds in batches.items():
        _run([ip, "-n", ns, "-batch", "-"], stdin="\n".join(cmds) + "\n")
    _write_sysctls(lab.fw_ns, [("net.ipv4.ip_forward", "1"),
                               ("net.ipv6.conf.all.forwarding", "1"), *scen.fw_sysctls])

    _ns_exec(lab.fw_ns, [ipt], stdin=scen.iptables_nft(lab))
    _ns_exec(lab.fw_ns, [nft, "-f", "-"], stdin=scen.nft(lab))
    legacy_on, reason = _load_legacy(lab, scen, wanted=legacy)
    lab = dataclasses.replace(lab, legacy=legacy_on, legacy_reason=reason)
    _write_state(lab)

    pids: list[int] = []
    common = ["--prefix", lab.prefix]
    pids.append(_spawn(lab.fw_ns, ["serve", *common, "--netns", lab.fw_ns,
                                   "--tcp", _ports(scen.fw_tcp), "--udp", _ports(scen.fw_udp)]))
    lab = dataclasses.replace(lab, pids=tuple(pids))
    _write_state(lab)
    pids.append(_spawn(lab.backend_ns, ["serve", *common, "--netns", lab.backend_ns,
                                        "--tcp", _ports(scen.backend_tcp), "--udp", ""]))
    lab = dataclasses.replace(lab, pids=tuple(pids))
    _write_state(lab)
    if scen.setup is not None:
        scen.setup(lab)
    if traffic:
        tpid = _spawn(lab.client_ns, [
            "traffic", *common, "--target", lab.fw_client_ip,
            "--supernet", lab.supernet, "--rate", f"{rate:g}", "--max-seconds", f"{max_seconds:g}",
            *scen.traffic_args])
        pids.append(tpid)
        lab = dataclasses.replace(lab, pids=tuple(pids), traffic_pid=tpid)
        _write_state(lab)
    log.info("lab %s up: scenario %s, firewall namespace %s", lab.prefix, lab.scenario, lab.fw_ns)
    return lab


def _ports(ports: Iterable[int]) -> str:
    return ",".join(str(p) for p in ports)


def _load_legacy(lab: Lab, scen: Scenario, *, wanted: bool) -> tuple[bool, str]:
    if scen.legacy is None:
        return False, f"scenario {scen.name!r} has no legacy rules"
    if not wanted:
        return False, "legacy iptables disabled by the caller"
    restore = shutil.which("iptables-legacy-restore")
    if restore is None:
        reason = "iptables-legacy-restore not found"
    else:
        proc = _ns_exec(lab.fw_ns, [restore, "-w", "5"], stdin=scen.legacy(lab), check=False)
        if proc.returncode == 0:
            return True, ""
        reason = f"iptables-legacy-restore failed: {_first_line(proc.stderr or proc.stdout)}"
    log.warning("skipping the legacy iptables rules: %s", reason)
    return False, reason


def down(prefix: str = DEFAULT_PREFIX) -> bool:
    """Remove the lab: its processes, namespaces and state file. True if anything was removed."""
    _check_prefix(prefix)
    _require_root()
    ip = _tool("ip")
    existing = [ns for ns in _ns_names(prefix) if ns in _existing_netns()]
    pids: set[int] = set()
    for ns in existing:
        pids |= _netns_pids(ns)
    state = _read_state(prefix)
    if state is not None:
        # A process whose namespace was deleted behind our back is no longer listed by
        # `ip netns pids`; the state file still knows it, and the cmdline proves it is ours.
        pids |= {p for p in state.pids if _alive(p) and _is_lab_process(p, prefix)}
    _terminate(pids)
    for ns in existing:
        _run([ip, "netns", "del", ns])
    removed_state = False
    for path in (_state_path(prefix), _state_path(prefix).with_suffix(".tmp")):
        try:
            path.unlink()
            removed_state = True
        except FileNotFoundError:
            pass
    return bool(existing or pids or removed_state)


def probe(netns: str, targets: Iterable[str], timeout: float = 1.0) -> dict[str, str]:
    """Probe ``tcp:HOST:PORT`` / ``udp:HOST:PORT`` targets concurrently from inside NETNS.

    Each result is ``open``, ``refused``, ``timeout``, ``unreachable`` or ``error: ...``.
    """
    _require_root()
    targets = list(targets)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_SRC_ROOT, env.get("PYTHONPATH")) if p)
    cmd = [_tool("ip"), "netns", "exec", netns, sys.executable, "-m", "fwtop.lab", "probe",
           "--json", "--timeout", f"{timeout:g}", *targets]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 10, env=env,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"probe in {netns} did not finish") from exc
    if proc.returncode != 0:
        raise LabError(f"probe in {netns} failed: {_first_line(proc.stderr)}")
    results: dict[str, str] = json.loads(proc.stdout)
    return results


# --------------------------------------------------------------------------------------------
# Processes that run inside the lab namespaces


def _lab_gone(prefix: str, own_ns: str | None) -> bool:
    """True once the lab is being torn down: a namespace is gone or is not ours any more."""
    try:
        for ns in _ns_names(prefix):
            st = os.stat(NETNS_DIR / ns)
            if ns == own_ns:
                me = os.stat("/proc/self/ns/net")
                if (st.st_dev, st.st_ino) != (me.st_dev, me.st_ino):
                    return True
    except FileNotFoundError:
        return True
    except OSError:
        return False  # cannot tell; the lifetime bound still applies
    return False


def _same_netns(a: str | Path, b: str | Path) -> bool:
    sa, sb = os.stat(a), os.stat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _require_inside(prefix: str, netns: str) -> None:
    """Refuse to serve or send from anywhere but one of this lab's own namespaces."""
    if netns not in _ns_names(prefix):
        raise LabError(f"--netns {netns} is not a namespace of lab {prefix}")
    try:
        inside = _same_netns("/proc/self/ns/net", NETNS_DIR / netns)
    except OSError as exc:
        raise LabError(f"cannot verify the network namespace {netns}: {exc.strerror}") from None
    if not inside:
        raise LabError(f"refusing to run outside the lab namespace {netns}; "
                       f"start it with `ip netns exec {netns} ...`")


def _require_named_netns() -> None:
    """Refuse to probe unless running inside a namespace from `ip netns add` (never the host's).

    Comparing with pid 1's namespace is not always allowed, so a namespace counts as safe only
    when it is one of those mounted under /run/netns.
    """
    try:
        names = os.listdir(NETNS_DIR)
    except OSError:
        names = []
    for name in names:
        try:
            if _same_netns("/proc/self/ns/net", NETNS_DIR / name):
                return
        except OSError:
            continue
    raise LabError("refusing to probe from outside the lab: run it inside a lab namespace "
                   "with `ip netns exec NS ...`")


def _announce_ready() -> None:
    """Tell `_spawn` we are ready, then detach from its pipes."""
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def _http(body: str) -> bytes:
    data = body.encode()
    head = (f"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\nServer: fwlab\r\n\r\n")
    return head.encode() + data


_BANNERS: dict[int, bytes] = {
    22: b"SSH-2.0-OpenSSH_9.2p1 fwlab\r\n",
    80: _http("backend web: hello through the port forward\n"),
    8080: _http("app: ok\n"),
    5432: b"fwlab database stub: ok\n",
    9090: _http("# HELP fwlab_up Lab metrics stub.\n# TYPE fwlab_up gauge\nfwlab_up 1\n"),
    514: b"fwlab syslog: received\n",
}


def _banner(port: int) -> bytes:
    return _BANNERS.get(port, f"fwlab port {port}: ok\n".encode())


def _bind(kind: int, port: int) -> socket.socket:
    # One dual-stack socket serves both the IPv4 and the IPv6 lab addresses.
    try:
        sock = socket.socket(socket.AF_INET6, kind)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        addr: tuple[str, int] = ("::", port)
    except OSError:
        sock = socket.socket(socket.AF_INET, kind)
        addr = ("0.0.0.0", port)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        proto = "tcp" if kind == socket.SOCK_STREAM else "udp"
        raise LabError(f"cannot listen on {proto} {port}: {exc.strerror}") from None
    if kind == socket.SOCK_STREAM:
        sock.listen(128)
    sock.setblocking(False)
    return sock


def serve(prefix: str, netns: str, tcp: Iterable[int], udp: Iterable[int], *,
          max_seconds: float | None = None, ready: Callable[[], None] | None = None) -> None:
    """Inside lab namespace NETNS: answer each TCP connection with a short line and close,
    answer each UDP datagram; return when the lab disappears."""
    _check_prefix(prefix)
    _require_inside(prefix, netns)
    sel = selectors.DefaultSelector()
    for port in tcp:
        sel.register(_bind(socket.SOCK_STREAM, port), selectors.EVENT_READ, ("listen", port))
    for port in udp:
        sel.register(_bind(socket.SOCK_DGRAM, port), selectors.EVENT_READ, ("udp", port))
    if ready is not None:
        ready()
    conns: dict[socket.socket, float] = {}  # open connection -> close deadline
    stop_at = time.monotonic() + max_seconds if max_seconds else None
    next_check = 0.0
    while True:
        now = time.monotonic()
        if stop_at is not None and now >= stop_at:
            return
        if now >= next_check:
            if _lab_gone(prefix, netns):
                return
            next_check = now + 1.0
        for key, _ in sel.select(timeout=0.25):
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            role, port = key.data
            if role == "listen":
                _serve_accept(sel, sock, port, conns)
            elif role == "udp":
                try:
                    _, peer = sock.recvfrom(2048)
                    sock.sendto(_banner(port), peer)
                except OSError:
                    pass
            else:
                _serve_drain(sel, sock, conns)
        now = time.monotonic()
        for conn in [c for c, t in conns.items() if t <= now]:
            _serve_close(sel, conn, conns)


def _serve_accept(sel: selectors.BaseSelector, lsock: socket.socket, port: int,
                  conns: dict[socket.socket, float]) -> None:
    try:
        conn, _ = lsock.accept()
    except OSError:
        return
    conn.setblocking(False)
    try:
        conn.send(_banner(port))
        # Half-close so clients see a clean end, then drain what they send before closing:
        # closing with unread data would answer with a RST.
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        conn.close()
        return
    if len(conns) >= 256:
        _serve_close(sel, min(conns, key=conns.__getitem__), conns)
    conns[conn] = time.monotonic() + 1.0
    sel.register(conn, selectors.EVENT_READ, ("conn", port))


def _serve_drain(sel: selectors.BaseSelector, conn: socket.socket,
                 conns: dict[socket.socket, float]) -> None:
    try:
        if conn.recv(4096):
            return
    except BlockingIOError:
        return
    except OSError:
        pass
    _serve_close(sel, conn, conns)


def _serve_close(sel: selectors.BaseSelector, conn: socket.socket,
                 conns: dict[socket.socket, float]) -> None:
    conns.pop(conn, None)
    try:
        sel.unregister(conn)
    except (KeyError, ValueError):
        pass
    conn.close()


def _check_target(target: str, supernet: str) -> ipaddress.IPv4Address:
    """The traffic generator only ever sends to an address inside the lab's private supernet."""
    try:
        addr = ipaddress.IPv4Address(target)
        net = ipaddress.IPv4Network(supernet, strict=True)
    except ValueError as exc:
        raise LabError(f"invalid traffic target: {exc}") from None
    if not net.is_private or addr not in net or addr in (net.network_address,
                                                          net.broadcast_address):
        raise LabError(f"traffic target {addr} is not a host inside the lab supernet {net}")
    return addr


def _icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _icmp_echo(ident: int, seq: int) -> bytes:
    payload = b"fwlab traffic"
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    csum = _icmp_checksum(header + payload)
    return struct.pack("!BBHHH", 8, 0, csum, ident, seq) + payload


def _icmp_frag_needed(peer: str, me: str, mtu: int = 1400) -> bytes:
    """ICMP "fragmentation needed" telling PEER that its tcp segment to ME was too big.

    This is the message path-MTU discovery depends on; the broken firewall drops it.
    """
    inner = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 1500, 0, 0x4000, 64, socket.IPPROTO_TCP, 0,
                        socket.inet_aton(peer), socket.inet_aton(me))
    inner = inner[:10] + struct.pack("!H", _icmp_checksum(inner)) + inner[12:]
    inner += struct.pack("!HHI", 22, 40000, 0)  # the first 8 bytes of the "too big" segment
    header = struct.pack("!BBHHH", 3, 4, 0, 0, mtu)
    csum = _icmp_checksum(header + inner)
    return struct.pack("!BBHHH", 3, 4, csum, 0, mtu) + inner


def _icmp_socket() -> tuple[socket.socket | None, bool]:
    """An ICMP socket and whether it is raw (a ping socket can only send echo requests)."""
    for kind in (socket.SOCK_RAW, socket.SOCK_DGRAM):
        try:
            sock = socket.socket(socket.AF_INET, kind, socket.IPPROTO_ICMP)
        except OSError:
            continue
        sock.setblocking(False)
        return sock, kind == socket.SOCK_RAW
    return None, False


def _source_address(target: str) -> str:
    # connect() on a UDP socket only picks the route and source address; it sends nothing.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((target, 9))
        return str(sock.getsockname()[0])


def traffic(prefix: str, target: str, *, supernet: str = DEFAULT_SUPERNET,
            rate: float = DEFAULT_RATE, max_seconds: float = DEFAULT_MAX_SECONDS,
            tcp: Iterable[int] = (22, 8080, 5432, 9090, 8081), udp: Iterable[int] = (514, 53),
            icmp: bool = True, ready: Callable[[], None] | None = None) -> None:
    """From the lab's client namespace, probe TARGET round-robin at RATE probes/s until
    MAX_SECONDS pass or the lab disappears."""
    _check_prefix(prefix)
    netns = _ns_names(prefix)[0]
    _require_inside(prefix, netns)
    addr = str(_check_target(target, supernet))
    rate = _check_rate(rate)
    if not 0 < max_seconds <= MAX_SECONDS_LIMIT:
        raise LabError(f"--max-seconds must be in (0, {MAX_SECONDS_LIMIT:g}]")
    tcp, udp = tuple(tcp), tuple(udp)
    sel = selectors.DefaultSelector()
    probes: list[tuple[str, int]] = [("tcp", p) for p in tcp] + [("udp", p) for p in udp]
    udp_sock = None
    if udp:
        udp_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp_sock.setblocking(False)
        sel.register(udp_sock, selectors.EVENT_READ, "discard")
    icmp_sock, icmp_raw = _icmp_socket() if icmp else (None, False)
    frag_needed = b""
    if icmp_sock is not None:
        sel.register(icmp_sock, selectors.EVENT_READ, "discard")
        probes.append(("icmp", 0))
        if icmp_raw:
            frag_needed = _icmp_frag_needed(addr, _source_address(addr))
            probes.append(("pmtu", 0))
    if not probes:
        raise LabError("traffic: nothing to send (no tcp, udp or icmp probes)")
    if ready is not None:
        ready()

    ident, seq, turn = os.getpid() & 0xFFFF, 0, 0
    pending: dict[socket.socket, float] = {}  # connecting socket -> give-up time
    max_pending = 512  # stays well under the default 1024 open-file limit
    interval = 1.0 / rate
    start = time.monotonic()
    next_probe, next_check, stop_at = start, start, start + max_seconds

    def close(sock: socket.socket) -> None:
        pending.pop(sock, None)
        try:
            sel.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()

    while True:
        now = time.monotonic()
        if now >= stop_at:
            break
        if now >= next_check:
            if _lab_gone(prefix, netns):
                break
            next_check = now + 1.0
        if now - next_probe > 1.0:
            next_probe = now  # we fell behind (suspended?): never burst to catch up
        while next_probe <= now:
            kind, port = probes[turn % len(probes)]
            turn += 1
            next_probe += interval
            if kind == "tcp":
                if len(pending) >= max_pending:
                    close(min(pending, key=pending.__getitem__))
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                err = sock.connect_ex((addr, port))
                if err in (0, errno.EINPROGRESS):
                    pending[sock] = now + TCP_PROBE_TIMEOUT
                    sel.register(sock, selectors.EVENT_WRITE, "connect")
                else:
                    sock.close()
            elif kind == "udp" and udp_sock is not None:
                try:
                    udp_sock.sendto(b"<14>fwlab traffic probe\n", (addr, port))
                except OSError:
                    pass
            elif kind == "icmp" and icmp_sock is not None:
                seq = (seq + 1) & 0xFFFF
                try:
                    icmp_sock.sendto(_icmp_echo(ident, seq), (addr, 0))
                except OSError:
                    pass
            elif kind == "pmtu" and icmp_sock is not None:
                try:
                    icmp_sock.sendto(frag_needed, (addr, 0))
                except OSError:
                    pass
        wake = min([next_probe, next_check, stop_at, *pending.values()])
        for key, _ in sel.select(timeout=max(0.0, wake - time.monotonic())):
            sock = key.fileobj  # type: ignore[assignment]
            if key.data == "connect":
                close(sock)
            else:
                try:
                    sock.recv(4096)
                except OSError:
                    pass
        now = time.monotonic()
        for sock in [s for s, t in pending.items() if t <= now]:
            close(sock)
    for sock in list(pending):
        close(sock)


def flood(prefix: str, target: str, *, supernet: str = DEFAULT_SUPERNET,
          flows: int = FLOOD_FLOWS, rate: float = FLOOD_RATE,
          max_seconds: float = 60.0, ready: Callable[[], None] | None = None) -> int:
    """From the lab's client namespace, send one UDP datagram on each of FLOWS distinct flows
    (source port x destination port in FLOOD_PORTS) to TARGET at RATE datagrams/s; stop when
    all are sent, MAX_SECONDS pass or the lab disappears. Returns the number sent."""
    _check_prefix(prefix)
    netns = _ns_names(prefix)[0]
    _require_inside(prefix, netns)
    addr = str(_check_target(target, supernet))
    if not 0 < flows <= FLOOD_MAX_FLOWS:
        raise LabError(f"flood: flows must be in 1..{FLOOD_MAX_FLOWS:,}, got {flows}")
    if not 0 < rate <= FLOOD_MAX_RATE:
        raise LabError(f"flood: rate must be in (0, {FLOOD_MAX_RATE:g}] datagrams/s")
    if not 0 < max_seconds <= FLOOD_MAX_SECONDS:
        raise LabError(f"flood: max seconds must be in (0, {FLOOD_MAX_SECONDS:g}]")
    # One socket (one source port) per FLOOD_PORTS flows: at most 200 open sockets.
    socks: list[socket.socket] = []
    try:
        for _ in range(-(-flows // FLOOD_PORTS)):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.bind(("", 0))
            socks.append(sock)
        if ready is not None:
            ready()
        payload = b"fwlab conntrack flood"
        sent = 0
        start = time.monotonic()
        stop_at = start + max_seconds
        next_check = start
        slice_s = 0.02
        while sent < flows:
            now = time.monotonic()
            if now >= stop_at:
                break
            if now >= next_check:
                if _lab_gone(prefix, netns):
                    break
                next_check = now + 1.0
            # Never ahead of the rate, never bursting to catch up by more than one slice.
            due = min(flows, int((now - start) * rate) + 1, sent + int(rate * slice_s) + 1)
            while sent < due:
                sock = socks[sent // FLOOD_PORTS]
                try:
                    sock.sendto(payload, (addr, FLOOD_PORT_BASE + sent % FLOOD_PORTS))
                except BlockingIOError:
                    break  # the socket buffer is full: let it drain
                except OSError:
                    pass  # e.g. ICMP unreachable reported on the socket: the flow still counts
                sent += 1
            time.sleep(slice_s)
        return sent
    finally:
        for sock in socks:
            sock.close()


def start_flood(prefix: str = DEFAULT_PREFIX, *, flows: int = FLOOD_FLOWS,
                rate: float = FLOOD_RATE, max_seconds: float = 60.0, wait: bool = False) -> int:
    """Start a flood wave in the running lab's client namespace (toward the fw); returns the
    pid, or with `wait` blocks until the wave is over and returns 0."""
    _require_root()
    lab = current(prefix)
    if lab is None:
        raise LabError(f"lab {prefix} is not up (fwtop lab up --scenario conntrack-flood)")
    args = ["flood-run", "--prefix", lab.prefix, "--target", lab.fw_client_ip,
            "--supernet", lab.supernet, "--flows", str(flows), "--rate", f"{rate:g}",
            "--max-seconds", f"{max_seconds:g}"]
    pid = _spawn(lab.client_ns, args)
    if not wait:
        return pid
    deadline = time.monotonic() + max_seconds + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    _terminate([pid])
    return 0


def _probe_targets(specs: list[str], timeout: float) -> dict[str, str]:
    sel = selectors.DefaultSelector()
    results: dict[str, str] = {}
    for spec in specs:
        try:
            proto, _, rest = spec.partition(":")
            host, _, port_s = rest.rpartition(":")
            if proto not in ("tcp", "udp") or not host:
                raise ValueError("expected tcp:HOST:PORT or udp:HOST:PORT")
            host = host.strip("[]")
            ip_addr = ipaddress.ip_address(host)
            port = int(port_s)
        except ValueError as exc:
            results[spec] = f"error: {exc}"
            continue
        family = socket.AF_INET6 if ip_addr.version == 6 else socket.AF_INET
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        sock = socket.socket(family, kind)
        sock.setblocking(False)
        err = sock.connect_ex((host, port))
        if proto == "udp" and err == 0:
            try:
                sock.send(b"fwlab probe\n")
            except OSError as exc:
                err = exc.errno or errno.EIO
        if err not in (0, errno.EINPROGRESS):
            results[spec] = _errno_word(err)
            sock.close()
            continue
        sel.register(sock, selectors.EVENT_WRITE if proto == "tcp" else selectors.EVENT_READ,
                     (spec, proto))
    deadline = time.monotonic() + timeout
    while sel.get_map():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        for key, _ in sel.select(timeout=remaining):
            sock = key.fileobj  # type: ignore[assignment]
            spec, proto = key.data
            if proto == "tcp":
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                results[spec] = "open" if err == 0 else _errno_word(err)
            else:
                try:
                    sock.recv(2048)
                    results[spec] = "open"
                except OSError as exc:
                    results[spec] = _errno_word(exc.errno or errno.EIO)
            sel.unregister(sock)
            sock.close()
    for key in list(sel.get_map().values()):
        results[key.data[0]] = "timeout"
        key.fileobj.close()  # type: ignore[union-attr]
    return {spec: results[spec] for spec in specs}


def _errno_word(err: int) -> str:
    if err == errno.ECONNREFUSED:
        return "refused"
    if err in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable"
    if err == errno.ETIMEDOUT:
        return "timeout"
    return f"error: {os.strerror(err)}"


# --------------------------------------------------------------------------------------------
# Command line


def _port_list(text: str) -> tuple[int, ...]:
    ports = []
    for part in text.split(","):
        if not part.strip():
            continue
        port = int(part)
        if not 0 < port < 65536:
            raise argparse.ArgumentTypeError(f"port out of range: {port}")
        ports.append(port)
    return tuple(ports)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fwtop lab", description=__doc__.split("\n", 1)[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("up", help="build the lab (replacing one with the same prefix)")
    s.add_argument("--prefix", default=DEFAULT_PREFIX)
    s.add_argument("--scenario", default="default", help=f"one of: {', '.join(SCENARIOS)}")
    s.add_argument("--no-traffic", action="store_true", help="do not start the traffic generator")
    s.add_argument("--rate", type=float, default=DEFAULT_RATE, help="traffic probes per second")
    s.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS,
                   help="traffic generator lifetime")
    s.add_argument("--supernet", default=DEFAULT_SUPERNET)
    s.add_argument("--no-legacy", action="store_true", help="skip the legacy iptables rules")

    s = sub.add_parser("down", help="remove the lab")
    s.add_argument("--prefix", default=DEFAULT_PREFIX)

    s = sub.add_parser("status", help="show the lab")
    s.add_argument("--prefix", default=DEFAULT_PREFIX)
    s.add_argument("--json", action="store_true")

    sub.add_parser("scenarios", help="list the scenarios")

    s = sub.add_parser("serve", help="(internal) listeners, run inside a lab namespace")
    s.add_argument("--prefix", required=True)
    s.add_argument("--netns", required=True)
    s.add_argument("--tcp", type=_port_list, default=())
    s.add_argument("--udp", type=_port_list, default=())
    s.add_argument("--max-seconds", type=float)

    s = sub.add_parser("traffic", help="(internal) traffic generator, run in the client namespace")
    s.add_argument("--prefix", required=True)
    s.add_argument("--target", required=True)
    s.add_argument("--supernet", default=DEFAULT_SUPERNET)
    s.add_argument("--rate", type=float, default=DEFAULT_RATE)
    s.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS)
    s.add_argument("--tcp", type=_port_list, default=(22, 8080, 5432, 9090, 8081))
    s.add_argument("--udp", type=_port_list, default=(514, 53))
    s.add_argument("--no-icmp", action="store_true")

    s = sub.add_parser("flood", help="send a bounded wave of UDP flows from the client to the fw "
                                     "namespace: fills its conntrack table (no other traffic)")
    s.add_argument("--prefix", default=DEFAULT_PREFIX)
    s.add_argument("--flows", type=int, default=FLOOD_FLOWS,
                   help=f"distinct flows (1-{FLOOD_MAX_FLOWS:,}; default {FLOOD_FLOWS:,})")
    s.add_argument("--rate", type=float, default=FLOOD_RATE,
                   help=f"datagrams per second (at most {FLOOD_MAX_RATE:g})")
    s.add_argument("--max-seconds", type=float, default=60.0)
    s.add_argument("--wait", action="store_true", help="return when the wave is over")

    s = sub.add_parser("flood-run", help="(internal) the flood itself, in the client namespace")
    s.add_argument("--prefix", required=True)
    s.add_argument("--target", required=True)
    s.add_argument("--supernet", default=DEFAULT_SUPERNET)
    s.add_argument("--flows", type=int, default=FLOOD_FLOWS)
    s.add_argument("--rate", type=float, default=FLOOD_RATE)
    s.add_argument("--max-seconds", type=float, default=60.0)

    s = sub.add_parser("probe", help="probe tcp:HOST:PORT / udp:HOST:PORT from a lab namespace")
    s.add_argument("--timeout", type=float, default=1.0)
    s.add_argument("--json", action="store_true")
    s.add_argument("targets", nargs="+")
    return p


def _describe(lab: Lab) -> str:
    lines = [
        f"lab {lab.prefix} (scenario {lab.scenario})",
        f"  {lab.client_ns:<18} {lab.client_if} {lab.client_ip} {lab.client_ip6}",
        f"  {lab.fw_ns:<18} {lab.fw_client_if} {lab.fw_client_ip} {lab.fw_client_ip6}; "
        f"{lab.fw_backend_if} {lab.fw_backend_ip} {lab.fw_backend_ip6}",
        f"  {lab.backend_ns:<18} {lab.backend_if} {lab.backend_ip} {lab.backend_ip6}",
        "  legacy iptables: " + ("yes" if lab.legacy else f"no ({lab.legacy_reason})"),
        "  traffic: " + (f"pid {lab.traffic_pid}" if lab.traffic_pid else "off"),
        f"  inspect it: fwtop --netns {lab.fw_ns}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd in ("up", "down", "status"):
        logging.basicConfig(level=logging.INFO, format="fwtop lab: %(message)s")
    try:
        if args.cmd == "up":
            lab = up(args.prefix, args.scenario, traffic=not args.no_traffic, rate=args.rate,
                     supernet=args.supernet, legacy=not args.no_legacy,
                     max_seconds=args.max_seconds)
            print(_describe(lab))
        elif args.cmd == "down":
            print(f"lab {args.prefix} removed" if down(args.prefix)
                  else f"lab {args.prefix} is not up: nothing to remove")
        elif args.cmd == "status":
            _require_root()
            running = current(args.prefix)
            if args.json:
                print(json.dumps(dataclasses.asdict(running) if running else None))
            else:
                print(_describe(running) if running else f"lab {args.prefix} is not up")
            return 0 if running else 3
        elif args.cmd == "scenarios":
            for scen in SCENARIOS.values():
                print(f"{scen.name:<10} {scen.description}")
        elif args.cmd == "serve":
            serve(args.prefix, args.netns, args.tcp, args.udp,
                  max_seconds=args.max_seconds, ready=_announce_ready)
        elif args.cmd == "traffic":
            traffic(args.prefix, args.target, supernet=args.supernet, rate=args.rate,
                    max_seconds=args.max_seconds, tcp=args.tcp, udp=args.udp,
                    icmp=not args.no_icmp, ready=_announce_ready)
        elif args.cmd == "flood":
            pid = start_flood(args.prefix, flows=args.flows, rate=args.rate,
                              max_seconds=args.max_seconds, wait=args.wait)
            print(f"flood of {args.flows:,} flows "
                  + ("done" if args.wait else f"started (pid {pid})"))
        elif args.cmd == "flood-run":
            flood(args.prefix, args.target, supernet=args.supernet, flows=args.flows,
                  rate=args.rate, max_seconds=args.max_seconds, ready=_announce_ready)
        elif args.cmd == "probe":
            _require_named_netns()
            results = _probe_targets(args.targets, args.timeout)
            if args.json:
                print(json.dumps(results))
            else:
                for spec, res in results.items():
                    print(f"{spec:<28} {res}")
        return 0
    except LabError as exc:
        print(f"fwtop lab: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line for the user, never a traceback
        print(f"fwtop lab: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
