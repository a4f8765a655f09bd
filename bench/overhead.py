#!/usr/bin/env python3
"""What InferGrid itself costs: TTFT and ITL added per request, and the front door's ceiling.

    .venv/bin/python bench/overhead.py [--profile fast-test] [--seconds 15] [--out DIR]

Part 1, latency added.  One ``infergrid serve`` (policy vtc) with one simulated
engine; the harness calls *that same engine* directly too (its port and API key
come from the supervisor's engine record), so the only difference between the two
paths is InferGrid: the front-door hop plus the Submit/Dispatch round trip.  At
each concurrency C (1 and 64) there are exactly C streams open at any time, and
every stream alternates direct, through InferGrid, direct, ... request by request
(half the workers start on each path), so whatever else the machine does (the
engine's own batch, a GC pause, the 2-core box's other processes) hits both paths
alike.  The figures are differences (through InferGrid minus direct) of TTFT and
ITL p50/p99, with bootstrap 95 % CIs from resampling both sides; an interval that
contains 0 means "not distinguishable from no overhead".  The engine's batch
(``--max-num-seqs`` 256) is larger than C, so nothing queues at the engine.

Part 2, front-door ceiling.  Open-loop streams of short requests (8 prompt
tokens, 4 output tokens) through InferGrid at doubling rates, a few seconds
each; the highest rate with >= 99 % ok, send lag p99 under 50 ms and TTFT p50
under 4x its value at the lowest rate is what one front-door process sustains
*on this machine* (2 cores shared by the engine, the three daemons and this
generator: the number is a floor, not the front door's own limit).  If even the
last rate tried was sustained, the answer is reported as "at least" that rate.

Reuses ``infergridd.bench`` (appliance, engines, loadgen, stats).  Writes
``overhead.json`` and ``overhead.md`` (the printed table) under ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from infergridd.bench import stats  # noqa: E402
from infergridd.bench.appliance import Serve, free_port, make_config, tenant_key  # noqa: E402
from infergridd.bench.engines import SimEngine  # noqa: E402
from infergridd.bench.loadgen import OK, Prompts, Result, Target, open_loop, session, stream_one  # noqa: E402
from infergridd.bench.workload import Planned  # noqa: E402

TENANT = "bench"
PATHS = ("direct", "infergrid")
WARMUP_S = 1.0


async def alternating_closed_loop(targets: dict[str, Target], concurrency: int, seconds: float,
                                  prompts: Prompts, prompt_tokens: int, max_tokens: int
                                  ) -> dict[str, list[Result]]:
    """``concurrency`` streams in all, each alternating between the two paths.

    Requests sent in the first ``WARMUP_S`` seconds are dropped (connection set-up,
    the engine's first batch).
    """
    out: dict[str, list[Result]] = {p: [] for p in PATHS}
    async with session() as http:
        t0 = time.monotonic()
        stop = t0 + seconds
        n = iter(range(1 << 30))

        async def worker(first: int) -> None:
            k = first
            while time.monotonic() < stop:
                path = PATHS[k % 2]
                k += 1
                i = next(n)
                p = Planned(TENANT, i, 0.0, prompt_tokens, max_tokens)
                r = Result(TENANT, i, time.monotonic() - t0)
                await stream_one(http, targets[path], p, prompts.get(prompt_tokens, i), t0, r)
                if r.status == OK and r.sent_s >= WARMUP_S:
                    out[path].append(r)

        await asyncio.gather(*[worker(j) for j in range(concurrency)])
    return out


def latency_stats(res: dict[str, list[Result]], seed: int, n_boot: int) -> dict[str, Any]:
    """Per metric: each path's summary and the added p50/p99 (through InferGrid − direct)."""
    d, v = res["direct"], res["infergrid"]
    out: dict[str, Any] = {"n_direct": len(d), "n_infergrid": len(v)}
    series = {
        "ttft": ([r.ttft_s for r in d], [r.ttft_s for r in v]),
        "itl": tuple(np.concatenate([np.frombuffer(r.itl_s) for r in rs]) if rs else np.zeros(0)
                     for rs in (d, v)),
    }
    for name, (b, a) in series.items():
        out[name] = {
            "direct_ms": stats.summarize(b, seed, n_boot=n_boot),
            "infergrid_ms": stats.summarize(a, seed, n_boot=n_boot),
            "added_p50_ms": stats.difference(a, b, 50, seed, n_boot=n_boot),
            "added_p99_ms": stats.difference(a, b, 99, seed, n_boot=n_boot),
        }
    return out


async def ceiling(via: Target, rates: list[float], seconds: float,
                  prompts: Prompts) -> list[dict[str, Any]]:
    """Open loop at each rate in turn until one is not sustained."""
    rows: list[dict[str, Any]] = []
    base_p50: float | None = None
    for rate in rates:
        k = int(rate * seconds)
        plan = [Planned(TENANT, i, i / rate, 8, 4) for i in range(k)]
        run = await open_loop(via, plan, prompts, label=f"ceiling {rate:g}/s",
                              duration_s=seconds, drain_s=5.0, progress=False)
        ok = [r for r in run.results if r.status == OK]
        lags = np.array([r.lag_s for r in run.results]) * 1e3
        ttft = np.array([r.ttft_s for r in ok]) * 1e3 if ok else np.array([np.inf])
        row = {"rate": rate, "sent": len(run.results), "ok_frac": len(ok) / max(1, k),
               "achieved_rps": len(ok) / seconds, "lag_p99_ms": float(np.percentile(lags, 99)),
               "ttft_p50_ms": float(np.percentile(ttft, 50)),
               "ttft_p99_ms": float(np.percentile(ttft, 99))}
        base_p50 = base_p50 or row["ttft_p50_ms"]
        row["sustained"] = bool(row["ok_frac"] >= 0.99 and row["lag_p99_ms"] < 50
                                and row["ttft_p50_ms"] < 4 * base_p50)
        rows.append(row)
        print(f"  {rate:7.0f} req/s: ok {row['ok_frac']:.1%}, lag p99 {row['lag_p99_ms']:.0f} ms,"
              f" ttft p50/p99 {row['ttft_p50_ms']:.1f}/{row['ttft_p99_ms']:.1f} ms"
              f" {'ok' if row['sustained'] else 'NOT sustained'}", flush=True)
        if not row["sustained"]:
            break
    return rows


def _ci(d: dict[str, Any]) -> str:
    """``[lo, hi]``, marked ⚠ when the statistic rests on too few samples (a p99 of < 100)."""
    ci = d.get("ci95")
    return (f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" + (" ⚠" if d.get("flags") else "")) if ci else ""


def table(latency: dict[str, dict[str, Any]]) -> str:
    """Markdown: per concurrency and metric, both paths and the added p50/p99 with CIs."""
    lines = ["| streams | metric | direct p50 / p99 ms | via InferGrid p50 / p99 ms | "
             "added p50 ms [95% CI] | added p99 ms [95% CI] | n direct / via |",
             "|---|---|---|---|---|---|---|"]
    for c, t in latency.items():
        for m in ("ttft", "itl"):
            x = t[m]
            dm, vm = x["direct_ms"], x["infergrid_ms"]
            if dm["p50"] is None or vm["p50"] is None:
                lines.append(f"| {c} | {m} | – | – | – | – | {t['n_direct']} / {t['n_infergrid']} |")
                continue
            a50, a99 = x["added_p50_ms"], x["added_p99_ms"]
            lines.append(
                f"| {c} | {m} | {dm['p50']:.2f} / {dm['p99']:.2f} | {vm['p50']:.2f} / "
                f"{vm['p99']:.2f} | {a50['diff']:+.2f} {_ci(a50)} | {a99['diff']:+.2f} "
                f"{_ci(a99)} | {t['n_direct']} / {t['n_infergrid']} |")
    return "\n".join(lines)


def _direct_target(serve: Serve, model: str) -> Target | None:
    """The engine InferGrid launched, called with its own key (None if none is recorded)."""
    recs = serve.engine_records()
    if not recs:
        return None
    rec = recs[0]
    return Target(f"http://127.0.0.1:{int(rec['port'])}", model,
                  {TENANT: str(rec.get("api_key", ""))})


async def amain(a: argparse.Namespace) -> int:
    logdir = Path(a.out or tempfile.mkdtemp(prefix="ig-overhead-"))
    logdir.mkdir(parents=True, exist_ok=True)
    eng = SimEngine(a.profile, a.max_num_seqs)
    conf = make_config("vtc", eng.model_config(), [(TENANT, 1.0)], free_port())
    (logdir / "serve").mkdir(exist_ok=True)
    serve = Serve(conf, logdir / "serve")
    prompts = Prompts(a.seed)
    results: dict[str, Any] = {
        "method": "one engine; each stream alternates direct / through InferGrid",
        "profile": a.profile, "max_num_seqs": a.max_num_seqs, "seconds": a.seconds,
        "warmup_s": WARMUP_S, "prompt_tokens": a.prompt_tokens, "max_tokens": a.max_tokens,
        "latency": {}}
    try:
        serve.start()
        via = Target(serve.url, eng.model, {TENANT: tenant_key(TENANT)})
        direct = _direct_target(serve, eng.model)
        if direct is None:
            raise RuntimeError(f"no engine record under {serve.runtime / 'engines'}: cannot "
                               "call InferGrid's engine directly")
        targets = {"direct": direct, "infergrid": via}
        for c in a.concurrency:
            print(f"latency at {c} stream(s), {a.seconds:g} s ...", flush=True)
            res = await alternating_closed_loop(targets, c, a.seconds, prompts,
                                                a.prompt_tokens, a.max_tokens)
            results["latency"][str(c)] = latency_stats(res, a.seed, a.n_boot)
        md = ["# InferGrid overhead", "",
              f"Simulated engine `{a.profile}` (max_num_seqs {a.max_num_seqs}), prompts of "
              f"{a.prompt_tokens} tokens, {a.max_tokens} output tokens; {a.seconds:g} s per "
              f"concurrency, first {WARMUP_S:g} s dropped. Same engine on both paths; each "
              "stream alternates between them. Added = through InferGrid − direct; CIs are "
              f"bootstrap 95% ({a.n_boot} resamples of both sides); ⚠: a p99 from fewer "
              "than 100 requests (in effect the maximum).", "",
              table(results["latency"]), ""]
        print("\n" + "\n".join(md[-2:]), flush=True)
        if a.rates:
            rates = a.rates if a.rates != "double" else \
                [a.start_rate * 2 ** i for i in range(a.max_doublings + 1)]
            print("front-door ceiling (short streamed requests, open loop):", flush=True)
            rows = await ceiling(via, rates, a.ceiling_seconds, prompts)
            results["ceiling"] = rows
            good = [r["rate"] for r in rows if r["sustained"]]
            results["sustained_rps"] = max(good) if good else 0.0
            results["sustained_is_lower_bound"] = bool(rows and rows[-1]["sustained"])
            bound = "at least " if results["sustained_is_lower_bound"] else ""
            line = (f"highest sustained rate: {bound}{results['sustained_rps']:g} req/s "
                    f"(one front door, {a.ceiling_seconds:g} s per rate, on this machine)")
            print(line)
            md += ["## Front-door ceiling", "", "| rate req/s | ok | send lag p99 ms | "
                   "TTFT p50 / p99 ms | sustained |", "|---|---|---|---|---|"]
            md += [f"| {r['rate']:g} | {r['ok_frac']:.1%} | {r['lag_p99_ms']:.1f} | "
                   f"{r['ttft_p50_ms']:.1f} / {r['ttft_p99_ms']:.1f} | "
                   f"{'yes' if r['sustained'] else 'no'} |" for r in rows]
            md += ["", line, ""]
    finally:
        serve.stop()
    (logdir / "overhead.json").write_text(json.dumps(results, indent=1, default=float))
    (logdir / "overhead.md").write_text("\n".join(md) + "\n")
    print(f"wrote {logdir / 'overhead.json'} and overhead.md")
    return 0


def _rates(s: str) -> list[float] | str:
    return "double" if s == "double" else [float(x) for x in s.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--profile", default="fast-test")
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")],
                    default=[1, 64])
    ap.add_argument("--seconds", type=float, default=15.0, help="per concurrency level")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rates", type=_rates, default="double",
                    help="ceiling rates, comma-separated, or 'double' (default): "
                         "--start-rate doubled until one is not sustained; '' skips part 2")
    ap.add_argument("--start-rate", type=float, default=25.0)
    ap.add_argument("--max-doublings", type=int, default=7, help="25 → 3200 req/s")
    ap.add_argument("--ceiling-seconds", type=float, default=6.0)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="directory for logs, overhead.json and overhead.md")
    try:
        return asyncio.run(amain(ap.parse_args(argv)))
    except RuntimeError as exc:
        print(f"overhead: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
