"""Percentiles with seeded bootstrap 95% intervals, and the ratios the claims rest on.

A p99 from one run is one draw of a noisy statistic: a claim such as "quiet TTFT
p99 within 1.2x of solo" needs to know how far that draw could move.  The
percentile bootstrap (resample with replacement, recompute, take the 2.5th and
97.5th percentiles of the results) gives an interval without assuming a shape,
which latency distributions never have.  It is seeded so two reports of the
same data agree.

Intervals that cannot support a claim are flagged rather than hidden: relative
width (hi - lo) / estimate above 50 %, or a p99 from fewer than 100 samples
(then it is, in effect, the maximum).
"""

from __future__ import annotations

from typing import Any

import numpy as np

QUANTILES = (50, 90, 99)
N_BOOT = 1000
#: Bootstrapping more samples than this only costs time; larger sets are subsampled.
MAX_BOOT_N = 20_000
WIDE = 0.5
MIN_P99_N = 100


def _subsample(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """At most ``MAX_BOOT_N`` of ``x``, drawn without replacement."""
    return rng.choice(x, MAX_BOOT_N, replace=False) if len(x) > MAX_BOOT_N else x


def _boot_stats(x: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """(n_boot, len(QUANTILES) + 1): each resample's quantiles, then its mean."""
    x = _subsample(x, rng)
    n = len(x)
    out = np.empty((n_boot, len(QUANTILES) + 1))
    step = max(1, 2_000_000 // max(n, 1))  # bound the resample matrix to ~16 MB
    for lo in range(0, n_boot, step):
        hi = min(n_boot, lo + step)
        s = x[rng.integers(0, n, size=(hi - lo, n))]
        out[lo:hi, :-1] = np.percentile(s, QUANTILES, axis=1).T
        out[lo:hi, -1] = s.mean(axis=1)
    return out


def _boot_pair(xa: np.ndarray, xb: np.ndarray, q: float, rng: np.random.Generator,
               n_boot: int) -> tuple[np.ndarray, np.ndarray]:
    """Percentile ``q`` of ``n_boot`` resamples of ``xa`` and of ``xb``, drawn in turn
    from ``rng`` (one draw order for ratio and difference, so seeded reports stay put)."""
    sa, sb = np.empty(n_boot), np.empty(n_boot)
    step = max(1, 2_000_000 // max(len(xa), len(xb), 1))
    for lo in range(0, n_boot, step):
        hi = min(n_boot, lo + step)
        sa[lo:hi] = np.percentile(xa[rng.integers(0, len(xa), size=(hi - lo, len(xa)))], q, axis=1)
        sb[lo:hi] = np.percentile(xb[rng.integers(0, len(xb), size=(hi - lo, len(xb)))], q, axis=1)
    return sa, sb


def _pct(w: float) -> str:
    """A width just over the threshold must not print as the threshold ("50% > 50%")."""
    return f"{w:.0%}" if round(w, 2) != WIDE else f"{w:.1%}"


def relative_width(point: float, lo: float, hi: float) -> float:
    if not np.isfinite(point) or point == 0:
        return float("inf")
    return float((hi - lo) / abs(point))


def summarize(values: Any, seed: int = 0, n_boot: int = N_BOOT,
              scale: float = 1000.0) -> dict[str, Any]:
    """p50/p90/p99/mean with 95% CIs, in ``scale`` units (ms from seconds by default).

    ``flags`` lists the statistics whose interval is too wide, or whose sample is
    too small, to support a claim.
    """
    x = np.asarray(values, dtype=float) * scale
    out: dict[str, Any] = {"n": int(len(x))}
    names = [f"p{q}" for q in QUANTILES] + ["mean"]
    if len(x) == 0:
        out.update({k: None for k in names})
        out["ci95"] = {k: None for k in names}
        out["flags"] = ["no samples"]
        return out
    points = list(np.percentile(x, QUANTILES)) + [float(x.mean())]
    boot = _boot_stats(x, np.random.default_rng(seed), n_boot)
    lo = np.percentile(boot, 2.5, axis=0)
    hi = np.percentile(boot, 97.5, axis=0)
    flags = []
    ci = {}
    for i, k in enumerate(names):
        out[k] = float(points[i])
        ci[k] = [float(lo[i]), float(hi[i])]
        w = relative_width(points[i], lo[i], hi[i])
        if w > WIDE:
            flags.append(f"{k}: CI relative width {_pct(w)} > {WIDE:.0%}")
    if len(x) < MIN_P99_N:
        flags.append(f"p99: only {len(x)} samples (< {MIN_P99_N}), in effect the maximum")
    out["ci95"] = ci
    out["flags"] = flags
    return out


def ratio(a: Any, b: Any, q: float, seed: int = 0, n_boot: int = N_BOOT) -> dict[str, Any]:
    """Percentile ``q`` of ``a`` over that of ``b``, with a CI from resampling both."""
    xa = np.asarray(a, dtype=float)
    xb = np.asarray(b, dtype=float)
    if len(xa) == 0 or len(xb) == 0:
        return {"ratio": None, "ci95": None, "flags": ["no samples"]}
    rng = np.random.default_rng(seed)
    xa, xb = _subsample(xa, rng), _subsample(xb, rng)
    pb = float(np.percentile(xb, q))
    point = float(np.percentile(xa, q)) / pb if pb > 0 else float("inf")
    sa, sb = _boot_pair(xa, xb, q, rng, n_boot)
    ra = sa / np.where(sb > 0, sb, np.nan)
    lo_, hi_ = np.nanpercentile(ra, [2.5, 97.5])
    flags = []
    w = relative_width(point, lo_, hi_)
    if w > WIDE:
        flags.append(f"CI relative width {_pct(w)} > {WIDE:.0%}")
    if q >= 99 and min(len(a), len(b)) < MIN_P99_N:
        flags.append(f"p99 from {min(len(a), len(b))} samples (< {MIN_P99_N})")
    return {"ratio": point, "ci95": [float(lo_), float(hi_)], "flags": flags}


def difference(a: Any, b: Any, q: float, seed: int = 0, n_boot: int = N_BOOT,
               scale: float = 1000.0) -> dict[str, Any]:
    """Percentile ``q`` of ``a`` minus that of ``b`` (ms by default), CI from resampling both.

    For overheads: "InferGrid adds X ms at p99" is a difference, and its interval
    says whether X is distinguishable from zero.
    """
    xa = np.asarray(a, dtype=float) * scale
    xb = np.asarray(b, dtype=float) * scale
    if len(xa) == 0 or len(xb) == 0:
        return {"diff": None, "ci95": None, "flags": ["no samples"]}
    rng = np.random.default_rng(seed)
    xa, xb = _subsample(xa, rng), _subsample(xb, rng)
    point = float(np.percentile(xa, q) - np.percentile(xb, q))
    sa, sb = _boot_pair(xa, xb, q, rng, n_boot)
    d = sa - sb
    lo_, hi_ = np.percentile(d, [2.5, 97.5])
    flags = []
    if q >= 99 and min(len(xa), len(xb)) < MIN_P99_N:
        flags.append(f"p99 from {min(len(xa), len(xb))} samples (< {MIN_P99_N})")
    return {"diff": point, "ci95": [float(lo_), float(hi_)], "flags": flags}


def phase_band(ttft_s: Any, queue_s: Any, lo_q: float, hi_q: float = 100.0) -> dict[str, Any]:
    """Where the requests whose TTFT lies between its ``lo_q``-th and ``hi_q``-th
    percentiles waited: mean time queued in InferGrid, and mean ``ttft - queued`` (the
    engine, plus the relay), in ms, and which of the two dominated.

    ``queue_s`` holds NaN where a request's queue time is unknown.  If none is known
    (the arm does not go through InferGrid) the whole TTFT is the engine's:
    ``queue_known`` is False and the report says "engine only".  Otherwise only the
    requests with a known queue time are used.
    """
    t = np.asarray(ttft_s, dtype=float)
    q = np.asarray(queue_s, dtype=float)
    known = ~np.isnan(q)
    queue_known = bool(known.any())
    if queue_known:
        t, q = t[known], q[known]
    else:
        q = np.zeros_like(t)
    if len(t) == 0:
        return {"n": 0, "ttft_ms": None, "queued_ms": None, "engine_ms": None,
                "dominant": None, "queue_known": queue_known}
    lo, hi = np.percentile(t, [lo_q, hi_q])
    band = (t >= lo) & (t <= hi)
    queued = float(q[band].mean()) * 1000.0
    engine = float((t[band] - q[band]).mean()) * 1000.0
    return {"n": int(band.sum()), "ttft_ms": float(t[band].mean()) * 1000.0,
            "queued_ms": queued, "engine_ms": engine,
            "dominant": "queue" if queued > engine else "engine", "queue_known": queue_known}
