"""The assisted step policy (infergridd/assist/policy.py): pure decisions, no engine.

Each rule against the reason a quiet tenant waited on stock vLLM: seats (preempt
the newest heavy sequence, only as many as the light requests need), held heavy
prefill chunks (never a light one), the exclusive option, short steps while heavy
work runs, and a no-op when there is no light work or the policy is off.
"""

from __future__ import annotations

from infergridd.assist.policy import (
    HEAVY,
    LIGHT,
    NEUTRAL,
    NOOP,
    AssistSettings,
    SeqInfo,
    decide,
    is_prefilling,
    tier_of,
)

ON = AssistSettings()
BUDGET = 2048


def seq(tier: int, order: float, prefilling: bool = False) -> SeqInfo:
    return SeqInfo(tier=tier, order=order, prefilling=prefilling)


def heavy_decoding(n: int) -> list[SeqInfo]:
    return [seq(HEAVY, float(i)) for i in range(n)]


# -- tiers -----------------------------------------------------------------------

def test_tiers_from_the_engine_priority() -> None:
    assert tier_of(0) == LIGHT and tier_of(1) == NEUTRAL and tier_of(2) == HEAVY
    assert tier_of(1000) == LIGHT and tier_of(3002) == HEAVY  # band * 1000 + tier
    assert tier_of(-2, sign=-1) == HEAVY  # SGLang: higher runs first, sent negated
    assert tier_of(-5) == LIGHT  # not InferGrid's: never heavy


def test_prefilling_is_more_than_the_last_sampled_token_to_compute() -> None:
    assert is_prefilling(0, 1500)
    assert is_prefilling(256, 1500)
    assert not is_prefilling(1500, 1501)  # decoding: one sampled token to feed
    assert not is_prefilling(1501, 1501)  # its last chunk scheduled (or async placeholders)


# -- seats -----------------------------------------------------------------------

def test_a_light_request_preempts_the_newest_heavy_when_every_seat_is_taken() -> None:
    running = [seq(HEAVY, 3.0), seq(HEAVY, 9.0), seq(HEAVY, 1.0), seq(HEAVY, 5.0)]
    d = decide(running, 1, 0, 4, BUDGET, ON)
    assert d.preempt == [1]  # order 9.0, the newest
    assert d.urgent and not d.admit_heavy


def test_the_victim_is_the_one_with_the_least_work_to_throw_away() -> None:
    """Preemption means recompute: among the heavy, the fewest computed tokens goes."""
    running = [SeqInfo(HEAVY, 3.0, False, computed=900), SeqInfo(HEAVY, 9.0, False, computed=700),
               SeqInfo(HEAVY, 1.0, True, computed=40), SeqInfo(NEUTRAL, 5.0, True, computed=0)]
    assert decide(running, 1, 0, 4, BUDGET, ON).preempt == [2]  # heavy before neutral
    assert decide(running, 2, 0, 4, BUDGET, ON).preempt == [1, 2]


def test_only_as_many_preemptions_as_the_light_requests_need() -> None:
    running = [seq(HEAVY, 3.0), seq(HEAVY, 9.0), seq(HEAVY, 1.0), seq(HEAVY, 5.0)]
    assert sorted(decide(running, 2, 0, 4, BUDGET, ON).preempt) == [1, 3]  # 9.0 and 5.0
    # one seat free: two light requests need one more
    assert decide(running[:3], 2, 0, 4, BUDGET, ON).preempt == [1]
    # enough free seats: nothing preempted
    assert decide(running[:2], 2, 0, 4, BUDGET, ON).preempt == []
    # more light requests than heavy sequences: every heavy one, no more
    assert sorted(decide(running, 9, 0, 4, BUDGET, ON).preempt) == [0, 1, 2, 3]


def test_heavy_is_preempted_before_neutral_and_light_never() -> None:
    running = [seq(LIGHT, 8.0), seq(NEUTRAL, 9.0), seq(HEAVY, 1.0), seq(LIGHT, 7.0)]
    assert decide(running, 1, 0, 4, BUDGET, ON).preempt == [2]  # heavy, though older
    assert decide(running, 2, 0, 4, BUDGET, ON).preempt == [1, 2]  # then neutral
    assert decide(running, 3, 0, 4, BUDGET, ON).preempt == [1, 2]  # never a light one
    # a neutral sequence was sent while no light tenant was around: it yields its seat
    no_heavy = [seq(LIGHT, 8.0), seq(NEUTRAL, 9.0)]
    d = decide(no_heavy, 1, 0, 2, BUDGET, ON)
    assert d.preempt == [1] and d.hold == [] and not d.admit_heavy
    only_light = [seq(LIGHT, 8.0), seq(LIGHT, 9.0)]
    assert decide(only_light, 1, 0, 2, BUDGET, ON).preempt == []


def test_no_preemption_for_a_light_request_already_running() -> None:
    running = [seq(HEAVY, 1.0), seq(HEAVY, 2.0), seq(LIGHT, 3.0, prefilling=True)]
    d = decide(running, 0, 0, 3, BUDGET, ON)
    assert d.preempt == [] and d.urgent


def test_preempt_off_keeps_every_seat() -> None:
    s = AssistSettings(preempt=False)
    assert decide(heavy_decoding(4), 1, 0, 4, BUDGET, s).preempt == []


# -- hold ------------------------------------------------------------------------

def test_heavy_prefills_are_held_while_light_work_is_urgent() -> None:
    running = [seq(HEAVY, 1.0, prefilling=True), seq(HEAVY, 2.0),
               seq(NEUTRAL, 3.0, prefilling=True), seq(LIGHT, 4.0, prefilling=True)]
    d = decide(running, 0, 0, 8, BUDGET, ON)
    assert d.hold == [0, 2]  # prefills of the others: not a decode, never a light one
    d = decide(running, 1, 0, 8, BUDGET, ON)
    assert d.hold == [0, 2] and d.preempt == []


def test_a_light_prefill_is_never_held() -> None:
    running = [seq(LIGHT, 1.0, prefilling=True), seq(LIGHT, 2.0), seq(HEAVY, 3.0, True)]
    for s in (ON, AssistSettings(exclusive_prefill=True)):
        d = decide(running, 1, 0, 8, BUDGET, s)
        assert 0 not in d.hold, s


def test_a_preempted_sequence_is_not_also_held() -> None:
    running = [seq(HEAVY, 1.0, prefilling=True), seq(HEAVY, 2.0, prefilling=True)]
    d = decide(running, 1, 0, 2, BUDGET, ON)
    assert d.preempt == [1] and d.hold == [0]


def test_hold_off_holds_nothing() -> None:
    running = [seq(HEAVY, 1.0, prefilling=True), seq(LIGHT, 2.0, prefilling=True)]
    d = decide(running, 0, 0, 8, BUDGET, AssistSettings(hold_heavy_prefill=False))
    assert d.hold == [] and d.urgent and not d.admit_heavy


def test_exclusive_holds_everything_but_the_light_prefills() -> None:
    running = [seq(HEAVY, 1.0), seq(HEAVY, 2.0, prefilling=True), seq(NEUTRAL, 3.0),
               seq(LIGHT, 4.0), seq(LIGHT, 5.0, prefilling=True)]
    d = decide(running, 0, 0, 8, BUDGET, AssistSettings(exclusive_prefill=True))
    assert d.hold == [0, 1, 2, 3]  # light decodes too: the prefill's step is its own
    # a light request waiting (no seat short): every running sequence held
    d = decide(running[:4], 1, 0, 8, BUDGET, AssistSettings(exclusive_prefill=True))
    assert d.hold == [0, 1, 2, 3] and d.preempt == []
    # with a preemption: the preempted one is not held as well
    full = heavy_decoding(4)
    d = decide(full, 1, 0, 4, BUDGET, AssistSettings(exclusive_prefill=True))
    assert d.preempt == [3] and d.hold == [0, 1, 2]


# -- no light work ---------------------------------------------------------------

def test_no_light_work_no_heavy_work_is_a_no_op() -> None:
    running = [seq(NEUTRAL, 1.0, prefilling=True), seq(LIGHT, 2.0)]
    d = decide(running, 0, 0, 4, BUDGET, ON)
    assert d is NOOP and not d.acts
    assert decide([], 0, 0, 4, BUDGET, ON) is NOOP


def test_without_light_work_heavy_steps_are_only_capped() -> None:
    running = [seq(HEAVY, 1.0), seq(HEAVY, 2.0, prefilling=True), seq(HEAVY, 3.0)]
    d = decide(running, 0, 0, 4, BUDGET, ON)
    assert not d.urgent and d.admit_heavy and d.preempt == [] and d.hold == []
    assert d.step_budget == 2 + ON.heavy_chunk_tokens  # two decodes + the chunk cap
    # heavy work only queued: the cap applies too
    assert decide([], 0, 3, 4, BUDGET, ON).step_budget == ON.heavy_chunk_tokens
    # a cap at or over the engine's budget changes nothing
    assert decide(running, 0, 0, 4, 200, ON) is NOOP
    assert decide(running, 0, 0, 4, BUDGET, AssistSettings(heavy_chunk_tokens=0)) is NOOP


# -- off ---------------------------------------------------------------------------

def test_disabled_settings_decide_nothing() -> None:
    off = AssistSettings(enabled=False)
    running = [seq(HEAVY, 1.0, prefilling=True), seq(HEAVY, 2.0)]
    for light_waiting in (0, 1, 5):
        d = decide(running, light_waiting, 3, 2, BUDGET, off)
        assert d is NOOP and not d.acts and d.admit_heavy


def test_priorities_not_sent_by_infergrid_make_it_a_no_op() -> None:
    """Every request at priority 0 (an engine used without InferGrid): all light,
    nothing heavy to preempt, hold or cap."""
    running = [seq(tier_of(0), float(i), prefilling=i == 0) for i in range(4)]
    d = decide(running, 3, 0, 4, BUDGET, ON)
    assert d.preempt == [] and d.hold == [] and d.step_budget is None
