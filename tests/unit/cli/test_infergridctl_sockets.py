"""Which control socket ``infergridctl`` uses (issue 14.4): writes always the admin one
(``control.sock``), reads that one when we may use it, else ``control-ro.sock``; what a
user without the right group is told."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from infergridd.cli import infergridctl as ctl


@pytest.fixture
def run() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="igctl-", dir="/tmp"))
    (root / "scheduler").mkdir()
    socks = []
    for name in ("control.sock", "control-ro.sock"):
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(root / "scheduler" / name))
        socks.append(s)
    yield root
    for s in socks:
        s.close()
    shutil.rmtree(root, ignore_errors=True)


def test_writes_use_the_admin_socket_reads_the_one_we_may_use(
        run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rw, ro = run / "scheduler" / "control.sock", run / "scheduler" / "control-ro.sock"
    assert ctl.find_control_socket(str(run), None) == rw
    assert ctl.find_control_socket(str(run), None, read_only=True) == rw
    real = os.access

    def no_admin(path: object, mode: int) -> bool:  # as a member of `infergrid` only
        return False if Path(str(path)) == rw else real(path, mode)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "access", no_admin)
    assert ctl.find_control_socket(str(run), None, read_only=True) == ro
    assert ctl.find_control_socket(str(run), None) == rw
    with pytest.raises(ctl.Unreachable) as err:
        ctl.call(rw, "tenant.add", {"name": "x"}, 0.1)
    assert "permission denied" in str(err.value) and "infergrid-admin" in str(err.value)


def test_main_says_which_group_a_write_needs(
        run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert ctl.main(["--runtime-dir", str(run), "tenant", "add", "mallory"]) == 1
    err = capsys.readouterr().err
    assert "permission denied" in err and "infergrid-admin" in err
