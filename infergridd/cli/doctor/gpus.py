"""Every GPU, and where each engine would go: the placement and why one cannot fit.

The supervisor refuses a placement that can never run (``config/placement.py``)
and exits; this says so before it is started, with the same words (the model,
the GPU and the numbers), and checks each GPU's free memory (through NVML)
against the preloaded engines placed on it.
"""

from __future__ import annotations

from ...config import Config, ConfigError, check_fit, fmt_bytes
from ...config.placement import Device, memory_on, place
from ...supervisor.devices import discover, nvml_links
from .check import FAIL, OK, WARN, Check
from .gpu import GpuProbe


def placement_summary(cfg: Config, devices: list[Device],
                      links: dict[tuple[int, int], int] | None = None) -> str:
    """``GPU 0 (24.0 GiB): embed-0 4.0 GiB, big-0* 12.0 GiB; ...`` (* not preloaded)."""
    placed = place(cfg, devices, links)
    by_model = {m.name: m for m in cfg.models}
    parts = []
    for d in devices:
        here = []
        for eid, on in sorted(placed.items()):
            if d.index not in on:
                continue
            m = by_model[eid.rsplit("-", 1)[0]]
            lazy = "" if (m.preload or m.pinned) else "*"
            here.append(f"{eid}{lazy} {fmt_bytes(memory_on(m, devices, on))}")
        size = fmt_bytes(d.total) if d.total else "unlimited"
        parts.append(f"GPU {d.index} ({size}): {', '.join(here) or 'nothing'}")
    return "; ".join(parts) + (" (* loaded on demand)" if "*" in "".join(parts) else "")


def check_gpus(cfg: Config, probe: GpuProbe | None, engines_running: bool = False,
               devices: list[Device] | None = None) -> list[Check]:
    """The placement over the machine's GPUs, then each GPU's free memory (with NVML and
    more than one GPU; one GPU is ``check_gpu``'s)."""
    links: dict[tuple[int, int], int] = {}
    if devices is None:  # this machine's, as the supervisor will see them
        devices = discover(cfg)
        links = nvml_links([d.index for d in devices]) if len(devices) > 1 else {}
    try:
        check_fit(cfg, devices, links)
    except ConfigError as exc:
        return [Check(FAIL, "placement", str(exc),
                      "fewer gpus, other devices or less memory for that model, or fewer "
                      "preloaded models on that GPU (infergrid.yaml(5): models[].gpus)")]
    out = [Check(OK, "placement", placement_summary(cfg, devices, links))]
    if probe is None or len(devices) < 2:
        return out
    placed = place(cfg, devices, links)
    by_model = {m.name: m for m in cfg.models}
    for d in devices:
        need = sum(memory_on(m, devices, on) for eid, on in placed.items()
                   for m in [by_model[eid.rsplit("-", 1)[0]]]
                   if d.index in on and (m.preload or m.pinned))
        try:
            name, total, free = probe(d.index)
        except Exception as exc:  # noqa: BLE001 - no NVML, a missing GPU: report it
            out.append(Check(WARN, f"gpu {d.index}", f"not checked through NVML: {exc}"))
            continue
        where = f"{name}: {fmt_bytes(free)} free of {fmt_bytes(total)}"
        if need > free and not engines_running:
            out.append(Check(FAIL, f"gpu {d.index}", f"{where}; the preloaded engines "
                             f"placed on it need {fmt_bytes(need)}",
                             "free the GPU (nvidia-smi shows who holds it) or preload fewer "
                             "models there"))
        else:
            out.append(Check(OK, f"gpu {d.index}", f"{where}; preloaded engines placed on it "
                             f"need {fmt_bytes(need)}"))
    return out
