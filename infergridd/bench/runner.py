"""Run the arms one after another on the same engine, same seed, same warm-up cut.

Arms:

* ``solo`` (and ``solo#2``): each non-flooding tenant alone, straight to the
  engine — the latency it would get on an idle machine.  Run twice so the
  noise between two identical runs is visible next to the differences that
  matter (a ratio to solo below that noise means nothing).
* ``direct``: every tenant straight to the engine (its FIFO decides).
* ``fifo`` / ``token_bucket`` / ``vtc``: through ``infergrid serve`` with that
  policy and the same engine settings.

Every arm sends the same plan (``workload.plan`` with the same seed and flood
rate) and measures the same requests: those *scheduled* at or after warm-up.
Each arm gets a fresh engine, so no arm inherits another's backlog.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from . import stats
from .appliance import Serve, free_port, make_config, tenant_key
from .engines import Engine
from .loadgen import (
    FAILED,
    OK,
    REJECTED,
    UNFINISHED,
    Capacity,
    Prompts,
    Result,
    Run,
    Sampler,
    Target,
    closed_loop,
    open_loop,
)
from .workload import Planned, Workload, measured, plan, tenant_plan

#: ``vtc`` with other engine-assist settings (models[].engine_assist), for its Pareto
ASSIST_ARMS: dict[str, Any] = {
    "vtc-stock": False,  # the engine's own scheduler: the front end alone
    "vtc-exclusive": {"exclusive_prefill": True},
    "vtc-chunk256": {"heavy_chunk_tokens": 256},
}
SCHEDULED_ARMS = ("fifo", "token_bucket", "vtc", *ASSIST_ARMS)
KNOWN_ARMS = ("solo", "direct", *SCHEDULED_ARMS)
ENGINE_METRICS = ("vllm:num_requests_waiting", "vllm:num_requests_running",
                  "vllm:generation_tokens_total")
INFERGRID_METRICS = ("infergrid_tenant_queued", "infergrid_tenant_inflight",
                     "infergrid_engine_waiting", "infergrid_engine_running")


@dataclass
class BenchConfig:
    workload: Workload
    engine: Engine
    arms: list[str]
    out: Path
    duration_s: float
    warmup_s: float
    seed: int = 0
    scale: str | float = "auto"  # "auto" or the flood rate in req/s
    flood_multiple: float = 1.5
    drain_s: float | None = None  # None: max(5, duration / 5)
    capacity_s: float | None = None  # None: clamp(duration / 4, 6, 30)
    token_bucket: dict[str, float] | None = None
    progress: bool = True
    n_boot: int = stats.N_BOOT
    measure_capacity: bool = False  # with a numeric scale too (tokens/s vs capacity)
    solo_runs: int = 2  # "solo" expands to solo, solo#2, ...: the noise between them shows
    #: with other arms beside it, "direct" runs again after all of them ("direct#2"), so
    #: the machine's drift over the run shows beside the throughput ratios
    bracket_direct: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def expanded_arms(self) -> list[str]:
        """``solo`` stands for ``solo_runs`` runs: ``solo``, ``solo#2``, ..."""
        out: list[str] = []
        for a in self.arms:
            if a not in KNOWN_ARMS:
                raise ValueError(f"unknown arm {a!r} (known: {', '.join(KNOWN_ARMS)})")
            out += (["solo"] + [f"solo#{i}" for i in range(2, self.solo_runs + 1)]
                    if a == "solo" else [a])
        if self.bracket_direct and "direct" in out and \
                any(a in SCHEDULED_ARMS for a in out):
            out.append("direct#2")
        return out

    @property
    def drain(self) -> float:
        return self.drain_s if self.drain_s is not None else max(5.0, self.duration_s / 5)


def _seed(*parts: Any) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


# ----------------------------------------------------------------------------- capacity


async def _capacity(cfg: BenchConfig, url: str, prompts: Prompts) -> Capacity:
    w = cfg.workload
    shape: list[Planned] = []
    for t in w.flooders():  # the flooders' request shape, in their weight proportions
        n = max(8, int(200 * t.weight / sum(f.weight for f in w.flooders())))
        shape += tenant_plan(t, 1.0, 10 * n, cfg.seed)[:n]
    shape.sort(key=lambda p: p.t)
    dur = cfg.capacity_s or min(30.0, max(6.0, cfg.duration_s / 4))
    return await closed_loop(Target(url, cfg.engine.model), shape, prompts,
                             concurrency=2 * cfg.engine.max_num_seqs, duration_s=dur,
                             warmup_s=dur / 3)


# ----------------------------------------------------------------------------- one arm


async def _send(cfg: BenchConfig, target: Target, reqs: list[Planned], prompts: Prompts,
                label: str, metrics: dict[str, str]) -> Run:
    sampler = Sampler(metrics, ENGINE_METRICS + INFERGRID_METRICS) if metrics else None
    return await open_loop(target, reqs, prompts, label=label, duration_s=cfg.duration_s,
                           drain_s=cfg.drain, sampler=sampler, progress=cfg.progress)


async def run_arm(cfg: BenchConfig, arm: str, full_plan: list[Planned],
                  prompts: Prompts) -> list[Run]:
    """One arm → its runs (solo: one per quiet tenant; otherwise one)."""
    w = cfg.workload
    logdir = cfg.out / "logs" / arm.replace("#", "-")
    logdir.mkdir(parents=True, exist_ok=True)
    eng = cfg.engine
    if arm.startswith("solo"):
        runs = []
        for t in w.quiet():
            url = eng.start(logdir)
            try:
                reqs = [p for p in full_plan if p.tenant == t.name]
                runs.append(await _send(cfg, Target(url, eng.model), reqs, prompts,
                                        f"{arm}:{t.name}", {"engine": url + "/metrics"}))
            finally:
                eng.stop()
        return runs
    if arm.startswith("direct"):
        url = eng.start(logdir)
        try:
            return [await _send(cfg, Target(url, eng.model), full_plan, prompts, arm,
                                {"engine": url + "/metrics"})]
        finally:
            eng.stop()
    model = eng.model_config()
    if arm in ASSIST_ARMS:
        model = {**model, "engine_assist": ASSIST_ARMS[arm]}
    conf = make_config(arm.split("-")[0], model, [(t.name, t.weight) for t in w.tenants],
                       free_port(), cfg.token_bucket)
    serve = Serve(conf, logdir)
    serve.start(timeout_s=float(eng.model_config().get("startup_timeout_s", 120)) + 30)
    try:
        keys = {t.name: tenant_key(t.name) for t in w.tenants}
        metrics = {"infergrid": serve.url + "/metrics", **serve.engine_metrics_urls()}
        run = await _send(cfg, Target(serve.url, eng.model, keys), full_plan, prompts, arm,
                          metrics)
        await _save_metrics(metrics, logdir)
        return [run]
    finally:
        serve.stop()


async def _save_metrics(urls: dict[str, str], logdir: Path) -> None:
    """Keep each /metrics page as the arm ended (queue waits, TTFT histograms per
    tenant): the evidence to explain a figure, e.g. where a quiet tenant's time went."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        for label, url in urls.items():
            try:
                async with http.get(url) as r:
                    (logdir / f"metrics-{label}.txt").write_text(await r.text())
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                (logdir / f"metrics-{label}.txt").write_text(f"# not read: {exc}\n")


# ----------------------------------------------------------------------------- statistics


def _ttfts(results: list[Result], end_s: float) -> tuple[list[float], int]:
    """TTFTs of answered requests, plus lower bounds for those never answered (censored)."""
    out, censored = [], 0
    for r in results:
        if r.ttft_s is not None and r.status in (OK, UNFINISHED):
            out.append(r.ttft_s)
        elif r.status == UNFINISHED:
            out.append(max(0.0, end_s - r.sent_s))
            censored += 1
    return out, censored


def tenant_stats(cfg: BenchConfig, arm: str, tenant: str, results: list[Result],
                 end_s: float) -> tuple[dict[str, Any], np.ndarray]:
    ttft, censored = _ttfts(results, end_s)
    ok = [r for r in results if r.status == OK]
    itl = np.concatenate([np.frombuffer(r.itl_s, dtype=float) for r in ok]) if ok \
        else np.zeros(0)
    e2e = [r.e2e_s for r in ok if r.e2e_s is not None]
    lags = np.array([r.lag_s for r in results]) if results else np.zeros(0)
    s = {
        "ttft_ms": stats.summarize(ttft, _seed(cfg.seed, arm, tenant, "ttft"), cfg.n_boot),
        "itl_ms": stats.summarize(itl, _seed(cfg.seed, arm, tenant, "itl"), cfg.n_boot),
        "e2e_ms": stats.summarize(e2e, _seed(cfg.seed, arm, tenant, "e2e"), cfg.n_boot),
        "requests": len(results),
        "ok": len(ok),
        "rejected": sum(r.status == REJECTED for r in results),
        "failed": sum(r.status == FAILED for r in results),
        "unfinished": sum(r.status == UNFINISHED for r in results),
        "ttft_censored": censored,
        "tokens_in": sum(r.tokens_in for r in ok),
        "tokens_out": sum(r.tokens_out for r in ok),
        "send_lag_ms": {"p50": float(np.percentile(lags, 50)) * 1e3 if len(lags) else None,
                        "p99": float(np.percentile(lags, 99)) * 1e3 if len(lags) else None,
                        "max": float(lags.max()) * 1e3 if len(lags) else None},
    }
    return s, np.asarray(ttft)


#: TTFT percentile bands of the phase breakdown: the slowest 1 %, and the median for contrast
PHASE_BANDS = {"tail_phases": (99.0, 100.0), "median_phases": (45.0, 55.0)}


def phase_breakdown(results: list[Result]) -> dict[str, Any]:
    """Among answered requests, for the slowest 1 % of TTFTs and the median band: mean
    time queued in InferGrid vs in the engine (``stats.phase_band``), and which dominated."""
    answered = [r for r in results if r.ttft_s is not None and r.status in (OK, UNFINISHED)]
    ttft = [r.ttft_s for r in answered]
    queue = [np.nan if r.queue_s is None else r.queue_s for r in answered]
    return {k: stats.phase_band(ttft, queue, lo, hi) for k, (lo, hi) in PHASE_BANDS.items()}


def saturation(samples: list[dict[str, float]], lo: float, hi: float) -> dict[str, Any]:
    """Queue depths sampled during the measured window: was anything held back?"""
    rows = [r for r in samples if lo <= r["t"] <= hi]
    out: dict[str, Any] = {"samples": len(rows)}
    keys = sorted({k for r in rows for k in r if k != "t"})
    for k in keys:
        v = np.array([r[k] for r in rows if k in r])
        if k.endswith("_total") or not len(v):
            continue
        out[k] = {"mean": float(v.mean()), "max": float(v.max()),
                  "frac_nonzero": float((v > 0).mean())}
    return out


def arm_stats(cfg: BenchConfig, arm: str, runs: list[Run],
              capacity: Capacity | None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    w = cfg.workload
    lo, hi = cfg.warmup_s, cfg.duration_s
    quiet = {t.name for t in w.quiet()}
    tenants: dict[str, Any] = {}
    ttfts: dict[str, np.ndarray] = {}
    tok_by_tenant: dict[str, int] = {}
    lags: list[float] = []
    sat: dict[str, Any] = {}
    for run in runs:
        by: dict[str, list[Result]] = {}
        for r in run.results:
            lags.append(r.lag_s)
            if measured(_as_planned(r), lo):
                by.setdefault(r.tenant, []).append(r)
        for name, rs in by.items():
            tenants[name], ttfts[name] = tenant_stats(cfg, arm, name, rs, run.elapsed_s)
            if name in quiet:
                tenants[name].update(phase_breakdown(rs))
        for name in run.timeline.bins:
            tok_by_tenant[name] = tok_by_tenant.get(name, 0) + run.timeline.tokens(name, lo, hi)
        sat[run.label] = saturation(run.samples, lo, hi)
    window = hi - lo
    total_tok = sum(tok_by_tenant.values())
    weights = {t.name: t.weight for t in w.tenants if t.name in tok_by_tenant}
    wsum = sum(weights.values()) or 1.0
    for name, ts in tenants.items():
        ts["goodput_tok_s"] = tok_by_tenant.get(name, 0) / window
        ts["token_share"] = tok_by_tenant.get(name, 0) / total_tok if total_tok else None
        ts["weight_share"] = weights.get(name, 0) / wsum
    la = np.array(lags) if lags else np.zeros(1)
    out = {
        "tenants": tenants,
        "throughput_tok_s": total_tok / window,
        "window_s": window,
        "send_lag_ms": {"p50": float(np.percentile(la, 50)) * 1e3,
                        "p99": float(np.percentile(la, 99)) * 1e3,
                        "max": float(la.max()) * 1e3},
        "saturation": sat,
        "elapsed_s": max((r.elapsed_s for r in runs), default=0.0),
    }
    if capacity is not None and capacity.tokens_per_s > 0:
        out["throughput_vs_capacity"] = out["throughput_tok_s"] / capacity.tokens_per_s
    return out, ttfts


def _as_planned(r: Result) -> Planned:
    return Planned(r.tenant, r.index, r.scheduled_s, 0, 0)


def ratios(cfg: BenchConfig, ttfts: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """Each arm's quiet-tenant TTFT p50/p99 over the solo run's, resampling both."""
    base = ttfts.get("solo")
    if not base:
        return {}
    out: dict[str, Any] = {}
    for arm, by in ttfts.items():
        if arm == "solo":
            continue
        for t in cfg.workload.quiet():
            if t.name not in by or t.name not in base:
                continue
            out.setdefault(arm, {})[t.name] = {
                f"ttft_p{q}": stats.ratio(by[t.name], base[t.name], q,
                                          _seed(cfg.seed, arm, t.name, q), cfg.n_boot)
                for q in (50, 99)}
    return out


# ----------------------------------------------------------------------------- the whole run


@dataclass
class Outcome:
    results: dict[str, Any]
    ttfts: dict[str, dict[str, np.ndarray]]
    runs: dict[str, list[Run]]


async def run_bench(cfg: BenchConfig) -> Outcome:
    """Capacity (if needed), then every arm; returns the results dict and the raw runs."""
    arms = cfg.expanded_arms()
    cfg.out.mkdir(parents=True, exist_ok=True)
    cfg.engine.pin_harness()
    w = cfg.workload
    prompts = Prompts(cfg.seed)
    capacity: Capacity | None = None
    if w.flooders() and (cfg.scale == "auto" or cfg.measure_capacity):
        logdir = cfg.out / "logs" / "capacity"
        logdir.mkdir(parents=True, exist_ok=True)
        url = cfg.engine.start(logdir)
        try:
            capacity = await _capacity(cfg, url, prompts)
        finally:
            cfg.engine.stop()
        _say(cfg, f"capacity: {capacity.tokens_per_s:.0f} output tokens/s, "
                  f"{capacity.requests_per_s:.2f} req/s (flooder shape, closed loop, "
                  f"{capacity.concurrency} streams)")
    if cfg.scale == "auto":
        flood_rate = cfg.flood_multiple * capacity.requests_per_s if capacity else 0.0
    else:
        flood_rate = float(cfg.scale)
    if w.flooders():
        _say(cfg, f"flood rate: {flood_rate:.2f} req/s in all"
                  + (f" ({flood_rate / capacity.requests_per_s:.2f}x capacity)"
                     if capacity and capacity.requests_per_s else ""))
    full_plan = plan(w, cfg.duration_s, cfg.seed, flood_rate)
    arm_out: dict[str, Any] = {}
    ttfts: dict[str, dict[str, np.ndarray]] = {}
    runs: dict[str, list[Run]] = {}
    for arm in arms:
        if arm.startswith("solo") and not w.quiet():
            _say(cfg, f"{arm}: skipped (no tenant with a fixed rate)")
            continue
        t0 = time.monotonic()
        runs[arm] = await run_arm(cfg, arm, full_plan, prompts)
        arm_out[arm], ttfts[arm] = arm_stats(cfg, arm, runs[arm], capacity)
        _say(cfg, f"{arm}: done in {time.monotonic() - t0:.0f}s, "
                  f"{arm_out[arm]['throughput_tok_s']:.0f} tokens/s")
        await asyncio.sleep(0.5)
    results = {
        "arms": arm_out,
        "workload": {"name": w.name, "description": w.description,
                     "tenants": [{"name": t.name, "weight": t.weight, "flood": t.flood,
                                  "rate": t.rate} for t in w.tenants],
                     "planned_requests": len(full_plan),
                     "measured_requests": sum(measured(p, cfg.warmup_s) for p in full_plan)},
        "engine": cfg.engine.describe(),
        "capacity": None if capacity is None else {
            "tokens_per_s": capacity.tokens_per_s, "requests_per_s": capacity.requests_per_s,
            "concurrency": capacity.concurrency, "window_s": capacity.window_s},
        "flood_rate_rps": flood_rate,
        "args": {"arms": arms, "duration_s": cfg.duration_s, "warmup_s": cfg.warmup_s,
                 "seed": cfg.seed, "scale": cfg.scale, "flood_multiple": cfg.flood_multiple,
                 "drain_s": cfg.drain, "token_bucket": cfg.token_bucket, **cfg.extra},
        "pinning": cfg.engine.pinning(),
        "host": {"cpus": os.cpu_count(), "harness_cpus": sorted(os.sched_getaffinity(0))},
        "ratios": ratios(cfg, ttfts),
    }
    return Outcome(results, ttfts, runs)


def _say(cfg: BenchConfig, text: str) -> None:
    if cfg.progress:
        import sys

        sys.stderr.write(text + "\n")
        sys.stderr.flush()


def finite(x: Any) -> Any:
    """JSON has no NaN/inf: map them to None, recursively."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    return x
