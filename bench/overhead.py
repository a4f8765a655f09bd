#!/usr/bin/env python3
"""What InferGrid itself costs: TTFT and ITL added per request, and the front door's ceiling.

    .venv/bin/python bench/overhead.py [--profile fast-test] [--seconds 15] [--out DIR]

Part 1, latency added.  Two simulated engines with the same profile: one called
directly, one behind ``infergrid serve`` (policy vtc).  At each concurrency
(1 and 64 streams per path) both paths run *at the same time*, closed loop, so
whatever else the machine does hits both alike; the figures are the
differences (through InferGrid minus direct) of TTFT and ITL p50/p99, with
bootstrap 95 % CIs from resampling both sides.  The engine's batch is larger
than the concurrency, so nothing queues at the engine and the difference is
the proxy hop plus the Submit/Dispatch round trip.

Part 2, front-door ceiling.  Open-loop streams of short requests (8 prompt
tokens, 4 output tokens) through InferGrid at rising rates, a few seconds
each; the highest rate with >= 99 % ok, send lag p99 under 50 ms and TTFT p50
under 4x its value at the lowest rate is what one front-door process sustains
*on this machine* (2 cores shared by the engine, the three daemons and this
generator: the number is a floor, not the front door's own limit).

Reuses ``infergridd.bench`` (engines, appliance, loadgen, stats).  Writes
``overhead.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from infergridd.bench import stats  # noqa: E402
from infergridd.bench.appliance import Serve, free_port, make_config, tenant_key  # noqa: E402
from infergridd.bench.engines import SimEngine  # noqa: E402
from infergridd.bench.loadgen import (  # noqa: E402
    OK,
    Prompts,
    Result,
    Target,
    open_loop,
    session,
    stream_one,
)
from infergridd.bench.workload import Planned  # noqa: E402

TENANT = "bench"


async def paired_closed_loop(direct: Target, via: Target, concurrency: int, seconds: float,
                             prompts: Prompts, prompt_tokens: int, max_tokens: int
                             ) -> dict[str, list[Result]]:
    """``concurrency`` workers per path, both paths at once; the first second is dropped."""
    out: dict[str, list[Result]] = {"direct": [], "infergrid": []}
    async with session() as http:
        t0 = time.monotonic()
        stop = t0 + seconds
        n = iter(range(1 << 30))

        async def worker(path: str, target: Target) -> None:
            while time.monotonic() < stop:
                i = next(n)
                p = Planned(TENANT, i, 0.0, prompt_tokens, max_tokens)
                r = Result(TENANT, i, time.monotonic() - t0)
                await stream_one(http, target, p, prompts.get(prompt_tokens, i), t0, r)
                if r.status == OK and r.sent_s >= 1.0:
                    out[path].append(r)

        await asyncio.gather(*[worker(path, tgt) for _ in range(concurrency)
                               for path, tgt in (("direct", direct), ("infergrid", via))])
    return out


def latency_table(res: dict[str, list[Result]], seed: int) -> dict[str, object]:
    d, v = res["direct"], res["infergrid"]
    ttft_d = [r.ttft_s for r in d]
    ttft_v = [r.ttft_s for r in v]
    itl_d = np.concatenate([np.frombuffer(r.itl_s) for r in d]) if d else np.zeros(0)
    itl_v = np.concatenate([np.frombuffer(r.itl_s) for r in v]) if v else np.zeros(0)
    out: dict[str, object] = {"n_direct": len(d), "n_infergrid": len(v)}
    for name, a, b in (("ttft", ttft_v, ttft_d), ("itl", itl_v, itl_d)):
        out[name] = {
            "direct_ms": stats.summarize(b, seed, n_boot=500),
            "infergrid_ms": stats.summarize(a, seed, n_boot=500),
            "added_p50_ms": stats.difference(a, b, 50, seed, n_boot=500),
            "added_p99_ms": stats.difference(a, b, 99, seed, n_boot=500),
        }
    return out


async def ceiling(via: Target, rates: list[float], seconds: float,
                  prompts: Prompts) -> list[dict[str, float]]:
    rows = []
    base_p50 = None
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
        row["sustained"] = (row["ok_frac"] >= 0.99 and row["lag_p99_ms"] < 50
                            and row["ttft_p50_ms"] < 4 * base_p50)
        rows.append(row)
        print(f"  {rate:7.0f} req/s: ok {row['ok_frac']:.1%}, lag p99 {row['lag_p99_ms']:.0f} ms,"
              f" ttft p50/p99 {row['ttft_p50_ms']:.1f}/{row['ttft_p99_ms']:.1f} ms"
              f" {'ok' if row['sustained'] else 'NOT sustained'}", flush=True)
        if not row["sustained"]:
            break
    return rows


async def amain(a: argparse.Namespace) -> int:
    logdir = Path(a.out or tempfile.mkdtemp(prefix="ig-overhead-"))
    logdir.mkdir(parents=True, exist_ok=True)
    eng = SimEngine(a.profile, a.max_num_seqs)
    conf = make_config("vtc", eng.model_config(), [(TENANT, 1.0)], free_port())
    (logdir / "direct").mkdir(exist_ok=True)
    (logdir / "serve").mkdir(exist_ok=True)
    url = eng.start(logdir / "direct")
    serve = Serve(conf, logdir / "serve")
    prompts = Prompts(a.seed)
    results: dict[str, object] = {"profile": a.profile, "max_num_seqs": a.max_num_seqs,
                                  "seconds": a.seconds, "latency": {}}
    try:
        serve.start()
        direct = Target(url, eng.model)
        via = Target(serve.url, eng.model, {TENANT: tenant_key(TENANT)})
        for c in a.concurrency:
            res = await paired_closed_loop(direct, via, c, a.seconds, prompts,
                                           a.prompt_tokens, a.max_tokens)
            t = latency_table(res, a.seed)
            results["latency"][str(c)] = t  # type: ignore[index]
            for m in ("ttft", "itl"):
                x = t[m]
                print(f"c={c:<3} {m:4}: direct p50/p99 {x['direct_ms']['p50']:.2f}/"
                      f"{x['direct_ms']['p99']:.2f} ms, via InferGrid "
                      f"{x['infergrid_ms']['p50']:.2f}/{x['infergrid_ms']['p99']:.2f} ms; added "
                      f"p50 {x['added_p50_ms']['diff']:+.2f} {_ci(x['added_p50_ms'])}, p99 "
                      f"{x['added_p99_ms']['diff']:+.2f} {_ci(x['added_p99_ms'])} ms "
                      f"(n {t['n_direct']}/{t['n_infergrid']})", flush=True)
        if a.rates:
            print("front-door ceiling (short streamed requests, open loop):")
            rows = await ceiling(via, a.rates, a.ceiling_seconds, prompts)
            results["ceiling"] = rows
            good = [r["rate"] for r in rows if r["sustained"]]
            results["sustained_rps"] = max(good) if good else 0.0
            print(f"highest sustained rate: {results['sustained_rps']:g} req/s")
    finally:
        serve.stop()
        eng.stop()
    (logdir / "overhead.json").write_text(json.dumps(results, indent=1, default=float))
    print(f"wrote {logdir / 'overhead.json'}")
    return 0


def _ci(d: dict[str, object]) -> str:
    ci = d.get("ci95")
    return f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else ""  # type: ignore[index]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="fast-test")
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")],
                    default=[1, 64])
    ap.add_argument("--seconds", type=float, default=15.0, help="per concurrency level")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",") if x],
                    default=[25, 50, 100, 200, 400, 800])
    ap.add_argument("--ceiling-seconds", type=float, default=6.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="directory for logs and overhead.json")
    return asyncio.run(amain(ap.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
