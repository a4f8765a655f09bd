"""The debug-only hop tracer (transport/hops.py): off by default, and when on, one line per
request that bench/hops.py can join by request id."""

from __future__ import annotations

from pathlib import Path

import pytest

from infergridd.transport import hops


def test_off_by_default_marks_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hops, "ON", False)
    assert hops.start() is None
    hops.mark("cmpl-x", "resumed")  # not attached: no effect, no error
    assert "cmpl-x" not in hops._open


def test_marks_written_and_read_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(hops, "ON", True)
    monkeypatch.setattr(hops, "DIR", str(tmp_path))
    monkeypatch.setattr(hops, "_files", {})
    marks = hops.start()
    assert marks is not None and "arrival" in marks
    hops.attach("cmpl-1", marks)
    hops.mark("cmpl-1", "dispatch_rx", 123)
    hops.mark("cmpl-1", "dispatch_rx", 456)  # a retry keeps the first
    hops.mark("cmpl-1", "resumed")
    hops.close("frontdoor", "cmpl-1")
    hops.write("scheduler", {"rid": "cmpl-1", "sched_rx": 1, "sched_sent": 2})
    fd = hops.read(tmp_path, "frontdoor")
    assert fd["cmpl-1"]["dispatch_rx"] == 123
    assert fd["cmpl-1"]["resumed"] >= marks["arrival"]
    assert hops.read(tmp_path, "scheduler") == {"cmpl-1": {"sched_rx": 1, "sched_sent": 2}}
    assert "cmpl-1" not in hops._open  # closed: forgotten
    for f in hops._files.values():
        f.close()
