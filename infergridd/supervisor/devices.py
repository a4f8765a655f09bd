"""The GPUs this machine has (DESIGN §6): NVML discovery, or the config's ``gpu.devices``.

NVML (``nvidia-ml-py``, the ``nvml`` extra) is the truth where it answers:
each GPU's index, UUID, name and memory.  The config may only lower a GPU's
size (an operator keeping memory back for another process); a figure above
the card's is a typo or a config copied from a bigger machine, so the card's
wins and a warning says so.  Without NVML (the simulated engine, CPU
machines, a missing driver) the config's ``gpu.devices`` are used as they
are, else the one-device shorthand (``gpu.device_index``, ``gpu.total_memory``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..config import Config, fmt_bytes, parse_size
from ..config.placement import Device, configured_devices

log = logging.getLogger("infergrid.supervisor")

#: () -> every GPU NVML lists, or None without NVML (tests inject their own)
NvmlList = Callable[[], "list[Device] | None"]


def nvml_devices() -> list[Device] | None:
    """Every GPU through NVML (index, UUID, name, total memory); None without NVML."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            out = []
            for i in range(int(pynvml.nvmlDeviceGetCount())):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                name = pynvml.nvmlDeviceGetName(h)
                uuid = pynvml.nvmlDeviceGetUUID(h)
                out.append(Device(
                    i, int(pynvml.nvmlDeviceGetMemoryInfo(h).total),
                    uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                    name.decode() if isinstance(name, bytes) else str(name), "NVML"))
            return out
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # noqa: BLE001 - pynvml.NVMLError and driver oddities alike
        log.info("NVML unavailable (%s); using the configured GPUs", exc)
        return None


def nvml_links(indices: list[int]) -> dict[tuple[int, int], int]:
    """NVML's topology level for each pair of GPUs (lower: a faster link; 0 same board,
    10 one PCIe switch, ... 50 across CPU sockets); {} without NVML.  Placement keeps a
    tensor-parallel group on the closest GPUs that fit (config/placement.py)."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return {}
    try:
        pynvml.nvmlInit()
        try:
            handles = {i: pynvml.nvmlDeviceGetHandleByIndex(i) for i in indices}
            return {(a, b): int(pynvml.nvmlDeviceGetTopologyCommonAncestor(handles[a],
                                                                           handles[b]))
                    for a in indices for b in indices if a < b}
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # noqa: BLE001 - no topology: placement by memory alone
        log.info("NVML topology unavailable (%s); tensor-parallel groups placed by memory "
                 "alone", exc)
        return {}


def _capped(found: Device, configured: int, key: str) -> Device:
    """NVML's device with the configured size, which may only lower it."""
    if configured and configured <= found.total:
        return Device(found.index, configured, found.uuid, found.name,
                      f"{key} (of {fmt_bytes(found.total)} per NVML)")
    if configured:
        log.warning("%s %s for GPU %d is more than the %s NVML reports; using %s", key,
                    fmt_bytes(configured), found.index, fmt_bytes(found.total),
                    fmt_bytes(found.total))
    return found


def discover(cfg: Config, nvml: NvmlList = nvml_devices) -> list[Device]:
    """The GPUs to keep ledgers for; see the module docstring."""
    found = nvml()
    if not found:
        return configured_devices(cfg)
    by_index = {d.index: d for d in found}
    if cfg.gpu.devices:
        out = []
        for d in configured_devices(cfg):
            real = by_index.get(d.index)
            if real is None:
                log.warning("gpu.devices names GPU %d, which NVML does not list (GPUs %s); "
                            "using the configured figures", d.index, sorted(by_index))
                out.append(d)
                continue
            real = Device(real.index, real.total, d.uuid or real.uuid, d.name or real.name,
                          "NVML")
            out.append(_capped(real, d.total, "gpu.devices[].total_memory"))
        return out
    try:
        configured = parse_size(cfg.gpu.total_memory)
    except ValueError:
        configured = 0
    if cfg.gpu.device_index:
        one = by_index.get(cfg.gpu.device_index)
        if one is None:
            log.warning("gpu.device_index %d: NVML lists GPUs %s only; using the configured "
                        "figure", cfg.gpu.device_index, sorted(by_index))
            return configured_devices(cfg)
        return [_capped(one, configured, "gpu.total_memory")]
    return [_capped(d, configured, "gpu.total_memory") for d in found]


def place_env(devices: tuple[int, ...], env: dict[str, str]) -> None:
    """An engine sees exactly its GPUs: ``CUDA_VISIBLE_DEVICES`` set to its indices, in
    PCI bus order (the order NVML counts; CUDA's default puts the fastest first).  A
    model's own ``env`` that sets either wins: the operator knows something we do not."""
    if not devices:
        return
    env.setdefault("CUDA_VISIBLE_DEVICES", ",".join(str(d) for d in devices))
    env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
