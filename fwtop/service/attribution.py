"""Drop attribution off the UI thread: which rule dropped each shown drop.

Attributing one drop runs the evaluator over the ruleset (about 2.5 ms at 2,000 rules), and a
scan from many sources misses the correlator's per-flow cache for almost every new drop. Done
on the UI thread for each shown row, it kept a key press waiting for hundreds of milliseconds
(docs/performance.md, "TUI under load"). Here one thread owns the Correlator: the UI asks for
the events it shows (`want`), reads what is known (`get`, never blocking on an evaluation), and
is told when more is known (`on_ready`, from this thread). Each event is attributed once per
ruleset; a new ruleset (`use`) forgets the old answers.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from fwtop.core.correlate import Attribution, Correlator
from fwtop.core.evaluator import NetContext
from fwtop.core.events import DropEvent
from fwtop.core.model import Ruleset

KEEP = 8192  # answers remembered (the Drops pane shows at most a few hundred events)
NOTIFY_EVERY = 0.25  # seconds between "more is known" calls while a long list is worked off
# At most this share of a CPU: evaluations are pure Python and hold the GIL, and a worker
# running flat out made every frame of the UI thread twice as slow (docs/performance.md).
DUTY = 0.25


class AttributionWorker:
    def __init__(self, correlator: Correlator, net: Callable[[], NetContext | None],
                 on_ready: Callable[[], None]) -> None:
        self.correlator = correlator
        self._net = net
        self._on_ready = on_ready
        self._lock = threading.Lock()  # the correlator: one evaluation at a time
        self._cond = threading.Condition()
        self._wanted: list[DropEvent] = []
        self._ruleset: Ruleset | None = None  # to switch to, set by use()
        self._switching = False  # the correlator is being given the new ruleset
        self._known: OrderedDict[int, tuple[DropEvent, Attribution | None]] = OrderedDict()
        self._generation = 0
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._hold_until = 0.0  # monotonic time before which the worker starts nothing new
        self.attributed = 0  # evaluations done on the thread

    # --- any thread -----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fwtop-attribution", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def use(self, ruleset: Ruleset) -> None:
        """A reloaded ruleset: the answers so far are forgotten; the evaluator is built on
        the worker's thread (synchronously when the thread is not running)."""
        with self._cond:
            self._generation += 1
            self._known.clear()
            self._ruleset = ruleset
            self._cond.notify()
        if self._thread is None:
            self._switch()

    def hold(self, seconds: float) -> None:
        """Start no evaluation for this long: a key press is being handled and painted on the
        UI thread, which would otherwise share the GIL with the evaluations."""
        self._hold_until = max(self._hold_until, time.monotonic() + seconds)

    def get(self, event: DropEvent) -> tuple[bool, Attribution | None]:
        """(known, attribution): never waits for an evaluation. A new drop of a flow already
        attributed is known at once (the correlator's per-flow cache)."""
        with self._cond:
            hit = self._known.get(id(event))
            if hit is not None and hit[0] is event:
                return True, hit[1]
            if self._ruleset is not None or self._switching:  # the cache is of the old one
                return False, None
            known, a = self.correlator.peek(event)
            generation = self._generation
        if known:
            self._remember(event, a, generation)
        return known, a

    def want(self, events: Sequence[DropEvent]) -> None:
        """Attribute these (newest first), replacing any earlier wish not worked off yet."""
        with self._cond:
            self._wanted = [e for e in events if self._known.get(id(e), (None,))[0] is not e]
            self._wanted.reverse()  # pop() takes the newest first
            self._cond.notify()

    def attribute_now(self, event: DropEvent) -> Attribution | None:
        """Attribute one event on the caller's thread (the selected drop), remembered."""
        known, a = self.get(event)
        if known:
            return a
        self._switch()
        with self._cond:
            generation = self._generation
        with self._lock:
            a = self.correlator.attribute(event, self._net())
        self._remember(event, a, generation)
        return a

    # --- the worker thread ------------------------------------------------------------------

    def _switch(self) -> None:
        with self._cond:
            ruleset, self._ruleset = self._ruleset, None
            self._switching = ruleset is not None
        if ruleset is not None:
            try:
                with self._lock:
                    self.correlator.use(ruleset)
            finally:
                with self._cond:
                    self._switching = False

    def _remember(self, event: DropEvent, a: Attribution | None, generation: int) -> None:
        with self._cond:
            if generation != self._generation:
                return  # computed against a ruleset that has been replaced meanwhile
            self._known[id(event)] = (event, a)
            self._known.move_to_end(id(event))
            while len(self._known) > KEEP:
                self._known.popitem(last=False)

    def _run(self) -> None:
        last_notice = time.monotonic()
        done_since_notice = 0
        while True:
            with self._cond:
                while not self._stopping and not self._wanted and self._ruleset is None:
                    if done_since_notice:
                        break
                    self._cond.wait()
                if self._stopping:
                    return
                event = self._wanted.pop() if self._wanted else None
                generation = self._generation
            hold = self._hold_until - time.monotonic()
            if hold > 0:
                time.sleep(hold)
            self._switch()
            # No ruleset yet: nothing can be attributed; the UI asks again after use().
            if event is not None and self.correlator.evaluator is not None:
                started = time.perf_counter()
                with self._lock:
                    try:
                        a = self.correlator.attribute(event, self._net())
                    except Exception:  # an evaluator bug must not kill the thread: "?"
                        a = None
                cost = time.perf_counter() - started
                self.attributed += 1
                self._remember(event, a, generation)
                done_since_notice += 1
                time.sleep(cost * (1 / DUTY - 1))
            now = time.monotonic()
            with self._cond:
                idle = not self._wanted
            if done_since_notice and (idle or now - last_notice >= NOTIFY_EVERY):
                done_since_notice = 0
                last_notice = now
                self._on_ready()
