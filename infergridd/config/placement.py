"""Which GPUs each engine runs on (DESIGN §6): the devices, the placement, and what fits.

Pure and deterministic, so the supervisor (which launches engines with
``CUDA_VISIBLE_DEVICES`` set to their devices), the scheduler's residency
planner (which makes room per device), ``infergridctl doctor`` and config
validation all compute the same placement from the same config and devices.
A placement is fixed for the life of the supervisor: an engine that moved
between GPUs on each load would lose the point of sleeping (its weights
offloaded for a fast wake on the card it left) and make the ledgers harder
to reason about after a restart.

Rules, each with its reason:

* ``models[].devices`` pins: replica *r* takes the *r*-th group of ``gpus``
  indices from the list (cyclically), so ``devices: [0, 1], replicas: 2``
  puts one replica on each.
* Otherwise engines are placed in this order: preloaded and pinned models
  first (they are resident together, so they must be packed first), larger
  tensor-parallel groups before smaller, bigger before smaller; each engine
  takes **best fit**: among the GPUs where it fits beside what is planned
  there, the one with the least free memory (keeping whole GPUs free for
  large models); where it fits nowhere beside the others, the GPUs with the
  most free memory (the fewest evictions to load it), never one where it
  could not fit even beside the pinned models alone.
* Replicas of one model go to different GPUs while there are enough (a
  second replica on the same card adds no memory bandwidth).
* A tensor-parallel group goes, among the sets of GPUs that fit equally
  well, to the one whose slowest pair has the fastest link, when NVML reports
  the topology (``links``: a pair of indices → NVML's topology level, lower is
  closer: same board or NVLink 0-10, one PCIe switch 10-20, ... across CPUs
  50); without it, by memory alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

from .schema import Config, ConfigError, ModelConfig
from .sizes import fmt_bytes, parse_size


@dataclass(frozen=True)
class Device:
    """One GPU: its index (as NVML and ``CUDA_VISIBLE_DEVICES`` with PCI bus order count
    it) and the bytes InferGrid may hand out on it (0: unlimited)."""

    index: int
    total: int
    uuid: str = ""
    name: str = ""
    source: str = ""


def configured_devices(cfg: Config) -> list[Device]:
    """The GPUs the config names: ``gpu.devices``, else the one-device shorthand
    (``gpu.device_index`` with ``gpu.total_memory``).  Sizes are checked by validation."""
    if cfg.gpu.devices:
        return [Device(d.index, _size(d.total_memory), d.uuid, d.name, "gpu.devices")
                for d in cfg.gpu.devices]
    return [Device(cfg.gpu.device_index, _size(cfg.gpu.total_memory),
                   source="gpu.total_memory")]


def _size(v: str | int) -> int:
    try:
        return parse_size(v)
    except ValueError:
        return 0


def engine_ids(cfg: Config) -> list[tuple[ModelConfig, int, str]]:
    """(model, replica, engine id) of every engine the config asks for."""
    return [(m, r, f"{m.name}-{r}") for m in cfg.models for r in range(m.replicas)]


def needs_devices(m: ModelConfig) -> bool:
    """An external OpenAI server runs elsewhere: it is placed on no GPU of ours."""
    return m.engine != "openai"


def memory_on(m: ModelConfig, devices: list[Device], on: tuple[int, ...]) -> int:
    """Bytes each GPU of ``on`` holds for one engine of ``m`` awake; a fraction is of
    the smallest of them (a tensor-parallel shard is the same size on each)."""
    totals = [d.total for d in devices if d.index in on and d.total > 0]
    try:
        return parse_size(m.memory, min(totals) if totals else 0)
    except ValueError:  # a fraction of a GPU of unknown size: not accounted
        return 0


def sleep_memory_on(m: ModelConfig, devices: list[Device], on: tuple[int, ...]) -> int:
    """Bytes each GPU of ``on`` keeps for one engine of ``m`` asleep (its CUDA context)."""
    totals = [d.total for d in devices if d.index in on and d.total > 0]
    try:
        asleep = parse_size(m.sleep_memory, min(totals) if totals else 0)
    except ValueError:
        asleep = 0
    return min(asleep, memory_on(m, devices, on))


def check_counts(cfg: Config, devices: list[Device]) -> None:
    """``gpus`` and ``devices`` against the machine; the error names the model and why."""
    have = sorted(d.index for d in devices)
    for i, m in enumerate(cfg.models):
        p = f"$.models[{i}]"
        if m.gpus < 1:
            raise ConfigError(f"{p}.gpus: model {m.name!r}: must be at least 1")
        if not needs_devices(m):
            continue
        if m.gpus > len(devices):
            raise ConfigError(
                f"{p}.gpus: model {m.name!r} needs {m.gpus} GPUs per engine, more than the "
                f"{len(devices)} this machine has (GPUs {have})")
        if len(set(m.devices)) != len(m.devices):
            raise ConfigError(f"{p}.devices: model {m.name!r} names a GPU twice: {m.devices}")
        for idx in m.devices:
            if idx not in have:
                raise ConfigError(
                    f"{p}.devices: model {m.name!r} is pinned to GPU {idx}, which this "
                    f"machine does not have (GPUs {have})")
        if m.devices and len(m.devices) < m.gpus:
            raise ConfigError(
                f"{p}.devices: model {m.name!r} needs {m.gpus} GPUs per engine but is "
                f"pinned to {len(m.devices)}: {m.devices}")


#: (GPU index, GPU index) with the lower first → NVML topology level (lower: faster link)
Links = dict[tuple[int, int], int]


def place(cfg: Config, devices: list[Device],
          links: Links | None = None) -> dict[str, tuple[int, ...]]:
    """Engine id → the GPU indices it runs on (sorted); see the module docstring.
    Raises ``ConfigError`` for a count the machine cannot meet (``check_counts``)."""
    check_counts(cfg, devices)
    totals = {d.index: d.total for d in devices}
    planned = dict.fromkeys(totals, 0)  # bytes of engines placed so far
    pinned_held = dict.fromkeys(totals, 0)  # ... of engines never evicted
    order = sorted(
        (k for k, m in enumerate(cfg.models) if needs_devices(m)),
        key=lambda k: (0 if cfg.models[k].devices else 1,
                       0 if (cfg.models[k].preload or cfg.models[k].pinned) else 1,
                       -cfg.models[k].gpus, -_size_or_zero(cfg.models[k]), k))
    out: dict[str, tuple[int, ...]] = {}
    for k in order:
        m = cfg.models[k]
        mine: set[int] = set()
        for r in range(m.replicas):
            if m.devices:
                chosen = tuple(sorted(m.devices[(r * m.gpus + j) % len(m.devices)]
                                      for j in range(m.gpus)))
            else:
                chosen = _best_fit(m, devices, planned, pinned_held, mine, links or {})
            cost = memory_on(m, devices, chosen)
            for d in chosen:
                planned[d] += cost
                if m.pinned:
                    pinned_held[d] += cost
            mine.update(chosen)
            out[f"{m.name}-{r}"] = chosen
    return out


def _size_or_zero(m: ModelConfig) -> int:
    try:
        return parse_size(m.memory, 1)
    except ValueError:
        return 0


def _best_fit(m: ModelConfig, devices: list[Device], planned: dict[int, int],
              pinned_held: dict[int, int], mine: set[int], links: Links) -> tuple[int, ...]:
    """``m.gpus`` GPUs for one engine: best fit beside what is planned, else most free."""

    def free(d: Device) -> float:
        return float("inf") if d.total <= 0 else d.total - planned[d.index]

    def rank(d: Device) -> tuple:
        cost = memory_on(m, devices, (d.index,))
        ever = d.total <= 0 or cost <= d.total - pinned_held[d.index]
        fits = d.total <= 0 or cost <= free(d)
        # replicas apart first; then where it fits now (tightest first); then where it
        # could ever fit (most free first); a GPU full of pinned models last
        return (d.index in mine, not ever, not fits,
                free(d) if fits else -free(d), d.index)

    ranked = sorted(devices, key=rank)
    if m.gpus == 1 or not links or len(devices) > 8:
        return tuple(sorted(d.index for d in ranked[:m.gpus]))

    def slowest(group: tuple[Device, ...]) -> int:
        return max(links.get((min(a.index, b.index), max(a.index, b.index)), 100)
                   for a, b in combinations(group, 2))

    # the fit categories of the worst GPU first (as without links), then the link
    best = min(combinations(ranked, m.gpus),
               key=lambda g: (max(rank(d)[:3] for d in g), slowest(g),
                              [rank(d) for d in g]))
    return tuple(sorted(d.index for d in best))


def check_placement(cfg: Config, devices: list[Device],
                    links: Links | None = None) -> dict[str, tuple[int, ...]]:
    """Place every engine and refuse a set that can never run (each error names the
    model, the GPU and the numbers): an engine bigger than a GPU of its own; pinned
    models beyond a GPU (never evicted); preloaded models beyond a GPU (``/health``
    could never answer 200).  Returns the placement."""
    placed = place(cfg, devices, links)
    totals = {d.index: d.total for d in devices}
    by_model = {m.name: (i, m) for i, m in enumerate(cfg.models)}
    per_dev: dict[int, dict[str, list[tuple[ModelConfig, int]]]] = {
        d: {"pinned": [], "preloaded": [], "all": []} for d in totals}
    for eid, on in placed.items():
        i, m = by_model[eid.rsplit("-", 1)[0]]
        cost = memory_on(m, devices, on)
        for d in on:
            per_dev[d]["all"].append((m, cost))
            if m.pinned:
                per_dev[d]["pinned"].append((m, cost))
            if m.preload or m.pinned:
                per_dev[d]["preloaded"].append((m, cost))
    for d, groups in per_dev.items():
        total = totals[d]
        if total <= 0:
            continue
        mine: dict[str, int] = {}
        for m, cost in groups["all"]:
            mine[m.name] = mine.get(m.name, 0) + cost
        for name, need in mine.items():
            i, m = by_model[name]
            if need > total:
                n = sum(1 for eid, on in placed.items()
                        if eid.rsplit("-", 1)[0] == name and d in on)
                raise ConfigError(
                    f"$.models[{i}].memory: model {name!r} needs {fmt_bytes(need)}"
                    f"{f' ({n} replicas)' if n > 1 else ''} on GPU {d}, more than the "
                    f"GPU's {fmt_bytes(total)}")
        for what in ("pinned", "preloaded"):
            models = groups[what]
            need = sum(c for _m, c in models)
            if need > total:
                parts = " + ".join(f"{m.name} {fmt_bytes(c)}" for m, c in models)
                raise ConfigError(
                    f"$.models: the {what} models cannot all fit on "
                    f"{f'GPU {d}' if len(totals) > 1 else 'the GPU'}: {parts} = {fmt_bytes(need)} > "
                    f"{fmt_bytes(total)} of GPU memory")
    return placed
