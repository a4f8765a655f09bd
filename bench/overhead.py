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
tokens, 4 output tokens) through InferGrid at rising rates (250 to 3000 req/s),
a few seconds each, against one ``infergrid serve`` per ``--processes`` value
(1 and 2 front-door processes by default, all started up front; at each rate
each arm runs in turn, so the machine's drift hits them alike).  A rate is
sustained with >= 99 % ok, send lag p99 under 50 ms and TTFT p50 under 4x the
lowest rate's; it meets the bar with TTFT p99 under ``--ttft-p99-ms`` too (20,
issue 17).  ``--loadgen-cpu N`` pins this generator to CPU N and InferGrid with
its engine to the rest (taskset).  ``--loadgen raw`` (the default) sends with
``infergridd/bench/rawload.py``, a raw-asyncio HTTP/1.1 client at about half the
aiohttp generator's CPU per request (``--loadgen aiohttp``); each rate also
reports CPU ms per request of the generator and of each InferGrid process and the
engine.  On a 2-core machine shared by the engine, the daemons, this generator
and other work, the figures are a floor, not the front door's own limit
(bench/results/frontdoor-ceiling.md).

Part 3, optional: LiteLLM's proxy (``--litellm``, default
``/tmp/litellm-venv/bin/litellm``; skipped if absent) before a second simulated
engine on a TCP port, against that engine called directly: its added latency and
its ceiling (``infergridd/bench/overhead_arms.py``).

Reuses ``infergridd.bench`` (appliance, engines, loadgen, stats, overhead_arms).  Writes
``overhead.json`` and ``overhead.md`` (the printed table) under ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from infergridd.bench import rawload, stats  # noqa: E402
from infergridd.bench.appliance import Serve, free_port, make_config, tenant_key  # noqa: E402
from infergridd.bench.engines import SimEngine  # noqa: E402
from infergridd.bench.loadgen import OK, Prompts, Result, Target, stream_one  # noqa: E402
from infergridd.bench.overhead_arms import (  # noqa: E402
    GENERATORS,
    LiteLLMProxy,
    ceiling_rows,
    ceiling_table,
    cpu_table,
    engine_target,
    http_session,
    pin,
    sustained,
)
from infergridd.bench.workload import Planned  # noqa: E402

TENANT = "bench"
GEN_NOTE = {"aiohttp": "aiohttp (`loadgen.open_loop`)",
            "raw": "raw asyncio HTTP/1.1 keep-alive (`rawload.open_loop`)"}
PATHS = ("direct", "infergrid")
WARMUP_S = 1.0


async def alternating_closed_loop(targets: dict[str, Target], concurrency: int, seconds: float,
                                  prompts: Prompts, prompt_tokens: int, max_tokens: int,
                                  generator: str = "aiohttp") -> dict[str, list[Result]]:
    """``concurrency`` streams in all, each alternating between the two paths.

    Requests sent in the first ``WARMUP_S`` seconds are dropped (connection set-up,
    the engine's first batch).  ``generator`` "raw": each stream sends with rawload on a
    keep-alive connection of its own per path (about half aiohttp's CPU per request, so
    less of the 2 cores goes to the generator; the same ``Result`` either way).
    """
    out: dict[str, list[Result]] = {p: [] for p in targets}
    paths = tuple(targets)
    pools: list[rawload.Pool] = []
    async with http_session() as http:
        t0 = time.monotonic()
        stop = t0 + seconds
        n = iter(range(1 << 30))

        async def worker(first: int) -> None:
            k = first
            mine: dict[str, rawload.Pool | None] = dict.fromkeys(paths)
            while time.monotonic() < stop:
                path = paths[k % 2]
                k += 1
                i = next(n)
                p = Planned(TENANT, i, 0.0, prompt_tokens, max_tokens)
                r = Result(TENANT, i, time.monotonic() - t0)
                prompt = prompts.get(prompt_tokens, i)
                if generator == "raw":
                    pool = await rawload.send_one(targets[path], p, prompt, t0, r, mine[path])
                    if mine[path] is None:
                        mine[path] = pool
                        pools.append(pool)
                else:
                    await stream_one(http, targets[path], p, prompt, t0, r)
                if r.status == OK and r.sent_s >= WARMUP_S:
                    out[path].append(r)

        try:
            await asyncio.gather(*[worker(j) for j in range(concurrency)])
        finally:
            for pool in pools:
                pool.close()
    return out


def latency_stats(res: dict[str, list[Result]], seed: int, n_boot: int) -> dict[str, Any]:
    """Per metric: each path's summary and the added p50/p99 (through InferGrid − direct)."""
    d, v = res["direct"], res[next(k for k in res if k != "direct")]
    out: dict[str, Any] = {"n_direct": len(d), "n_infergrid": len(v)}
    queued = [r.queue_s * 1e3 for r in v if r.queue_s is not None]
    # arrival to Dispatch as the front door measured it (X-InferGrid-Queue-Ms): reading
    # and checking the request and the Submit/Dispatch round trip, of the added TTFT
    out["queue_ms_p50"] = float(np.percentile(queued, 50)) if queued else None
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


def _ci(d: dict[str, Any]) -> str:
    """``[lo, hi]``, marked ⚠ when the statistic rests on too few samples (a p99 of < 100)."""
    ci = d.get("ci95")
    return (f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" + (" ⚠" if d.get("flags") else "")) if ci else ""


def table(latency: dict[str, dict[str, Any]], via: str = "InferGrid") -> str:
    """Markdown: per concurrency and metric, both paths and the added p50/p99 with CIs."""
    lines = [f"| streams | metric | direct p50 / p99 ms | via {via} p50 / p99 ms | "
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
    q = [f"{c} stream(s): {t['queue_ms_p50']:.2f} ms" for c, t in latency.items()
         if t.get("queue_ms_p50") is not None]
    if q:
        lines += ["", "Of the added TTFT, arrival to Dispatch (reading and checking the "
                  "request, then the Submit/Dispatch round trip through the scheduler: the "
                  "front door's `X-InferGrid-Queue-Ms`), p50: "
                  + "; ".join(q) + "."]
    return "\n".join(lines)


def _serve(processes: int, a: argparse.Namespace, eng: SimEngine, logdir: Path) -> Serve:
    conf = make_config("vtc", eng.model_config(), [(TENANT, 1.0)], free_port())
    # always named: the default (0) is one per core, so "1" must be said
    conf["frontdoor"] = {"processes": processes}
    (logdir / f"serve-{processes}").mkdir(parents=True, exist_ok=True)
    return Serve(conf, logdir / f"serve-{processes}")


def _latency_md(a: argparse.Namespace, latency: dict[str, Any], what: str,
                via: str = "InferGrid") -> list[str]:
    return [f"Simulated engine `{a.profile}` (max_num_seqs {a.max_num_seqs}), prompts of "
            f"{a.prompt_tokens} tokens, {a.max_tokens} output tokens; {a.seconds:g} s per "
            f"concurrency, first {WARMUP_S:g} s dropped, load generator "
            f"{a.latency_loadgen}. {what} Each stream alternates between "
            "the two paths request by request. Added = through the proxy − direct; CIs are "
            f"bootstrap 95% ({a.n_boot} resamples of both sides); ⚠: a p99 from fewer than "
            "100 requests (in effect the maximum).", "", table(latency, via), ""]


async def _litellm(a: argparse.Namespace, logdir: Path, prompts: Prompts,
                   results: dict[str, Any], md: list[str]) -> None:
    """The optional arm: LiteLLM's proxy before a TCP simulated engine, and that engine."""
    if not a.litellm or not Path(a.litellm).exists():
        results["litellm"] = {"skipped": f"no LiteLLM at {a.litellm!r}"}
        md += ["#### LiteLLM (optional arm)", "", f"Skipped: no LiteLLM at `{a.litellm}`.", ""]
        return
    eng = SimEngine(a.profile, a.max_num_seqs)
    (logdir / "litellm").mkdir(exist_ok=True)
    url = eng.start(logdir / "litellm")
    proxy = LiteLLMProxy(a.litellm, url, eng.model, logdir / "litellm")
    try:
        proxy.start()
        targets = {"direct": Target(url, eng.model, {TENANT: "none"}),
                   "litellm": Target(proxy.url, eng.model, {TENANT: proxy.key})}
        lat: dict[str, Any] = {}
        for c in a.concurrency[:1]:
            print(f"LiteLLM latency at {c} stream(s) ...", flush=True)
            res = await alternating_closed_loop(targets, c, a.seconds, prompts,
                                                a.prompt_tokens, a.max_tokens,
                                                a.latency_loadgen)
            lat[str(c)] = latency_stats(res, a.seed, a.n_boot)
        print("LiteLLM ceiling:", flush=True)
        rows = await ceiling_rows({"litellm": targets["litellm"]}, a.litellm_rates,
                                  a.ceiling_seconds, prompts, None, a.loadgen)
        best, lower = sustained(rows["litellm"])
        results["litellm"] = {"latency": lat, "ceiling": rows["litellm"], "sustained_rps": best}
        md += ["#### LiteLLM (optional arm)", "", *_latency_md(
            a, lat, "LiteLLM's proxy (`litellm --config`, one worker) before a second "
            "simulated engine on a TCP port, against that engine called directly.", "LiteLLM"),
            *ceiling_table(rows), "",
            f"LiteLLM highest sustained rate: {'at least ' if lower else ''}{best:g} req/s "
            "(its own TTFT at the lowest rate is tens of ms: no 20 ms bar for it).", ""]
    finally:
        proxy.stop()
        eng.stop()


async def amain(a: argparse.Namespace) -> int:
    logdir = Path(a.out or tempfile.mkdtemp(prefix="ig-overhead-"))
    logdir.mkdir(parents=True, exist_ok=True)
    eng = SimEngine(a.profile, a.max_num_seqs)
    everything = os.sched_getaffinity(0)
    if a.loadgen_cpu is not None:  # InferGrid and its engine inherit the other cores
        pin(everything - {a.loadgen_cpu})
    serves = {n: _serve(n, a, eng, logdir) for n in a.processes}
    prompts = Prompts(a.seed)
    results: dict[str, Any] = {
        "method": "one engine; each stream alternates direct / through InferGrid",
        "profile": a.profile, "max_num_seqs": a.max_num_seqs, "seconds": a.seconds,
        "warmup_s": WARMUP_S, "prompt_tokens": a.prompt_tokens, "max_tokens": a.max_tokens,
        "cores": len(everything), "loadgen_cpu": a.loadgen_cpu, "latency": {}}
    md = ["#### Latency added" if a.concurrency else "#### Front-door overhead", "",
          # headings at the README's level (readme_results.py)
          f"`.venv/bin/python bench/overhead.py {' '.join(sys.argv[1:])}` "
          f"({time.strftime('%Y-%m-%d', time.gmtime())}, {len(everything)} cores shared with "
          "other work).", ""]
    try:
        for serve in serves.values():
            serve.start()
        if a.loadgen_cpu is not None:
            pin({a.loadgen_cpu})
        first = serves[a.processes[0]]
        via = Target(first.url, eng.model, {TENANT: tenant_key(TENANT)})
        direct = engine_target(first.runtime, eng.model, TENANT)
        if direct is None:
            raise RuntimeError(f"no engine record under {first.runtime}: cannot call "
                               "InferGrid's engine directly")
        targets = {"direct": direct, "infergrid": via}
        for c in a.concurrency:
            print(f"latency at {c} stream(s), {a.seconds:g} s ...", flush=True)
            res = await alternating_closed_loop(targets, c, a.seconds, prompts,
                                                a.prompt_tokens, a.max_tokens,
                                                a.latency_loadgen)
            results["latency"][str(c)] = latency_stats(res, a.seed, a.n_boot)
        if a.concurrency:
            md += _latency_md(a, results["latency"], f"Same engine on both paths (direct: its "
                              f"own socket), {a.processes[0]} front-door process(es).")
            print("\n" + "\n".join(md[-2:]), flush=True)
        if a.rates:
            rates = a.rates if a.rates != "double" else \
                [a.start_rate * 2 ** i for i in range(a.max_doublings + 1)]
            print("front-door ceiling (short streamed requests, open loop):", flush=True)
            names = {n: f"{n} front door{'s' if n > 1 else ''}" for n in serves}
            arms = {names[n]: Target(s.url, eng.model, {TENANT: tenant_key(TENANT)})
                    for n, s in serves.items()}
            roots = {names[n]: s.proc.pid for n, s in serves.items() if s.proc is not None}
            if a.ceiling_direct:  # the engine alone: what is left of the ceiling without us
                arms = {"engine direct": direct, **arms}
                roots["engine direct"] = roots[names[a.processes[0]]]
            rows = await ceiling_rows(arms, rates, a.ceiling_seconds, prompts, a.ttft_p99_ms,
                                      a.loadgen, roots)
            results["ceiling"] = rows
            results["ceiling_loadgen"] = a.loadgen
            pin_note = (f"the load generator alone on CPU {a.loadgen_cpu} (taskset), InferGrid "
                        "and the engine on the other core(s)" if a.loadgen_cpu is not None
                        else "nothing pinned")
            md += ["#### Front-door ceiling", "",
                   f"Short streamed requests (8 prompt tokens, 4 output), open loop, "
                   f"{a.ceiling_seconds:g} s per rate, each arm in turn at each rate; "
                   "sustained: ≥ 99 % ok, send lag p99 < 50 ms, TTFT p50 under 4× its value at "
                   f"the lowest rate (✗: not); †: TTFT p99 over {a.ttft_p99_ms:g} ms (issue "
                   f"17's bar). {len(everything)} cores, {pin_note}; load generator: "
                   f"{GEN_NOTE[a.loadgen]}.", "", *ceiling_table(rows), "",
                   "CPU per request sent (process CPU time over the rate's run, drain "
                   "included): the generator (this process) and each process of the arm's "
                   "`infergrid serve`; cores busy = that CPU time over the run's wall time.",
                   "", *cpu_table(rows), ""]
            for name, rs in rows.items():
                best, lower = sustained(rs)
                bar, _ = sustained(rs, "meets")
                results.setdefault("sustained_rps", {})[name] = best
                results.setdefault("rps_within_ttft_bar", {})[name] = bar
                line = (f"{name}: highest sustained rate {'at least ' if lower else ''}"
                        f"{best:g} req/s; with TTFT p99 ≤ {a.ttft_p99_ms:g} ms: {bar:g} req/s")
                print(line)
                md.append(f"- {line}")
            md.append("")
    finally:
        for serve in serves.values():
            serve.stop()
    if a.loadgen_cpu is not None:
        pin(everything)
    await _litellm(a, logdir, prompts, results, md)
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
    ap.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",") if x],
                    default=[1, 64], help="streams of the latency part; '' skips it")
    ap.add_argument("--seconds", type=float, default=15.0, help="per concurrency level")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rates", type=_rates, default=[250.0, 500.0, 1000.0, 1500.0, 2000.0, 3000.0],
                    help="ceiling rates, comma-separated (default 250 to 3000), or 'double': "
                         "--start-rate doubled until one is not sustained; '' skips part 2")
    ap.add_argument("--processes", type=lambda s: [int(x) for x in s.split(",")],
                    default=[1, 2], help="front-door processes per ceiling arm (the first: "
                    "the latency part's)")
    ap.add_argument("--ttft-p99-ms", type=float, default=20.0,
                    help="a ceiling rate is sustained only with TTFT p99 at most this")
    ap.add_argument("--latency-loadgen", choices=("aiohttp", "raw"), default="aiohttp",
                    help="the latency part's load generator: aiohttp (as before), or raw "
                    "(rawload, a keep-alive connection per stream and path)")
    ap.add_argument("--loadgen-cpu", type=int, default=None,
                    help="pin this load generator to that CPU, InferGrid to the others")
    ap.add_argument("--litellm", default="/tmp/litellm-venv/bin/litellm",
                    help="LiteLLM's proxy command for the optional arm (skipped if absent)")
    ap.add_argument("--litellm-rates", type=lambda s: [float(x) for x in s.split(",")],
                    default=[5.0, 10.0, 20.0, 40.0, 80.0, 160.0])
    ap.add_argument("--start-rate", type=float, default=25.0)
    ap.add_argument("--max-doublings", type=int, default=7, help="25 → 3200 req/s")
    ap.add_argument("--ceiling-seconds", type=float, default=6.0)
    ap.add_argument("--ceiling-direct", action="store_true",
                    help="a ceiling arm straight to the engine's socket too (--loadgen raw)")
    ap.add_argument("--loadgen", choices=sorted(GENERATORS), default="raw",
                    help="the ceiling's load generator (the latency part always uses aiohttp): "
                         "raw asyncio, about half aiohttp's CPU per request "
                         "(bench/results/frontdoor-ceiling.md), or aiohttp"),
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="directory for logs, overhead.json and overhead.md")
    a = ap.parse_args(argv)
    if a.ceiling_direct and a.loadgen != "raw":
        ap.error("--ceiling-direct needs --loadgen raw (aiohttp's open loop has no Unix socket)")
    try:
        return asyncio.run(amain(a))
    except RuntimeError as exc:
        print(f"overhead: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
