"""``infergridd/bench/overhead_arms.py`` without processes: the direct arm's target from
an engine record, and the ceiling table and verdicts from synthetic rows."""

from __future__ import annotations

import json
from pathlib import Path

from infergridd.bench.overhead_arms import ceiling_table, engine_target, sustained
from infergridd.engines.unixhttp import socket_of_host


def test_engine_target_reads_the_supervisors_record(tmp_path: Path) -> None:
    d = tmp_path / "supervisor" / "engines"
    d.mkdir(parents=True)
    (d / "demo-0.assist.json").write_text("{}")  # not a record
    (d / "demo-0.json").write_text(json.dumps(
        {"engine_id": "demo-0", "port": 0, "api_key": "k1",
         "endpoint": "unix:/run/x/demo-0.sock"}))
    t = engine_target(tmp_path, "demo", "bench")
    assert t is not None and t.keys == {"bench": "k1"} and not t.url.endswith("/")
    host = t.url.split("//", 1)[1]
    assert socket_of_host(host) == "/run/x/demo-0.sock"
    assert engine_target(tmp_path / "nothing", "demo", "bench") is None


def _row(rate: float, ok: bool, meets: bool) -> dict[str, object]:
    return {"rate": rate, "ok_frac": 1.0, "ttft_p50_ms": 5.0, "ttft_p99_ms": 9.0,
            "sustained": ok, "meets": meets}


def test_ceiling_verdicts_and_table() -> None:
    rows = {"1 front door": [_row(250, True, True), _row(500, True, False),
                             _row(1000, False, False)],
            "2 front doors": [_row(250, True, True), _row(500, True, True)]}
    assert sustained(rows["1 front door"]) == (500, False)
    assert sustained(rows["1 front door"], "meets") == (250, False)
    assert sustained(rows["2 front doors"]) == (500, True)  # a lower bound
    md = ceiling_table(rows)
    assert md[0].count("|") == 4 and len(md) == 2 + 3
    assert "| 500 | 100.0%, 5.0 / 9.0 † | 100.0%, 5.0 / 9.0 |" in md
    assert md[-1] == "| 1000 | 100.0%, 5.0 / 9.0 † ✗ | – |"
