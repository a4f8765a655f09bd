"""What the vLLM adapter adds to an engine's launch to load the InferGrid scheduler.

``assist_launch(python, settings, stats_path)`` answers with the flags and the
environment to add, or with ``on=False`` and why not (disabled in the config,
a vLLM outside the tested range, a version probe that failed).  When off, the
engine starts with vLLM's stock scheduler and nothing of ours in it.

vLLM resolves ``--scheduler-cls`` by qualified name in the engine-core process
(``resolve_obj_by_qualname``), so the class must be importable by the engine's
interpreter, whose venv does not have InferGrid installed.  ``PYTHONPATH`` gets a
directory of our own that holds only the ``infergridd`` package (a symlink to
it), not the directory the package sits in: when InferGrid is installed, that is
its venv's ``site-packages``, whose aiohttp, msgspec, pyzmq... would then shadow
vLLM's own.  Importing ``infergridd.assist.vllm_scheduler`` loads nothing else of
InferGrid (``infergridd/__init__.py`` and ``infergridd/assist/__init__.py`` are
empty of imports).

No async-scheduling flag is needed: vLLM picks ``AsyncScheduler`` or
``Scheduler`` from its config, and ``InferGridScheduler`` builds the matching
variant of itself.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import infergridd
from infergridd.assist import support
from infergridd.assist.policy import AssistSettings
from infergridd.assist.stats import SETTINGS_ENV, STATS_ENV, settings_to_env

SCHEDULER_CLS = "infergridd.assist.vllm_scheduler.InferGridScheduler"
SHIM_DIRNAME = "assist-pythonpath"


@dataclass(frozen=True)
class AssistLaunch:
    on: bool
    reason: str
    args: list[str] = field(default_factory=list)  # vLLM flags to add
    env: dict[str, str] = field(default_factory=dict)  # engine environment to add
    version: str | None = None  # the vLLM version seen, when the probe answered


def package_dir() -> Path:
    """The directory of the ``infergridd`` package this process runs."""
    return Path(infergridd.__file__).resolve().parent


def shim_pythonpath(where: Path) -> Path:
    """``where`` made to hold only ``infergridd`` (a symlink to this package); returned."""
    where.mkdir(parents=True, exist_ok=True)
    link = where / "infergridd"
    target = package_dir()
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return where
    tmp = where / f".infergridd.{os.getpid()}.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(target, target_is_directory=True)
    os.replace(tmp, link)
    return where


def assist_launch(python: str, settings: AssistSettings, stats_path: str, *,
                  pythonpath: str | None = None, shim_dir: str | None = None,
                  probe_timeout_s: float = 30.0) -> AssistLaunch:
    """The InferGrid scheduler for an engine run by ``python``, or why not.

    ``stats_path``: where the engine writes its stats (``INFERGRID_ASSIST_STATS``;
    a stale file there is removed); "" leaves that variable to the caller;
    ``pythonpath``: the engine's ``PYTHONPATH`` otherwise (kept after ours);
    ``shim_dir``: where the PYTHONPATH directory is made (default: beside
    ``stats_path``, else in the temporary directory).
    """
    if not settings.enabled:
        return AssistLaunch(False, "disabled in the config (engine_assist: false)")
    version, why = support.probe(python, probe_timeout_s)
    if version is None:
        return AssistLaunch(False, f"cannot tell the vLLM version: {why}; "
                                   "running vLLM's stock scheduler")
    ok, reason = support.check(version)
    if not ok:
        return AssistLaunch(False, f"{reason}; running vLLM's stock scheduler", version=version)
    if shim_dir:
        where = Path(shim_dir)
    elif stats_path:
        where = Path(stats_path).parent / SHIM_DIRNAME
    else:
        where = Path(tempfile.gettempdir()) / f"infergrid-{SHIM_DIRNAME}-{os.getuid()}"
    try:
        if stats_path:
            Path(stats_path).unlink(missing_ok=True)  # stale: must not pass for this engine's
        shim = shim_pythonpath(where)
    except OSError as exc:
        return AssistLaunch(False, f"cannot prepare the scheduler's import path: {exc}; "
                                   "running vLLM's stock scheduler", version=version)
    path = os.pathsep.join([str(shim), *([pythonpath] if pythonpath else [])])
    env = {SETTINGS_ENV: settings_to_env(settings), "PYTHONPATH": path}
    if stats_path:
        env[STATS_ENV] = str(stats_path)
    return AssistLaunch(True, reason, args=["--scheduler-cls", SCHEDULER_CLS], env=env,
                        version=version)
