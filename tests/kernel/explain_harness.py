"""Harness for checking `fwtop explain` against the kernel: a client and a firewall namespace
(optionally a backend behind the firewall), one real packet, and the kernel's own answer from
its rule counters (`nft -j list ruleset` for nft and iptables-nft, `iptables-legacy-save -c`
for legacy) and from whether the packet was delivered.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from tests.conftest import Namespaces, ns_run

RECEIVER = """
import socket, sys, time
proto, port, wait = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
fam = socket.AF_INET6 if sys.argv[4] == "6" else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", port))
s.settimeout(wait)
print("ready", flush=True)
try:
    if proto == "udp":
        s.recvfrom(100)
    else:
        s.listen(5)
        s.accept()
    print("got", flush=True)
except OSError:
    print("none", flush=True)
"""

SENDER = """
import socket, sys
proto, dst, port, sport = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
if proto == "udp":
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind(("", sport))
    s.sendto(b"fwtop-explain", (dst, port))
    print("sent")
else:
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.bind(("", sport))
    s.settimeout(0.6)  # below the first SYN retransmit (1 s): exactly one SYN
    try:
        s.connect((dst, port))
        print("connected")
    except ConnectionRefusedError:
        print("refused")
    except OSError as exc:
        print("timeout" if "timed out" in str(exc) else f"error {exc}")
"""

# A TCP server on the given ports (accepts and closes, for up to 180 s) and one connect attempt
# printing what the client saw: connected, refused (RST), rejected (ICMP, e.g. firewalld's
# admin-prohibited) or timeout (a DROP). Shared by the kernel tests of allows and edits.
SERVER = """
import socket, sys, time
socks = []
for port in sys.argv[1:]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(port)))
    s.listen(64)
    s.setblocking(False)
    socks.append(s)
end = time.monotonic() + 180
while time.monotonic() < end:
    for s in socks:
        try:
            c, _ = s.accept()
            c.close()
        except OSError:
            pass
    time.sleep(0.02)
"""
CONNECT = """
import socket, sys
s = socket.socket()
s.settimeout(1.0)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("connected")
except ConnectionRefusedError:
    print("refused")
except TimeoutError:
    print("timeout")
except OSError:
    print("rejected")
"""



@dataclass
class Topology:
    client: str
    fw: str
    backend: str | None
    client_ip: str
    fw_ip: str
    fw_if: str  # the firewall's interface towards the client
    backend_ip: str | None = None
    client_ip6: str | None = None
    fw_ip6: str | None = None


def topology(namespaces: Namespaces, backend: bool = False, ipv6: bool = False) -> Topology:
    c, f = namespaces.new("xc"), namespaces.new("xf")
    n = secrets.randbelow(250) + 1
    cif, fif = namespaces.veth(c, f, f"10.64.{n}.1/24", f"10.64.{n}.2/24")
    top = Topology(c, f, None, f"10.64.{n}.1", f"10.64.{n}.2", fif)
    if ipv6:
        ns_run(c, "ip", "-6", "addr", "add", f"fd64:{n:x}::1/64", "dev", cif, "nodad")
        ns_run(f, "ip", "-6", "addr", "add", f"fd64:{n:x}::2/64", "dev", fif, "nodad")
        top.client_ip6, top.fw_ip6 = f"fd64:{n:x}::1", f"fd64:{n:x}::2"
    if backend:
        b = namespaces.new("xb")
        namespaces.veth(f, b, f"10.65.{n}.1/24", f"10.65.{n}.2/24")
        ns_run(f, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        ns_run(b, "ip", "route", "add", "default", "via", f"10.65.{n}.1")
        ns_run(c, "ip", "route", "add", f"10.65.{n}.0/24", "via", f"10.64.{n}.2")
        top.backend, top.backend_ip = b, f"10.65.{n}.2"
    return top


# --- the kernel's answer --------------------------------------------------------------------


def nft_counters(ns: str) -> dict[tuple[str, str, str, int], tuple[int, bool]]:
    """(family, table, chain, handle) -> (packets, decides) for every nft rule with a counter;
    `decides` = the rule ends in drop or reject (native, or the iptables-nft REJECT target)."""
    out: dict[tuple[str, str, str, int], tuple[int, bool]] = {}
    data = json.loads(ns_run(ns, "nft", "-j", "list", "ruleset").stdout)
    for item in data["nftables"]:
        r = item.get("rule")
        if not r:
            continue
        packets = sum(e["counter"]["packets"] for e in r["expr"] if "counter" in e)
        decides = any("drop" in e or "reject" in e or (
            "xt" in e and e["xt"].get("type") == "target" and e["xt"].get("name") in
            ("REJECT", "DROP")) for e in r["expr"])
        out[(r["family"], r["table"], r["chain"], r["handle"])] = (packets, decides)
    return out


def legacy_counters(ns: str) -> dict[tuple[str, str, str, int], tuple[int, bool]]:
    out: dict[tuple[str, str, str, int], tuple[int, bool]] = {}
    proc = ns_run(ns, "iptables-legacy-save", "-c", check=False)
    table = ""
    pos: dict[str, int] = {}
    for line in proc.stdout.splitlines():
        if line.startswith("*"):
            table, pos = line[1:], {}
        m = re.match(r"\[(\d+):\d+\] -A (\S+) (.*)", line)
        if m:
            chain = m.group(2)
            pos[chain] = pos.get(chain, 0) + 1
            decides = bool(re.search(r"-j (DROP|REJECT)\b", m.group(3)))
            out[("ip", table, chain, pos[chain])] = (int(m.group(1)), decides)
    return out


@dataclass
class KernelAnswer:
    outcome: str  # what the sender saw: got / none (udp), connected / refused / timeout (tcp)
    moved: dict[tuple[str, str, str, int], int]  # nft rules whose counter moved: delta
    moved_legacy: dict[tuple[str, str, str, int], int]
    deciders: set[tuple[str, str, str, int]]  # moved rules that drop or reject (nft)
    deciders_legacy: set[tuple[str, str, str, int]]


def send(top: Topology, proto: str, dst: str, dport: int, sport: int,
         listen_ns: str | None = None, listen_port: int | None = None,
         wait: float = 1.5) -> KernelAnswer:
    """One packet (one SYN, or one datagram) from the client; returns the kernel's answer."""
    before, before_l = nft_counters(top.fw), legacy_counters(top.fw)
    receiver = None
    if listen_ns is not None:
        receiver = subprocess.Popen(
            ["ip", "netns", "exec", listen_ns, sys.executable, "-c", RECEIVER, proto,
             str(listen_port or dport), str(wait), "6" if ":" in dst else "4"],
            stdout=subprocess.PIPE, text=True)
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == "ready"
    sent = ns_run(top.client, sys.executable, "-c", SENDER, proto, dst, str(dport), str(sport),
                  timeout=20).stdout.strip()
    outcome = sent
    if receiver is not None:
        out, _ = receiver.communicate(timeout=20)
        if proto == "udp":
            outcome = out.strip().splitlines()[-1]
    after, after_l = nft_counters(top.fw), legacy_counters(top.fw)
    moved = {k: after[k][0] - before.get(k, (0, False))[0] for k in after
             if after[k][0] > before.get(k, (0, False))[0]}
    moved_l = {k: after_l[k][0] - before_l.get(k, (0, False))[0] for k in after_l
               if after_l[k][0] > before_l.get(k, (0, False))[0]}
    return KernelAnswer(outcome, moved, moved_l, {k for k in moved if after[k][1]},
                        {k for k in moved_l if after_l[k][1]})


ICMP_ECHO = """
import socket, struct, sys
dst = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
body = struct.pack("!BBHHH", 8, 0, 0, 0x4657, 1) + b"fwtop"
total = sum(struct.unpack("!%dH" % (len(body) // 2), body[: len(body) // 2 * 2]))
total += body[-1] << 8 if len(body) % 2 else 0
total = (total >> 16) + (total & 0xFFFF)
csum = ~(total + (total >> 16)) & 0xFFFF
s.sendto(body[:2] + struct.pack("!H", csum) + body[4:], (dst, 0))
s.settimeout(1.0)
try:
    while True:
        data, _ = s.recvfrom(200)
        if data[20] == 0:
            print("reply")
            break
except OSError:
    print("timeout")
"""


def ping(top: Topology, dst: str) -> str:
    """One ICMP echo request from the client (raw socket: no ping binary needed)."""
    return ns_run(top.client, sys.executable, "-c", ICMP_ECHO, dst, timeout=20).stdout.strip()


def explain(top: Topology, *args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "fwtop", "explain", "--netns", top.fw,
                           "--json", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def rule_id(rule: dict[str, Any]) -> tuple[str, str, str, int]:
    """The kernel's key for fwtop's rule: nft handle, or legacy position."""
    if rule["backend"] == "iptables-legacy":
        return (rule["family"], rule["table"], rule["chain"], rule["position"])
    return (rule["family"], rule["table"], rule["chain"], rule["handle"])


def agree(result: dict[str, Any], kernel: KernelAnswer) -> None:
    """fwtop's answer must be the kernel's: the deciding rule's counter moved and no other
    drop/reject did, or (policy) no drop/reject rule moved; and the delivery outcome fits."""
    verdict = result["verdict"]
    delivered = kernel.outcome in ("got", "connected", "refused")
    deciders = {("nft", *k) for k in kernel.deciders} | {
        ("legacy", *k) for k in kernel.deciders_legacy}
    if verdict == "accept":
        assert delivered, (result, kernel)
        assert not deciders, (result, kernel)
        return
    assert verdict in ("drop", "reject"), result
    if verdict == "drop":
        assert kernel.outcome in ("none", "timeout", "sent"), (result, kernel)
    else:
        assert kernel.outcome in ("refused", "none", "sent"), (result, kernel)
    if result["rule"] is not None:
        rule = result["rule"]
        tag = "legacy" if rule["backend"] == "iptables-legacy" else "nft"
        assert deciders == {(tag, *rule_id(rule))}, (result, kernel)
    else:
        assert result["policy"] is not None
        assert not deciders, (result, kernel)


def fwtop(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The real `fwtop` command line in a child process with `env` (its FWTOP_STATE_DIR)."""
    proc = subprocess.run([sys.executable, "-m", "fwtop", *args], capture_output=True,
                          text=True, timeout=90, env=env)
    if check:
        assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc


def connect(top: Topology, port: int) -> str:
    """One TCP connect from the client to the firewall namespace: what CONNECT printed."""
    return ns_run(top.client, sys.executable, "-c", CONNECT, top.fw_ip, str(port)).stdout.strip()
