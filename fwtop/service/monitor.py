"""Runs the pollers on a thread of their own inside the target namespace and hands each
finished tick to a callback (the UI posts it as a message). One poll at a time: the next one is
armed only after the previous finished, so a slow poll stretches the tick instead of piling up."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from fwtop.firewall.netns import NetNamespace, enter
from fwtop.service.rules import RulesPoller, RulesView


class Monitor:
    def __init__(
        self,
        on_rules: Callable[[RulesView], None],
        on_error: Callable[[str], None],
        netns: NetNamespace | None = None,
        interval: float = 1.0,
        poller_factory: Callable[[], RulesPoller] = RulesPoller,
    ) -> None:
        self._on_rules = on_rules
        self._on_error = on_error
        self._netns = netns
        self.interval = max(0.1, interval)
        self._poller_factory = poller_factory
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fwtop-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def poll_now(self) -> None:
        """Ask for a poll without waiting for the rest of the interval (the `r`efresh key)."""
        self._wake.set()

    def _run(self) -> None:
        try:
            if self._netns is not None:
                enter(self._netns)
            poller = self._poller_factory()
        except Exception as exc:  # reported to the UI, which says what is off and why
            self._on_error(str(exc))
            return
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    self._on_rules(poller.poll())
                except Exception as exc:
                    self._on_error(f"{type(exc).__name__}: {exc}")
                elapsed = time.monotonic() - started
                # A poll slower than the interval (one huge chain) must not pin a core: rest
                # at least as long as it took, so fwtop never uses more than half of one CPU.
                self._wake.wait(max(self.interval - elapsed, elapsed))
                self._wake.clear()
        finally:
            poller.close()
