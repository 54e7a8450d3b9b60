"""The `/` filter language: fields, prefixes, port ranges, and/or/not, plain words."""

from __future__ import annotations

import pytest

from fwtop.core.droplog import matches
from fwtop.core.events import DropEvent
from fwtop.core.filterexpr import FilterError, parse


def ev(src: str = "10.1.2.3", dport: int = 443, proto: str = "tcp",
       prefix: str = "in-drop") -> DropEvent:
    return DropEvent("nflog", 0.0, 0.0, prefix=prefix, proto=proto, src=src, dst="192.0.2.1",
                     sport=40000, dport=dport, iif="eth0")


@pytest.mark.parametrize(("text", "hit"), [
    ("src 10.0.0.0/8 and dport 443 and verdict drop", True),
    ("src 10.0.0.0/8 and dport 80", False),
    ("src 172.16.0.0/12 or dport 443", True),
    ("not src 10.0.0.0/8", False),
    ("dport 400-500", True),
    ("port 40000", True),
    ("host 192.0.2.1", True),
    ("proto udp", False),
    ("prefix in-dr", True),
    ("iif eth0 dport 443", True),  # implicit and
    ("tcp 10.1", True),  # plain words still work
    ("udp 10.1", False),
    ("src nonsense", False),  # not an expression: matched as plain words, none is present
])
def test_expressions(text: str, hit: bool) -> None:
    assert matches(ev(), text) is hit


def test_errors_are_errors_not_crashes() -> None:
    for bad in ("src nonsense", "dport x", "not"):
        with pytest.raises(FilterError):
            parse(bad)
    assert parse("")({}) is True
