"""What an engine runner holds in each state (the ledger's input), that a
stopped-by-command engine stays stopped across supervisor restarts (and an unload is
reported as such), and that a sleep or stop waits for the engine's own counters."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from infergridd import protocol as p
from infergridd.config import Dirs, ModelConfig
from infergridd.engines import adapter_for
from infergridd.engines.base import EngineError, EngineMetrics
from infergridd.supervisor import sleepwake, statefile
from infergridd.supervisor.engine import EngineRunner

S = p.EngineState


def runner(tmp_path: Path, preload: bool = True) -> EngineRunner:
    dirs = Dirs(runtime=tmp_path, state=tmp_path)
    dirs.engines_dir.mkdir(parents=True, exist_ok=True)
    model = ModelConfig(name="m", preload=preload)
    return EngineRunner("m-0", model, adapter_for(model), dirs, None, 100, 10)  # type: ignore[arg-type]


@pytest.mark.parametrize("state,want,held", [
    (S.READY, True, 100), (S.STARTING, True, 100), (S.WAKING, True, 100),
    (S.DRAINING, True, 100), (S.STOPPING, False, 100), (S.SLEEPING1, True, 10),
    (S.SLEEPING2, True, 10), (S.STOPPED, False, 0), (S.STOPPED, True, 100),
    (S.FAILED, True, 100), (S.FAILED, False, 0),
])
def test_held_bytes_by_state(tmp_path: Path, state: str, want: bool, held: int) -> None:
    r = runner(tmp_path)
    r.want_running = want
    r._set_state(state)
    assert r.held_bytes() == held and r.status.memory_bytes == held


def test_reserved_while_a_start_runs(tmp_path: Path) -> None:
    r = runner(tmp_path, preload=False)
    assert r.held_bytes() == 0
    r.reserved = True
    assert r.held_bytes() == 100


async def test_stop_is_remembered_unless_the_appliance_stops(tmp_path: Path) -> None:
    r = runner(tmp_path)
    await r.stop()
    assert statefile.is_stopped(r.dirs.engines_dir, "m-0")
    assert not runner(tmp_path).want_running  # a new supervisor keeps it stopped
    r._want_start()
    assert not statefile.is_stopped(r.dirs.engines_dir, "m-0")
    assert runner(tmp_path).want_running
    await r.stop(remember=False)
    assert runner(tmp_path).want_running


async def test_sleep_deeper_without_waking_is_refused(tmp_path: Path) -> None:
    r = runner(tmp_path)
    r._set_state(S.SLEEPING1)
    async with aiohttp.ClientSession() as http:
        r.http = http
        res = await r.command(p.EngineCommand(command_id="c", engine_id="m-0", action="sleep",
                                              level=2))
    assert not res.ok and "without waking" in res.error


async def test_an_unload_is_remembered_as_one(tmp_path: Path) -> None:
    r = runner(tmp_path)
    await r.command(p.EngineCommand(command_id="c1", engine_id="m-0", action="stop",
                                    unload=True))
    assert r.status.unloaded and r.status.state == S.STOPPED
    assert statefile.stopped_intent(r.dirs.engines_dir, "m-0") == statefile.UNLOADED
    again = runner(tmp_path)  # a restarted supervisor reports it, for a restarted scheduler
    assert again.status.unloaded and not again.want_running
    await again.command(p.EngineCommand(command_id="c2", engine_id="m-0", action="start"))
    assert not again.status.unloaded and again.want_running
    await again.stop()  # an eviction: stays stopped, but is no unload
    assert statefile.stopped_intent(r.dirs.engines_dir, "m-0") == statefile.EVICTED
    assert not runner(tmp_path).status.unloaded


class FakeEngine:
    """Metrics that count down, and a record of when the sleep came."""

    def __init__(self, running: list[int]) -> None:
        self.running = running
        self.polls = 0
        self.slept_after: int | None = None

    async def metrics(self, http, endpoint, api_key) -> EngineMetrics:  # noqa: ANN001
        self.polls += 1
        if not self.running:
            raise EngineError("no metrics")
        n = self.running.pop(0) if len(self.running) > 1 else self.running[0]
        return EngineMetrics(num_running=n)

    async def sleep(self, http, endpoint, api_key, level) -> None:  # noqa: ANN001
        self.slept_after = self.polls


def ready_runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeEngine) -> EngineRunner:
    r = runner(tmp_path)
    r.status.endpoint = "http://127.0.0.1:1"
    r._set_state(S.READY)
    monkeypatch.setattr(r.adapter, "metrics", fake.metrics)
    monkeypatch.setattr(r.adapter, "sleep", fake.sleep)
    monkeypatch.setattr(sleepwake, "DRAIN_POLL_S", 0.01)
    return r


async def test_sleep_waits_until_the_engine_reports_nothing_running(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeEngine([2, 1, 0])  # a request the scheduler no longer counted
    r = ready_runner(tmp_path, monkeypatch, fake)
    res = await r.command(p.EngineCommand(command_id="c", engine_id="m-0", action="sleep"))
    assert res.ok and fake.slept_after == 3 and r.status.state == S.SLEEPING1


async def test_a_stuck_gauge_delays_a_sleep_but_does_not_block_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeEngine([1])  # never drops
    r = ready_runner(tmp_path, monkeypatch, fake)
    monkeypatch.setattr(sleepwake, "DRAIN_CHECK_S", 0.1)
    res = await r.command(p.EngineCommand(command_id="c", engine_id="m-0", action="sleep"))
    assert res.ok and fake.polls >= 3 and r.status.state == S.SLEEPING1
    assert "still reports 1 running" in caplog.text
    fake = FakeEngine([])  # metrics unreadable: the scheduler's word is taken
    r = ready_runner(tmp_path, monkeypatch, fake)
    res = await r.command(p.EngineCommand(command_id="c", engine_id="m-0", action="sleep"))
    assert res.ok and fake.slept_after == 1


def test_engine_api_keys_never_look_like_an_option() -> None:
    """``--api-key -x…`` made argparse fail one launch in 64 (exit 2): a swap's load
    then "failed" for no reason."""
    import re

    from infergridd.supervisor import procs

    assert all(re.fullmatch(r"[0-9a-f]{48}", procs.new_api_key()) for _ in range(2000))
