"""Command-line entry: the TUI, `lab`, `rules`.

Errors reach the user as one line, never a traceback."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fwtop.core.evaluator import Packet
from fwtop.firewall import FirewallError, load_ruleset, require_root
from fwtop.firewall.libnft import NftError
from fwtop.firewall.netns import NetnsError, enter, resolve

if TYPE_CHECKING:
    from fwtop.core.edits import Edit
    from fwtop.core.firewalld import ZoneChange as FirewalldChange
    from fwtop.service.edits import FirewalldPreview, Preview
    from fwtop.service.journal import Record
    from fwtop.service.watch import CaptureOptions

EXIT_USAGE = 2
EXIT_FAIL = 1


class CliError(Exception):
    """A failure explained in one line."""


def _add_netns(p: argparse.ArgumentParser) -> None:
    p.add_argument("--netns", metavar="NAME|PID",
                   help="work inside this network namespace "
                        "(a name from `ip netns list`, or a PID)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fwtop",
        description="See what your firewall drops, live: packets, drops, rule counters, conntrack.",
    )
    _add_netns(parser)
    parser.add_argument("--iface", help="capture on this interface only")
    parser.add_argument("--capture-filter", metavar="BPF", help="tcpdump-style capture filter")
    parser.add_argument("--lab", action="store_true",
                        help="bring up the built-in lab (a broken firewall in throwaway "
                             "namespaces) and open the TUI on it")
    parser.add_argument("--theme", choices=["dark", "light"], default="dark",
                        help="colour theme (also in the command palette, ctrl+p)")
    parser.add_argument("--interval", type=float, default=1.0, metavar="S",
                        help="counter poll interval in seconds (default 1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p_lab = sub.add_parser("lab", help="bring the built-in lab up or down")
    p_lab.add_argument("action", choices=["up", "down", "status"])
    p_lab.add_argument("--scenario", default="default")
    p_lab.add_argument("--prefix", default=None, help=argparse.SUPPRESS)
    p_lab.add_argument("--no-traffic", action="store_true",
                       help="do not start the traffic generator")

    p_rules = sub.add_parser("rules", help="print every rule and policy of every backend")
    _add_netns(p_rules)
    p_rules.add_argument("--json", action="store_true", help="JSON output")
    p_explain = sub.add_parser(
        "explain", help="which rule or policy decides a packet's fate, and why",
        description="Run a packet through the namespace's firewall the way the kernel does "
                    "and name the rule or chain policy that decides it.")
    _add_netns(p_explain)
    p_explain.add_argument("--proto", required=True,
                           help="tcp, udp, icmp, icmpv6 (or another protocol name)")
    p_explain.add_argument("--src", required=True, help="source address")
    p_explain.add_argument("--dst", required=True, help="destination address")
    p_explain.add_argument("--sport", type=int, help="source port")
    p_explain.add_argument("--dport", type=int, help="destination port")
    p_explain.add_argument("--icmp-type", type=int, help="ICMP/ICMPv6 type number")
    p_explain.add_argument("--icmp-code", type=int, help="ICMP/ICMPv6 code")
    p_explain.add_argument("--iif", help="interface the packet arrives on")
    p_explain.add_argument("--oif", help="interface the packet leaves by")
    p_explain.add_argument("--hook", choices=["input", "forward", "output"],
                           help="force the routing decision (default: from the routes)")
    p_explain.add_argument("--ct-state", default="new",
                           choices=["new", "established", "related", "invalid", "untracked"],
                           help="conntrack state of the packet (default new)")
    p_explain.add_argument("--json", action="store_true", help="JSON output")
    p_allow = sub.add_parser(
        "allow", help="open one flow for a while; the kernel closes it at the deadline",
        description="Insert the tightest allow for one flow right before the rule (or at the end "
                    "of the chain whose policy) that drops it. The kernel enforces the TTL (nft "
                    "set element timeout, iptables -m time --datestop): the hole closes even if "
                    "fwtop is killed. Shows the change first; --yes applies without asking.")
    _add_netns(p_allow)
    p_allow.add_argument("--proto", required=True, help="tcp, udp, sctp, icmp, icmpv6")
    p_allow.add_argument("--src", help="source address or prefix (a /32 or /128 by default)")
    p_allow.add_argument("--any-source", action="store_true",
                         help="allow every source address (refused unless given)")
    p_allow.add_argument("--dst", help="destination address (default: any of this host's)")
    p_allow.add_argument("--dport", type=int, help="destination port")
    p_allow.add_argument("--iif", help="only on this input interface")
    p_allow.add_argument("--ttl", type=int, required=True, metavar="S",
                         help="seconds until the kernel closes it (cap: FWTOP_TTL_CAP, 3600)")
    p_allow.add_argument("--dry-run", action="store_true", help="show the change, write nothing")
    p_allow.add_argument("--yes", action="store_true", help="apply without asking")
    p_allow.add_argument("--json", action="store_true", help="JSON output (implies --yes)")
    p_edit = sub.add_parser(
        "edit", help="delete, move or insert a rule, or set a chain policy; reverts by itself "
                     "unless confirmed",
        description="Commit-confirmed edit of one chain: fwtop snapshots the chain, shows the "
                    "diff and what the edit would do to recent drops and accepted flows (and "
                    "to your own SSH session), writes it in one transaction and starts a "
                    "detached reverter that restores the chain at the deadline unless you run "
                    "`fwtop temp confirm ID`. RULE is TABLE:CHAIN:HANDLE (nft, iptables-nft) "
                    "or TABLE:CHAIN:#POSITION (legacy), optionally FAMILY: in front. firewalld "
                    "is edited through firewalld, at runtime, made permanent on confirm: "
                    "--delete firewalld:ZONE:ELEMENT=VALUE (service, port, source, icmp-block, "
                    "rich-rule) or --insert 'rule ...'|port=N/tcp|... --chain firewalld:ZONE.")
    _add_netns(p_edit)
    what = p_edit.add_mutually_exclusive_group(required=True)
    what.add_argument("--delete", metavar="RULE", help="delete this rule")
    what.add_argument("--move", metavar="RULE", help="move this rule (with --before)")
    what.add_argument("--insert", metavar="TEXT",
                      help="insert this rule, in the backend's own syntax (with --chain)")
    what.add_argument("--policy", metavar="TABLE:CHAIN=VERDICT",
                      help="set a base chain's policy (accept or drop)")
    p_edit.add_argument("--before", metavar="RULE",
                        help="--move / --insert: put the rule right before this one")
    p_edit.add_argument("--chain", metavar="TABLE:CHAIN", help="--insert: the chain")
    p_edit.add_argument("--family", choices=["ip", "ip6", "inet", "arp", "bridge", "netdev"],
                        help="the family of RULE / CHAIN when they do not say it")
    p_edit.add_argument("--backend", choices=["nft", "iptables-nft", "iptables-legacy"],
                        help="when the same table and chain exist in several backends")
    p_edit.add_argument("--expect-text", metavar="TEXT",
                        help="the rule's text as you saw it (fwtop rules): refused if the rule "
                             "at RULE is another one (required for #POSITION without a prompt)")
    p_edit.add_argument("--confirm-within", type=int, default=120, metavar="S",
                        help="seconds until the edit reverts unless confirmed (default 120, "
                             "cap: FWTOP_TTL_CAP, 3600)")
    p_edit.add_argument("--replay", metavar="FILE",
                        help="impact from these `fwtop watch --json` lines (drops, flows)")
    p_edit.add_argument("--observe", type=float, metavar="S",
                        help="impact from the drops seen in the next S seconds")
    p_edit.add_argument("--no-conntrack", action="store_true",
                        help="do not take the conntrack table as the accepted flows")
    p_edit.add_argument("--dry-run", action="store_true", help="show the change, write nothing")
    p_edit.add_argument("--yes", action="store_true", help="apply without asking")
    p_edit.add_argument("--json", action="store_true", help="JSON output (implies --yes)")
    p_temp = sub.add_parser("temp", help="list, extend or revert temporary allows")
    p_temp.add_argument("action", choices=["list", "extend", "revert", "permanent", "confirm"],
                        help="permanent: print the persistent form of a temporary allow "
                             "(nothing is written)")
    p_temp.add_argument("id", nargs="?", help="the allow's id (extend, revert)")
    p_temp.add_argument("seconds", nargs="?", type=int, help="new TTL from now (extend)")
    p_temp.add_argument("--json", action="store_true", help="JSON output")
    p_trace = sub.add_parser(
        "trace", help="trace real packets of a flow with nftrace: the kernel's own answer",
        description="Mark packets of one flow with nftrace (in a temporary table the kernel "
                    "removes when fwtop exits) and show every nf_tables rule they met, beside "
                    "fwtop's evaluation. Exit status 3 if they disagree, 4 if no packet came.")
    _add_netns(p_trace)
    p_trace.add_argument("--proto", required=True, help="tcp, udp, icmp, icmpv6")
    p_trace.add_argument("--src", required=True, help="source address")
    p_trace.add_argument("--dst", required=True, help="destination address")
    p_trace.add_argument("--sport", type=int, help="source port (default: any)")
    p_trace.add_argument("--dport", type=int, help="destination port")
    p_trace.add_argument("--timeout", type=float, default=10.0, metavar="S",
                         help="how long to wait for packets (default 10)")
    p_trace.add_argument("--count", type=int, default=1, help="packets to trace (default 1)")
    p_trace.add_argument("--json", action="store_true", help="JSON output")
    p_exporter = sub.add_parser(
        "exporter", help="serve Prometheus metrics: rule counters, drops, conntrack",
        description="Serve /metrics for Prometheus: per-rule packet/byte counters, drops by "
                    "source and attributed rule, drop-source health and losses, conntrack "
                    "fill and statistics. The HTTP server listens in fwtop's own namespace; "
                    "the readers watch --netns. Runs until SIGTERM or SIGINT.")
    _add_netns(p_exporter)
    p_exporter.add_argument("--listen", required=True, metavar="HOST:PORT",
                            help="address to serve on, e.g. 127.0.0.1:9630, [::1]:9630, :9630")
    p_exporter.add_argument("--interval", type=float, default=1.0, metavar="S",
                            help="seconds between rule counter and conntrack reads (default 1)")
    p_exporter.add_argument("--nflog-group", type=int, action="append", default=[],
                            metavar="N", help="also listen on this NFLOG group (groups used by "
                                              "the ruleset are found automatically)")
    p_watch = sub.add_parser("watch", help="headless event stream as JSON lines")
    _add_netns(p_watch)
    p_watch.add_argument("--json", action="store_true", required=True,
                         help="JSON lines on stdout (the only format)")
    p_watch.add_argument("--duration", type=float, metavar="S",
                         help="stop after S seconds (default: until interrupted)")
    p_watch.add_argument("--nflog-group", type=int, action="append", default=[], metavar="N",
                         help="also listen on this NFLOG group (groups used by the ruleset "
                              "are found automatically)")
    p_watch.add_argument("--counters", type=float, default=None, metavar="S",
                         help="every S seconds, a counters line: the rules and policies whose "
                              "counters moved, with deltas and rates")
    p_watch.add_argument("--stats-interval", type=float, default=1.0, metavar="S",
                         help="seconds between stats lines (default 1)")
    p_watch.add_argument("--conntrack-interval", type=float, default=1.0, metavar="S",
                         help="seconds between conntrack lines (count, fill, growth, time to "
                              "full, alarms; default 1; 0 turns them off)")
    p_watch.add_argument("--conntrack-breakdown", type=float, default=None, metavar="S",
                         help="also dump the conntrack table every S seconds and print what "
                              "fills it (states, protocols, top sources and ports)")
    p_watch.add_argument("--conntrack-events", action="store_true",
                         help="listen to conntrack new/destroy events for new_per_s and "
                              "destroy_per_s (makes the kernel send one message per connection)")
    p_watch.add_argument("--packets", action="store_true",
                         help="also capture packets: packet lines and flow lines (unanswered, "
                              "refused, rejected, established, ...)")
    # SUPPRESS: when not given here, the top-level --iface / --capture-filter still count.
    p_watch.add_argument("--capture-filter", metavar="EXPR", default=argparse.SUPPRESS,
                         help="tcpdump-style filter for --packets (compiled by tcpdump -ddd)")
    p_watch.add_argument("--iface", metavar="IF", default=argparse.SUPPRESS,
                         help="capture on this interface only (default: every interface)")
    p_watch.add_argument("--pcap", metavar="FILE",
                         help="with --packets: also write every captured packet to FILE")
    p_watch.add_argument("--flow-timeout", type=float, default=3.0, metavar="S",
                         help="with --packets: seconds a SYN, datagram or echo waits for its "
                              "answer before its flow is unanswered (default 3)")
    return parser


def _print_json(data: object) -> None:
    json.dump(data, sys.stdout, indent=1)
    sys.stdout.write("\n")


def _before_apply(args: argparse.Namespace, plan: dict[str, Any]) -> int | None:
    """The exit code when nothing is to be written (a dry run, or the user said no), else None."""
    if args.dry_run:
        if args.json:
            _print_json({**plan, "dry_run": True})
        return 0
    if not (args.yes or args.json or _confirmed()):
        print("not applied")
        return 1
    return None


def _confirmed() -> bool:
    """Ask before changing the firewall; without a terminal the answer must be --yes."""
    if not sys.stdin.isatty():
        raise CliError("not applied: pass --yes to apply without a terminal")
    return input("apply? [y/N] ").strip().lower() in ("y", "yes")


def _enter_netns(spec: str | None) -> str | None:
    ns = resolve(spec)
    if ns is not None:
        enter(ns)
        return ns.name
    return None


def cmd_rules(args: argparse.Namespace) -> int:
    from fwtop.core.report import ruleset_dict

    require_root()
    name = _enter_netns(args.netns)
    ruleset = load_ruleset()
    data = ruleset_dict(ruleset, name)
    if args.json:
        _print_json(data)
        return 0
    for b in data["backends"]:
        state = "ok" if b["available"] else "off"
        print(f"# {b['backend']}: {state}" + (f" ({b['reason']})" if b["reason"] else ""))
    for chain in ruleset.chains():
        head = f"{chain.backend} {chain.family} {chain.table} {chain.name}"
        if chain.policy is not None:
            pc = chain.policy.counters
            cnt = f" [{pc.packets} pkts]" if pc else ""
            head += f" (hook {chain.hook} prio {chain.priority} policy {chain.policy.verdict}{cnt})"
        print(head)
        for r in chain.rules:
            cnt = f"{r.counters.packets:>10} {r.counters.bytes:>12}" if r.counters else " " * 23
            ident = f"h{r.handle}" if r.handle is not None else f"#{r.position}"
            print(f"  {ident:>6} {cnt}  {r.text}")
    for w in ruleset.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 0


def _packet(args: argparse.Namespace, command: str) -> Packet:
    """The packet of `explain` / `trace` from their flags, validated (one-line errors)."""
    import ipaddress

    from fwtop.core.evaluator import Packet

    for name in ("src", "dst"):
        try:
            ipaddress.ip_address(getattr(args, name))
        except ValueError:
            raise CliError(f"--{name} {getattr(args, name)!r} is not an IP address") from None
    if (":" in args.src) != (":" in args.dst):
        raise CliError("--src and --dst must both be IPv4 or both IPv6")
    for name in ("sport", "dport"):
        value = getattr(args, name)
        if value is not None and not 0 <= value <= 65535:
            raise CliError(f"--{name} {value}: ports are 0-65535")
    proto = args.proto.lower()
    if proto in ("icmp6", "ipv6-icmp"):
        proto = "icmpv6"
    if command == "explain" and proto in ("tcp", "udp") and args.dport is None:
        print("fwtop explain: note: no --dport given; rules that match on ports make the "
              "answer uncertain", file=sys.stderr)
    return Packet(proto=proto, src=args.src, dst=args.dst, sport=args.sport, dport=args.dport,
                  icmp_type=getattr(args, "icmp_type", None),
                  icmp_code=getattr(args, "icmp_code", None), iif=getattr(args, "iif", None),
                  oif=getattr(args, "oif", None), hook=getattr(args, "hook", None),
                  ct_state=getattr(args, "ct_state", "new"))


def cmd_explain(args: argparse.Namespace) -> int:
    from fwtop.service.explain import explain_in_namespace

    pkt = _packet(args, "explain")
    require_root()
    _enter_netns(args.netns)
    result = explain_in_namespace(pkt)
    if args.json:
        _print_json(result.to_json())
    else:
        print(result.text())
    return 0


def cmd_allow(args: argparse.Namespace) -> int:
    from fwtop.core.tempallow import AllowError, AllowRequest
    from fwtop.service import tempallow

    proto = args.proto.lower()
    req = AllowRequest(proto=proto, src=args.src, dst=args.dst, dport=args.dport, iif=args.iif,
                       ttl=args.ttl, any_source=args.any_source)
    require_root()
    name = resolve(args.netns).name if args.netns else None  # one-line error if unknown
    try:
        prev = tempallow.preview(req, name)
        plan = prev.plan
        if not args.json:
            print(f"{args.proto} flow dropped by {tempallow._decider(prev.verdict)}")
            print(plan.summary())
            for line in plan.commands():
                print(f"  {line}")
        stop = _before_apply(args, plan.to_json())
        if stop is not None:
            return stop
        done = tempallow.apply(prev, name)
    except AllowError as exc:
        raise CliError(str(exc)) from None
    out = {**plan.to_json(), "handle": done.record.handle}
    if done.still_dropped:
        out["warning"] = f"the flow would still be dropped: {done.still_dropped}"
    if args.json:
        _print_json(out)
    else:
        until = time.strftime("%H:%M:%S", time.localtime(plan.expires_at))
        print(f"allowed: id {plan.id}, expires {until} "
              f"(fwtop temp extend {plan.id} S / fwtop temp revert {plan.id})")
        if done.still_dropped:
            print(f"warning: the flow would still be dropped: {done.still_dropped}")
    return 0


def _edit_request(args: argparse.Namespace) -> tuple[Edit, bool]:
    """The Edit from `fwtop edit`'s flags; True if it names a rule by position alone."""
    from dataclasses import replace

    from fwtop.core.edits import (
        ChainRef,
        Edit,
        RuleRef,
        parse_chain_ref,
        parse_policy,
        parse_rule_ref,
    )

    family = args.family

    def rule(spec: str) -> RuleRef:
        ref = parse_rule_ref(spec)
        return replace(ref, family=family) if family and not ref.family else ref

    def chain(ref: ChainRef) -> ChainRef:
        return replace(ref, family=family) if family and not ref.family else ref

    before = rule(args.before) if args.before else None
    if args.policy:
        where, verdict = parse_policy(args.policy)
        edit = Edit("policy", chain=chain(where), verdict=verdict)
    elif args.insert is not None:
        if not args.chain:
            raise CliError("--insert TEXT needs --chain TABLE:CHAIN")
        edit = Edit("insert", before=before, chain=chain(parse_chain_ref(args.chain)),
                    text=args.insert)
    elif args.move:
        edit = Edit("move", rule=rule(args.move), before=before)
    else:
        edit = Edit("delete", rule=rule(args.delete))
    if args.chain and args.insert is None:
        raise CliError("--chain goes with --insert")
    if args.before and not (args.move or args.insert is not None):
        raise CliError("--before goes with --move or --insert")
    edit = replace(edit, expect_text=args.expect_text, confirm_within=args.confirm_within)
    by_position = edit.rule is not None and edit.rule.position is not None
    return edit, by_position


def cmd_edit(args: argparse.Namespace) -> int:
    from fwtop.core.edits import EditError
    from fwtop.service import edits
    from fwtop.service.journal import JournalError

    require_root()
    name = args.netns
    if name:
        resolve(name)  # one-line error if unknown
    try:
        fw_change = _firewalld_change(args)
        if fw_change is not None:
            return _edit_show_apply(
                args, edits.preview_firewalld(fw_change, args.confirm_within, name))
        edit, by_position = _edit_request(args)
        if by_position and not args.expect_text and not args.dry_run and (
                args.yes or args.json or not sys.stdin.isatty()):
            raise CliError("a #POSITION is only as good as the moment it was read: give "
                           "--expect-text with the rule's text (fwtop rules shows it)")
        if args.observe is not None and not 0 < args.observe <= 600:
            raise CliError("--observe takes 1..600 seconds")
        traffic = edits.traffic_from_replay(args.replay) if args.replay else edits.Traffic()
        if args.observe:
            if not args.json:
                print(f"observing drops for {args.observe:g} s...", file=sys.stderr)
            seen = edits.observe(name, args.observe)
            traffic.drops += seen.drops
            traffic.sources += seen.sources
        traffic.conntrack = not args.no_conntrack
        prev = edits.preview(edit, name, traffic, backend=args.backend)
        return _edit_show_apply(args, prev)
    except (EditError, JournalError) as exc:
        raise CliError(str(exc)) from None


def _firewalld_change(args: argparse.Namespace) -> FirewalldChange | None:
    """The zone change when `fwtop edit` names a firewalld element (firewalld:ZONE:...)."""
    from fwtop.core.edits import EditError
    from fwtop.core.firewalld import FirewalldError, parse_element, parse_insert

    spec = args.delete or (args.chain if args.insert is not None else None) or ""
    if not spec.startswith("firewalld:"):
        return None
    if args.move or args.policy or args.before:
        raise CliError("firewalld edits are --delete firewalld:ZONE:ELEMENT=VALUE or --insert "
                       "TEXT --chain firewalld:ZONE")
    try:
        if args.delete:
            return parse_element(args.delete, "remove")
        return parse_insert(args.chain, args.insert)
    except FirewalldError as exc:
        raise EditError(str(exc)) from None


def _edit_show_apply(args: argparse.Namespace, prev: Preview | FirewalldPreview) -> int:
    """Show the preview, apply it on request, print the result (any backend)."""
    from fwtop.core.edits import EditError
    from fwtop.service import edits
    from fwtop.service.journal import JournalError

    edit = prev.edit
    try:
        if not args.json:
            print(prev.subject)
            print("\n".join(prev.diff))
            print("impact (" + "; ".join(prev.impact.sources or ["no traffic"]) + "):")
            for line in prev.impact.summary():
                print(f"  {line}")
            for w in prev.warnings:
                print(f"warning: {w}")
            print("fwtop will write, in one transaction:" if not isinstance(
                prev, edits.FirewalldPreview) else "fwtop will run (firewalld runtime only):")
            for line in prev.commands.splitlines():
                print(f"  {line}")
            print(f"it reverts by itself in {edit.confirm_within} s unless confirmed "
                  f"({prev.backup})")
        stop = _before_apply(args, prev.to_json())
        if stop is not None:
            return stop
        record = edits.apply(prev)
    except (EditError, JournalError) as exc:
        raise CliError(str(exc)) from None
    if args.json:
        _print_json({**edits.edit_json(record, prev), "dry_run": False})
    else:
        until = time.strftime("%H:%M:%S", time.localtime(record.expires_at))
        print(f"edited: id {record.id}; reverts at {until} unless confirmed: "
              f"fwtop temp confirm {record.id}  (fwtop temp revert {record.id} reverts now)")
        if record.note:
            print(f"warning: {record.note}")
    return 0


def _is_edit(edit_id: str) -> bool:
    from fwtop.service.edits import is_edit

    return is_edit(edit_id)


def _edits_needing_attention() -> list[Record]:
    from fwtop.service.edits import attention

    return attention()


def _temp_edit(args: argparse.Namespace) -> int:
    """`fwtop temp confirm|extend|revert ID` for a commit-confirmed edit."""
    from fwtop.core.edits import EditError
    from fwtop.service import edits
    from fwtop.service.journal import JournalError

    try:
        if args.action == "confirm":
            r = edits.confirm(args.id)
        elif args.action == "revert":
            r = edits.revert(args.id)
        else:
            r = edits.extend(args.id, args.seconds)
    except (EditError, JournalError) as exc:
        raise CliError(str(exc)) from None
    if args.json:
        _print_json(r.to_json())
    else:
        left = int(r.expires_at - time.time())
        print(f"{args.action}: {r.id} {r.state} "
              f"({r.note or f'reverts in {left} s unless confirmed'})")
    return 0 if r.state != "conflict" else EXIT_FAIL


def _finish_overdue_edits() -> None:
    """Every fwtop start reverts edits whose deadline passed with no reverter left to do it,
    and says which edits stopped on a conflict."""
    from fwtop.service.edits import finish_overdue
    from fwtop.service.journal import JournalError

    try:
        for r in finish_overdue():
            print(f"fwtop: edit {r.id} ({r.text}) is {r.state}: {r.note}"
                  + (f"; `fwtop temp confirm {r.id}` keeps the chain as it is"
                     if r.state == "conflict" else ""), file=sys.stderr)
    except (JournalError, OSError) as exc:
        print(f"fwtop: warning: finishing overdue edits failed: {exc}", file=sys.stderr)


def cmd_temp(args: argparse.Namespace) -> int:
    from fwtop.core.tempallow import AllowError, valid_id
    from fwtop.service import tempallow

    require_root()
    if args.action != "list":
        if not args.id or not valid_id(args.id):
            raise CliError(f"fwtop temp {args.action} needs an id from `fwtop temp list`")
        if args.action == "extend" and args.seconds is None:
            raise CliError("fwtop temp extend ID SECONDS")
    if args.action == "confirm" or (args.action in ("extend", "revert") and _is_edit(args.id)):
        return _temp_edit(args)
    try:
        if args.action == "list":
            records = tempallow.active() + tempallow.leftovers() + _edits_needing_attention()
            if args.json:
                _print_json([r.to_json() for r in records])
                return 0
            if not records:
                print("no active temporary rules")
            for r in records:
                left = max(0, int(r.expires_at - time.time()))
                print(f"{r.id}  {left:>5} s left  {r.netns or 'host'}  {r.backend} {r.family} "
                      f"{r.table} {r.chain}  {r.text}")
                if r.state == "leftover":
                    print(f"          {r.state}: {r.note}")
            return 0
        if args.action == "permanent":
            from fwtop.core.tempallow import persistent_form

            match = [r for r in tempallow.active() if r.id == args.id]
            if not match:
                raise CliError(f"no active temporary rule {args.id} (see `fwtop temp list`)")
            r = match[0]
            lines = persistent_form(r.backend, r.family, r.table, r.chain, r.ipt_argv, r.flow)
            if args.json:
                _print_json({"id": r.id, "backend": r.backend, "persistent": lines})
            else:
                print("\n".join(lines))
                print("# fwtop writes no persistent file; the temporary rule still expires at "
                      "its deadline unless you add this")
            return 0
        if args.action == "revert":
            r = tempallow.revert(args.id)
        else:
            r = tempallow.extend(args.id, args.seconds)
    except AllowError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        _print_json(r.to_json())
    else:
        left = int(r.expires_at - time.time())
        print(f"{args.action}: {r.id} ({r.note or f'expires in {left} s'})")
    return 0


def _startup_cleanup() -> None:
    """Every fwtop start removes the leftovers of expired temporary allows (cheap when none)."""
    import os

    from fwtop.service.journal import Journal, JournalError

    if os.geteuid() != 0 or not Journal().path.exists():
        return
    from fwtop.service.tempallow import cleanup

    try:
        for r in cleanup():
            if r.state == "leftover":
                print(f"fwtop: warning: temporary allow {r.id}: {r.note}", file=sys.stderr)
            else:
                print(f"fwtop: removed the expired temporary allow {r.id} ({r.note})",
                      file=sys.stderr)
    except (JournalError, OSError) as exc:
        print(f"fwtop: warning: cleanup of expired temporary allows failed: {exc}",
              file=sys.stderr)
    _finish_overdue_edits()


def cmd_trace(args: argparse.Namespace) -> int:
    from fwtop.service.trace import trace_flow
    from fwtop.sources.nftrace import TraceError

    pkt = _packet(args, "trace")
    if args.timeout <= 0 or args.count < 1:
        raise CliError("--timeout must be positive and --count at least 1")
    require_root()
    _enter_netns(args.netns)
    if not args.json:
        print(f"fwtop trace: waiting up to {args.timeout:.0f} s for {args.count} packet(s) of "
              "this flow (traced by the kernel, rate-limited)…", file=sys.stderr)
    try:
        report = trace_flow(pkt, timeout=args.timeout, count=args.count)
    except TraceError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        _print_json(report.to_json())
    else:
        print(report.text())
    if any(t.agree is False for t in report.traced):
        return 3  # the evaluator disagreed with the kernel
    return 0 if report.traced else 4


def cmd_watch(args: argparse.Namespace) -> int:
    from fwtop.service.watch import watch

    require_root()
    if args.duration is not None and args.duration <= 0:
        raise CliError("--duration must be a positive number of seconds")
    for group in args.nflog_group:
        if not 0 <= group <= 65535:
            raise CliError(f"--nflog-group {group}: NFLOG groups are 0-65535")
    if args.conntrack_interval < 0:
        raise CliError("--conntrack-interval must be 0 (off) or a positive number of seconds")
    if args.conntrack_breakdown is not None and args.conntrack_breakdown <= 0:
        raise CliError("--conntrack-breakdown must be a positive number of seconds")
    if args.counters is not None and args.counters <= 0:
        raise CliError("--counters must be a positive number of seconds")
    packets = _capture_options(args)
    ns = resolve(args.netns)
    if ns is not None:
        enter(ns)
    return watch(sys.stdout, ns, args.nflog_group, args.duration, args.stats_interval,
                 conntrack_interval=args.conntrack_interval or None,
                 conntrack_breakdown=args.conntrack_breakdown,
                 conntrack_events=args.conntrack_events, packets=packets,
                 counters_interval=args.counters)


def _capture_options(args: argparse.Namespace) -> CaptureOptions | None:
    """watch's --packets options, checked (a bad filter is a one-line error here)."""
    from fwtop.service.watch import CaptureOptions

    if not args.packets:
        if args.pcap or getattr(args, "capture_filter", None) is not None:
            raise CliError("--pcap and --capture-filter need --packets")
        return None
    if not 0 < args.flow_timeout <= 3600:
        raise CliError("--flow-timeout must be a positive number of seconds (at most 3600)")
    expr = getattr(args, "capture_filter", None)
    if expr is not None:
        from fwtop.sources.capture import CaptureError, compile_filter

        try:
            compile_filter(expr)
        except CaptureError as exc:
            raise CliError(str(exc)) from None
    return CaptureOptions(iface=getattr(args, "iface", None), capture_filter=expr,
                          pcap_path=args.pcap, flow_timeout=args.flow_timeout)


def cmd_lab(args: argparse.Namespace) -> int:
    from fwtop import lab

    require_root()
    prefix = args.prefix or lab.DEFAULT_PREFIX
    if args.action == "up":
        info = lab.up(prefix, scenario=args.scenario, traffic=not args.no_traffic)
        print(f"lab up: firewall namespace {info.fw_ns} (client {info.client_ns}, "
              f"backend {info.backend_ns}); open it with: fwtop --netns {info.fw_ns}")
    elif args.action == "down":
        print("lab down" if lab.down(prefix) else "lab was not up")
    else:
        print("up" if lab.is_up(prefix) else "down")
    return 0


def cmd_exporter(args: argparse.Namespace) -> int:
    from fwtop.service.exporter import ListenError, parse_listen, serve

    try:
        host, port = parse_listen(args.listen)
    except ListenError as exc:
        raise CliError(str(exc)) from None
    if not 0.1 <= args.interval <= 3600:
        raise CliError("--interval must be from 0.1 to 3600 seconds")
    for group in args.nflog_group:
        if not 0 <= group <= 65535:
            raise CliError(f"--nflog-group {group}: NFLOG groups are 0-65535")
    require_root()
    # Not entered here: the HTTP server must listen in fwtop's own namespace; every reader
    # enters --netns on its own thread.
    ns = resolve(args.netns)
    try:
        return serve(host, port, ns, interval=args.interval, nflog_groups=args.nflog_group)
    except ListenError as exc:  # the address cannot be bound (in use, not local, unknown)
        raise CliError(str(exc)) from None


def _lab_down_on_hangup(prefix: str) -> None:
    """A dropped SSH session (SIGHUP) or a kill (SIGTERM) must not leave the lab behind: tear
    it down, then die of the signal as usual."""
    import os
    import signal

    from fwtop import lab

    def handler(signum: int, _frame: object) -> None:
        try:
            lab.down(prefix)
        finally:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for sig in (signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, handler)


def cmd_tui(args: argparse.Namespace) -> int:
    from fwtop import lab

    require_root()
    created_lab = False
    netns = args.netns
    if args.lab:
        if netns:
            raise CliError("--lab and --netns cannot be combined: the lab has its own namespace")
        if not lab.is_up(lab.DEFAULT_PREFIX):
            lab.up(lab.DEFAULT_PREFIX)
            created_lab = True
            _lab_down_on_hangup(lab.DEFAULT_PREFIX)
        netns = f"{lab.DEFAULT_PREFIX}-fw"
    try:
        ns = resolve(netns)
        from fwtop.ui.app import run_app

        run_app(netns=ns, interval=args.interval, lab=args.lab, theme=args.theme,
                iface=args.iface, capture_filter=args.capture_filter)
    finally:
        if created_lab:
            lab.down(lab.DEFAULT_PREFIX)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"rules": cmd_rules, "lab": cmd_lab, "watch": cmd_watch, "explain": cmd_explain,
                "allow": cmd_allow, "temp": cmd_temp, "edit": cmd_edit,
                "trace": cmd_trace,
                "exporter": cmd_exporter,
                None: cmd_tui}
    try:
        if args.command not in ("lab",):
            _startup_cleanup()
        return handlers[args.command](args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `fwtop rules | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0
    except (CliError, FirewallError, NetnsError, NftError) as exc:
        print(f"fwtop: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except Exception as exc:  # the lab's and backends' own error types end up here too
        name = type(exc).__name__
        if name in ("LabError", "LegacyUnavailable", "NftNetlinkError"):
            print(f"fwtop: {exc}", file=sys.stderr)
            return EXIT_FAIL
        raise


if __name__ == "__main__":
    sys.exit(main())
