"""Pilot tests of the Drops pane fed by a fake drop stream (the same DropBatch objects the real
DropStream hands over); what is asserted is what a user sees: rows, title, summary."""

from __future__ import annotations

import time
from collections.abc import Callable

from fwtop.core.events import DropEvent, SourceStats
from fwtop.service.drops import DropBatch
from fwtop.service.rules import RulesView
from fwtop.ui.app import FwtopApp, build_app
from fwtop.ui.widgets import FilterInput

HOSTILE = "\x1b[31m[bold red]x[/]"
NFLOG_ON = SourceStats("nflog", True, received=0, detail="groups 7")
KMSG_OFF = SourceStats("kmsg", False, off_reason="net.netfilter.nf_log_all_netns is 0")


def drop(i: int, *, src: str = "10.77.1.2", dport: int = 8080, prefix: str = "fwlab-input-drop",
         proto: str = "tcp") -> DropEvent:
    now = time.time()
    return DropEvent("nflog", time.monotonic(), now + i * 0.001, prefix=prefix,
                     group=7 if prefix else None,
                     hook="input", iif="veth-c", family="ip", proto=proto, src=src,
                     dst="10.77.1.1", sport=40000 + i, dport=dport, tcp_flags="SYN", len=60)


class FakeMonitor:
    def __init__(self, on_rules: Callable[[RulesView], None], on_error: Callable[[str], None]):
        pass

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def poll_now(self) -> None: ...


class FakeDrops:
    def __init__(self, on_batch: Callable[[DropBatch], None],
                 on_error: Callable[[str], None]) -> None:
        self.on_batch = on_batch
        self.on_error = on_error
        self.received = 0
        self.stopped = False

    def start(self) -> None:
        self.send([])

    def stop(self) -> None:
        self.stopped = True

    def send(self, events: list[DropEvent], overflow: int = 0) -> None:
        self.received += len(events)
        stats = (SourceStats("nflog", True, received=self.received, lost=overflow,
                             detail="groups 7"), KMSG_OFF)
        self.on_batch(DropBatch(tuple(events), stats, overflow))


def make_app() -> tuple[FwtopApp, list[FakeDrops]]:
    made: list[FakeDrops] = []

    def drops(on_batch: Callable[[DropBatch], None],
              on_error: Callable[[str], None]) -> FakeDrops:
        made.append(FakeDrops(on_batch, on_error))
        return made[-1]

    return build_app(monitor_factory=FakeMonitor, drops_factory=drops), made


async def settle(pilot: object, cond: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await pilot.pause(0.05)  # type: ignore[attr-defined]


def column(app: FwtopApp, key: str) -> list[str]:
    table = app.drops_table
    return [table.cell_text(i, key) for i in range(table.row_count)]


async def test_newest_first_title_and_off_source() -> None:
    app, made = make_app()
    async with app.run_test(size=(160, 40)) as pilot:
        made[0].send([drop(1, dport=22), drop(2, dport=8080), drop(3, dport=5432)])
        await settle(pilot, lambda: app.drops_table.row_count == 3)
        assert column(app, "to") == ["10.77.1.1:5432", "10.77.1.1:8080", "10.77.1.1:22"]
        assert column(app, "from")[0] == "10.77.1.2:40003"
        assert column(app, "why")[0] == "fwlab-input-drop"
        pane = app.query_one("#drops-pane")
        assert pane.border_title == "Drops · nflog 3 · log off"
        summary = str(app.query_one("#drop-summary").render())
        assert "top src 10.77.1.2×3" in summary and "3 total" in summary
        assert "log off: net.netfilter.nf_log_all_netns is 0" in summary  # visible, no hover
    assert made[0].stopped


async def test_filter_pause_and_resume() -> None:
    app, made = make_app()
    async with app.run_test(size=(160, 40)) as pilot:
        made[0].send([drop(i, dport=8080 if i % 2 else 5432) for i in range(10)])
        await settle(pilot, lambda: app.drops_table.row_count == 10)
        await pilot.press("1", "slash")
        box = app.query_one("#drop-filter", FilterInput)
        assert box.has_focus
        await pilot.press(*"dport 8080", "enter")
        await settle(pilot, lambda: app.drops_table.row_count == 5)
        assert set(column(app, "to")) == {"10.77.1.1:8080"}
        assert app.table.row_count == 0 or app.needle == ""  # the rules filter is untouched

        await pilot.press("p")
        made[0].send([drop(100, dport=8080)])
        await pilot.pause(0.3)
        assert app.drops_table.row_count == 5  # paused: the rows hold still
        assert "PAUSED" in str(app.query_one("#drops-pane").border_title)
        assert app.drop_log.total == 11  # but nothing is lost meanwhile
        await pilot.press("p")
        await settle(pilot, lambda: app.drops_table.row_count == 6)

        await pilot.press("slash", "escape")
        await settle(pilot, lambda: app.drops_table.row_count == 11)


async def test_kernel_strings_print_literally() -> None:
    app, made = make_app()
    async with app.run_test(size=(160, 40)) as pilot:
        made[0].send([drop(1, prefix=HOSTILE)])
        await settle(pilot, lambda: app.drops_table.row_count == 1)
        assert column(app, "why")[0].startswith("\\x1b[31m[bold red]")


async def test_a_flood_is_coalesced_bounded_and_counted() -> None:
    app, made = make_app()
    async with app.run_test(size=(160, 40)) as pilot:
        sent = 0
        for batch in range(60):
            made[0].send([drop(i) for i in range(500)], overflow=7 if batch == 0 else 0)
            sent += 500
        await settle(pilot, lambda: app.drop_log.total + app.drops_shed - 7 == sent)
        await pilot.pause(0.3)
        # 30,000 events arrived faster than the screen renders: a handful of renders, every
        # event logged as it came (the stream's own overflow counted as shed), the ring bounded.
        assert app.drop_renders <= 10
        assert app.drops_table.row_count == app.drops_table.MAX_ROWS
        assert app.drops_shed == 7
        assert app.drop_log.total == sent
        assert len(app.drop_log.recent) <= app.drop_log.recent.maxlen  # type: ignore[operator]


async def test_cursor_stays_on_the_selected_drop() -> None:
    app, made = make_app()
    async with app.run_test(size=(160, 40)) as pilot:
        made[0].send([drop(i) for i in range(5)])
        await settle(pilot, lambda: app.drops_table.row_count == 5)
        await pilot.press("1", "down", "down")
        chosen = app.drops_table.selected
        assert chosen is not None and chosen.sport == 40002
        made[0].send([drop(10), drop(11)])
        await settle(pilot, lambda: app.drops_table.row_count == 7)
        assert app.drops_table.selected is chosen


async def test_drops_keep_coming_while_help_is_open() -> None:
    app, made = make_app()
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.press("question_mark")
        await pilot.pause(0.1)
        made[0].send([drop(1), drop(2)])
        await settle(pilot, lambda: app.drop_log.total == 2)  # taken while help is open
        assert app.screen.id == "help"
        await pilot.press("escape")
        await settle(pilot, lambda: app.drops_table.row_count == 2)


# --- correlation: a drop names its rule -------------------------------------------------------


def correlated_app() -> tuple[FwtopApp, list[FakeDrops]]:
    from fwtop.core.evaluator import NetContext
    from fwtop.core.model import Chain, Counters, Policy, Ruleset, Table
    from fwtop.core.rates import CounterSnapshot, rates
    from tests.conftest import input_rule as rule

    rules = (rule(1, "-p tcp --dport 22 -j ACCEPT"), rule(2, "-p tcp --dport 8080 -j DROP"),
             rule(3, "-p tcp --dport 8080 -j ACCEPT"),
             rule(4, "-j NFLOG --nflog-prefix fwlab-input-drop --nflog-group 7"))
    policy = Policy("iptables-nft", "ip", "filter", "INPUT", "drop", Counters(0, 0))
    rs = Ruleset(tables=(Table("iptables-nft", "ip", "filter", (
        Chain("iptables-nft", "ip", "filter", "INPUT", rules, "input", 0, "filter", policy),)),))
    snap = CounterSnapshot(1.0, {r.key: Counters(0, 0) for r in rules})
    view = RulesView(1.0, rs, snap.counters, rates(None, snap), 0.001, 0.001, True, 1, ())

    class Monitor(FakeMonitor):
        def __init__(self, on_rules: Callable[[RulesView], None],
                     on_error: Callable[[str], None]) -> None:
            self.on_rules = on_rules

        def start(self) -> None:
            self.on_rules(view)

    made: list[FakeDrops] = []

    def drops(on_batch: Callable[[DropBatch], None],
              on_error: Callable[[str], None]) -> FakeDrops:
        made.append(FakeDrops(on_batch, on_error))
        return made[-1]

    app = build_app(monitor_factory=Monitor, drops_factory=drops)
    app._net_factory = lambda: NetContext(local=(("10.77.1.1", "to-client"),))
    return app, made


async def test_each_drop_names_its_rule_and_enter_explains_it() -> None:
    from fwtop.ui.screens import ExplainScreen

    app, made = correlated_app()
    async with app.run_test(size=(200, 50)) as pilot:
        await settle(pilot, lambda: app.shown is not None)
        made[0].send([drop(1, dport=5432), drop(2, dport=8080, prefix=None)])
        await settle(pilot, lambda: app.drops_table.row_count == 2)
        # Newest first: the 8080 drop (no log prefix), then 5432 (logged by #4, policy).
        await settle(pilot, lambda: column(app, "rule") == ["INPUT #2", "INPUT policy"])
        def detail() -> str:
            return str(app.query_one("#drop-detail").render())

        await pilot.press("1")
        await settle(pilot, lambda: "drop by INPUT #2" in detail())
        await settle(pilot, lambda: str(app.table.cursor_key).endswith(":5"))
        await pilot.press("down")
        await settle(pilot, lambda: "dropped by the INPUT policy" in detail())
        assert "logged by INPUT #4" in detail()
        await settle(pilot, lambda: app.table.cursor_key == "chain|iptables-nft|ip|filter|INPUT")
        await pilot.press("up", "enter")
        await settle(pilot, lambda: isinstance(app.screen, ExplainScreen))
        text = app.screen.query_one("#explain-text")
        try:
            await settle(pilot, lambda: "DROPPED" in str(text.render()), timeout=30)
        except AssertionError:
            raise AssertionError(f"explanation never came: {app.screen.text!r}") from None
        body = str(text.render())
        assert "rule ordering" in body and "#3" in body
        await pilot.press("escape")
        assert not isinstance(app.screen, ExplainScreen)


async def test_a_prefix_no_rule_on_the_path_logs_makes_it_uncertain() -> None:
    app, made = correlated_app()
    async with app.run_test(size=(200, 50)) as pilot:
        await settle(pilot, lambda: app.shown is not None)
        made[0].send([drop(1, dport=8080, prefix="someone-else")])
        await settle(pilot, lambda: app.drops_table.row_count == 1)
        await settle(pilot, lambda: column(app, "rule") == ["INPUT #2?"])
