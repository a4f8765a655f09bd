"""The GPUs the simulated engine was given: ``CUDA_VISIBLE_DEVICES``, as a real engine reads it.

The simulator uses no GPU, but it reads the variable the supervisor sets for
every engine (``supervisor/devices.py``) and reports it on ``/metrics``
(``infergrid_sim_visible_device{device="1"} 1``), so tests of placement see
what each engine process was really started with, without a GPU.
"""

from __future__ import annotations

import os


def visible_devices(env: dict[str, str] | None = None) -> list[str]:
    """The entries of ``CUDA_VISIBLE_DEVICES`` (indices or UUIDs); [] when unset or empty."""
    raw = (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES", "")
    return [d.strip() for d in raw.split(",") if d.strip()]


def render(out: list[str], env: dict[str, str] | None = None) -> None:
    """Append the visible-device series to a Prometheus text page."""
    devices = visible_devices(env)
    out.append("# HELP infergrid_sim_visible_device A GPU this engine was given "
               "(CUDA_VISIBLE_DEVICES).")
    out.append("# TYPE infergrid_sim_visible_device gauge")
    for d in devices:
        esc = d.replace("\\", "\\\\").replace('"', '\\"')
        out.append(f'infergrid_sim_visible_device{{device="{esc}"}} 1')
