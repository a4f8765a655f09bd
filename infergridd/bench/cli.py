"""``infergrid bench``: argument parsing, then ``runner.run_bench`` and the output files.

    infergrid bench --workload hero --engine sim:a100-llama3-8b \\
        --arms solo,direct,fifo,token_bucket,vtc --duration 120 --warmup 20 \\
        --scale auto --out bench/results/hero-a100

Writes ``OUT/results.json``, ``OUT/report.md``, ``OUT/ttft_cdf.png``,
``OUT/throughput.png``, ``OUT/requests.csv`` and per-arm logs under ``OUT/logs``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .. import aio
from .workload import WorkloadError

if TYPE_CHECKING:
    from .runner import Outcome


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="infergrid bench",
        description="Fairness benchmark: the same open-loop workload straight to an engine "
                    "and through InferGrid's policies, arm after arm.")
    ap.add_argument("--workload", required=True,
                    help="packaged name (hero, hero-dense, tenants8, long-prompt-flooder, "
                         "bursty) or a YAML file")
    ap.add_argument("--engine", default="sim:a100-llama3-8b",
                    help="sim[:PROFILE] | vllm-cpu | http(s)://URL (default %(default)s)")
    ap.add_argument("--model", default="bench", help="model name at a URL engine")
    ap.add_argument("--arms", default="solo,direct,fifo,token_bucket,vtc",
                    help="comma-separated: solo, direct, fifo, token_bucket, vtc")
    ap.add_argument("--duration", type=float, help="seconds per arm (default: the workload's)")
    ap.add_argument("--warmup", type=float,
                    help="requests scheduled before this are not measured (default: workload's)")
    ap.add_argument("--drain", type=float, help="seconds to let requests finish after the "
                                                "plan ends (default max(5, duration/5))")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", default="auto",
                    help="flood rate in req/s, or auto: --flood-multiple x measured capacity")
    ap.add_argument("--flood-multiple", type=float, default=1.5)
    ap.add_argument("--max-num-seqs", type=int, default=0,
                    help="engine batch size (default: the workload's, else the engine's)")
    ap.add_argument("--measure-capacity", action="store_true",
                    help="measure capacity even with a numeric --scale (always with auto)")
    ap.add_argument("--capacity-duration", type=float, help="seconds of the capacity run")
    ap.add_argument("--token-bucket-rate", type=float,
                    help="token_bucket arm: requests/s per tenant (default: InferGrid's)")
    ap.add_argument("--token-bucket-burst", type=float)
    ap.add_argument("--quiet", action="store_true", help="no progress line")
    ap.add_argument("--out", required=True, type=Path)
    return ap.parse_args(argv)


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    from . import workload
    from .engines import parse_engine
    from .runner import BenchConfig, run_bench

    try:
        w = workload.load(a.workload)
    except WorkloadError as exc:
        print(f"infergrid bench: {exc}", file=sys.stderr)
        return 2
    scale: str | float = a.scale
    if a.scale != "auto":
        try:
            scale = float(a.scale)
        except ValueError:
            print(f"infergrid bench: --scale: expected auto or a number, got {a.scale!r}",
                  file=sys.stderr)
            return 2
    try:
        engine = parse_engine(a.engine, a.max_num_seqs or w.max_num_seqs, a.model)
    except ValueError as exc:
        print(f"infergrid bench: --engine: {exc}", file=sys.stderr)
        return 2
    tb = {}
    if a.token_bucket_rate is not None:
        tb["rate_per_s"] = a.token_bucket_rate
    if a.token_bucket_burst is not None:
        tb["burst"] = a.token_bucket_burst
    duration = a.duration if a.duration is not None else w.duration_s
    warmup = a.warmup if a.warmup is not None else min(w.warmup_s, duration / 5)
    if not 0 <= warmup < duration:
        print("infergrid bench: need 0 <= --warmup < --duration", file=sys.stderr)
        return 2
    cfg = BenchConfig(workload=w, engine=engine, arms=[x for x in a.arms.split(",") if x],
                      out=a.out, duration_s=duration, warmup_s=warmup, seed=a.seed,
                      scale=scale, flood_multiple=a.flood_multiple, drain_s=a.drain,
                      capacity_s=a.capacity_duration, token_bucket=tb or None,
                      progress=not a.quiet, measure_capacity=a.measure_capacity)
    try:
        cfg.expanded_arms()
    except ValueError as exc:
        print(f"infergrid bench: --arms: {exc}", file=sys.stderr)
        return 2
    try:
        out = aio.run(run_bench(cfg))
    except (RuntimeError, OSError) as exc:
        print(f"\ninfergrid bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninfergrid bench: interrupted", file=sys.stderr)
        return 130
    write_outputs(cfg.out, out, cfg.warmup_s, [t.name for t in w.quiet()])
    print((cfg.out / "report.md").read_text())
    return 0


def write_outputs(out_dir: Path, out: Outcome, warmup_s: float, quiet: list[str]) -> None:
    """Every file of a run: results.json, report.md, requests.csv and the two plots."""
    from . import plots, report

    res = out.results
    report.write_json(out_dir / "results.json", res)
    report.write_report(out_dir / "report.md", res)
    report.write_requests_csv(out_dir / "requests.csv", out.runs)
    plots.ttft_cdf(out_dir / "ttft_cdf.png", out.ttfts, quiet)
    cap = (res.get("capacity") or {}).get("tokens_per_s")
    plots.throughput(out_dir / "throughput.png", out.runs, warmup_s, cap)
