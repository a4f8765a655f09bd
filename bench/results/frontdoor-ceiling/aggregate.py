"""The tables of ``frontdoor-ceiling.md`` from the runs' ``overhead.json`` files kept here.

    python aggregate.py RUN,RUN,... load.log      (e.g. raw-pin-r5,aiohttp-pin-r5 load.log)

Why a script: the figures are noisy and several runs per arm; the tables are medians
and ranges over them, and anyone can recompute them from the JSON.
"""

from __future__ import annotations

import json
import re
import statistics as st
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROLES = ["generator", "frontdoor", "scheduler", "engine"]


def main(runs: list[str], logs: list[str]) -> None:
    load = {}
    for lf in logs:
        for line in (HERE / lf).read_text().splitlines():
            m = re.match(r"=== (\S+) start \S+ load average: ([\d.]+)", line)
            if m:
                load[m.group(1)] = m.group(2)
    data = {n: json.loads((HERE / f"{n}.json").read_text()) for n in runs}
    rates = sorted({r["rate"] for j in data.values() for rs in j["ceiling"].values() for r in rs})
    print("| run | load | arm | " + " | ".join(f"{r:g}/s" for r in rates)
          + " | sustained | TTFT p99 ≤ 20 ms |")
    print("|---|---|---|" + "---|" * (len(rates) + 2))
    cpu: dict[tuple[str, float, str], list[float]] = {}
    for n, j in data.items():
        for arm, rs in j["ceiling"].items():
            by = {r["rate"]: r for r in rs}
            cells = []
            for rate in rates:
                r = by.get(rate)
                cells.append("–" if r is None else
                             f"{r['ttft_p50_ms']:.0f} / {r['ttft_p99_ms']:.0f}"
                             + ("" if r["sustained"] else " ✗")
                             + ("" if r["ok_frac"] >= 0.999 else f" ({r['ok_frac']:.0%} ok)"))
            print(f"| {n} | {load.get(n, '?')} | {arm} | " + " | ".join(cells)
                  + f" | {j['sustained_rps'][arm]:g} | {j['rps_within_ttft_bar'][arm]:g} |")
            gen = n.split("-")[0] + (" direct" if arm == "engine direct" else "")
            for r in rs:
                for k, v in r["cpu_ms"].items():
                    cpu.setdefault((gen, r["rate"], k), []).append(v)
    print()
    print("| generator (arm) | rate | " + " | ".join(f"{k} ms/req" for k in ROLES) + " | n |")
    print("|---|---|" + "---|" * (len(ROLES) + 1))
    for g in sorted({k[0] for k in cpu}):
        for rate in rates:
            if (g, rate, "generator") not in cpu:
                continue
            vals = [cpu.get((g, rate, k), []) for k in ROLES]
            print(f"| {g} | {rate:g} | " + " | ".join(
                f"{st.median(v):.2f}" + (f" ({min(v):.2f}–{max(v):.2f})" if len(v) > 1 else "")
                for v in vals) + f" | {len(vals[0])} |")


if __name__ == "__main__":
    main(sys.argv[1].split(","), sys.argv[2:])
