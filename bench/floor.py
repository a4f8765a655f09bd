"""The floor: what an ideal front-end scheduler could give a quiet tenant on a saturated engine.

Why this exists: the hero claim compares a quiet tenant's TTFT beside a flooder
with its TTFT alone.  No scheduler *in front of* an engine can make the
engine's steps shorter: once the quiet request is inside, it waits for the step
in progress to end, then its prefill runs in a step that also carries every
running sequence's decode.  This script measures that floor with the simulated
engine's own step model (``infergridd/sim/model.py``) in virtual time,
no processes, no network, so it is exact and noise-free:

* ``alone``: the quiet tenant's requests alone on the engine (the ``solo`` arm);
* ``ideal``: the same requests beside a flooder that an oracle tops up whenever
  the engine holds fewer than ``N`` sequences in all (``N`` = max_num_seqs minus
  a reserve, as InferGrid's reserve counts), quiet
  requests entering the engine the instant they arrive, first in its queue
  (engine priority), and optionally (``--guard``) no flooder request admitted
  while a quiet request waits for its first token.  Zero dispatch latency.

Whatever InferGrid measures for the quiet tenant in the ``vtc`` arm can only be
worse than ``ideal``; when ``ideal`` is itself over 1.2x ``alone`` the claim is
out of reach for any front end on that engine and workload.

The engine is InferGrid's too (DESIGN §5), so the table goes on with the
engine running InferGrid's step policy (``infergridd/assist/policy.py``, the
code the vLLM plugin runs): the *assisted ideal* is the same oracle with the
flooder marked heavy, and the core runs in front of the assisted engine.

Usage: python bench/floor.py [--workload hero-dense] [--profile a100-llama3-8b]
       [--seconds 600] [--reserve 6] [--seed 0] [--out FILE]
"""

from __future__ import annotations

import argparse
import heapq
from pathlib import Path

import msgspec
import numpy as np

from infergridd import protocol as p
from infergridd.assist.policy import AssistSettings
from infergridd.bench import workload as wl
from infergridd.config import Config
from infergridd.core.core import SchedulerCore, Send
from infergridd.sim.model import EngineModel, SimRequest
from infergridd.sim.profile import Profile, load_profile


def _profile(w: wl.Workload, name: str) -> Profile:
    return load_profile(name, {"max_num_seqs": w.max_num_seqs} if w.max_num_seqs else None)


def _quiet_arrivals(w: wl.Workload, seconds: float, seed: int,
                    ) -> list[tuple[float, int, wl.Planned]]:
    """The quiet tenants' arrivals and lengths, the very plan the benchmark sends, as a heap."""
    plan = sorted((p for q in w.tenants if not q.flood
                   for p in wl.tenant_plan(q, q.rate, seconds, seed)), key=lambda p: p.t)
    arrivals = [(p.t, i, p) for i, p in enumerate(plan)]
    heapq.heapify(arrivals)
    return arrivals


def _flood_lengths(spec: wl.TenantSpec, rng: np.random.Generator) -> tuple[int, int]:
    """(prompt, output) tokens of one more flooder request."""
    return int(wl.draw(spec.prompt, rng, 1)[0]), int(wl.draw(spec.output, rng, 1)[0])


def simulate(w: wl.Workload, profile_name: str, seconds: float, flood_n: int, guard: bool,
             seed: int, assist: AssistSettings | None = None) -> tuple[list[float], float]:
    """Quiet TTFTs (s) and output tokens/s; ``flood_n`` = 0: the quiet tenant alone.

    ``assist``: the engine runs InferGrid's step policy, and the oracle marks the
    flooder heavy (engine priority 2), as InferGrid's core does."""
    prof = _profile(w, profile_name)
    t = 0.0
    eng = EngineModel(prof, clock=lambda: t, seed=seed, policy="priority", assist=assist)
    flood_prio = 2 if assist is not None else 1
    rng = np.random.default_rng(seed)
    flood = [f for f in w.tenants if f.flood]
    arrivals = _quiet_arrivals(w, seconds, seed)
    sent: dict[str, float] = {}
    ttfts: list[float] = []
    pending_first: set[str] = set()
    flooding = quiet_in = 0  # flooder and quiet requests inside the engine
    out_tokens = 0
    n = 0

    def add(tenant: str, prompt: int, out: int, prio: int) -> str:
        nonlocal n
        n += 1
        rid = f"{tenant}-{n}"
        eng.add(SimRequest(rid, prompt, out, priority=prio, ignore_eos=True, arrival=t))
        sent[rid] = t
        return rid

    while t < seconds:
        while arrivals and arrivals[0][0] <= t:
            at, _, p = heapq.heappop(arrivals)
            rid = add(p.tenant, p.prompt_tokens, p.max_tokens, 0)
            sent[rid] = at  # it arrived mid-step: the wait for that step counts
            pending_first.add(rid)
            quiet_in += 1
        if flood_n and flood and not (guard and pending_first):
            while flooding + quiet_in < flood_n:
                add("flood", *_flood_lengths(flood[0], rng), flood_prio)
                flooding += 1
        if not eng.has_work:
            if not arrivals:
                break
            t = arrivals[0][0]
            continue
        plan_ = eng.schedule()
        t += plan_.duration_s
        res = eng.commit(plan_)
        out_tokens += len(res.tokens)
        for r in res.first_tokens:
            if r.request_id in pending_first:
                pending_first.discard(r.request_id)
                if sent[r.request_id] >= w.warmup_s:
                    ttfts.append(t - sent[r.request_id])
        ended_flood = sum(1 for r in res.finished if r.request_id.startswith("flood-"))
        flooding -= ended_flood
        quiet_in -= len(res.finished) - ended_flood
    return ttfts, out_tokens / max(t, 1e-9)


def simulate_core(w: wl.Workload, profile_name: str, seconds: float, reserve: int, guard: bool,
                  seed: int, poll_s: float = 0.25, prefill_window: int = 4096,
                  assist: AssistSettings | None = None) -> tuple[list[float], float]:
    """The real ``SchedulerCore`` in front of the same engine, in the same virtual time.

    Zero network and CPU latency, engine status every ``poll_s`` (the supervisor's
    poll), the first token reported at once: what the scheduling *logic* gives.
    The flooder's queue in the core is kept deep (it floods)."""
    prof = _profile(w, profile_name)
    t = 0.0
    eng = EngineModel(prof, clock=lambda: t, seed=seed, policy="priority", assist=assist)
    cfg = msgspec.convert({
        "version": 1, "auth": "none",
        "models": [{"name": "m", "max_num_seqs": prof.max_num_seqs}],
        "tenants": [{"name": x.name, "weight": x.weight} for x in w.tenants],
        "scheduler": {"light_reserve": reserve, "prefill_guard": guard,
                      "prefill_window_tokens": prefill_window},
    }, Config)
    core = SchedulerCore(cfg, lambda: t)
    rng = np.random.default_rng(seed)
    flood = [f for f in w.tenants if f.flood]
    arrivals = _quiet_arrivals(w, seconds, seed)
    lengths: dict[str, tuple[int, int]] = {}
    sent: dict[str, float] = {}
    ttfts: list[float] = []
    out_tokens = 0
    n = 0
    next_poll = 0.0

    def status() -> p.EngineStatus:
        return p.EngineStatus(
            engine_id="m-0", model="m", kind="sim", state=p.EngineState.READY,
            endpoint="sim", max_num_seqs=prof.max_num_seqs, num_running=eng.num_running,
            num_waiting=eng.num_waiting, kv_usage=eng.kv_usage, supports_priority=True,
            assist="on" if assist is not None else "")

    def apply(sends: list[Send]) -> None:
        for s in sends:
            if isinstance(s.msg, p.Dispatch):
                rid = s.msg.request_id
                prompt, out = lengths[rid]
                eng.add(SimRequest(rid, prompt, out, priority=s.msg.engine_priority or 0,
                                   ignore_eos=True, arrival=t))

    def submit(tenant: str, prompt: int, out: int) -> str:
        nonlocal n
        n += 1
        rid = f"{tenant}-{n}"
        lengths[rid] = (prompt, out)
        sent[rid] = t
        apply(core.submit("fd", p.Submit(request_id=rid, tenant=tenant, model="m",
                                         prompt_tokens=prompt, max_tokens=out, submitted_at=t)))
        return rid

    apply(core.engines_update("sv", [status()]))
    quiet_ids: set[str] = set()
    while t < seconds:
        while arrivals and arrivals[0][0] <= t:
            at, _, pl = heapq.heappop(arrivals)
            rid = submit(pl.tenant, pl.prompt_tokens, pl.max_tokens)
            sent[rid] = at  # it arrived mid-step: the wait for that step counts
            quiet_ids.add(rid)
        if flood:
            queued = next(s.queued for s in core.tenant_stats() if s.name == flood[0].name)
            for _ in range(max(0, 200 - queued)):
                submit(flood[0].name, *_flood_lengths(flood[0], rng))
        if t >= next_poll:
            apply(core.engines_update("sv", [status()]))
            apply(core.tick())
            next_poll = t + poll_s
        if not eng.has_work:
            t = min(arrivals[0][0] if arrivals else seconds, next_poll)
            continue
        step = eng.schedule()
        t += step.duration_s
        res = eng.commit(step)
        out_tokens += len(res.tokens)
        for r in res.first_tokens:
            core.progress(r.request_id, 1)
            if r.request_id in quiet_ids and sent[r.request_id] >= w.warmup_s:
                ttfts.append(t - sent[r.request_id])
        for r in res.finished:
            apply(core.done("fd", p.Done(request_id=r.request_id, outcome=p.Outcome.OK,
                                         prompt_tokens=r.prompt_tokens,
                                         completion_tokens=r.num_output, engine_id="m-0")))
    return ttfts, out_tokens / max(t, 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", default="hero-dense")
    ap.add_argument("--profile", default="a100-llama3-8b")
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--reserve", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="also write the table (markdown) to this file")
    a = ap.parse_args()
    w = wl.load(a.workload)
    seqs = w.max_num_seqs or load_profile(a.profile).max_num_seqs
    alone, _ = simulate(w, a.profile, a.seconds, 0, False, a.seed)
    _, direct = simulate(w, a.profile, a.seconds, seqs, False, a.seed)
    a50, a99 = np.percentile(alone, 50), np.percentile(alone, 99)
    lines = [
        f"Workload `{w.name}`, profile `{a.profile}`, {a.seconds:.0f} s of virtual time "
        f"(first {w.warmup_s:.0f} s not measured), seed {a.seed}; command: "
        f"`python bench/floor.py --workload {a.workload} --profile {a.profile} "
        f"--seconds {a.seconds:g} --reserve {a.reserve} --seed {a.seed}`",
        "",
        "| front end | quiet n | TTFT p50 ms | TTFT p99 ms | p50 / alone | p99 / alone "
        "| output tok/s | vs engine alone at full batch |",
        "|---|---|---|---|---|---|---|---|",
        f"| quiet tenant alone | {len(alone)} | {a50 * 1e3:.1f} | {a99 * 1e3:.1f} | 1 | 1 | – | – |",
    ]
    cases = [
        (f"ideal: oracle at {seqs} sequences", lambda: simulate(
            w, a.profile, a.seconds, seqs, False, a.seed)),
        (f"ideal: oracle at {seqs - a.reserve} + guard", lambda: simulate(
            w, a.profile, a.seconds, seqs - a.reserve, True, a.seed)),
        ("InferGrid core, no headroom", lambda: simulate_core(
            w, a.profile, a.seconds, 0, False, a.seed, prefill_window=0)),
        ("InferGrid core, defaults", lambda: simulate_core(
            w, a.profile, a.seconds, a.reserve, True, a.seed)),
        (f"assisted ideal: oracle at {seqs}, engine assist", lambda: simulate(
            w, a.profile, a.seconds, seqs, False, a.seed, assist=AssistSettings())),
        (f"assisted ideal: oracle at {seqs}, assist + exclusive prefill", lambda: simulate(
            w, a.profile, a.seconds, seqs, False, a.seed,
            assist=AssistSettings(exclusive_prefill=True))),
        ("InferGrid core + engine assist (defaults)", lambda: simulate_core(
            w, a.profile, a.seconds, a.reserve, True, a.seed, assist=AssistSettings())),
        ("InferGrid core + assist + exclusive prefill", lambda: simulate_core(
            w, a.profile, a.seconds, a.reserve, True, a.seed,
            assist=AssistSettings(exclusive_prefill=True))),
        ("InferGrid core + assist, heavy chunks 256", lambda: simulate_core(
            w, a.profile, a.seconds, a.reserve, True, a.seed,
            assist=AssistSettings(heavy_chunk_tokens=256))),
        ("InferGrid core + assist, no chunk cap", lambda: simulate_core(
            w, a.profile, a.seconds, a.reserve, True, a.seed,
            assist=AssistSettings(heavy_chunk_tokens=0))),
    ]
    for label, run in cases:
        xs, tput = run()
        p50, p99 = np.percentile(xs, 50), np.percentile(xs, 99)
        lines.append(f"| {label} | {len(xs)} | {p50 * 1e3:.1f} | {p99 * 1e3:.1f} | "
                     f"{p50 / a50:.2f}× | {p99 / a99:.2f}× | {tput:,.0f} | {tput / direct:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
