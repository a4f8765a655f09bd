"""Shared fixtures: a real appliance per test (see ``appliance.py``).

Test modules import helpers from ``appliance`` (not from ``conftest``: several
directories have a conftest, and the name would be ambiguous).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from appliance import DEMO_TENANTS, Appliance, free_port, short_tmpdir, sim_model  # noqa: F401 (re-exported)


@pytest.fixture
def appliance_factory(request: pytest.FixtureRequest) -> Iterator[Any]:
    made: list[Appliance] = []

    def make(config: dict[str, Any], start: bool = True) -> Appliance:
        a = Appliance(config, short_tmpdir())
        made.append(a)
        if start:
            a.start()
        return a

    yield make
    failed = getattr(request.node, "rep_call", None)
    for a in made:
        a.stop()
        if failed is not None and failed.failed:
            sys.stderr.write(f"\n==== serve log ({a.root})\n{a.logs()[-8000:]}\n")
            sys.stderr.write(a.engine_logs())
        # belt and braces: no engine may outlive its test
        for pidfile in (a.runtime / "engines").glob("*.json"):
            try:
                pid = json.loads(pidfile.read_text()).get("pid", 0)
                if pid:
                    os.killpg(pid, signal.SIGKILL)
            except (OSError, ValueError):
                pass
        shutil.rmtree(a.root, ignore_errors=True)


@pytest.fixture
def appliance(appliance_factory: Any) -> Appliance:
    return appliance_factory({"models": [sim_model()], "tenants": DEMO_TENANTS})


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
