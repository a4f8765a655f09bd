"""``ttft_cdf.png`` and ``throughput.png`` (matplotlib, Agg: no display needed).

The TTFT CDF on a log axis shows what a table's two percentiles hide: whether
the quiet tenant's whole distribution moved, or only its tail.  The throughput
plot (output tokens/s per 1-s bin, per arm) shows whether the engine stayed
busy for the whole run and where warm-up ends.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .loadgen import BIN_S, Run


def _plt():  # noqa: ANN202 - matplotlib's pyplot module
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def ttft_cdf(path: Path, ttfts: dict[str, dict[str, np.ndarray]], quiet: list[str]) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, max(1, len(quiet)), figsize=(7 * max(1, len(quiet)), 4.5),
                             squeeze=False)
    for ax, tenant in zip(axes[0], quiet or [""], strict=False):
        for arm, by in ttfts.items():
            x = np.sort(np.asarray(by.get(tenant, []), dtype=float)) * 1e3
            if not len(x):
                continue
            y = np.arange(1, len(x) + 1) / len(x)
            ax.step(np.maximum(x, 1e-3), y, where="post", label=f"{arm} (n={len(x)})")
        ax.set_xscale("log")
        ax.set_xlabel("TTFT (ms, log)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"quiet tenant {tenant!r}: TTFT CDF per arm")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:  # e.g. tenants8: every tenant floods, so there is no quiet latency to show
            ax.text(0.5, 0.5, "no quiet tenant (or no answered request)", ha="center",
                    va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def throughput(path: Path, runs: dict[str, list[Run]], warmup_s: float,
               capacity_tok_s: float | None) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for arm, rs in runs.items():
        if arm.startswith("solo"):
            continue
        for run in rs:
            n = max((len(b) for b in run.timeline.bins.values()), default=0)
            tot = np.zeros(n)
            for b in run.timeline.bins.values():
                tot[:len(b)] += b
            ax.plot(np.arange(n) * BIN_S, tot / BIN_S, label=arm, lw=1)
    if capacity_tok_s:
        ax.axhline(capacity_tok_s, color="k", ls="--", lw=0.8, label="capacity")
    ax.axvline(warmup_s, color="grey", ls=":", lw=0.8, label="warm-up cut")
    ax.set_xlabel("time since the arm started (s)")
    ax.set_ylabel("output tokens/s (all tenants)")
    ax.set_title("throughput per arm")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
