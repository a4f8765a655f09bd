#!/usr/bin/env python3
"""Where one request's added time goes, hop by hop, and what each request costs in CPU.

    .venv/bin/python bench/hops.py [--requests 500] [--out FILE.json]
    .venv/bin/python bench/hops.py --cpu 2000 --concurrency 1   # CPU µs per request

Part 1 (``--requests N``): one ``infergrid serve`` (the ``fast-test`` simulated
engine) started with ``INFERGRID_HOPS`` set (``infergridd/transport/hops.py``: the
daemons then write a timestamp per hop, ``time.perf_counter_ns``, one clock for every
process), and ONE stream that alternates request by request between calling the engine
directly and going through InferGrid, so no request ever waits for another.  The
client marks when it sent, when it had the response headers and when the first token
arrived; the front door and the scheduler mark their hops; the lines are joined by
request id (``X-Request-Id``) and each hop's median is printed, with the direct
path's TTFT for comparison.

Part 2 (``--cpu N``): no tracing; N requests through InferGrid at ``--concurrency``
streams, and the user+system CPU time the front-door and scheduler processes spent
meanwhile (``/proc/PID/stat``), per request: a figure the machine's other load
disturbs far less than latency.  Run it from a ``git worktree`` of another commit
(``cd /tmp/old && python /work/main/bench/hops.py --cpu ...``) to measure that
tree's daemons: ``python -m`` imports the package from the working directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path.cwd()))  # the tree under test (a worktree of another commit)
sys.path.insert(1, str(REPO))

from infergridd.bench.appliance import Serve, free_port, make_config, tenant_key  # noqa: E402
from infergridd.bench.engines import SimEngine  # noqa: E402
from infergridd.bench.loadgen import Prompts, Target, body_for  # noqa: E402
from infergridd.bench.overhead_arms import engine_target, http_session  # noqa: E402

TENANT = "bench"
WARMUP = 30  # requests per path dropped at the start (connections, first batch)
#: the hops, in order, each measured from the one before it: (name, from, to, meaning)
HOPS = [
    ("client → handler", "c_send", "arrival", "client send to the front door's handler "
     "(connection, aiohttp's request parse, edge guard, middlewares)"),
    ("read body", "arrival", "body", "auth, waiting-room ticket, reading the body"),
    ("parse + check", "body", "parsed", "JSON parse, validation, field allowlist, context"),
    ("to Submit sent", "parsed", "submit_sent", "request id, QueuedRecord, Submit encode "
     "and zmq send"),
    ("Submit → scheduler", "submit_sent", "sched_rx", "ZeroMQ front door → scheduler, "
     "the scheduler's loop wakeup, recv, decode, screen"),
    ("scheduler", "sched_rx", "sched_sent", "core.submit (admit, dispatch), observe, "
     "Dispatch encode and send"),
    ("Dispatch → front door", "sched_sent", "dispatch_rx", "ZeroMQ scheduler → front door, "
     "the front door's loop wakeup, recv"),
    ("handler resumes", "dispatch_rx", "resumed", "decode, resolve the future, the "
     "handler task scheduled again"),
    ("to engine POST", "resumed", "engine_post", "metrics, RelayResult"),
    ("engine: headers", "engine_post", "engine_headers", "aiohttp client: the body, "
     "the pooled Unix socket, the engine's response headers"),
    ("engine: first chunk", "engine_headers", "engine_first", "prepare (client headers "
     "sent), the engine's first SSE bytes"),
    ("first token out", "engine_first", "client_first", "SSE account, write to the client"),
    ("→ client first token", "client_first", "c_first", "the client's read and parse"),
]


def pids_of(serve: Serve) -> dict[str, int]:
    """The serve's daemons by role (their command lines name its config file)."""
    out: dict[str, int] = {}
    conf = str(serve.config_path.resolve())
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # "python -m infergridd.cli.infergridd ROLE ...", or the title the daemon sets
        # itself: "infergridd ROLE --config ..." (one string, padded)
        args = b" ".join(argv).decode(errors="replace").split()
        if conf not in args:
            continue
        for i, arg in enumerate(args[:-1]):
            if arg in ("infergridd", "infergridd.cli.infergridd"):
                out.setdefault(args[i + 1], int(d.name))
                break
    return out


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (``/proc/PID/stat`` fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one(http: aiohttp.ClientSession, t: Target, body: bytes) -> dict[str, Any]:
    """One streamed request; the client's marks and the request id.  Sent again once if
    the kept-alive connection was closed under it (``max_requests_per_connection``)."""
    try:
        return await _one(http, t, body)
    except aiohttp.ClientConnectionError:
        return await _one(http, t, body)


async def _one(http: aiohttp.ClientSession, t: Target, body: bytes) -> dict[str, Any]:
    key = t.keys.get(TENANT, "")
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    m: dict[str, Any] = {"c_send": time.perf_counter_ns()}
    async with http.post(t.url + "/v1/completions", data=body, headers=headers) as r:
        m["c_headers"] = time.perf_counter_ns()
        m["rid"] = r.headers.get("X-Request-Id", "")
        m["status"] = r.status
        async for piece in r.content.iter_any():
            if b'"text":"' in piece and b'"text":""' not in piece:
                m.setdefault("c_first", time.perf_counter_ns())
        m["c_end"] = time.perf_counter_ns()
    return m


def breakdown(via: list[dict[str, Any]], direct: list[dict[str, Any]],
              fd: dict[str, dict[str, int]], sched: dict[str, dict[str, int]]
              ) -> dict[str, Any]:
    """Medians of each hop (µs) over the requests every process marked."""
    rows = []
    joined = []
    for m in via:
        rid = m.get("rid", "")
        if rid in fd and rid in sched and "c_first" in m:
            joined.append({**m, **fd[rid], **sched[rid]})
    for name, a, b, what in HOPS:
        xs = [(j[b] - j[a]) / 1e3 for j in joined if a in j and b in j]
        rows.append({"hop": name, "what": what, "n": len(xs),
                     "p50_us": statistics.median(xs) if xs else None})
    ttft_via = [(j["c_first"] - j["c_send"]) / 1e3 for j in joined]
    ttft_direct = [(m["c_first"] - m["c_send"]) / 1e3 for m in direct if "c_first" in m]
    engine = [(j["engine_first"] - j["engine_post"]) / 1e3 for j in joined]
    return {"n": len(joined), "hops": rows,
            "ttft_via_p50_us": statistics.median(ttft_via) if ttft_via else None,
            "ttft_direct_p50_us": statistics.median(ttft_direct) if ttft_direct else None,
            "engine_seen_by_fd_p50_us": statistics.median(engine) if engine else None}


def render(r: dict[str, Any]) -> str:
    lines = ["| hop | median µs | what |", "|---|---|---|"]
    for h in r["hops"]:
        v = "–" if h["p50_us"] is None else f"{h['p50_us']:.0f}"
        lines.append(f"| {h['hop']} | {v} | {h['what']} |")
    total = sum(h["p50_us"] or 0 for h in r["hops"])
    lines += ["", f"{r['n']} requests joined. Sum of the hop medians {total:.0f} µs; TTFT p50 "
              f"through InferGrid {r['ttft_via_p50_us']:.0f} µs, direct "
              f"{r['ttft_direct_p50_us']:.0f} µs (added "
              f"{r['ttft_via_p50_us'] - r['ttft_direct_p50_us']:+.0f} µs); the engine's "
              f"part as the front door saw it (POST to first chunk) "
              f"{r['engine_seen_by_fd_p50_us']:.0f} µs."]
    return "\n".join(lines)


async def trace(a: argparse.Namespace, serve: Serve, eng: SimEngine, hopdir: Path
                ) -> dict[str, Any]:
    via = Target(serve.url, eng.model, {TENANT: tenant_key(TENANT)})
    direct = engine_target(serve.runtime, eng.model, TENANT)
    assert direct is not None, "no engine record"
    prompts = Prompts(0)
    res: dict[str, list[dict[str, Any]]] = {"direct": [], "via": []}
    async with http_session() as http:
        for i in range(2 * (a.requests + WARMUP)):
            path = "via" if i % 2 else "direct"
            body = body_for(eng.model, prompts.get(a.prompt_tokens, i), a.max_tokens)
            m = await one(http, via if path == "via" else direct, body)
            if i >= 2 * WARMUP and m["status"] == 200:
                res[path].append(m)
    await asyncio.sleep(0.5)  # the last lines flushed
    from infergridd.transport import hops
    return breakdown(res["via"], res["direct"], hops.read(hopdir, "frontdoor"),
                     hops.read(hopdir, "scheduler"))


async def cpu(a: argparse.Namespace, serve: Serve, eng: SimEngine) -> dict[str, Any]:
    via = Target(serve.url, eng.model, {TENANT: tenant_key(TENANT)})
    pids = pids_of(serve)
    prompts = Prompts(0)
    n = iter(range(1 << 30))

    ok = [0]

    async def worker(http: aiohttp.ClientSession, count: int) -> None:
        for _ in range(count):
            i = next(n)
            m = await one(http, via, body_for(eng.model, prompts.get(a.prompt_tokens, i),
                                              a.max_tokens))
            ok[0] += m["status"] == 200 and "c_first" in m

    async with http_session() as http:
        await asyncio.gather(*[worker(http, WARMUP) for _ in range(a.concurrency)])
        # what each daemon burns with nothing to do (timers, heartbeats, snapshots), per s
        idle0 = {r: cpu_s(p) for r, p in pids.items()}
        await asyncio.sleep(a.idle_s)
        idle = {r: (cpu_s(p) - idle0[r]) / a.idle_s for r, p in pids.items()}
        before = {r: cpu_s(p) for r, p in pids.items()}
        t0 = time.monotonic()
        per = a.cpu // a.concurrency
        ok[0] = 0
        await asyncio.gather(*[worker(http, per) for _ in range(a.concurrency)])
        wall = time.monotonic() - t0
        after = {r: cpu_s(p) for r, p in pids.items()}
    total = per * a.concurrency
    return {"requests": total, "ok": ok[0], "wall_s": wall, "rps": total / wall,
            "cpu_us_per_request": {r: (after[r] - before[r]) / total * 1e6 for r in pids},
            "idle_cpu_ms_per_s": {r: idle[r] * 1e3 for r in pids},
            "net_cpu_us_per_request": {r: (after[r] - before[r] - idle[r] * wall) / total * 1e6
                                       for r in pids}}


async def amain(a: argparse.Namespace) -> int:
    logdir = Path(tempfile.mkdtemp(prefix="ig-hops-"))
    hopdir = logdir / "hops"
    hopdir.mkdir()
    if not a.cpu:
        os.environ["INFERGRID_HOPS"] = str(hopdir)  # the daemons inherit it
    eng = SimEngine(a.profile, 256)
    conf = make_config("vtc", eng.model_config(), [(TENANT, 1.0)], free_port())
    conf["frontdoor"] = {"processes": 1}  # one front door: pids_of and its CPU are its own
    serve = Serve(conf, logdir)
    serve.start()
    try:
        if a.cpu:
            r = await cpu(a, serve, eng)
            cpus = ", ".join(f"{k} {v:.0f} µs (net of idle {r['net_cpu_us_per_request'][k]:.0f})"
                             for k, v in sorted(r["cpu_us_per_request"].items()))
            idle = ", ".join(f"{k} {v:.1f}" for k, v in sorted(r["idle_cpu_ms_per_s"].items()))
            print(f"{r['requests']} requests ({r['ok']} ok) at {a.concurrency} stream(s), "
                  f"{r['rps']:.0f} req/s:"
                  f" CPU per request: {cpus}; idle CPU ms/s: {idle}")
        else:
            r = await trace(a, serve, eng, hopdir)
            print(render(r))
    finally:
        serve.stop()
    if a.out:
        Path(a.out).write_text(json.dumps(r, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--profile", default="fast-test")
    ap.add_argument("--requests", type=int, default=500, help="through InferGrid (and as "
                    "many direct), one stream")
    ap.add_argument("--cpu", type=int, default=0, help="instead: CPU per request over this "
                    "many requests")
    ap.add_argument("--concurrency", type=int, default=1, help="streams for --cpu")
    ap.add_argument("--idle-s", type=float, default=3.0, help="--cpu: idle CPU measured "
                    "this long first, and subtracted (net figures)")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=4)
    ap.add_argument("--out", help="write the figures as JSON here")
    return asyncio.run(amain(ap.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
