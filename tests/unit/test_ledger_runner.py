"""What an engine runner holds in each state (the ledger's input), and that a
stopped-by-command engine stays stopped across supervisor restarts."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from infergridd import protocol as p
from infergridd.config import Dirs, ModelConfig
from infergridd.engines import adapter_for
from infergridd.supervisor import statefile
from infergridd.supervisor.engine import EngineRunner

S = p.EngineState


def runner(tmp_path: Path, preload: bool = True) -> EngineRunner:
    dirs = Dirs(runtime=tmp_path, state=tmp_path)
    dirs.engines_dir.mkdir(exist_ok=True)
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
