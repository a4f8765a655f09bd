"""Benchmark workloads: YAML files decoded strictly, and the seeded request plan.

A workload names tenants; each sends Poisson arrivals at ``rate`` req/s, or is a
*flooder* (``flood: true``) whose rate comes from ``--scale`` (flooders share the
flood rate in proportion to their weights, so with ``--flood-multiple`` > 1 every
one of them asks for more than its weighted fair share and stays backlogged).
Prompt and output lengths are drawn from fixed / uniform / lognormal
distributions, in tokens; outputs are sent as ``max_tokens`` with ``ignore_eos``.

Strict decoding, as for ``infergrid.yaml``: an unknown key is an error naming
it, because a misspelt ``burst:`` that is silently ignored gives a benchmark
that measures something other than what its file says (PEERS.md).

Every tenant draws from its own RNG, seeded from ``(seed, tenant name)``, so a
tenant's requests are the same whether it runs alone (the ``solo`` arm) or
beside the others, and the same in every arm.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import msgspec
import numpy as np

from ..yamlstruct import loads_struct, read_text


class WorkloadError(ValueError):
    """A workload file problem, naming the file and the key (``$.tenants[0].rate``)."""


class _Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    pass


class Fixed(_Strict, tag="fixed", tag_field="dist"):
    tokens: int


class Uniform(_Strict, tag="uniform", tag_field="dist"):
    low: int
    high: int  # inclusive


class LogNormal(_Strict, tag="lognormal", tag_field="dist", kw_only=True):
    median: float
    sigma: float
    min: int = 1
    max: int = 1_000_000


Dist = Fixed | Uniform | LogNormal


class Burst(_Strict):
    """``count`` extra requests at once, every ``every_s`` seconds (first at ``every_s``)."""

    every_s: float
    count: int


class TenantSpec(_Strict, kw_only=True):
    name: str
    weight: float = 1.0
    rate: float = 0.0  # req/s, Poisson; ignored for a flooder
    flood: bool = False
    prompt: Dist = Fixed(tokens=128)
    output: Dist = Fixed(tokens=128)
    bursts: Burst | None = None


class Workload(_Strict, kw_only=True):
    name: str
    description: str = ""
    duration_s: float = 60.0
    warmup_s: float = 10.0
    #: engine batch size for the direct engine and InferGrid's model (0: the profile's)
    max_num_seqs: int = 0
    tenants: list[TenantSpec]

    def flooders(self) -> list[TenantSpec]:
        return [t for t in self.tenants if t.flood]

    def quiet(self) -> list[TenantSpec]:
        """Tenants with a fixed rate: the ones whose latency the benchmark is about."""
        return [t for t in self.tenants if not t.flood]

    def tenant(self, name: str) -> TenantSpec:
        for t in self.tenants:
            if t.name == name:
                return t
        raise KeyError(name)


def _check_dist(d: Dist, path: str) -> None:
    if isinstance(d, Fixed) and d.tokens < 1:
        raise WorkloadError(f"{path}.tokens: must be at least 1")
    if isinstance(d, Uniform) and not 1 <= d.low <= d.high:
        raise WorkloadError(f"{path}: need 1 <= low <= high, got {d.low}..{d.high}")
    if isinstance(d, LogNormal):
        if not d.median > 0 or d.sigma < 0:
            raise WorkloadError(f"{path}: median must be > 0 and sigma >= 0")
        if not 1 <= d.min <= d.max:
            raise WorkloadError(f"{path}: need 1 <= min <= max")


def validate(w: Workload) -> None:
    """Checks a type system cannot express; each error names its key."""
    if not w.tenants:
        raise WorkloadError("$.tenants: at least one tenant is needed")
    if not w.duration_s > 0 or w.warmup_s < 0 or w.warmup_s >= w.duration_s:
        raise WorkloadError("$.duration_s/$.warmup_s: need 0 <= warmup_s < duration_s")
    if w.max_num_seqs < 0:
        raise WorkloadError("$.max_num_seqs: cannot be negative")
    seen: set[str] = set()
    for i, t in enumerate(w.tenants):
        p = f"$.tenants[{i}]"
        if t.name in seen:
            raise WorkloadError(f"{p}.name: duplicate tenant {t.name!r}")
        seen.add(t.name)
        if not t.weight > 0:
            raise WorkloadError(f"{p}.weight: must be greater than 0")
        if t.flood and t.rate:
            raise WorkloadError(f"{p}.rate: a flooder's rate comes from --scale; drop rate")
        if not t.flood and not t.rate > 0 and t.bursts is None:
            raise WorkloadError(f"{p}.rate: must be > 0 (or set flood: true, or bursts)")
        if t.rate < 0:
            raise WorkloadError(f"{p}.rate: cannot be negative")
        if t.bursts is not None and (not t.bursts.every_s > 0 or t.bursts.count < 1):
            raise WorkloadError(f"{p}.bursts: need every_s > 0 and count >= 1")
        _check_dist(t.prompt, f"{p}.prompt")
        _check_dist(t.output, f"{p}.output")


def loads(text: str, source: str = "<workload>") -> Workload:
    return loads_struct(text, Workload, source, WorkloadError, validate)


def packaged_names() -> list[str]:
    """Workloads shipped in the package (``infergridd/bench/workloads/*.yaml``)."""
    root = resources.files(__package__) / "workloads"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def load(name_or_path: str) -> Workload:
    """A path if one exists (or it ends in .yaml), else a packaged workload by name."""
    p = Path(name_or_path)
    if p.exists() or name_or_path.endswith((".yaml", ".yml")):
        return loads(read_text(p, WorkloadError), str(p))
    res = resources.files(__package__) / "workloads" / f"{name_or_path}.yaml"
    if not res.is_file():
        raise WorkloadError(f"no workload {name_or_path!r} (packaged: "
                            f"{', '.join(packaged_names())}; or give a YAML path)")
    return loads(res.read_text(), f"{name_or_path}.yaml")


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True, slots=True)
class Planned:
    """One request of the plan; ``t`` is seconds after the arm's start."""

    tenant: str
    index: int  # per tenant, in time order
    t: float
    prompt_tokens: int
    max_tokens: int


def tenant_seed(seed: int, tenant: str) -> int:
    """Stable across processes and Python versions (``hash()`` is salted)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{tenant}".encode()).digest()[:8], "little")


def draw(d: Dist, rng: np.random.Generator, n: int) -> np.ndarray:
    if isinstance(d, Fixed):
        return np.full(n, d.tokens, dtype=np.int64)
    if isinstance(d, Uniform):
        return rng.integers(d.low, d.high + 1, size=n)
    x = rng.lognormal(math.log(d.median), d.sigma, size=n)
    return np.clip(np.rint(x), d.min, d.max).astype(np.int64)


def poisson_times(rate: float, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """Arrival times of a Poisson process of ``rate``/s on [0, duration_s)."""
    if rate <= 0:
        return np.zeros(0)
    out: list[np.ndarray] = []
    t = 0.0
    chunk = max(16, int(rate * duration_s * 1.2) + 16)
    while True:
        gaps = rng.exponential(1.0 / rate, size=chunk)
        times = t + np.cumsum(gaps)
        out.append(times[times < duration_s])
        if times[-1] >= duration_s:
            break
        t = float(times[-1])
    return np.concatenate(out)


def flood_rates(w: Workload, total_rate: float) -> dict[str, float]:
    """The flood rate split among flooders in proportion to their weights."""
    fl = w.flooders()
    total_w = sum(t.weight for t in fl) or 1.0
    return {t.name: total_rate * t.weight / total_w for t in fl}


def tenant_plan(t: TenantSpec, rate: float, duration_s: float, seed: int) -> list[Planned]:
    rng = np.random.default_rng(tenant_seed(seed, t.name))
    times = poisson_times(rate, duration_s, rng)
    if t.bursts is not None:
        k = np.arange(1, int(duration_s / t.bursts.every_s) + 1) * t.bursts.every_s
        k = k[k < duration_s]
        times = np.sort(np.concatenate([times, np.repeat(k, t.bursts.count)]))
    n = len(times)
    prompts = draw(t.prompt, rng, n)
    outputs = draw(t.output, rng, n)
    return [Planned(t.name, i, float(times[i]), int(prompts[i]), int(outputs[i]))
            for i in range(n)]


def plan(w: Workload, duration_s: float, seed: int, flood_rate: float,
         tenants: list[str] | None = None) -> list[Planned]:
    """Every request of every (selected) tenant, sorted by send time.

    Selecting tenants does not change a tenant's own requests: that is what
    makes the solo arm comparable with the others.
    """
    rates = flood_rates(w, flood_rate)
    out: list[Planned] = []
    for t in w.tenants:
        if tenants is not None and t.name not in tenants:
            continue
        out += tenant_plan(t, rates.get(t.name, t.rate), duration_s, seed)
    out.sort(key=lambda p: (p.t, p.tenant, p.index))
    return out


def measured(p: Planned, warmup_s: float) -> bool:
    """The warm-up cut: a request counts if it was *scheduled* at or after warm-up.

    Cutting on the scheduled time (not on when it was sent or answered) gives
    every arm exactly the same set of measured requests.
    """
    return p.t >= warmup_s
