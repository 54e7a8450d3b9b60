"""Real kernel: the TUI with the real Monitor on a throwaway namespace shows a rule's live
counter, equal to the kernel's own, and its delta while packets flow."""

from __future__ import annotations

import json
import secrets
import sys
import time
from collections.abc import Callable

import pytest

from fwtop.firewall.netns import resolve
from fwtop.ui.app import build_app
from fwtop.ui.render import human_count
from fwtop.ui.screens import ExplainScreen
from tests.conftest import Namespaces, needs, ns_run

pytestmark = [pytest.mark.kernel, needs("ip", "nft", "iptables-nft")]

PORT = 47123
COMMENT = "[bold red]lab[/]"  # markup in a kernel string must print literally

RULESET = f"""
table inet fwtui {{
  chain input {{
    type filter hook input priority 0; policy accept;
    udp dport {PORT} counter accept comment "{COMMENT}"
  }}
}}
"""


def kernel_rule(ns: str) -> tuple[int, int]:
    """(handle, packets) of our counter rule, as `nft -j list ruleset` reports it."""
    data = json.loads(ns_run(ns, "nft", "-j", "list", "ruleset").stdout)
    for item in data["nftables"]:
        rule = item.get("rule")
        if rule and rule["table"] == "fwtui" and rule["chain"] == "input":
            for expr in rule["expr"]:
                if "counter" in expr:
                    return rule["handle"], expr["counter"]["packets"]
    raise AssertionError("counter rule not found in the namespace")


def send_udp(ns: str, count: int) -> None:
    ns_run(ns, sys.executable, "-c",
           "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
           f"for _ in range({count}): s.sendto(b'x' * 20, ('127.0.0.1', {PORT}))\n")


async def test_live_counter_matches_the_kernel(namespaces: Namespaces) -> None:
    ns = namespaces.new("ui")  # unique name, lo up, always deleted
    ns_run(ns, "nft", "-f", "-", input=RULESET)
    handle, before = kernel_rule(ns)
    assert before == 0

    app = build_app(netns=resolve(ns), interval=0.3)
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.table

        async def until(cond: object, what: str, timeout: float = 40.0) -> None:
            deadline = time.monotonic() + timeout
            while not cond():  # type: ignore[operator]
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                await pilot.pause(0.05)

        def rule_key() -> str | None:
            if app.shown is None:
                return None
            for rule in app.shown.ruleset.rules():
                if rule.table == "fwtui" and rule.handle == handle:
                    return rule.key
            return None

        await until(lambda: rule_key() is not None and rule_key() in table.row_keys,
                    "the rule to appear")
        key = rule_key()
        assert key is not None and key.startswith("nft:inet:fwtui:input:")
        assert table.get_cell(key, "comment").plain == COMMENT
        header = str(app.query_one("#header").render())
        assert "nft ✓" in header and f"ns {ns}" in header

        send_udp(ns, 50)
        _, kernel_packets = kernel_rule(ns)
        assert kernel_packets == 50
        saw_delta = False

        def caught_up() -> bool:
            nonlocal saw_delta
            saw_delta |= table.get_cell(key, "dpkts").plain != "·"
            shown = app.shown
            return (saw_delta and shown is not None
                    and shown.counters[key].packets == kernel_packets
                    and table.get_cell(key, "pkts").plain == human_count(kernel_packets))

        await until(caught_up, "the table to show the kernel's counter and a delta")
        assert not app.query_one("#status").has_class("-error")


def nflog_group_packets(ns: str, group: int) -> int:
    """What the kernel counted on every rule that logs to NFLOG `group` (nft's view of
    iptables-nft's NFLOG and of native `log group`)."""
    data = json.loads(ns_run(ns, "nft", "-j", "list", "ruleset").stdout)
    total = 0
    for item in data["nftables"]:
        exprs = item.get("rule", {}).get("expr", [])
        if any(e.get("log", {}).get("group") == group for e in exprs):
            total += sum(e["counter"]["packets"] for e in exprs if "counter" in e)
    return total


async def test_lab_drops_show_live_and_agree_with_the_kernel() -> None:
    from fwtop import lab

    prefix = "fwtui" + secrets.token_hex(2)
    state = lab.up(prefix, rate=40.0, max_seconds=60)
    try:
        app = build_app(netns=resolve(state.fw_ns), interval=0.5)
        async with app.run_test(size=(200, 50)) as pilot:
            async def until(cond: Callable[[], bool], what: str, timeout: float = 40.0) -> None:
                deadline = time.monotonic() + timeout
                while not cond():
                    assert time.monotonic() < deadline, f"timed out waiting for {what}"
                    await pilot.pause(0.05)

            def nflog_received() -> int:
                return sum(s.received for s in app.drop_stats if s.source == "nflog")

            await until(lambda: app.drops_table.row_count >= 5, "the lab's drops")
            from fwtop.ui.packets import PacketsPane

            packets = app.query_one(PacketsPane)
            await until(lambda: len(packets.packet_log) >= 5, "captured packets")
            assert packets.display  # 200 columns: all three panes side by side
            prefixes = {e.prefix for e in app.drops_table.events}
            assert prefixes & {"fwlab-input-drop", "fwlab-fwd-drop", "fwlab-noping"}
            assert "nflog" in str(app.query_one("#drops-pane").border_title)
            for e in app.drops_table.events:
                if e.source == "nflog":
                    assert e.group == lab.NFLOG_GROUP
                    assert e.src is not None and e.src.startswith("10.77.")

            # fwtop's count against the kernel's: never more than the rules counted, and it
            # catches up with what the kernel had counted a moment before.
            before = nflog_group_packets(state.fw_ns, lab.NFLOG_GROUP)
            await until(lambda: nflog_received() >= before, "fwtop to catch up with the kernel")
            seen = nflog_received()
            after = nflog_group_packets(state.fw_ns, lab.NFLOG_GROUP)
            assert before <= seen <= after
            assert all(s.lost == 0 for s in app.drop_stats if s.source == "nflog")
            # The pane's log catches up at its next render (at most 10 per second).
            await until(lambda: app.drop_log.total >= seen, "the pane to hold every NFLOG event")

            # Every lab drop names its rule, and `t` has the kernel confirm it (nftrace).
            def unnamed() -> list[str]:
                table = app.drops_table
                return [f"{i}:{table.cell_text(i, 'rule')!r}" for i in range(table.row_count)
                        if table.cell_text(i, "rule") in ("", "…")]

            try:
                await until(lambda: not unnamed(), "every drop to name its rule")
            except AssertionError:
                raise AssertionError(f"rows without a rule: {unnamed()} "
                                     f"(worker: {app._attrib.attributed} done)") from None
            await pilot.press("1")
            await pilot.press("t")
            await until(lambda: isinstance(app.screen, ExplainScreen), "the trace screen")
            screen = app.screen
            assert isinstance(screen, ExplainScreen)
            try:
                await until(lambda: "kernel:" in screen.text, "the kernel's trace", timeout=30)
            except AssertionError:
                raise AssertionError(f"no trace: {screen.text!r}") from None
            assert "the evaluator agrees with the kernel" in screen.text, screen.text
    finally:
        lab.down(prefix)
