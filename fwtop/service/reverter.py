"""The reverter: `python -m fwtop.service.reverter ID [--now]`, started detached (its own
session) by `fwtop edit`, or by systemd's transient timer. It waits for the edit's deadline,
re-reading the journal every second (a confirm or an extend takes effect at once), and then
restores the touched chain unless the edit was confirmed. Closing the terminal, dropping the SSH
session or killing fwtop does not stop it; if it is killed itself, the next fwtop start does its
job (`finish_overdue`)."""

from __future__ import annotations

import signal
import sys
import time

from fwtop.core.tempallow import valid_id
from fwtop.service.edits import revert_due
from fwtop.service.journal import Journal, JournalError

POLL_S = 1.0


def main(argv: list[str]) -> int:
    if not argv or not valid_id(argv[0]):
        print("usage: python -m fwtop.service.reverter ID [--now]", file=sys.stderr)
        return 2
    edit_id = argv[0]
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    journal = Journal()
    while True:
        try:
            records = [r for r in journal.read() if r.id == edit_id and r.kind == "edit"]
        except JournalError as exc:
            print(f"fwtop reverter: {exc}", file=sys.stderr)
            return 1
        if not records or records[0].state not in ("active", "pending"):
            return 0  # confirmed, reverted, or never written
        left = records[0].expires_at - time.time()
        if left <= 0:
            try:
                revert_due(edit_id, journal)
            except JournalError as exc:
                print(f"fwtop reverter: {exc}", file=sys.stderr)
                return 1
            return 0
        time.sleep(min(left, POLL_S))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
