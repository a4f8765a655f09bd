"""``results.json`` and ``report.md``: the numbers, and a table a person can read.

The report puts each figure next to its 95 % interval and says which intervals
are too wide to carry a claim, so a reader does not mistake one noisy run for
a result.  ``requests.csv`` keeps every request for re-analysis.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from .loadgen import Run
from .runner import finite


def write_json(path: Path, results: dict[str, Any]) -> None:
    path.write_text(json.dumps(finite(results), indent=1))


def write_requests_csv(path: Path, runs: dict[str, list[Run]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arm", "tenant", "index", "scheduled_s", "sent_s", "status", "http_status",
                    "ttft_s", "queue_ms", "e2e_s", "tokens_in", "tokens_out", "error"])
        for arm, rs in runs.items():
            for run in rs:
                for r in run.results:
                    w.writerow([arm, r.tenant, r.index, f"{r.scheduled_s:.4f}",
                                f"{r.sent_s:.4f}", r.status, r.http_status,
                                "" if r.ttft_s is None else f"{r.ttft_s:.5f}",
                                "" if r.queue_s is None else f"{r.queue_s * 1000:.1f}",
                                "" if r.e2e_s is None else f"{r.e2e_s:.5f}",
                                r.tokens_in, r.tokens_out, r.error])


def _ms(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def _stat(m: dict[str, Any], k: str) -> str:
    v = m.get(k)
    ci = (m.get("ci95") or {}).get(k)
    if v is None:
        return "–"
    return f"{_ms(v)} [{_ms(ci[0])}–{_ms(ci[1])}]" if ci else _ms(v)


def _ratio(r: dict[str, Any] | None) -> str:
    if not r or r.get("ratio") is None:
        return "–"
    lo, hi = r["ci95"]
    mark = " ⚠" if r.get("flags") else ""
    return f"{r['ratio']:.2f}× [{lo:.2f}–{hi:.2f}]{mark}"


def _band(b: dict[str, Any] | None) -> list[str]:
    """n, mean TTFT, queued, engine + relay, dominant: one band of the phase breakdown."""
    if not b or not b.get("n"):
        return ["0", "–", "–", "–", "–"]
    if not b.get("queue_known"):
        return [str(b["n"]), _ms(b["ttft_ms"]), "–", _ms(b["engine_ms"]), "engine only"]
    return [str(b["n"]), _ms(b["ttft_ms"]), _ms(b["queued_ms"]), _ms(b["engine_ms"]),
            b["dominant"]]


def phases_section(arms: dict[str, Any], quiet: list[str]) -> list[str]:
    """Where the slowest 1 % of each quiet tenant's TTFTs (and the median ones) waited."""
    rows = []
    for arm, s in arms.items():
        for q in quiet:
            t = s["tenants"].get(q)
            if t and "tail_phases" in t:
                rows.append(f"| {arm} | {q} | " + " | ".join(
                    _band(t["tail_phases"]) + _band(t.get("median_phases"))) + " |")
    if not rows:
        return []
    return ["## Where the slowest 1% of quiet requests waited", "",
            "Mean ms among the requests whose TTFT is at or above the tenant's p99 (and, for "
            "contrast, between its p45 and p55): *queued* is the time in InferGrid's queue "
            "(the front door's `X-InferGrid-Queue-Ms`), *engine* the rest of the TTFT "
            "(engine and relay). Arms that bypass InferGrid have no queue: engine only.", "",
            "| arm | tenant | p99+ n | TTFT | queued | engine | dominant | "
            "median n | TTFT | queued | engine | dominant |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|", *rows, ""]


def render(results: dict[str, Any]) -> str:
    a = results["args"]
    w = results["workload"]
    eng = results["engine"]
    cap = results.get("capacity")
    lines = [f"# InferGrid benchmark: {w['name']}", "",
             f"{w.get('description', '')}", "",
             f"- engine: {eng.get('kind')} " + ", ".join(f"{k}={v}" for k, v in eng.items()
                                                        if k != "kind"),
             f"- duration {a['duration_s']:g} s, warm-up {a['warmup_s']:g} s (requests "
             f"*scheduled* before it are dropped in every arm), seed {a['seed']}, "
             f"drain {a['drain_s']:g} s",
             f"- planned requests {w['planned_requests']}, measured {w['measured_requests']}"]
    if cap:
        lines.append(f"- capacity (closed loop, flooder shape, {cap['concurrency']} streams): "
                     f"{cap['tokens_per_s']:,.0f} output tokens/s, "
                     f"{cap['requests_per_s']:.2f} req/s")
    if results.get("flood_rate_rps"):
        lines.append(f"- flood rate: {results['flood_rate_rps']:.2f} req/s "
                     f"(--scale {a['scale']}, --flood-multiple {a['flood_multiple']})")
    lines.append(f"- pinning: {results.get('pinning')}")
    lines.append("")
    quiet = [t["name"] for t in w["tenants"] if not t["flood"]]
    flood = [t["name"] for t in w["tenants"] if t["flood"]]
    ratios = results.get("ratios", {})
    arms = results["arms"]
    for q in quiet:
        lines += [f"## Quiet tenant `{q}`: TTFT (ms, 95% CI) and ratio to solo", "",
                  "| arm | n | TTFT p50 | TTFT p99 | p50 / solo | p99 / solo | ITL p50 | "
                  "e2e p50 | ok | 429 | failed | unfinished |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for arm, s in arms.items():
            t = s["tenants"].get(q)
            if not t:
                continue
            r = ratios.get(arm, {}).get(q, {})
            lines.append(
                f"| {arm} | {t['ttft_ms']['n']} | {_stat(t['ttft_ms'], 'p50')} | "
                f"{_stat(t['ttft_ms'], 'p99')} | "
                f"{'1 (ref)' if arm == 'solo' else _ratio(r.get('ttft_p50'))} | "
                f"{'1 (ref)' if arm == 'solo' else _ratio(r.get('ttft_p99'))} | "
                f"{_ms(t['itl_ms']['p50'])} | {_ms(t['e2e_ms']['p50'])} | {t['ok']} | "
                f"{t['rejected']} | {t['failed']} | {t['unfinished']} |")
        lines.append("")
    lines += phases_section(arms, quiet)
    lines += ["## Throughput and flooders", "",
              "| arm | total tokens/s | vs capacity | " +
              " | ".join(f"`{f}` tok/s, ok, 429" for f in flood) +
              " | send lag p99 ms | engine waiting (mean / max) | InferGrid queued (mean) |",
              "|---|---|---|" + "---|" * len(flood) + "---|---|---|"]
    for arm, s in arms.items():
        cells = []
        for f in flood:
            t = s["tenants"].get(f)
            cells.append(f"{t['goodput_tok_s']:,.0f}, {t['ok']}, {t['rejected']}" if t else "–")
        wait, queued = [], []
        for sat in s["saturation"].values():
            for k, v in sat.items():
                if k.endswith("vllm:num_requests_waiting") or k.endswith("infergrid_engine_waiting"):
                    wait.append(f"{v['mean']:.1f} / {v['max']:.0f}")
                if k.endswith("infergrid_tenant_queued"):
                    queued.append(f"{v['mean']:.1f}")
        vc = s.get("throughput_vs_capacity")
        lines.append(f"| {arm} | {s['throughput_tok_s']:,.0f} | "
                     f"{'–' if vc is None else f'{vc:.2f}'} | " + " | ".join(cells) +
                     (" | " if cells else "") +
                     f"{s['send_lag_ms']['p99']:.1f} | {'; '.join(wait[:2]) or '–'} | "
                     f"{'; '.join(queued) or '–'} |")
    lines.append("")
    if len(w["tenants"]) > 2:
        lines += ["## Token shares (measured window) vs weight shares", "",
                  "| arm | " + " | ".join(t["name"] for t in w["tenants"]) + " |",
                  "|---|" + "---|" * len(w["tenants"])]
        for arm, s in arms.items():
            cells = []
            for t in w["tenants"]:
                ts = s["tenants"].get(t["name"])
                cells.append("–" if not ts or ts.get("token_share") is None else
                             f"{ts['token_share']:.1%} (w {ts['weight_share']:.1%})")
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines.append("")
    notes = []
    for arm, s in arms.items():
        for name, t in s["tenants"].items():
            for metric in ("ttft_ms",):
                for fl in t[metric].get("flags", []):
                    notes.append(f"- {arm} / {name} / TTFT: {fl}")
            if t.get("ttft_censored"):
                notes.append(f"- {arm} / {name}: {t['ttft_censored']} requests got no token "
                             "before the drain ended; their wait is used as a lower bound "
                             "(the TTFT figures are lower bounds)")
        for name, rr in ratios.get(arm, {}).items():
            for k, r in rr.items():
                for fl in r.get("flags", []):
                    notes.append(f"- {arm} / {name} / {k} ratio: {fl}")
        if s["send_lag_ms"]["p99"] > 50:
            notes.append(f"- {arm}: send lag p99 {s['send_lag_ms']['p99']:.0f} ms: the load "
                         "generator fell behind its schedule; arrivals are not the planned ones")
    lines += ["## Notes on the intervals", "",
              "Intervals are seeded percentile-bootstrap 95% CIs (1000 resamples; ratios "
              "resample both runs). `solo#2` vs `solo` shows run-to-run noise: a ratio "
              "inside that noise is no evidence either way. `direct#2` is `direct` again "
              "after every other arm: the gap between their throughputs is how much the "
              "machine drifted over the run, and a throughput ratio within it is no "
              "evidence either way. Flagged (relative width > 50%, "
              "or a p99 from < 100 samples): ⚠.", ""]
    lines += notes or ["- none flagged"]
    lines.append("")
    return "\n".join(lines)


def write_report(path: Path, results: dict[str, Any]) -> None:
    path.write_text(render(finite(results)))
