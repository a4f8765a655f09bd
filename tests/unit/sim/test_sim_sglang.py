"""The simulated engine's SGLang batching (``sim/sglang_batch.py``): prefill first, chunking,
priority order, priority preemption with its threshold, KV admission and retraction."""

from __future__ import annotations

import random

import pytest

from infergridd.sim.__main__ import options_from_args
from infergridd.sim.model import PREEMPTED, RUNNING, EngineModel, SglangSettings, SimRequest
from infergridd.sim.options import SimOptions
from infergridd.sim.profile import Profile, ProfileError

#: InferGrid's engine priorities on SGLang (sign -1): light 0, neutral -1, heavy -2
LIGHT, NEUTRAL, HEAVY = 0, -1, -2


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def make(*, priority: bool = True, sign: int = -1, chunk: int | None = 64,
         threshold: int | None = 10, max_prefill: int = 16384,
         **kw: float) -> tuple[EngineModel, FakeClock]:
    base = dict(base_s=0.01, per_prefill_token_s=0.001, per_decode_seq_s=0.0001,
                per_kv_token_s=0.0, max_num_seqs=8, max_num_batched_tokens=256,
                kv_blocks=1000, block_size=16, max_model_len=8192)
    base.update(kw)
    clock = FakeClock()
    settings = SglangSettings(chunked_prefill_size=chunk, max_prefill_tokens=max_prefill,
                              preemption_threshold=threshold)
    m = EngineModel(Profile(**base), clock=clock, policy="priority" if priority else "fcfs",
                    priority_sign=sign, batching="sglang", sglang=settings)
    return m, clock


def req(rid: str, prompt: int = 8, out: int = 50, prio: int = 0) -> SimRequest:
    return SimRequest(rid, prompt_tokens=prompt, max_tokens=out, priority=prio, ignore_eos=True)


def step(m: EngineModel, clock: FakeClock) -> tuple[list[tuple[str, int]], list[str]]:
    """One step: (what it computed, which requests got a token)."""
    plan = m.schedule()
    clock.t += plan.duration_s
    res = m.commit(plan)
    return [(r.request_id, n) for r, n in plan.scheduled], [r.request_id for r, _ in res.tokens]


def run_until_idle(m: EngineModel, clock: FakeClock, limit: int = 100_000) -> dict[str, int]:
    tokens: dict[str, int] = {}
    for _ in range(limit):
        if not m.has_work():
            return tokens
        _, got = step(m, clock)
        for rid in got:
            tokens[rid] = tokens.get(rid, 0) + 1
    raise AssertionError("model never went idle")


def test_a_prefill_batch_pauses_the_running_decodes() -> None:
    m, clock = make()
    m.add(req("a"))
    m.add(req("b"))
    assert step(m, clock) == ([("a", 8), ("b", 8)], ["a", "b"])  # one prefill batch, both
    assert step(m, clock) == ([("a", 1), ("b", 1)], ["a", "b"])  # a decode batch
    m.add(req("c", prompt=20))
    plan = m.schedule()
    # prefill first: c's prompt alone, a and b do not advance in this step
    assert [(r.request_id, n) for r, n in plan.scheduled] == [("c", 20)]
    assert plan.decode_seqs == 0 and plan.prefill_tokens == 20
    clock.t += plan.duration_s
    assert [r.request_id for r in m.commit(plan).first_tokens] == ["c"]
    assert step(m, clock)[0] == [("a", 1), ("b", 1), ("c", 1)]
    assert m.sglang is not None and m.sglang.prefill_batches == 2


def test_a_long_prompt_is_chunked_at_chunked_prefill_size_and_goes_on_first() -> None:
    m, clock = make(chunk=32)
    m.add(req("d", prompt=4))
    step(m, clock)  # d is decoding
    m.add(req("long", prompt=100))
    m.add(req("late", prompt=10))
    seen = [step(m, clock)[0] for _ in range(4)]
    # 32-token chunks, the chunked prompt first in each; d's decode waits throughout; the
    # last chunk (4) leaves room in the budget for the next request in the queue
    assert seen == [[("long", 32)], [("long", 32)], [("long", 32)], [("long", 4), ("late", 10)]]
    assert step(m, clock)[0] == [("d", 1), ("long", 1), ("late", 1)]


def test_no_chunking_and_max_prefill_tokens_bound_a_batch() -> None:
    m, clock = make(chunk=-1, max_prefill=50)
    for rid, n in (("x", 60), ("y", 30), ("z", 15)):
        m.add(req(rid, prompt=n))
    # x is over the batch's 50 tokens but first, so it runs whole; y then waits
    assert step(m, clock)[0] == [("x", 60)]
    assert step(m, clock)[0] == [("y", 30), ("z", 15)]


def test_priority_order_higher_first_then_arrival() -> None:
    m, clock = make(chunk=-1, max_num_seqs=1)
    for rid, prio in (("h1", HEAVY), ("n1", NEUTRAL), ("l1", LIGHT), ("l2", LIGHT)):
        m.add(req(rid, out=1, prio=prio))
    order = [step(m, clock)[0][0][0] for _ in range(4)]
    assert order == ["l1", "l2", "n1", "h1"]


def test_low_priority_values_first_and_fcfs_without_priority_scheduling() -> None:
    m, clock = make(chunk=-1, max_num_seqs=1, sign=1)
    for rid, prio in (("a", 5), ("b", 1), ("c", 3)):
        m.add(req(rid, out=1, prio=prio))
    assert [step(m, clock)[0][0][0] for _ in range(3)] == ["b", "c", "a"]
    m, clock = make(chunk=-1, max_num_seqs=1, priority=False)
    for rid, prio in (("a", 5), ("b", 1), ("c", 3)):
        m.add(req(rid, out=1, prio=prio))
    assert [step(m, clock)[0][0][0] for _ in range(3)] == ["a", "b", "c"]


def _seats_taken_by_the_flooder(threshold: int) -> tuple[EngineModel, FakeClock,
                                                         dict[str, SimRequest]]:
    """Both seats held by decoding flood requests (one neutral, one heavy, as InferGrid
    sends them), then a light request arrives."""
    m, clock = make(max_num_seqs=2, threshold=threshold)
    reqs = {"flood-1": req("flood-1", out=300, prio=NEUTRAL),
            "flood-2": req("flood-2", out=300, prio=HEAVY), "light": req("light", out=4)}
    m.add(reqs["flood-1"])
    m.add(reqs["flood-2"])
    step(m, clock)
    step(m, clock)
    m.add(reqs["light"])
    return m, clock, reqs


def test_threshold_1_light_preempts_the_heavy_one_for_its_seat() -> None:
    m, clock, reqs = _seats_taken_by_the_flooder(threshold=1)
    plan = m.schedule()
    # 0 - (-2) = 2 > 1: the heavy sequence goes back to the queue, the light one prefills
    # in this very step; 0 - (-1) = 1 is not more than 1: the neutral one keeps its seat
    assert [(r.request_id, n) for r, n in plan.scheduled] == [("light", 8)]
    assert plan.preempted == [reqs["flood-2"]]
    heavy = reqs["flood-2"]
    assert heavy.status == PREEMPTED and heavy.num_computed == 0 and heavy.blocks == 0
    clock.t += plan.duration_s
    assert m.commit(plan).first_tokens == [reqs["light"]]
    assert m.sglang is not None and m.sglang.priority_preemptions == 1
    # the heavy one cannot take a seat back: it is not more important than either
    assert step(m, clock)[0] == [("flood-1", 1), ("light", 1)]
    run_until_idle(m, clock)
    assert [r.num_output for r in reqs.values()] == [300, 300, 4]  # nothing lost
    assert heavy.num_preemptions == 1 and m.counters.preemptions == 1


def test_default_threshold_10_preempts_nothing_the_light_request_waits_for_a_seat() -> None:
    m, clock, reqs = _seats_taken_by_the_flooder(threshold=10)
    steps = 0
    while reqs["light"].status != RUNNING:
        step(m, clock)
        steps += 1
    assert steps == 299  # 298 more decodes until the flood requests' 300th tokens
    assert reqs["flood-1"].status == "finished" and m.counters.preemptions == 0


def test_preemption_is_off_without_priority_scheduling_or_when_disabled() -> None:
    for kw in ({"priority": False}, {"threshold": None}):
        m, clock = make(max_num_seqs=1, **kw)
        m.add(req("heavy", out=20, prio=HEAVY))
        step(m, clock)
        m.add(req("light", out=2, prio=LIGHT + 100))
        step(m, clock)
        assert m.requests["heavy"].status == RUNNING and m.counters.preemptions == 0, kw


def test_preemption_takes_the_least_important_then_newest_and_as_many_as_kv_needs() -> None:
    m, clock = make(max_num_seqs=3, threshold=0, kv_blocks=40)  # 640 tokens of KV
    m.add(req("old", prompt=16, out=100, prio=HEAVY))
    m.add(req("new", prompt=16, out=100, prio=HEAVY))
    m.add(req("mid", prompt=16, out=100, prio=NEUTRAL))
    step(m, clock)
    # a light request that needs most of the KV (400 prompt + 100 out) while the three
    # running ones reserve 99 x 0.7 each: two preemptions make room, the third is spared
    m.add(req("big", prompt=400, out=100, prio=LIGHT))
    plan = m.schedule()
    assert [r.request_id for r in plan.preempted] == ["new", "old"]  # newest heavy first
    assert [(r.request_id, n) for r, n in plan.scheduled] == [("big", 64)]  # a first chunk


def test_kv_reservation_holds_back_admission_until_there_is_room() -> None:
    m, clock = make(max_num_seqs=8, kv_blocks=20, chunk=-1)  # 320 tokens of KV
    reqs = [req(f"r{i}", prompt=40, out=200) for i in range(4)]
    for r in reqs:
        m.add(r)
    computed, _ = step(m, clock)
    # each needs 40 + 200 tokens; once r0 is in, with its 200 reserved, r1's do not fit
    assert computed == [("r0", 40)]
    run_until_idle(m, clock)
    assert [r.num_output for r in reqs] == [200] * 4
    assert m.free_blocks == m.total_blocks and not m.running and m.num_waiting == 0


def test_decode_out_of_kv_retracts_the_fewest_outputs_first() -> None:
    m, clock = make(max_num_seqs=8, kv_blocks=60, chunk=-1)  # 960 tokens of KV
    a, b = req("a", prompt=16, out=800), req("b", prompt=16, out=400)
    m.add(a)
    for _ in range(300):
        step(m, clock)  # new_token_ratio decays while a decodes: its reservation shrinks
    m.add(b)
    assert step(m, clock)[0] == [("b", 16)]  # admitted beside a on the decayed estimate
    retracted = []
    while m.has_work():
        plan = m.schedule()
        retracted += [r.request_id for r in plan.preempted]
        clock.t += plan.duration_s
        m.commit(plan)
    assert retracted and set(retracted) == {"b"}  # fewer outputs than a, so b goes back
    assert m.sglang is not None and m.sglang.retractions == len(retracted)
    assert (a.num_output, b.num_output) == (800, 400)
    assert m.requests == {} and m.free_blocks == m.total_blocks


def test_random_workload_completes_deterministically() -> None:
    def run(seed: int) -> tuple[dict[str, int], dict[str, int], float]:
        m, clock = make(max_num_seqs=6, kv_blocks=80, chunk=48, threshold=1)
        rng = random.Random(seed)
        got: dict[str, int] = {}
        want: dict[str, int] = {}
        for i in range(60):
            want[f"q{i}"] = rng.randint(1, 80)
            m.add(req(f"q{i}", prompt=rng.randint(1, 200), out=want[f"q{i}"],
                      prio=rng.choice((LIGHT, NEUTRAL, HEAVY))))
            for _ in range(rng.randint(0, 3)):
                if m.has_work():
                    for rid in step(m, clock)[1]:
                        got[rid] = got.get(rid, 0) + 1
        for rid, n in run_until_idle(m, clock).items():
            got[rid] = got.get(rid, 0) + n
        assert m.free_blocks == m.total_blocks and m.num_waiting == 0
        return got, want, clock.t

    got, want, t = run(3)
    assert got == want
    assert run(3) == (got, want, t)


def test_abort_of_a_chunked_prompt_frees_it() -> None:
    m, clock = make(chunk=16)
    m.add(req("long", prompt=100))
    step(m, clock)
    assert m.running and m.free_blocks < m.total_blocks
    m.abort("long")
    assert not m.has_work() and m.free_blocks == m.total_blocks


def test_assist_is_refused_on_sglang_batching() -> None:
    from infergridd.assist.policy import AssistSettings
    with pytest.raises(ValueError, match="vLLM batching only"):
        EngineModel(Profile(), clock=FakeClock(), batching="sglang", assist=AssistSettings())


def test_cli_takes_sglangs_flags_with_the_sglang_personality() -> None:
    o = options_from_args([
        "--personality", "sglang", "--max-running-requests", "3", "--enable-priority-scheduling",
        "--schedule-policy", "lpm", "--priority-scheduling-preemption-threshold", "1",
        "--chunked-prefill-size", "512", "--max-prefill-tokens", "4096"])
    assert o.resolve_profile().max_num_seqs == 3
    assert (o.batching, o.engine_policy, o.priority_sign) == ("sglang", "priority", -1)
    assert o.sglang_settings() == SglangSettings(chunked_prefill_size=512,
                                                 max_prefill_tokens=4096,
                                                 preemption_threshold=1, schedule_policy="lpm")
    low = options_from_args(["--personality", "sglang", "--schedule-low-priority-values-first",
                             "--disable-priority-preemption"])
    assert low.priority_sign == 1 and low.engine_policy == "fcfs"
    assert low.sglang_settings().preemption_threshold is None
    assert options_from_args(["--personality", "sglang"]).sglang_settings() == SglangSettings()


def test_sglang_flags_need_the_sglang_personality_and_assist_the_vllm_one() -> None:
    with pytest.raises(ProfileError, match="chunked_prefill_size.*personality sglang"):
        SimOptions(chunked_prefill_size=512).resolve_profile()
    with pytest.raises(ProfileError, match="priority_scheduling_preemption_threshold"):
        SimOptions(priority_scheduling_preemption_threshold=0).resolve_profile()
    from infergridd.assist.policy import AssistSettings
    with pytest.raises(ProfileError, match="engine-assist"):
        SimOptions(personality="sglang", assist=AssistSettings()).resolve_profile()
    with pytest.raises(ProfileError, match="schedule policy"):
        SimOptions(personality="sglang", schedule_policy="nope").resolve_profile()
