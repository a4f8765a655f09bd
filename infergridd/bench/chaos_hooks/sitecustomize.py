"""Test hooks the chaos run puts into every process it starts (``PYTHONPATH``).

Python imports ``sitecustomize`` at start-up, so the daemons and engines get these
hooks without a line of theirs changed.  Nothing here is active unless the chaos
harness sets its environment variables:

``INFERGRID_CHAOS_CLOCK`` (a file holding seconds): the wall clock (``time.time``,
``time.time_ns``) is shifted by that many seconds, re-read every 0.2 s — the
harness's way to jump the wall clock forward and back, since it cannot (and must not)
change the machine's real clock.  Monotonic clocks are left alone, as a real clock
step leaves them alone.

``INFERGRID_CHAOS_BUG``: a deliberate bug, to show that the harness catches it:
``lost-done`` (the front door forgets every 7th ``Done``: the scheduler's slot leaks),
``fd-leak`` (the front door opens a file per dispatched request and never closes it),
``clear-debt`` (a restarted scheduler forgets the fairness counters in its state file).
"""

from __future__ import annotations

import os
import threading
import time


def _cmdline() -> list[str]:
    try:
        with open("/proc/self/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _install_clock(path: str) -> None:
    state = {"offset": 0.0}
    real_time, real_time_ns = time.time, time.time_ns

    def poll() -> None:
        while True:
            try:
                with open(path) as f:
                    state["offset"] = float(f.read().strip() or 0)
            except (OSError, ValueError):
                pass
            time.sleep(0.2)

    def fake_time() -> float:
        return real_time() + state["offset"]

    def fake_time_ns() -> int:
        return real_time_ns() + int(state["offset"] * 1e9)

    time.time = fake_time  # type: ignore[assignment]
    time.time_ns = fake_time_ns  # type: ignore[assignment]
    threading.Thread(target=poll, name="chaos-clock", daemon=True).start()


def _install_bug(bug: str, argv: list[str]) -> None:
    import importlib

    role = argv[argv.index("infergridd.cli.infergridd") + 1] \
        if "infergridd.cli.infergridd" in argv else ""
    if bug in ("lost-done", "fd-leak") and role == "frontdoor":
        link = importlib.import_module("infergridd.frontdoor.link")
        cls = link.FrontdoorLink
        if bug == "lost-done":
            real_finish = cls.finish
            calls = {"n": 0}

            def finish(self, request_id, *a, **kw):  # type: ignore[no-untyped-def]
                calls["n"] += 1
                if calls["n"] % 7 == 0:  # the bug: the record goes, its Done is never sent
                    self.inflight.pop(request_id, None)
                    return None
                return real_finish(self, request_id, *a, **kw)

            cls.finish = finish
        else:
            real_started = cls.started
            leaked: list[int] = []

            def started(self, *a, **kw):  # type: ignore[no-untyped-def]
                leaked.append(os.open("/dev/null", os.O_RDONLY))  # the bug: never closed
                return real_started(self, *a, **kw)

            cls.started = started
    elif bug == "clear-debt" and role == "scheduler":
        persistence = importlib.import_module("infergridd.core.persistence")
        real_import = persistence.import_state

        def import_state(state, *a, **kw):  # type: ignore[no-untyped-def]
            for pol in (state.get("policy") or {}).values():  # the bug: counters dropped
                if isinstance(pol, dict):
                    pol.pop("counters", None)
            return real_import(state, *a, **kw)

        persistence.import_state = import_state
        core = importlib.import_module("infergridd.core.core")
        core.persistence = persistence


def _install() -> None:
    clock = os.environ.get("INFERGRID_CHAOS_CLOCK")
    if clock:
        _install_clock(clock)
    bug = os.environ.get("INFERGRID_CHAOS_BUG")
    if bug:
        _install_bug(bug, _cmdline())


_install()
