"""The supervisor's GPU memory ledger (DESIGN §6): who holds what, and what is free.

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

from ..config import Config, fmt_bytes, parse_size

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


class Ledger:
    def __init__(self, total: int, source: str = "") -> None:
        self.total = total
        self.source = source

    def used(self, holders: Iterable[Holder]) -> int:
        return sum(h.held_bytes() for h in holders)

    def free(self, holders: Iterable[Holder]) -> int:
        """Bytes not held by any engine; 0 when unlimited (``total`` 0)."""
        return max(0, self.total - self.used(holders)) if self.total > 0 else 0

    def shortfall(self, engine: Holder, holders: list[Holder]) -> str:
        """Why ``engine`` cannot be brought up now, with the numbers; "" when it fits."""
        if self.total <= 0:
            return ""
        need = max(0, engine.memory_bytes - engine.held_bytes())
        free = self.total - self.used(holders)
        if need <= free:
            return ""
        others = ", ".join(f"{h.engine_id} {fmt_bytes(h.held_bytes())}" for h in holders
                           if h is not engine and h.held_bytes() > 0) or "nothing"
        return (f"not enough GPU memory for {engine.engine_id}: needs {fmt_bytes(need)}, "
                f"{fmt_bytes(max(0, free))} free of {fmt_bytes(self.total)} "
                f"(held: {others})")
