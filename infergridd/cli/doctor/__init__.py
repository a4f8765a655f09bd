"""``infergridctl doctor``: check what breaks installations in practice, locally.

It does not go through the scheduler's control socket (the point is to work
when the appliance does not), so it reads the configuration, the file system,
``/proc`` and, where present, NVML and systemd itself.  Each check gives one
line::

    OK|WARN|FAIL  check: detail — what to do

and the exit status is 0 when no check FAILed, 1 otherwise.  Every check is a
function of explicit paths and injectable probes, so each is tested on its own
with temporary directories (tests/unit/cli/test_doctor.py).

One module per check group: ``config``, ``dirs`` (runtime dir, sockets, state
dir), ``engines``, ``gpu``, ``port``, ``units``; ``check`` holds what a check
reports and ``run`` the driver (``run_checks``, ``main``).
"""

from __future__ import annotations

from .check import DAEMON_USER, FAIL, OK, WARN, Check, Runner, daemon_group
from .config import check_config
from .dirs import check_runtime_dir, check_state_dir
from .engines import check_engines
from .gpu import GPU_ENGINES, GpuProbe, check_gpu, nvml_probe
from .port import check_port, listening_inodes, socket_holders
from .run import doctor_dirs, engines_running, main, render, run_checks, to_json
from .units import UNITS, check_units, under_systemd

__all__ = [
    "DAEMON_USER", "FAIL", "GPU_ENGINES", "OK", "UNITS", "WARN", "Check", "GpuProbe", "Runner",
    "check_config", "check_engines", "check_gpu", "check_port", "check_runtime_dir",
    "check_state_dir", "check_units", "daemon_group", "doctor_dirs", "engines_running",
    "listening_inodes", "main", "nvml_probe", "render", "run_checks", "socket_holders",
    "to_json", "under_systemd",
]
