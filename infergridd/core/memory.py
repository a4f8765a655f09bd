"""GPU memory as the residency planner counts it (DESIGN §6): what each engine holds.

Per GPU: an engine is placed on a set of GPUs (``EngineStatus.devices``, from
the supervisor's placement) and holds its cost on each of them, so what fits
and what must be evicted is decided GPU by GPU.

The supervisor's ledger is the last word on memory (it refuses a start or wake
that does not fit); this is the scheduler's own, conservative view, so that it
rarely asks for one that will be refused: an engine counts as holding its full
cost from the moment a start or wake is sent until the supervisor reports it
asleep or stopped.  Pure: every figure comes from the engines' last reports
and the configuration.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import protocol as p
from ..config import Config, parse_size
from ..config.placement import Device, configured_devices, memory_on, sleep_memory_on

S = p.EngineState

#: States in which an engine holds its full memory (or is about to).
HOLDING = (S.STARTING, S.READY, S.DRAINING, S.WAKING, S.UNHEALTHY, S.STOPPING)
#: States from which the model serves, or soon will without a command from us.
UP = (S.STARTING, S.READY, S.DRAINING, S.WAKING, S.UNHEALTHY)
ASLEEP = (S.SLEEPING1, S.SLEEPING2)


@dataclass
class EngineView:
    """One engine as the core sees it: the supervisor's report and our in-flight count."""

    status: p.EngineStatus
    owner: str  # supervisor peer that reported it; "" while none is connected
    inflight: int = 0


@dataclass
class GpuMemory:
    """GPU bytes to plan with, and what each engine holds, frees and would cost."""

    cfg: Config
    gpu_total: int = 0  # from the supervisor's ledger; 0: the config's, else unlimited
    gpu_free: int = 0
    #: each GPU's ledger as the supervisor last reported it ([]: the config's GPUs)
    gpus: list[p.GpuDevice] = field(default_factory=list)

    def devices(self) -> list[Device]:
        """The GPUs to plan with: the supervisor's (NVML), else the config's."""
        if self.gpus:
            return [Device(g.index, g.total_bytes, g.uuid, g.name, g.source) for g in self.gpus]
        return configured_devices(self.cfg)

    def totals(self) -> dict[int, int]:
        """GPU index → bytes to plan with (0: unlimited)."""
        return {d.index: d.total for d in self.devices()}

    def total(self) -> int:
        """GPU bytes to plan with, all GPUs together: the supervisor's figure (NVML),
        else the config's; 0 when not accounted."""
        if self.gpu_total > 0:
            return self.gpu_total
        if self.gpus or self.cfg.gpu.devices:
            totals = list(self.totals().values())
            return sum(totals) if totals and all(t > 0 for t in totals) else 0
        try:
            return parse_size(self.cfg.gpu.total_memory)
        except ValueError:
            return 0

    def on(self, e: EngineView) -> tuple[int, ...]:
        """The GPUs an engine holds its memory on (one not placed: the first GPU)."""
        if e.status.devices:
            return tuple(e.status.devices)
        devs = self.devices()
        return (devs[0].index,) if devs else (0,)

    def cost(self, e: EngineView) -> int:
        """Bytes one engine holds awake on each of its GPUs: from the config; else what
        it reports."""
        mc = self.cfg.model(e.status.model)
        if mc is None:
            return e.status.memory_bytes
        return memory_on(mc, self.devices(), self.on(e))

    def residual(self, e: EngineView) -> int:
        """Bytes one engine keeps on each of its GPUs while asleep (its CUDA context)."""
        mc = self.cfg.model(e.status.model)
        if mc is None:
            return 0
        return sleep_memory_on(mc, self.devices(), self.on(e))

    def held(self, e: EngineView, up_sent: bool) -> int:
        """Conservative: full cost while up or once an up-command is out (``up_sent``),
        else as reported."""
        if e.status.state in HOLDING or up_sent:
            return max(e.status.memory_bytes, self.cost(e))
        return e.status.memory_bytes

    def freeable(self, e: EngineView, down_action: str, up_sent: bool) -> int:
        """Bytes evicting this engine frees: all it holds, less what it keeps asleep."""
        st = e.status.state
        if st == S.STOPPED or st in ASLEEP:
            return 0
        keep = self.residual(e) if down_action == "sleep" and st in (S.READY, S.UNHEALTHY) else 0
        return max(0, self.held(e, up_sent) - keep)
