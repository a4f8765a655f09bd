#!/usr/bin/env python3
"""Where the front door's time goes: py-spy on it while C streams run through it.

    .venv/bin/python bench/profile_frontdoor.py [--streams 64] [--seconds 15] [--out DIR]
        [--py-spy PATH]

One ``infergrid serve`` with the ``fast-test`` simulated engine (steps of ~2 ms: the
engine is never the bottleneck), ``--streams`` closed-loop streams of 64-token prompts
and 32 output tokens, and ``py-spy record`` (raw, collapsed stacks) on the front-door
process meanwhile.  The stacks are then put in buckets by the innermost frame that
names a part of the front door (SSE parse and re-emit, writes to the client, the
engine request, the scheduler link, metrics, logging, request parsing, the event loop
itself), and each bucket's share is turned into CPU milliseconds per request from the
request rate measured during the recording.  py-spy is not a dependency: install it
in a venv of its own (``python3 -m venv /tmp/pyspy && /tmp/pyspy/bin/pip install py-spy``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from infergridd.bench.appliance import Serve, free_port, make_config, tenant_key  # noqa: E402
from infergridd.bench.engines import SimEngine  # noqa: E402
from infergridd.bench.loadgen import OK, Prompts, Result, Target, session, stream_one  # noqa: E402
from infergridd.bench.workload import Planned  # noqa: E402

#: (bucket, substrings of a frame): the innermost frame that matches names the bucket
BUCKETS = [
    ("SSE parse and re-emit (frontdoor/sse.py)", ["frontdoor/sse.py"]),
    ("writes to the client (aiohttp StreamResponse.write, the send syscall)",
     ["web_response.py", "http_writer.py"]),
    ("metrics (prometheus_client, frontdoor/metrics.py)", ["prometheus_client", "frontdoor/metrics.py"]),
    ("logging", ["logging/__init__", "infergridd/logs"]),
    ("scheduler link: Submit, Progress, Done (link, zmq, protocol encode)",
     ["frontdoor/link.py", "transport/", "zmq/", "infergridd/protocol.py"]),
    ("request parsing and validation (JSON body, token estimate)",
     ["frontdoor/validate.py", "frontdoor/body.py", "engines/fields.py"]),
    ("the engine request (frontdoor/engine_client.py on Unix sockets; aiohttp's client "
     "on TCP)", ["frontdoor/engine_client.py", "aiohttp/client", "aiohttp/connector",
                 "aiohttp/streams.py", "engines/unixhttp", "client_proto", "client_reqrep"]),
    ("HTTP server (aiohttp: parse, request objects, routing, middleware chain)",
     ["web_protocol", "web_app", "web_request", "http_parser", "web_middlewares"]),
    ("our handler (edge guard, auth, waiting room, relay glue, errors)",
     ["frontdoor/edge.py", "frontdoor/app.py", "frontdoor/auth.py", "frontdoor/room.py",
      "frontdoor/relay.py", "frontdoor/errors.py"]),
]
LOOP = "the event loop itself (uvloop's C code: epoll, callbacks, transports)"


def summarize(raw: Path) -> tuple[int, collections.Counter[str]]:
    """py-spy's raw output (``stack count`` lines) → samples per bucket."""
    total, by = 0, collections.Counter[str]()
    for line in raw.read_text().splitlines():
        stack, _, n_s = line.rpartition(" ")
        n = int(n_s)
        total += n
        chosen = None
        for frame in reversed(stack.split(";")):
            chosen = next((name for name, keys in BUCKETS if any(k in frame for k in keys)), None)
            if chosen:
                break
        by[chosen or LOOP] += n
    return total, by


async def load(target: Target, streams: int, seconds: float, max_tokens: int = 32) -> int:
    """``streams`` closed-loop streams for ``seconds``; returns the requests that succeeded."""
    prompts, ok, n = Prompts(0), 0, 0
    async with session() as http:
        t0 = time.monotonic()

        async def worker() -> None:
            nonlocal ok, n
            while time.monotonic() < t0 + seconds:
                n += 1
                r = Result("bench", n, 0.0)
                await stream_one(http, target, Planned("bench", n, 0.0, 64, max_tokens),
                                 prompts.get(64, n), t0, r)
                ok += r.status == OK

        await asyncio.gather(*[worker() for _ in range(streams)])
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--max-tokens", type=int, default=32, help="output tokens per request "
                    "(4: the short requests of bench/overhead.py's ceiling)")
    ap.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    ap.add_argument("--py-spy", default="/tmp/pyspy/bin/py-spy")
    ap.add_argument("--out", default="/tmp/ig-profile")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    eng = SimEngine("fast-test", 256)
    conf = make_config("vtc", eng.model_config(), [("bench", 1.0)], free_port())
    conf["frontdoor"] = {"processes": 1}  # py-spy follows one process: all the load on it
    serve = Serve(conf, out)
    serve.start()
    try:
        time.sleep(0.5)
        pids = subprocess.run(["pgrep", "-f", f"infergridd frontdoor --config {serve.config_path}"],
                              capture_output=True, text=True).stdout.split()
        if not pids:
            raise SystemExit("no front-door process found")
        target = Target(serve.url, eng.model, {"bench": tenant_key("bench")})
        asyncio.run(load(target, a.streams, 2.0))  # warm up
        raw = out / "frontdoor.raw"
        spy = subprocess.Popen([a.py_spy, "record", "-p", pids[0], "-r", str(a.rate), "-d",
                                str(int(a.seconds)), "-f", "raw", "-o", str(raw)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ok = asyncio.run(load(target, a.streams, a.seconds, a.max_tokens))
        spy.wait()
    finally:
        serve.stop()
    rps = ok / a.seconds
    total, by = summarize(raw)
    busy = total / (a.rate * int(a.seconds))  # py-spy drops idle samples
    cpu_ms = busy * 1000 / rps if rps else 0.0
    print(f"{a.streams} streams: {rps:.0f} requests/s, front door busy {busy:.0%} of a core, "
          f"{cpu_ms:.2f} ms CPU per request ({a.max_tokens} tokens)")
    print("| where | share of busy samples | ms CPU per request |\n|---|---|---|")
    for name, n in by.most_common():
        print(f"| {name} | {n / total:.1%} | {cpu_ms * n / total:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
