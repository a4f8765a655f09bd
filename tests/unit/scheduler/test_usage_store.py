"""Usage accounting on disk: hourly rows per tenant and model, idempotent by request id
(a Done replayed after a scheduler restart counts once), acknowledgements held until
the usage is written, bounded retention, and ``infergridctl usage`` on top."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from infergridd import protocol as p
from infergridd.scheduler import usage_store as us
from infergridd.scheduler.commands import CommandError, registry
from infergridd.scheduler.commands.usage import parse_when
from infergridd.scheduler.usage_store import UsageStore, done_event, reject_event

H = 3600
T0 = 1_796_000_400  # 2026-11-30T08:00Z, an hour boundary


def _done(rid: str, tenant: str = "acme", model: str = "demo", prompt: int = 10,
          completion: int = 5, outcome: str = p.Outcome.OK, seq: int = 0) -> p.Done:
    return p.Done(request_id=rid, tenant=tenant, model=model, prompt_tokens=prompt,
                  completion_tokens=completion, outcome=outcome, seq=seq)


def test_counts_per_hour_tenant_model_and_outcome(tmp_path: Path) -> None:
    s = UsageStore(tmp_path)
    s.add(done_event(_done("a"), T0 + 10))
    s.add(done_event(_done("b", completion=7), T0 + 20))
    s.add(done_event(_done("c", outcome=p.Outcome.ENGINE_ERROR, completion=0), T0 + 30))
    s.add(done_event(_done("d", tenant="other", outcome=p.Outcome.CANCELLED), T0 + H + 1))
    s.add(reject_event("e", T0 + 40, "acme", "demo"))
    by_tenant = {r["tenant"]: r for r in s.query(None, None, ["tenant"])}
    assert by_tenant["acme"] == {"tenant": "acme", "requests": 3, "ok": 2, "errors": 1,
                                 "cancelled": 0, "rejected": 1, "prompt_tokens": 30,
                                 "completion_tokens": 12}
    assert by_tenant["other"]["cancelled"] == 1
    hours = [(r["hour"], r["requests"]) for r in s.query(None, None, ["hour"])]
    assert hours == [(T0, 3), (T0 + H, 1)]
    days = s.query(None, None, ["day"])
    assert len(days) == 1 and days[0]["requests"] == 4
    # a window: hours in [since, until)
    assert [r["requests"] for r in s.query(T0 + H, None, ["tenant"])] == [1]
    assert [r["tenant"] for r in s.query(None, T0 + H, ["tenant"])] == ["acme"]
    two = s.query(None, None, ["tenant", "model"])
    assert {(r["tenant"], r["model"]) for r in two} == {("acme", "demo"), ("other", "demo")}


def test_a_replayed_done_counts_once_across_a_restart(tmp_path: Path) -> None:
    s = UsageStore(tmp_path)
    s.add(done_event(_done("a", prompt=11, completion=3), T0))
    s.flush()
    s.close()  # the scheduler stops (or dies after the write, before the acknowledgement)
    again = UsageStore(tmp_path)
    # the front door's Hello hands the unacknowledged Done over again, plus a new one
    again.add(done_event(_done("a", prompt=11, completion=3), T0 + 5))
    again.add(done_event(_done("b", prompt=2, completion=1), T0 + 6))
    again.add(done_event(_done("b", prompt=2, completion=1), T0 + 7))  # twice in one batch
    (row,) = again.query(None, None, ["tenant"])
    assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (2, 13, 4)
    # a repeated rejection (a held request re-admitted and refused again) counts once too
    again.add(reject_event("r", T0, "acme", "demo"))
    again.add(reject_event("r", T0, "acme", "demo"))
    assert again.query(None, None, ["tenant"])[0]["rejected"] == 1


def test_acknowledgement_waits_for_the_write(tmp_path: Path) -> None:
    s = UsageStore(tmp_path)
    assert s.ack("fd-1", 4) == 4  # nothing buffered: everything applied is acknowledged
    s.add(done_event(_done("a"), T0), "fd-1", 5)
    s.add(done_event(_done("b"), T0), "fd-1", 6)
    s.add(done_event(_done("c"), T0), "fd-2", 9)
    assert s.ack("fd-1", 6) == 4  # 5 and 6 are only in memory: a crash would lose them
    assert s.ack("fd-2", 9) == 8
    s.flush()
    assert s.ack("fd-1", 6) == 6 and s.ack("fd-2", 9) == 9


def test_retention_and_the_seen_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(us, "SEEN_KEEP", 3)
    s = UsageStore(tmp_path)
    old = T0 - us.RETENTION_S - H
    for i in range(5):
        s.add(done_event(_done(f"r{i}"), old if i == 0 else T0))
    s.flush()
    s.prune(T0)
    assert s.query(None, None, ["hour"]) == [{"hour": T0, **{c: v for c, v in zip(
        us.COUNTS, (4, 4, 0, 0, 0, 40, 20), strict=True)}}]
    db = sqlite3.connect(tmp_path / us.USAGE_FILE)
    seen = [r[0] for r in db.execute("SELECT request_id FROM seen ORDER BY rowid")]
    assert seen == ["r2", "r3", "r4"]  # the newest ids are the ones a replay can repeat


def test_an_unusable_store_says_why(tmp_path: Path) -> None:
    (tmp_path / us.USAGE_FILE).write_text("this is not a database" * 100)
    s = UsageStore(tmp_path)
    assert "unusable" in s.error
    s.add(done_event(_done("a"), T0), "fd-1", 3)
    assert s.ack("fd-1", 3) == 3  # not recording must not hold the front door's Dones


def test_parse_when() -> None:
    assert parse_when("--since", "2026-12-06", 0) == 1796515200
    assert parse_when("--since", "2026-12-06T13:00", 0) == 1796515200 + 13 * H
    assert parse_when("--since", "2026-12-06T13:00+01:00", 0) == 1796515200 + 12 * H
    assert parse_when("--since", "24h", 100_000.0) == 100_000.0 - 24 * H
    assert parse_when("--since", "", 0) is None
    with pytest.raises(CommandError, match="--until: 'yesterday'"):
        parse_when("--until", "yesterday", 0)


def test_usage_render_table_and_csv() -> None:
    cls = registry()["usage"]
    rows = [{"tenant": "acme", "requests": 2, "ok": 2, "errors": 0, "cancelled": 0,
             "rejected": 1, "prompt_tokens": 30, "completion_tokens": 12}]
    total = {c: rows[0][c] for c in us.COUNTS}
    r = {"by": ["tenant"], "rows": rows, "total": total, "since": None, "until": None}
    text = cls.render({**r, "format": "table"})
    assert "COMPLETION_TOKENS" in text and "acme" in text and "TOTAL" in text
    assert "dropped" not in text
    assert "warning: 7 events were dropped" in cls.render({**r, "format": "table", "dropped": 7})
    csv_text = cls.render({**r, "format": "csv"})
    assert csv_text.splitlines() == [
        "tenant,requests,ok,errors,cancelled,rejected,prompt_tokens,completion_tokens",
        "acme,2,2,0,0,1,30,12"]


def test_an_unwritable_file_holds_events_then_drops_them_bounded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full or read-only state directory: events wait in memory and the Dones stay
    unacknowledged (nothing lost yet); past ``MAX_PENDING`` the oldest are dropped, counted,
    and acknowledgements flow again so the front door's list does not grow forever."""
    monkeypatch.setattr(us, "MAX_PENDING", 3)
    s = UsageStore(tmp_path)
    broken = sqlite3.connect(":memory:")
    broken.close()  # every statement on it raises sqlite3.ProgrammingError
    good, s._db = s._db, broken
    s.add(done_event(_done("a"), T0), "fd-1", 1)
    s.add(done_event(_done("b"), T0), "fd-1", 2)
    s.flush()
    assert s.ack("fd-1", 2) == 0 and s.dropped == 0  # held: the Dones may come back
    s.add(done_event(_done("c"), T0), "fd-1", 3)
    s.add(done_event(_done("d"), T0), "fd-1", 4)
    s.flush()
    assert s.dropped == 1 and s.ack("fd-1", 4) == 4
    s._db = good  # the disk has room again: what was kept is written
    s.flush()
    (row,) = s.query(None, None, ["tenant"])
    assert row["requests"] == 3
