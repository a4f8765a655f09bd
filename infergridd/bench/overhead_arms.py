"""The overhead benchmark's other arms (``bench/overhead.py``): the engine called
directly, N front-door processes side by side, and LiteLLM's proxy where installed.

*Direct* is the very engine InferGrid launched, called over the socket it listens
on (since issue 14 a Unix socket under ``<runtime>/supervisor/engines``): one
client session with ``EngineConnector`` serves both paths, so the only difference
is InferGrid (the client's loopback TCP hop to the front door, the front door, the
Submit/Dispatch round trip).  *LiteLLM* is optional: a proxy (``litellm --config``)
in a virtualenv of its own, in front of a simulated engine on a TCP port (LiteLLM
cannot call a Unix socket), compared with that engine called directly.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import yaml

from ..engines.unixhttp import EngineConnector, engine_url
from . import loadgen, rawload
from .appliance import free_port
from .engines import stop_process, wait_http_ok
from .loadgen import OK, Prompts, Target
from .workload import Planned

#: the ceiling's load generators: aiohttp (``loadgen.open_loop``) or raw asyncio (``rawload``)
GENERATORS = {"aiohttp": loadgen.open_loop, "raw": rawload.open_loop}
#: the appliance's processes by a word among the first three of their command line
#: (``infergridd frontdoor --config ...``, ``python -m infergridd.sim --uds ...``)
ROLES = {"frontdoor": "frontdoor", "scheduler": "scheduler", "supervisor": "supervisor",
         "infergridd.sim": "engine"}


def engine_target(runtime: Path, model: str, tenant: str) -> Target | None:
    """The engine ``infergrid serve`` launched (its record: endpoint and API key)."""
    for d in (runtime / "supervisor" / "engines", runtime / "engines"):
        for f in sorted(d.glob("*.json")) if d.is_dir() else []:
            if f.name.endswith(".assist.json"):
                continue
            try:
                rec = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            endpoint = rec.get("endpoint") or f"http://127.0.0.1:{int(rec.get('port', 0))}"
            return Target(engine_url(endpoint).rstrip("/"), model,
                          {tenant: str(rec.get("api_key", ""))})
    return None


def http_session() -> aiohttp.ClientSession:
    """One session for every arm: TCP to the front door, the engine's Unix socket direct."""
    return aiohttp.ClientSession(connector=EngineConnector(limit=0),
                                 timeout=aiohttp.ClientTimeout(total=None, sock_connect=30))


def tree_cpu(root: int | None) -> dict[str, float]:
    """CPU seconds (user + system) used so far by ``root`` and its descendants, by role.

    Why: on 2 cores the ceiling is a CPU budget shared by the front door, the
    scheduler, the engine and the generator; each one's CPU per request says which
    of them the budget went to, so a ceiling can be read as the front door's or not.
    From ``/proc`` (Linux); processes that ended before the reading are not counted.
    """
    if root is None:
        return {}
    tick, kids, cpu = os.sysconf("SC_CLK_TCK"), {}, {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            f = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        kids.setdefault(int(f[1]), []).append(int(d.name))
        cpu[int(d.name)] = (int(f[11]) + int(f[12])) / tick
    out: dict[str, float] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        todo += kids.get(pid, [])
        try:
            words = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").split()[:3]
        except OSError:
            continue
        role = next((ROLES[w] for w in map(bytes.decode, words) if w in ROLES), "serve")
        out[role] = out.get(role, 0.0) + cpu.get(pid, 0.0)
    return out


def pin(cpus: set[int]) -> None:
    """This process (and what it starts from now on) on ``cpus`` only (``taskset``)."""
    os.sched_setaffinity(0, cpus)


async def ceiling_rows(targets: dict[str, Target], rates: list[float], seconds: float,
                       prompts: Prompts, ttft_p99_ms: float | None, generator: str = "aiohttp",
                       roots: dict[str, int] | None = None
                       ) -> dict[str, list[dict[str, Any]]]:
    """Open loop of short streamed requests (8 prompt tokens, 4 out) at each rate, each
    arm in turn at the same rate (so drift hits all alike); an arm stops once a rate is
    not sustained (>= 99 % ok, send lag p99 < 50 ms, TTFT p50 under 4x the arm's at its
    first rate: the throughput ceiling).  ``meets`` marks the rates that also keep TTFT
    p99 <= ``ttft_p99_ms`` (issue 17's bar; None: no bar).  ``generator``: a key of
    ``GENERATORS``.  Each row also has CPU ms per request sent (``cpu_ms``): this
    process's (the generator's: nothing else runs in it meanwhile) and, where ``roots``
    names the arm's ``infergrid serve`` pid, each of its processes' (``tree_cpu``)."""
    send = GENERATORS[generator]
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    for rate in rates:
        for name, via in targets.items():
            if rows[name] and not rows[name][-1]["sustained"]:
                continue
            k = int(rate * seconds)
            plan = [Planned("bench", i, i / rate, 8, 4) for i in range(k)]
            root = (roots or {}).get(name)
            cpu0, own0 = tree_cpu(root), time.process_time()
            run = await send(via, plan, prompts, label=f"{name} {rate:g}/s",
                             duration_s=seconds, drain_s=5.0, progress=False)
            own, cpu1 = time.process_time() - own0, tree_cpu(root)
            cpu = {"generator": own, **{r: cpu1[r] - cpu0.get(r, 0.0) for r in cpu1}}
            ok = [r for r in run.results if r.status == OK]
            lags = np.array([r.lag_s for r in run.results] or [np.inf]) * 1e3
            ttft = np.array([r.ttft_s for r in ok]) * 1e3 if ok else np.array([np.inf])
            row = {"rate": rate, "sent": len(run.results), "ok_frac": len(ok) / max(1, k),
                   "achieved_rps": len(ok) / seconds,
                   "lag_p99_ms": float(np.percentile(lags, 99)),
                   "ttft_p50_ms": float(np.percentile(ttft, 50)),
                   "ttft_p99_ms": float(np.percentile(ttft, 99)), "generator": generator,
                   "elapsed_s": run.elapsed_s,
                   "cpu_ms": {r: 1e3 * c / max(1, len(run.results)) for r, c in cpu.items()}}
            base = rows[name][0]["ttft_p50_ms"] if rows[name] else row["ttft_p50_ms"]
            row["sustained"] = bool(row["ok_frac"] >= 0.99 and row["lag_p99_ms"] < 50
                                    and row["ttft_p50_ms"] < 4 * base)
            row["meets"] = bool(row["sustained"] and (ttft_p99_ms is None
                                                      or row["ttft_p99_ms"] <= ttft_p99_ms))
            rows[name].append(row)
            print(f"  {name:>14} {rate:6.0f} req/s: ok {row['ok_frac']:.1%}, lag p99 "
                  f"{row['lag_p99_ms']:.0f} ms, ttft p50/p99 {row['ttft_p50_ms']:.1f}/"
                  f"{row['ttft_p99_ms']:.1f} ms {'ok' if row['sustained'] else 'NOT sustained'}"
                  f"{'' if row['meets'] else ', over the TTFT bar'}; CPU ms/request "
                  + ", ".join(f"{r} {v:.2f}" for r, v in row["cpu_ms"].items()),
                  flush=True)
        if all(r and not r[-1]["sustained"] for r in rows.values()):
            break
    return rows


def ceiling_table(rows: dict[str, list[dict[str, Any]]]) -> list[str]:
    names = list(rows)
    md = ["| rate req/s | " + " | ".join(f"{n}: ok, TTFT p50 / p99 ms" for n in names) + " |",
          "|---|" + "---|" * len(names)]
    rates = sorted({r["rate"] for rs in rows.values() for r in rs})
    for rate in rates:
        cells = []
        for n in names:
            r = next((x for x in rows[n] if x["rate"] == rate), None)
            cells.append("–" if r is None else f"{r['ok_frac']:.1%}, {r['ttft_p50_ms']:.1f} / "
                         f"{r['ttft_p99_ms']:.1f}{'' if r['meets'] else ' †'}"
                         f"{'' if r['sustained'] else ' ✗'}")
        md.append(f"| {rate:g} | " + " | ".join(cells) + " |")
    return md


def cpu_table(rows: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Markdown: per arm and rate, CPU ms per request of the generator and of each of
    the appliance's processes, and the cores they kept busy together."""
    roles = [r for r in ("generator", "frontdoor", "scheduler", "engine", "supervisor", "serve")
             if any(r in x.get("cpu_ms", {}) for rs in rows.values() for x in rs)]
    md = ["| arm | rate req/s | " + " | ".join(f"{r} ms/req" for r in roles)
          + " | cores busy: generator / the rest |", "|---|---|" + "---|" * (len(roles) + 1)]
    for name, rs in rows.items():
        for x in rs:
            c = x.get("cpu_ms", {})
            per_s = x.get("sent", 0) / 1e3 / max(1e-9, x.get("elapsed_s", 0.0))
            rest = sum(v for r, v in c.items() if r != "generator") * per_s
            md.append(f"| {name} | {x['rate']:g} | "
                      + " | ".join(f"{c[r]:.3f}" if r in c else "–" for r in roles)
                      + f" | {c.get('generator', 0.0) * per_s:.2f} / {rest:.2f} |")
    return md


def sustained(rows: list[dict[str, Any]], key: str = "sustained") -> tuple[float, bool]:
    """(highest rate with ``key`` true, whether the last rate tried had it: a lower bound)."""
    good = [r["rate"] for r in rows if r[key]]
    return (max(good) if good else 0.0), bool(rows and rows[-1][key])


class LiteLLMProxy:
    """``litellm --config`` in front of ``engine_url`` (an OpenAI-compatible engine)."""

    def __init__(self, litellm_bin: str, engine_url: str, model: str, logdir: Path) -> None:
        self.bin = litellm_bin
        self.engine_url = engine_url
        self.model = model
        self.logdir = logdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.key = "sk-bench-" + secrets.token_hex(16)  # it refuses to start without one

    def start(self, timeout_s: float = 120.0) -> str:
        port = free_port()
        cfg = {"model_list": [{"model_name": self.model, "litellm_params": {
            "model": f"openai/{self.model}", "api_base": self.engine_url + "/v1",
            "api_key": "none"}}],
            "litellm_settings": {"drop_params": True, "telemetry": False},
            "general_settings": {"master_key": self.key}}
        path = self.logdir / "litellm.yaml"
        path.write_text(yaml.safe_dump(cfg))
        log = open(self.logdir / "litellm.log", "ab")  # noqa: SIM115 - the process's stdout
        env = {**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False"}
        self.proc = subprocess.Popen([self.bin, "--config", str(path), "--host", "127.0.0.1",
                                      "--port", str(port), "--num_workers", "1"],
                                     stdout=log, stderr=subprocess.STDOUT, env=env,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.url = f"http://127.0.0.1:{port}"
        t0 = time.monotonic()
        wait_http_ok(self.url + "/health/liveliness", timeout_s, self.proc,
                     self.logdir / "litellm.log")
        print(f"LiteLLM proxy up in {time.monotonic() - t0:.0f} s", flush=True)
        return self.url

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
