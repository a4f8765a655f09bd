"""The hero claim, measured: a flooder far above capacity must not hurt a quiet tenant.

From the issue: "Integration against the simulated engine (daemons as real
processes), the hero workload: a flooder sending far more than the engine can
serve (>= 1.5x its capacity) and a quiet tenant: quiet TTFT p99 <= 1.2x its p99
alone, zero 429s for the flooder with no quota configured, total tokens/s >=
0.95x of sending the same load straight to the engine."

Run through the benchmark harness (``infergridd.bench.runner``): arms ``solo``
(the quiet tenant alone, straight to the engine), ``direct`` (both tenants
straight to the engine) and ``vtc`` (through ``infergrid serve``).  The
simulated engine's profile is scaled so the test takes well under a minute yet
the quiet tenant sends enough requests (15 req/s, ~120 measured) for a p99
that is not just the maximum: ~10 ms steps, a 32-sequence batch, flooder
requests of 32 output tokens (a slot frees about every step, so the quiet
tenant's wait for one is short).  Its capacity (~100 req/s, ~3k tokens/s) is
measured first and the flooder sent at 1.5x that.

``direct`` is asserted too, as a control: if straight-to-engine FIFO did *not*
hurt the quiet tenant, the workload would not be testing anything.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from infergridd.bench import workload
from infergridd.bench.engines import SimEngine
from infergridd.bench.runner import BenchConfig, run_bench

PROFILE = {
    "description": "hero test: ~10 ms steps, prefill-light, 32 sequences",
    "base_s": 0.008, "per_prefill_token_s": 0.000005, "per_decode_seq_s": 0.00005,
    "per_kv_token_s": 0.0, "max_num_seqs": 32, "max_num_batched_tokens": 4096,
    "kv_blocks": 8192, "block_size": 16, "max_model_len": 8192, "startup_s": 0.0,
    "eos_prob": 0.0,
}

WORKLOAD = """
name: hero-test
description: hero, scaled for a test
duration_s: 10
warmup_s: 2
max_num_seqs: 32
tenants:
  - name: flooder
    flood: true
    prompt: {dist: fixed, tokens: 128}
    output: {dist: fixed, tokens: 32}
  - name: quiet
    rate: 15
    prompt: {dist: uniform, low: 256, high: 512}
    output: {dist: fixed, tokens: 8}
"""


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "open (issue 5): no front end can meet it on this engine. bench/floor.py runs an oracle "
    "in front of the same simulated engine in virtual time (quiet requests enter the engine "
    "the instant they arrive, first in its queue, the flooder topped up to a reserve): on "
    "this test's profile its quiet p99 is 1.28x alone at 0.90x throughput, and on "
    "hero-dense (A100 profile) 2.1x: a quiet prompt still waits for the engine step in "
    "progress and shares its own step with every running decode. The core measures within "
    "~1.2x of that oracle (tests/unit/bench/test_bench_floor.py). strict: fails loudly once it passes"))
def test_hero_claim(tmp_path: Path) -> None:
    profile = tmp_path / "hero-test.yaml"
    profile.write_text(yaml.safe_dump(PROFILE))
    w = workload.loads(WORKLOAD)
    cfg = BenchConfig(workload=w, engine=SimEngine(str(profile), 32),
                      arms=["solo", "direct", "vtc"], out=tmp_path / "out",
                      duration_s=w.duration_s, warmup_s=w.warmup_s, seed=1, scale="auto",
                      flood_multiple=1.5, drain_s=4.0, capacity_s=4.0, solo_runs=1,
                      progress=False, n_boot=500, bracket_direct=False)
    res = asyncio.run(run_bench(cfg)).results
    cap = res["capacity"]
    arms = res["arms"]
    solo, direct, vtc = (arms[a]["tenants"] for a in ("solo", "direct", "vtc"))
    summary = (f"capacity {cap['requests_per_s']:.1f} req/s {cap['tokens_per_s']:.0f} tok/s; "
               f"flood {res['flood_rate_rps']:.1f} req/s; quiet TTFT p99 solo "
               f"{solo['quiet']['ttft_ms']['p99']:.1f} direct "
               f"{direct['quiet']['ttft_ms']['p99']:.1f} vtc {vtc['quiet']['ttft_ms']['p99']:.1f} "
               f"ms; tok/s direct {arms['direct']['throughput_tok_s']:.0f} "
               f"vtc {arms['vtc']['throughput_tok_s']:.0f}; "
               f"ratio {res['ratios']['vtc']['quiet']['ttft_p99']}")
    print(summary)

    # the setup is what the claim is about
    assert res["flood_rate_rps"] >= 1.5 * cap["requests_per_s"] * 0.999, summary
    assert solo["quiet"]["ttft_ms"]["n"] >= 100, summary
    assert arms["vtc"]["send_lag_ms"]["p99"] < 50, summary  # the generator kept its schedule
    # control: FIFO straight to the engine hurts the quiet tenant badly
    assert direct["quiet"]["ttft_ms"]["p99"] > 3 * solo["quiet"]["ttft_ms"]["p99"], summary

    # the claims
    assert vtc["flooder"]["rejected"] == 0, summary
    assert vtc["quiet"]["rejected"] == 0 and vtc["quiet"]["failed"] == 0, summary
    assert arms["vtc"]["throughput_tok_s"] >= 0.95 * arms["direct"]["throughput_tok_s"], summary
    assert vtc["quiet"]["ttft_ms"]["p99"] <= 1.2 * solo["quiet"]["ttft_ms"]["p99"], summary
