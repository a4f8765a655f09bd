"""The scheduling core against the ideal front end, in virtual time (bench/floor.py).

Deterministic (seeded, no processes, no wall clock), so these are not timing
tests: they pin how close the core's *decisions* come to what an oracle in
front of the same simulated engine achieves, and that each headroom rule
earns its keep.  Figures are printed; the bounds have margin over what the
current core measures (hero-dense: p50 2.0x alone vs the oracle's 1.7x).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from infergridd.bench import workload as wl

SCRIPT = Path(__file__).resolve().parents[3] / "bench" / "floor.py"
PROFILE = "a100-llama3-8b"
SECONDS = 120.0


@pytest.fixture(scope="module")
def floor() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_floor", SCRIPT)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_floor"] = mod
    spec.loader.exec_module(mod)
    return mod


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q))


def test_core_comes_close_to_the_ideal_front_end(floor: ModuleType) -> None:
    w = wl.load("hero-dense")
    alone, _ = floor.simulate(w, PROFILE, SECONDS, 0, False, 0)
    _, direct_tput = floor.simulate(w, PROFILE, SECONDS, 64, False, 0)
    ideal, _ = floor.simulate(w, PROFILE, SECONDS, 58, True, 0)
    core, core_tput = floor.simulate_core(w, PROFILE, SECONDS, 6, True, 0)
    bare, _ = floor.simulate_core(w, PROFILE, SECONDS, 0, False, 0, prefill_window=0)
    a50 = pct(alone, 50)
    print(f"p50 x alone: ideal {pct(ideal, 50) / a50:.2f}, core {pct(core, 50) / a50:.2f}, "
          f"no headroom {pct(bare, 50) / a50:.2f}; throughput core/direct "
          f"{core_tput / direct_tput:.3f}")
    assert core_tput >= 0.95 * direct_tput
    assert pct(core, 50) <= 1.35 * pct(ideal, 50)
    assert pct(core, 99) <= 1.6 * pct(ideal, 99)
    assert pct(bare, 50) >= 2.5 * pct(core, 50)  # without the headroom: several times worse


def test_a_long_prompt_flooder_cannot_hide_a_queue_inside_the_engine(floor: ModuleType) -> None:
    w = wl.load("long-prompt-flooder")
    alone, _ = floor.simulate(w, PROFILE, SECONDS, 0, False, 0)
    _, direct_tput = floor.simulate(w, PROFILE, SECONDS, 64, False, 0)
    core, core_tput = floor.simulate_core(w, PROFILE, SECONDS, 6, True, 0)
    unbounded, _ = floor.simulate_core(w, PROFILE, SECONDS, 6, True, 0, prefill_window=0)
    a99 = pct(alone, 99)
    print(f"p99 x alone: core {pct(core, 99) / a99:.1f}, no prefill window "
          f"{pct(unbounded, 99) / a99:.1f}; throughput core/direct {core_tput / direct_tput:.3f}")
    assert core_tput >= 0.95 * direct_tput
    assert pct(core, 99) <= 15 * a99
    assert pct(unbounded, 99) >= 5 * pct(core, 99)


@pytest.mark.parametrize(("workload", "p99_bound"),
                         [("hero-dense", 1.5), ("long-prompt-flooder", 2.5)])
def test_engine_assist_moves_the_floor(floor: ModuleType, workload: str,
                                       p99_bound: float) -> None:
    """With InferGrid's step policy in the engine (assist/policy.py, the vLLM plugin's
    code), the core comes within 1.15x of the assisted oracle at p99, the quiet tenant's
    p99 is within issue 13's bound of alone (1.5x; 2.5x beside long prompts; the front
    end alone: 2.7x and 9.5x), at >= 0.93x the throughput of the engine alone; and the
    policy is what does it: the same core in front of a stock engine stays far above."""
    w = wl.load(workload)
    alone, _ = floor.simulate(w, PROFILE, SECONDS, 0, False, 0)
    _, direct_tput = floor.simulate(w, PROFILE, SECONDS, 64, False, 0)
    assist = floor.AssistSettings()
    oracle, _ = floor.simulate(w, PROFILE, SECONDS, 64, False, 0, assist=assist)
    core, core_tput = floor.simulate_core(w, PROFILE, SECONDS, 6, True, 0, assist=assist)
    stock, _ = floor.simulate_core(w, PROFILE, SECONDS, 6, True, 0)
    a99 = pct(alone, 99)
    print(f"{workload} p99 x alone: assisted oracle {pct(oracle, 99) / a99:.2f}, core + assist "
          f"{pct(core, 99) / a99:.2f}, core on a stock engine {pct(stock, 99) / a99:.2f}; "
          f"throughput core+assist/direct {core_tput / direct_tput:.3f}")
    assert pct(core, 99) <= 1.15 * pct(oracle, 99)
    assert pct(core, 99) <= p99_bound * a99
    assert core_tput >= 0.93 * direct_tput
    assert pct(stock, 99) >= 1.5 * pct(core, 99)
