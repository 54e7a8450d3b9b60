"""fwtop.core must stay pure: importing it pulls in no UI, packet or netlink library."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import fwtop.core


def test_core_imports_no_ui_or_kernel_libraries() -> None:
    modules = [f"fwtop.core.{m.name}" for m in pkgutil.iter_modules(fwtop.core.__path__)]
    assert "fwtop.core.model" in modules
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = [m for m in ('textual', 'rich', 'scapy', 'pyroute2', 'iptc', 'psutil')"
        " if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"fwtop.core imported {out.stdout.strip()}"
