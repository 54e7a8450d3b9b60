"""The janitor: `python -m fwtop.service.janitor`, started detached by `fwtop allow`. It removes
each temporary allow's leftovers shortly after the kernel (on firewalld: the firewalld daemon)
has already expired it, and exits when nothing is left. One janitor at a time (a flock'ed pid
file)."""

from __future__ import annotations

import fcntl
import os
import sys
import time

from fwtop.service.journal import Journal, JournalError
from fwtop.service.tempallow import active, cleanup

GRACE_S = 2.0  # after the kernel's deadline, so the rule is inert when it is removed
MAX_SLEEP_S = 30.0


def main() -> int:
    journal = Journal()
    journal.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(journal.dir / "janitor.pid", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0  # another janitor is on it
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    while True:
        try:
            cleanup(journal, now=time.time() - GRACE_S)
            pending = [r for r in active(journal) if r.kind == "allow"]  # edits: reverter
        except JournalError as exc:
            print(f"fwtop janitor: {exc}", file=sys.stderr)
            return 1
        if not pending:
            return 0
        wake = min(r.expires_at for r in pending) + GRACE_S
        time.sleep(min(max(wake - time.time(), 0.2), MAX_SLEEP_S))


if __name__ == "__main__":
    sys.exit(main())
