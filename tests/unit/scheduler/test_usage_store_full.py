"""Chaos finding 4 (bench/chaos.py, issue 16): with the state directory full, the usage
store logged "cannot rollback - no transaction is active" instead of why it could not
write — SQLite had rolled the transaction back itself, and the second ROLLBACK's error
replaced the real one."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from infergridd.scheduler.usage_store import UsageStore, reject_event


def test_a_full_disk_is_reported_as_such(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = UsageStore(tmp_path)
    assert store._db is not None
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")  # the file can grow no more
    for i in range(3000):
        store.add(reject_event(f"r{i}-" + "x" * 200, 1000.0, "tenant", "model"))
    with caplog.at_level(logging.ERROR):
        store.flush()
    assert "full" in caplog.text, caplog.text
    assert "no transaction is active" not in caplog.text
    assert not store._db.in_transaction
