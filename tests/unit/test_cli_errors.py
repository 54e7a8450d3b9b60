"""Bad input and missing privileges end in one clear line, never a traceback."""

from __future__ import annotations

import pytest

import fwtop.firewall
from fwtop.cli import main


def test_not_root_is_one_line(monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(fwtop.firewall.os, "geteuid", lambda: 1000)
    for argv in (["rules", "--json"], ["lab", "up"], []):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err == "fwtop: fwtop reads the kernel's firewall and needs root: run it with sudo\n"


def test_bad_namespace_names_are_refused(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(fwtop.firewall.os, "geteuid", lambda: 0)
    assert main(["rules", "--netns", "../etc", "--json"]) == 1
    assert capsys.readouterr().err == "fwtop: bad namespace name '../etc'\n"
    assert main(["rules", "--netns", "999999999", "--json"]) == 1
    assert "no process 999999999" in capsys.readouterr().err


def test_unknown_option_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["rules", "--bogus"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
