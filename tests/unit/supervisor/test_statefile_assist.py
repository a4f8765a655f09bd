"""Chaos finding 3 (bench/chaos.py, issue 16): every supervisor restart logged
"ignoring unreadable engine record <id>.assist.json" — the engine's assist stats file,
beside its record, was read as a record.  Noise in the log at each restart."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from infergridd.supervisor import statefile
from infergridd.supervisor.assist import stats_path


def test_assist_stats_file_is_not_read_as_an_engine_record(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rec = statefile.EngineRecord(engine_id="code-0", model="code", kind="sim", pid=123,
                                 start_time=1, port=0, api_key="k", generation=1)
    statefile.save(tmp_path, rec)
    stats_path(tmp_path, "code-0").write_text('{"counters": {}}')
    with caplog.at_level(logging.WARNING):
        assert [r.engine_id for r in statefile.load_all(tmp_path)] == ["code-0"]
    assert "unreadable" not in caplog.text, caplog.text
