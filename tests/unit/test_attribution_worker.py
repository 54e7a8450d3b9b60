"""The attribution worker: drops are attributed on its thread, each once per ruleset; a new
drop of a known flow is known at once; a new ruleset forgets the old answers."""

from __future__ import annotations

import threading
import time

from fwtop.core.correlate import Correlator
from fwtop.core.evaluator import NetContext
from fwtop.core.events import DropEvent
from fwtop.core.model import Chain, Counters, Policy, Ruleset, Table
from fwtop.service.attribution import AttributionWorker
from tests.conftest import input_rule as rule

NET = NetContext(local=(("10.77.1.1", "veth-c"),))


def ruleset(drop_port: int) -> Ruleset:
    rules = (rule(1, "-p tcp --dport 22 -j ACCEPT"),
             rule(2, f"-p tcp --dport {drop_port} -j DROP"))
    policy = Policy("iptables-nft", "ip", "filter", "INPUT", "drop", Counters(0, 0))
    return Ruleset(tables=(Table("iptables-nft", "ip", "filter", (
        Chain("iptables-nft", "ip", "filter", "INPUT", rules, "input", 0, "filter", policy),)),))


def drop(src: str, dport: int, sport: int = 40000) -> DropEvent:
    return DropEvent("nflog", time.monotonic(), time.time(), hook="input", iif="veth-c",
                     family="ip", proto="tcp", src=src, dst="10.77.1.1", sport=sport,
                     dport=dport, tcp_flags="SYN", len=60)


def wait_for(cond: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.01)


def test_attributed_on_its_thread_once_and_known_for_the_same_flow() -> None:
    ready = threading.Event()
    worker = AttributionWorker(Correlator(), lambda: NET, ready.set)
    worker.start()
    try:
        worker.use(ruleset(8080))
        a, b = drop("10.0.0.2", 8080), drop("10.0.0.3", 9999)
        assert worker.get(a) == (False, None)  # never evaluates on the caller's thread
        worker.want([a, b])
        wait_for(lambda: worker.get(a)[0] and worker.get(b)[0])
        assert ready.is_set()
        assert worker.get(a)[1].label == "INPUT #2"  # type: ignore[union-attr]
        assert worker.get(b)[1].label == "INPUT policy"  # type: ignore[union-attr]
        done = worker.attributed
        # Another packet of a's flow (a new event, another source port: the rules do not
        # look at it) is known at once, without a new evaluation.
        again = drop("10.0.0.2", 8080, sport=40001)
        known, attribution = worker.get(again)
        assert known and attribution is not None and attribution.label == "INPUT #2"
        worker.want([a, b, again])
        time.sleep(0.1)
        assert worker.attributed == done
        # A reloaded ruleset: the old answers are gone, the new ones come from it.
        worker.use(ruleset(9999))
        assert worker.get(a) == (False, None)
        worker.want([a, b])
        wait_for(lambda: worker.get(a)[0] and worker.get(b)[0])
        assert worker.get(a)[1].label == "INPUT policy"  # type: ignore[union-attr]
        assert worker.get(b)[1].label == "INPUT #2"  # type: ignore[union-attr]
    finally:
        worker.stop()
    assert not any(t.name == "fwtop-attribution" for t in threading.enumerate())


def test_attribute_now_without_the_thread() -> None:
    worker = AttributionWorker(Correlator(), lambda: NET, lambda: None)
    worker.use(ruleset(8080))
    a = worker.attribute_now(drop("10.0.0.2", 8080))
    assert a is not None and a.label == "INPUT #2"


def test_hold_starts_no_evaluation_until_it_ends() -> None:
    # A key press holds the worker, so the key's handler and frame do not share the GIL with
    # evaluations; what was asked for is worked off once the hold ends.
    worker = AttributionWorker(Correlator(), lambda: NET, lambda: None)
    worker.start()
    try:
        worker.use(ruleset(8080))
        wait_for(lambda: worker.correlator.evaluator is not None)
        worker.hold(0.4)
        held_at = time.monotonic()
        a = drop("10.0.0.9", 8080)
        worker.want([a])
        time.sleep(0.25)
        assert worker.get(a) == (False, None) and worker.attributed == 0
        wait_for(lambda: worker.get(a)[0])
        assert time.monotonic() - held_at >= 0.4
        assert worker.get(a)[1].label == "INPUT #2"  # type: ignore[union-attr]
    finally:
        worker.stop()
