"""The supervisor's GPU memory ledgers (DESIGN §6): who holds what, and what is free.

One ledger per GPU (``devices.py`` finds them): an engine placed on GPUs 0
and 1 (tensor parallel) holds its ``memory`` on each, and a start or wake is
admitted only if it fits on every GPU it is placed on, so making room on
GPU 1 never depends on, or disturbs, what GPU 0 holds.

The scheduler decides what to load and evict; this ledger is the last word on
whether it fits, because only the supervisor knows what each engine really
holds right now (a start it just launched, a sleep still in progress).  It is
never stored: every figure is derived from the engine runners' states, so
after a supervisor restart the ledger is rebuilt from the engines it
re-adopts (DESIGN §3), and it can never disagree with them.

What an engine holds, by state (``EngineRunner.held_bytes``):

* starting, ready, unhealthy, waking, draining, stopping: its ``memory``;
* stopped or failed but about to be (re)launched (wanted running): its
  ``memory`` too — the supervisor will start it without asking anyone, so
  the room is promised to it;
* sleeping (either level): its ``sleep_memory`` (the CUDA context that stays);
* otherwise nothing.

A start or wake is admitted only if what the engine would add fits in what
is free; while that command runs the engine is counted as holding its full
memory (``reserved``), so two commands running at once cannot both take the
same free bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol

from .. import protocol as p
from ..config import Config, fmt_bytes, parse_size
from ..config.placement import Device

log = logging.getLogger("infergrid.supervisor")


class Holder(Protocol):
    """What the ledger needs of an engine runner."""

    engine_id: str
    memory_bytes: int

    def held_bytes(self) -> int: ...


def nvml_total(device_index: int) -> int | None:
    """The GPU's memory from NVML (``nvidia-ml-py``), or None without NVML or a GPU."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
            return int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # noqa: BLE001 - pynvml.NVMLError and driver oddities alike
        log.info("NVML unavailable (%s); using gpu.total_memory", exc)
        return None


def gpu_total(cfg: Config) -> tuple[int, str]:
    """(bytes, where from) of the GPU memory InferGrid may hand out.

    NVML (``nvidia-ml-py``) is the truth when present.  ``gpu.total_memory``
    may only lower it (an operator keeping some memory back for another
    process); a figure above what the GPU has is a typo or a config copied
    from a bigger machine, and planning with it would admit loads that then
    fail for want of memory, so NVML's figure wins and a warning says so.
    Without NVML the configured figure is used; without either, 0: unlimited
    (nothing is accounted, every load is admitted).
    """
    try:
        configured = parse_size(cfg.gpu.total_memory)
    except ValueError:
        configured = 0
    found = nvml_total(cfg.gpu.device_index) or 0
    where = f"NVML (GPU {cfg.gpu.device_index})"
    if found and configured:
        if configured <= found:
            return configured, f"gpu.total_memory (of {fmt_bytes(found)} per {where})"
        log.warning("gpu.total_memory %s is more than the %s that %s reports; using %s",
                    fmt_bytes(configured), fmt_bytes(found), where, fmt_bytes(found))
        return found, where
    if found:
        return found, where
    if configured:
        return configured, "gpu.total_memory (no NVML)"
    return 0, "unlimited (no NVML, gpu.total_memory 0)"


def _on(h: Holder, default: tuple[int, ...]) -> tuple[int, ...]:
    """The GPUs an engine holds its memory on (an unplaced one: the first GPU)."""
    return getattr(h, "devices", ()) or default


class Ledger:
    """One ledger per GPU, each derived from the engines placed on it."""

    def __init__(self, total: int | list[Device], source: str = "") -> None:
        self.devices = [Device(0, total, source=source)] if isinstance(total, int) \
            else list(total)
        self.source = source or ", ".join(sorted({d.source for d in self.devices}))
        self._first = (self.devices[0].index,) if self.devices else ()

    @property
    def total(self) -> int:
        """Bytes on every GPU together; 0 when any is unlimited (not accounted)."""
        if any(d.total <= 0 for d in self.devices):
            return 0
        return sum(d.total for d in self.devices)

    def device(self, index: int) -> Device | None:
        return next((d for d in self.devices if d.index == index), None)

    def used(self, holders: Iterable[Holder], device: int | None = None) -> int:
        """Bytes held on ``device`` (None: on every GPU together)."""
        return sum(h.held_bytes() * (len(on) if device is None else (device in on))
                   for h in holders for on in (_on(h, self._first),))

    def free(self, holders: Iterable[Holder], device: int | None = None) -> int:
        """Bytes not held on ``device`` (None: all GPUs); 0 when unlimited."""
        if device is None:
            hs = list(holders)
            return sum(self.free(hs, d.index) for d in self.devices) if self.total else 0
        d = self.device(device)
        if d is None or d.total <= 0:
            return 0
        return max(0, d.total - self.used(holders, device))

    def shortfall(self, engine: Holder, holders: list[Holder]) -> str:
        """Why ``engine`` cannot be brought up now, with the numbers of each GPU it is
        placed on that lacks room; "" when it fits on all of them."""
        need = max(0, engine.memory_bytes - engine.held_bytes())
        short = []
        for idx in _on(engine, self._first):
            d = self.device(idx)
            if d is None or d.total <= 0:
                continue
            free = d.total - self.used(holders, idx)
            if need <= free:
                continue
            others = ", ".join(f"{h.engine_id} {fmt_bytes(h.held_bytes())}" for h in holders
                               if h is not engine and h.held_bytes() > 0
                               and idx in _on(h, self._first)) or "nothing"
            short.append(f"{fmt_bytes(max(0, free))} free of {fmt_bytes(d.total)}"
                         f"{f' on GPU {idx}' if len(self.devices) > 1 else ''} "
                         f"(held: {others})")
        if not short:
            return ""
        return (f"not enough GPU memory for {engine.engine_id}: needs {fmt_bytes(need)}, "
                + "; ".join(short))

    def report(self, holders: list[Holder]) -> list[p.GpuDevice]:
        """Each GPU's ledger for the scheduler (``EngineUpdate.gpus``)."""
        return [p.GpuDevice(index=d.index, uuid=d.uuid, name=d.name, total_bytes=d.total,
                            free_bytes=self.free(holders, d.index), source=d.source)
                for d in self.devices]
