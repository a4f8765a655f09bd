"""The simulated engine's pure scheduler: timing, batching, chunking, KV, priority, seed."""

from __future__ import annotations

import pytest

from infergridd.sim.model import PREEMPTED, EngineModel, SimRequest
from infergridd.sim.profile import Profile, ProfileError, from_mapping, load_profile


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def make(policy: str = "fcfs", sign: int = 1, seed: int = 0, **kw: float) -> tuple[EngineModel, FakeClock]:
    base = dict(base_s=0.01, per_prefill_token_s=0.001, per_decode_seq_s=0.0001,
                per_kv_token_s=0.0, max_num_seqs=8, max_num_batched_tokens=256,
                kv_blocks=1000, block_size=16, max_model_len=4096)
    base.update(kw)
    clock = FakeClock()
    return EngineModel(Profile(**base), clock=clock, seed=seed, policy=policy,
                       priority_sign=sign), clock


def run_until_idle(m: EngineModel, clock: FakeClock, limit: int = 10_000) -> list[tuple[str, str | None]]:
    """Step to completion, advancing the clock by each step's duration; returns emitted tokens."""
    out = []
    for _ in range(limit):
        if not m.has_work():
            return out
        plan = m.schedule()
        clock.t += plan.duration_s
        res = m.commit(plan)
        out.extend((r.request_id, r.finish_reason) for r, _ in res.tokens)
    raise AssertionError("model never went idle")


def test_step_duration_follows_profile_and_first_token_ends_prefill() -> None:
    m, clock = make(per_kv_token_s=0.00001)
    m.add(SimRequest("a", prompt_tokens=10, max_tokens=3))
    plan, res = m.step()
    # prefill of 10 tokens, kv 10: 0.01 + 10 * 0.001 + 10 * 0.00001
    assert plan.prefill_tokens == 10 and plan.decode_seqs == 0
    assert plan.duration_s == pytest.approx(0.0201)
    assert [r.request_id for r, _ in res.tokens] == ["a"]  # first token at the end of prefill
    plan, res = m.step()
    # one decode sequence with 11 tokens of context
    assert plan.prefill_tokens == 0 and plan.decode_seqs == 1
    assert plan.duration_s == pytest.approx(0.01 + 0.0001 + 11 * 0.00001)
    plan, res = m.step()
    assert res.finished and res.finished[0].finish_reason == "length"
    assert res.finished[0].num_output == 3
    assert not m.has_work() and m.free_blocks == m.total_blocks


def test_max_num_seqs_respected_and_the_rest_wait() -> None:
    m, clock = make(max_num_seqs=2)
    for i in range(5):
        m.add(SimRequest(f"r{i}", prompt_tokens=4, max_tokens=5))
    plan, _ = m.step()
    assert m.num_running == 2 and m.num_waiting == 3
    assert [r.request_id for r, _ in plan.scheduled] == ["r0", "r1"]
    seen_max = 0
    order = []
    while m.has_work():
        plan, res = m.step()
        seen_max = max(seen_max, len(plan.scheduled))
        order += [r.request_id for r in res.finished]
    assert seen_max == 2
    assert order == ["r0", "r1", "r2", "r3", "r4"]  # FCFS


def test_chunked_prefill_spreads_a_long_prompt_over_steps() -> None:
    m, clock = make(max_num_batched_tokens=16)
    m.add(SimRequest("long", prompt_tokens=40, max_tokens=2))
    chunks = []
    for _ in range(3):
        plan, res = m.step()
        chunks.append(plan.prefill_tokens)
        if len(chunks) < 3:
            assert not res.tokens, "no token before the prefill is complete"
    assert chunks == [16, 16, 8]
    assert res.tokens and res.first_tokens[0].request_id == "long"


def test_long_prefill_threshold_leaves_budget_for_a_fresh_prompt() -> None:
    """vLLM's --long-prefill-token-threshold: without it a long prompt that is already
    running takes the whole budget and a fresh short one waits; with it both run."""
    for cut, expect in ((0, {"long": 256}), (128, {"long": 128, "short": 32})):
        m, _ = make(max_num_batched_tokens=256, long_prefill_token_threshold=cut)
        m.add(SimRequest("long", prompt_tokens=4000, max_tokens=2))
        m.step()
        m.add(SimRequest("short", prompt_tokens=32, max_tokens=2))
        plan, _ = m.step()
        assert dict((r.request_id, n) for r, n in plan.scheduled) == expect


def test_decodes_get_budget_before_a_new_prefill() -> None:
    m, clock = make(max_num_batched_tokens=16)
    m.add(SimRequest("a", prompt_tokens=8, max_tokens=50))
    m.step()  # a prefilled
    m.add(SimRequest("b", prompt_tokens=100, max_tokens=2))
    plan, res = m.step()
    # a decodes (1 token), b gets the remaining 15 of the budget
    assert dict((r.request_id, n) for r, n in plan.scheduled) == {"a": 1, "b": 15}
    assert [r.request_id for r, _ in res.tokens] == ["a"]


def test_kv_exhaustion_preempts_the_newest_and_recomputes() -> None:
    # 6 blocks of 4 tokens = 24 tokens of KV; two sequences that each grow to 8 + 12 = 20
    m, clock = make(block_size=4, kv_blocks=6, max_num_batched_tokens=64)
    a = SimRequest("a", prompt_tokens=8, max_tokens=12)
    b = SimRequest("b", prompt_tokens=8, max_tokens=12)
    m.add(a)
    m.add(b)
    saw_preempted = False
    used_max = 0.0
    while m.has_work():
        m.step()
        used_max = max(used_max, m.kv_usage)
        saw_preempted |= b.status == PREEMPTED
        assert m.free_blocks >= 0
    assert saw_preempted and b.num_preemptions >= 1
    assert a.num_preemptions == 0, "FCFS preempts the newest running request"
    assert m.counters.preemptions == b.num_preemptions
    assert a.num_output == 12 and b.num_output == 12
    assert used_max == 1.0 and m.kv_usage == 0.0


def test_recompute_after_preemption_is_a_prefill_of_prompt_and_output() -> None:
    m, clock = make(block_size=4, kv_blocks=6, max_num_batched_tokens=64)
    a = SimRequest("a", prompt_tokens=8, max_tokens=12)
    b = SimRequest("b", prompt_tokens=8, max_tokens=12)
    m.add(a)
    m.add(b)
    while b.status != PREEMPTED:
        m.step()
    done_before = b.num_output
    while b.status == PREEMPTED:
        plan, _ = m.step()
    sched = dict((r.request_id, n) for r, n in plan.scheduled)
    assert sched["b"] == 8 + done_before  # the whole context is recomputed


def test_priority_policy_runs_lower_value_first_vllm() -> None:
    m, clock = make(policy="priority", max_num_seqs=1)
    m.add(SimRequest("first", 4, 3, priority=9))
    m.step()  # "first" is running; priority does not preempt a running sequence at max_num_seqs
    for name, prio in (("p5", 5), ("p1", 1), ("p3", 3), ("p1b", 1)):
        m.add(SimRequest(name, 4, 3, priority=prio))
    finished = []
    while m.has_work():
        finished += [r.request_id for r in m.step()[1].finished]
    assert finished == ["first", "p1", "p1b", "p3", "p5"]


def test_priority_sign_minus_one_runs_higher_value_first_sglang() -> None:
    m, clock = make(policy="priority", sign=-1, max_num_seqs=1)
    m.add(SimRequest("first", 4, 3, priority=0))
    m.step()
    for name, prio in (("p5", 5), ("p1", 1), ("p3", 3)):
        m.add(SimRequest(name, 4, 3, priority=prio))
    finished = []
    while m.has_work():
        finished += [r.request_id for r in m.step()[1].finished]
    assert finished == ["first", "p5", "p3", "p1"]


def test_priority_policy_preempts_lowest_priority_on_kv_pressure() -> None:
    m, clock = make(policy="priority", block_size=4, kv_blocks=6, max_num_batched_tokens=64)
    low = SimRequest("low", 8, 12, priority=5)
    high = SimRequest("high", 8, 12, priority=0)
    m.add(low)
    m.add(high)
    run_until_idle(m, clock)
    assert low.num_preemptions >= 1 and high.num_preemptions == 0


def test_abort_frees_blocks_and_leaves_the_batch() -> None:
    m, clock = make()
    m.add(SimRequest("a", 100, 50))
    m.add(SimRequest("w", 100, 50))
    m.step()
    assert m.free_blocks < m.total_blocks
    m.abort("a")
    m.abort("w")
    assert m.num_running == 0 and m.num_waiting == 0 and not m.has_work()
    assert m.free_blocks == m.total_blocks
    assert m.counters.aborted == 2


def test_aborted_while_waiting_is_skipped() -> None:
    m, clock = make(max_num_seqs=1)
    m.add(SimRequest("a", 4, 2))
    m.add(SimRequest("b", 4, 2))
    m.add(SimRequest("c", 4, 2))
    m.abort("b")
    toks = run_until_idle(m, clock)
    assert {rid for rid, _ in toks} == {"a", "c"}


def test_same_seed_same_run_other_seed_other_tokens() -> None:
    def run(seed: int) -> tuple[list[str], list[float]]:
        m, clock = make(seed=seed, eos_prob=0.05, max_num_seqs=3)
        for i in range(6):
            m.add(SimRequest(f"r{i}", 5 + i, 30))
        texts, durations = [], []
        while m.has_work():
            plan, res = m.step()
            durations.append(plan.duration_s)
            texts += [f"{r.request_id}:{t}:{r.finish_reason}" for r, t in res.tokens]
        return texts, durations

    a, b, c = run(7), run(7), run(8)
    assert a == b
    assert a[0] != c[0]
    assert any(t.endswith(":stop") for t in a[0]), "eos_prob 0.05 over 180 tokens stops some"


def test_ignore_eos_generates_exactly_max_tokens() -> None:
    m, clock = make(eos_prob=0.5)
    r = SimRequest("a", 4, 40, ignore_eos=True)
    m.add(r)
    run_until_idle(m, clock)
    assert r.num_output == 40 and r.finish_reason == "length"


def test_profiles_load_and_unknown_key_is_named(tmp_path) -> None:
    for name in ("fast-test", "tiny-cpu", "a100-llama3-8b"):
        p = load_profile(name)
        assert p.base_s > 0 and p.kv_blocks > 0
    a100 = load_profile("a100-llama3-8b")
    # decode step 12-15 ms at small batch, rising with batch size
    assert 0.011 <= a100.step_s(0, 1, 1024) <= 0.015
    assert a100.step_s(0, 64, 64 * 1024) > 0.018
    assert 10_000 <= 1 / a100.per_prefill_token_s <= 20_000
    bad = tmp_path / "bad.yaml"
    bad.write_text("base_s: 0.01\nper_decode_token_s: 0.1\n")
    with pytest.raises(ProfileError, match="per_decode_token_s"):
        load_profile(str(bad))
    with pytest.raises(ProfileError, match="nope"):
        load_profile("nope")
    with pytest.raises(ProfileError, match="max_num_seqs"):
        from_mapping({"max_num_seqs": 0}, "x")
    assert load_profile("fast-test", {"base_s": 0.5}).base_s == 0.5
