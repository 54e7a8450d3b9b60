"""The journal of what fwtop created: one JSON file under /var/lib/fwtop (FWTOP_STATE_DIR),
mode 0600, replaced atomically (write a temporary file, fsync, rename), and every
read-modify-write under an exclusive flock, so two fwtop instances (and the janitor) never lose
each other's records."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

VERSION = 1


def state_dir() -> Path:
    return Path(os.environ.get("FWTOP_STATE_DIR", "/var/lib/fwtop"))


@dataclass(slots=True)
class Record:
    """One temporary object set fwtop created (a rule, and for nft its set)."""

    id: str
    kind: str  # "allow", "edit"
    created: float
    expires_at: float
    netns: str | None  # the namespace's name (or None for fwtop's own)
    backend: str
    family: str
    table: str
    chain: str
    handle: int | None = None  # nft rule handle (native and iptables-nft)
    set_name: str | None = None
    ipt_argv: list[str] = field(default_factory=list)  # iptables rule spec, for -D
    text: str = ""
    flow: dict[str, Any] = field(default_factory=dict)
    state: str = "active"  # active, removed, gone (namespace vanished)
    removed_at: float | None = None
    note: str = ""
    # kind "edit" (fwtop.service.edits): the touched chain before and right after the edit,
    # the edit itself (with fwtop's own change), its reverter's pid and systemd timer unit.
    snapshot: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    edit: dict[str, Any] = field(default_factory=dict)
    pid: int | None = None
    timer: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Journal:
    def __init__(self, directory: Path | None = None) -> None:
        self.dir = directory or state_dir()
        self.path = self.dir / "journal.json"
        self.lock_path = self.dir / "journal.lock"

    def _ensure_dir(self) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[list[Record]]:
        """The records, exclusively: changes to the list are written back atomically."""
        self._ensure_dir()
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            records = self._read()
            before = [r.to_json() for r in records]
            yield records
            if [r.to_json() for r in records] != before:
                self._write(records)
        finally:
            os.close(fd)  # closing drops the lock

    def read(self) -> list[Record]:
        if not self.path.exists():
            return []
        with self.locked() as records:
            return list(records)

    def _read(self) -> list[Record]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise JournalError(f"{self.path} is unreadable ({exc}); move it aside to go on") \
                from None
        fields = set(Record.__dataclass_fields__)
        return [Record(**{k: v for k, v in r.items() if k in fields})
                for r in data.get("records", [])]

    def _write(self, records: list[Record]) -> None:
        payload = json.dumps({"version": VERSION, "records": [r.to_json() for r in records]},
                             indent=1)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".journal.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


class JournalError(Exception):
    pass
