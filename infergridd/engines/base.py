"""What every engine adapter provides, and the process helpers they share.

An adapter knows one engine kind's dialect: how to start it (``launch_spec``),
how to tell that it serves (``ready``), where its load figures are
(``metrics``), how to free its GPU memory (``sleep``/``wake``) and which way
its priority runs.  It holds no state about a running process: the supervisor
owns processes, so one adapter object can serve every replica of a model.

The process helpers live here too because both the supervisor and
``stop_all_engines`` (run by ``infergrid serve`` and the unit's stop hook)
must stop an engine the same careful way: only a process whose pid *and*
start time match what we recorded, whole process group, SIGTERM first.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Collection, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from ..config import ModelConfig
from . import promtext
from .unixhttp import MAX_SOCKET_PATH, engine_url, unix_endpoint

#: Bound on one control-plane HTTP call to an engine; a poll must never hang the loop.
HTTP_TIMEOUT_S = 2.0
#: Sleep and wake move gigabytes between GPU and host memory: allow them time.
SLEEP_TIMEOUT_S = 120.0


class EngineError(RuntimeError):
    """An engine call failed (connection refused, non-2xx, bad body)."""


class AdapterConfigError(ValueError):
    """The model's ``args`` cannot make a valid engine command (reported at start-up)."""


@dataclass
class LaunchSpec:
    """How to start one engine process; ``env`` is merged over the supervisor's own.

    The engine's key is never in ``argv`` (``ps`` shows every process's command line
    to every local user): it goes in ``env`` (read only by the same user and root) or
    in one of ``files``, written 0600 by the supervisor before the launch."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    #: path → contents, written 0600 (to the engine user when it has one) before the launch
    files: dict[str, bytes] = field(default_factory=dict)
    #: InferGrid's step policy in this engine: "on" (asked for; the engine's stats file
    #: proves it loaded), "off", or "" (the kind has none); ``assist_reason`` says why
    assist: str = ""
    assist_reason: str = ""


@dataclass
class EngineMetrics:
    """The load figures the scheduler's dispatch window needs, normalised across kinds."""

    num_running: int = 0
    num_waiting: int = 0
    kv_usage: float = 0.0  # 0..1
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0


#: ``EngineMetrics`` field → the engine's metric names for it, newest first.
MetricNames = dict[str, tuple[str, ...]]


def metrics_from_text(text: str, names: MetricNames) -> EngineMetrics:
    """Map an engine's exposition onto ``EngineMetrics`` through a name table."""
    s = promtext.parse(text)
    kv = promtext.first(s, *names["kv_usage"])
    return EngineMetrics(
        num_running=int(promtext.first(s, *names["num_running"])),
        num_waiting=int(promtext.first(s, *names["num_waiting"])),
        kv_usage=min(max(kv, 0.0), 1.0),
        prompt_tokens_total=int(promtext.first(s, *names["prompt_tokens_total"])),
        generation_tokens_total=int(promtext.first(s, *names["generation_tokens_total"])),
    )


def flag(key: str) -> str:
    """``max_model_len`` → ``--max-model-len``: config keys read like the engine's flags."""
    return "--" + key.replace("_", "-")


def args_to_flags(args: dict[str, Any], skip: Collection[str] = ()) -> list[str]:
    """Each ``args`` entry as an engine flag: ``True`` is a bare flag, ``False``/``None`` none,
    a list repeats the value list after one flag (argparse ``nargs``)."""
    out: list[str] = []
    for key, value in args.items():
        if key in skip or value is None or value is False:
            continue
        if value is True:
            out.append(flag(key))
        elif isinstance(value, (list, tuple)):
            out += [flag(key), *(str(v) for v in value)]
        else:
            out += [flag(key), str(value)]
    return out


def cpu_list(cpus: list[int]) -> str:
    """``[0, 1, 2, 5]`` → ``"0-2,5"``, the form both taskset and vLLM's OMP binding read."""
    parts: list[str] = []
    ordered = sorted(set(cpus))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


class EngineAdapter:
    """Base adapter: OpenAI-compatible HTTP helpers and safe defaults.

    Subclasses set the class attributes and override what their engine does
    differently.  Every HTTP method raises ``EngineError`` on failure, so the
    supervisor has one thing to catch.
    """

    kind = "base"
    managed = True  # the supervisor launches and stops the process
    #: the engine can listen on a Unix socket instead of a loopback port (DESIGN §10)
    supports_unix = False
    supports_sleep = False
    supports_priority = False
    priority_sign = 1  # +1: lower value runs first (vLLM); -1: higher first (SGLang)
    #: where ``metrics`` finds the load figures in the engine's ``/metrics`` text;
    #: None for an engine without one (its adapter overrides ``metrics``)
    metric_names: MetricNames | None = None

    def __init__(self, model: ModelConfig) -> None:
        self.model = model
        self.name = model.name
        #: a private directory the supervisor gives the adapter for files an engine
        #: needs at launch (the vLLM scheduler's import path); None: a temporary one
        self.work_dir: Path | None = None
        #: where the engine listens when the supervisor gives it a Unix socket (and
        #: ``supports_unix``); None: a loopback port
        self.socket_path: Path | None = None

    # ------------------------------------------------------------------ launching
    def python_argv(self) -> list[str]:
        """The interpreter command: ``ModelConfig.python`` (may carry words, e.g. a
        ``conda run`` prefix), else the supervisor's own interpreter."""
        return shlex.split(self.model.python) if self.model.python else [sys.executable]

    def launch_spec(self, port: int, api_key: str) -> LaunchSpec:  # pragma: no cover
        raise NotImplementedError(f"{self.kind} engines are not launched by InferGrid")

    def with_affinity(self, spec: LaunchSpec) -> LaunchSpec:
        """Pin the engine to ``cpu_affinity`` (DESIGN §9: a saturated CPU engine starves
        everything else on a small machine)."""
        if self.model.cpu_affinity:
            spec.argv = ["taskset", "-c", cpu_list(self.model.cpu_affinity), *spec.argv]
        return spec

    def listen_socket(self) -> Path | None:
        """The Unix socket this launch listens on, or None (loopback TCP): one the kind
        supports, given by the supervisor, and short enough for ``sun_path``."""
        sock = self.socket_path
        if not self.supports_unix or sock is None:
            return None
        return sock if len(str(sock).encode()) <= MAX_SOCKET_PATH else None

    def endpoint(self, port: int) -> str:
        sock = self.listen_socket()
        return unix_endpoint(sock) if sock is not None else f"http://127.0.0.1:{port}"

    def max_num_seqs(self) -> int:
        return self.model.max_num_seqs

    def engine_priority(self, rank: int) -> int:
        """Rank 0 is the tenant that should go first; sign it the way the engine reads it."""
        return self.priority_sign * rank

    # ------------------------------------------------------------------ HTTP helpers
    @staticmethod
    def _headers(api_key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def _request(
        self, http: aiohttp.ClientSession, method: str, url: str, api_key: str,
        timeout_s: float = HTTP_TIMEOUT_S, json_body: Any = None, want: str = "none",
    ) -> Any:
        """One call; ``want`` is ``json``, ``text`` or ``none``.  Non-2xx → ``EngineError``.

        ``url`` may be a ``unix:`` engine URL (``unixhttp.py``); ``http`` must then use
        ``unixhttp.EngineConnector``."""
        try:
            async with http.request(
                method, engine_url(url), headers=self._headers(api_key), json=json_body,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as resp:
                if resp.status >= 300:
                    body = (await resp.text())[:200]
                    raise EngineError(f"{method} {url}: HTTP {resp.status} {body}".strip())
                if want == "json":
                    return await resp.json(content_type=None)
                if want == "text":
                    return await resp.text()
                await resp.read()
                return None
        except EngineError:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            raise EngineError(f"{method} {url}: {type(exc).__name__}: {exc}") from None

    async def _memory_call(self, http: aiohttp.ClientSession, what: str, url: str,
                           api_key: str, json_body: Any = None) -> None:
        """A sleep or wake request (``what``), refused unless the engine was started able
        to; it moves gigabytes, hence the long timeout."""
        if not self.supports_sleep:
            raise EngineError(f"{self.kind} engine {self.name} does not support {what}")
        await self._request(http, "POST", url, api_key, timeout_s=SLEEP_TIMEOUT_S,
                            json_body=json_body)

    async def _serves_model(self, http: aiohttp.ClientSession, endpoint: str,
                            api_key: str) -> bool:
        """``/v1/models`` lists our served name: the API server is up *and* loaded it."""
        body = await self._request(http, "GET", f"{endpoint}/v1/models", api_key, want="json")
        data = body.get("data", []) if isinstance(body, dict) else []
        return any(isinstance(m, dict) and m.get("id") == self.name for m in data)

    # ------------------------------------------------------------------ the contract
    async def ready(self, http: aiohttp.ClientSession, endpoint: str, api_key: str) -> bool:
        """True once the engine can take requests; False (never raises) otherwise."""
        try:
            await self._request(http, "GET", f"{endpoint}/health", api_key)
            return await self._serves_model(http, endpoint, api_key)
        except EngineError:
            return False

    async def metrics(self, http: aiohttp.ClientSession, endpoint: str,
                      api_key: str) -> EngineMetrics:
        """The load figures, read from ``/metrics`` through ``metric_names``."""
        if self.metric_names is None:
            raise NotImplementedError  # pragma: no cover
        text = await self._request(http, "GET", f"{endpoint}/metrics", api_key, want="text")
        return metrics_from_text(text, self.metric_names)

    async def sleep(self, http: aiohttp.ClientSession, endpoint: str, api_key: str,
                    level: int) -> None:
        raise EngineError(f"{self.kind} engine {self.name} does not support sleep")

    async def wake(self, http: aiohttp.ClientSession, endpoint: str, api_key: str) -> None:
        raise EngineError(f"{self.kind} engine {self.name} does not support wake")

    async def is_sleeping(self, http: aiohttp.ClientSession, endpoint: str,
                          api_key: str) -> bool | None:
        """None: the engine cannot say (the supervisor then trusts its own record)."""
        return None

    async def warmup(self, http: aiohttp.ClientSession, endpoint: str, api_key: str) -> None:
        """One one-token completion after a wake, so the first client does not pay for
        re-allocating caches and compiling kernels."""
        await self._request(
            http, "POST", f"{endpoint}/v1/completions", api_key, timeout_s=SLEEP_TIMEOUT_S,
            json_body={"model": self.name, "prompt": "ping", "max_tokens": 1},
        )


# --------------------------------------------------------------------------- processes


def _direct(fn: Callable[[], Any]) -> Any:
    return fn()


#: How a /proc read (None: found nothing) or a signal aimed at an engine is made.  The
#: supervisor's ``runas`` sets it: an engine of its own user is hidden from the
#: supervisor's /proc (``ProtectProc=invisible``) and signalled only with its uid.
engine_proc_access: Callable[[Callable[[], Any]], Any] = _direct


def _read_stat(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read()
    except OSError:
        return None


def proc_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (/proc/PID/stat field 22), or None.

    With the pid it identifies a process for good: a pid reused by another
    process has another start time, so we never signal a stranger.
    """
    raw = engine_proc_access(lambda: _read_stat(pid))
    if raw is None:
        return None
    stat = raw.decode("ascii", "replace")
    # The command name (field 2) is in parentheses and may contain spaces or ')'.
    rest = stat[stat.rfind(")") + 2:].split()
    try:
        if rest[0] in ("Z", "X"):  # a zombie has finished: treat it as gone
            return None
        return int(rest[19])  # field 22 overall; rest starts at field 3
    except (IndexError, ValueError):
        return None


def is_alive(pid: int, start_time: int) -> bool:
    """The very process we recorded still runs (not a zombie, not a reused pid)."""
    return pid > 0 and start_time > 0 and proc_start_time(pid) == start_time


def _reap(pid: int) -> None:
    """Collect the exit status if ``pid`` is our child, so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _killpg(pid: int, sig: int) -> bool:
    try:
        os.killpg(pid, sig)  # launched with start_new_session: pgid == pid
    except ProcessLookupError:
        pass
    return True


def _signal_group(pid: int, sig: int) -> None:
    try:
        engine_proc_access(lambda: _killpg(pid, sig))
    except PermissionError:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


#: How often a stop looks again whether the process has gone.
_STOP_POLL_S = 0.05


def _stop_steps(pid: int, start_time: int, timeout_s: float) -> Generator[float, None, bool]:
    """The stop sequence once, for both callers: it yields each pause, which the caller
    sleeps its own way (blocking or awaited), and returns what the stop returns."""
    if not is_alive(pid, start_time):
        _reap(pid)
        return False
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _reap(pid)
        if not is_alive(pid, start_time):
            return True
        yield _STOP_POLL_S
    _signal_group(pid, signal.SIGKILL)
    for _ in range(40):
        _reap(pid)
        if not is_alive(pid, start_time):
            break
        yield _STOP_POLL_S
    return True


def stop_process_group(pid: int, start_time: int, timeout_s: float) -> bool:
    """SIGTERM the engine's process group, wait up to ``timeout_s``, then SIGKILL.

    Does nothing unless ``pid`` still has ``start_time`` (proof it is the
    process we launched).  Returns True when it was running and we stopped it.
    Blocking: for the CLI and shutdown paths; the daemon uses ``astop_process_group``.
    """
    steps = _stop_steps(pid, start_time, timeout_s)
    try:
        while True:
            time.sleep(next(steps))
    except StopIteration as done:
        return bool(done.value)


async def astop_process_group(pid: int, start_time: int, timeout_s: float) -> bool:
    """``stop_process_group`` without blocking the event loop."""
    steps = _stop_steps(pid, start_time, timeout_s)
    try:
        while True:
            await asyncio.sleep(next(steps))
    except StopIteration as done:
        return bool(done.value)
