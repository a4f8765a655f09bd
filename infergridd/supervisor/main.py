"""The supervisor daemon: wires engine runners, the scheduler link and systemd together.

It owns engine processes and nothing else (DESIGN §1).  It holds the runtime
dir's supervisor lock (``runlock.py``) from before it adopts anything until it
exits, so only one supervisor ever owns those engines.  It re-adopts the
engines a previous supervisor left running *before* it reports anything, so a
supervisor restart is invisible to clients (DESIGN §3), and on SIGTERM it
exits leaving every engine running — unless the whole appliance is stopping
(``stop_engines_on_exit``, or ``INFERGRID_STOP_ENGINES_ON_EXIT=1``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import uuid

import aiohttp
import zmq.asyncio

from .. import aio
from .. import protocol as p
from ..config import Config, ConfigError, Dirs, check_fit, fmt_bytes
from ..config.placement import memory_on, place, sleep_memory_on
from ..engines import AdapterConfigError, adapter_for
from ..engines.base import astop_process_group, is_alive
from ..engines.unixhttp import EngineConnector
from ..runlock import EX_IN_USE, LockHeld, RunLock
from ..systemd import Notifier
from . import identity, procs, runas, statefile
from .devices import discover, nvml_links
from .engine import POLL_S, EngineRunner
from .ledger import Ledger
from .link import SupervisorLink

log = logging.getLogger("infergrid.supervisor")

EX_CONFIG = 78
STATUS_EVERY_S = 2.0


def engine_ids(cfg: Config) -> list[tuple[str, int]]:
    return [(m.name, i) for m in cfg.models for i in range(m.replicas)]


class Supervisor:
    def __init__(self, cfg: Config, dirs: Dirs, stop_engines_on_exit: bool = False) -> None:
        self.cfg = cfg
        self.dirs = dirs
        self.stop_engines_on_exit = stop_engines_on_exit
        self.instance = uuid.uuid4().hex[:12]
        self.notifier = Notifier()
        self.runners: list[EngineRunner] = []
        self._stop = asyncio.Event()
        self.link: SupervisorLink | None = None
        self.ledger = Ledger(discover(cfg))
        self.links = nvml_links([d.index for d in self.ledger.devices]) \
            if len(self.ledger.devices) > 1 else {}

    @property
    def gpu_total(self) -> int:
        return self.ledger.total

    def statuses(self) -> list[p.EngineStatus]:
        """Every engine's status, its ``memory_bytes`` as the ledger counts it right now."""
        for r in self.runners:
            r.status.memory_bytes = r.held_bytes()
        return [r.status for r in self.runners]

    def gpu_free(self) -> int:
        return self.ledger.free(self.runners)

    def send_update(self) -> None:
        """Every engine and every GPU's ledger to the scheduler."""
        if self.link is not None:
            self.link.send_update(self.gpu_total, self.gpu_free(),
                                  self.ledger.report(list(self.runners)))

    def _make_runners(self, http: aiohttp.ClientSession) -> None:
        """One runner per engine, on the GPUs placement gives it (config/placement.py):
        fixed for this supervisor's life, and what its ``CUDA_VISIBLE_DEVICES`` says."""
        devices = self.ledger.devices
        placed = place(self.cfg, devices, self.links)
        for m in self.cfg.models:
            adapter = adapter_for(m)  # AdapterConfigError: caller reports it
            for i in range(m.replicas):
                on = placed.get(f"{m.name}-{i}", ())
                self.runners.append(EngineRunner(
                    f"{m.name}-{i}", m, adapter, self.dirs, http,
                    memory_on(m, devices, on), sleep_memory_on(m, devices, on), devices=on))

    def _hold_back_what_does_not_fit(self) -> None:
        """After adoption: a preloaded engine that would not fit beside what is already
        running (adopted engines come first: they are serving) is not started; the
        scheduler loads it on demand once room is made."""
        for r in self.runners:
            if r.rec is not None or not r.want_running:
                continue
            r.want_running = False
            why = self.ledger.shortfall(r, self.runners)
            if why:
                r.status.last_error = f"not started at boot: {why}"
                log.warning("engine %s %s", r.engine_id, r.status.last_error)
            else:
                r.want_running = True

    async def _forget_unconfigured(self) -> None:
        """Engines recorded under ids the config no longer has (a model removed, fewer
        replicas): stop them, since nothing else ever will."""
        known = {r.engine_id for r in self.runners}
        for rec in statefile.load_all(self.dirs.engines_dir):
            if rec.engine_id in known:
                continue
            why = identity.why_not_ours(rec)
            if not why:
                log.warning("stopping engine %s (pid %d): no longer in the configuration",
                            rec.engine_id, rec.pid)
                await astop_process_group(rec.pid, rec.start_time, 30.0)
            elif is_alive(rec.pid, rec.start_time):
                log.warning("not stopping pid %d of record %s: %s", rec.pid, rec.engine_id, why)
            statefile.remove(self.dirs.engines_dir, rec.engine_id)

    async def _command(self, cmd: p.EngineCommand) -> p.EngineCommandResult:
        """Carry out one command, then report every engine at once: the scheduler plans
        the next step of a swap (wake the other model, dispatch) from the reported state,
        and waiting for the next poll would add up to ``POLL_S`` to each step."""
        for r in self.runners:
            if r.engine_id == cmd.engine_id:
                result = await self._admitted(r, cmd)
                self.send_update()
                return result
        return p.EngineCommandResult(command_id=cmd.command_id, engine_id=cmd.engine_id,
                                     ok=False, error=f"unknown engine {cmd.engine_id!r}")

    async def _admitted(self, r: EngineRunner, cmd: p.EngineCommand) -> p.EngineCommandResult:
        """A start or wake runs only if it fits in the ledger; it holds its memory from
        the moment it is admitted (``reserved``), so two cannot take the same bytes."""
        if cmd.action not in ("start", "wake", "restart"):
            return await r.command(cmd)
        why = self.ledger.shortfall(r, self.runners)
        if why:
            log.warning("refused %s of engine %s: %s", cmd.action, r.engine_id, why)
            return p.EngineCommandResult(command_id=cmd.command_id, engine_id=r.engine_id,
                                         ok=False, error=why)
        r.reserved = True
        try:
            return await r.command(cmd)
        finally:
            r.reserved = False

    def _status_line(self) -> str:
        counts: dict[str, int] = {}
        for st in self.statuses():
            counts[st.state] = counts.get(st.state, 0) + 1
        return "engines: " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
                              or "none configured")

    async def _report_loop(self, link: SupervisorLink) -> None:
        last_status = 0.0
        last_line = ""
        while True:
            await asyncio.sleep(POLL_S)
            self.send_update()
            now = time.monotonic()
            if now - last_status >= STATUS_EVERY_S:
                line = self._status_line()
                self.notifier.status(line)
                if line != last_line:
                    log.info("%s", line)
                    last_line = line
                last_status = now

    async def run(self) -> int:
        self.dirs.runtime.mkdir(mode=0o750, parents=True, exist_ok=True)
        self.dirs.supervisor_dir.mkdir(mode=0o700, exist_ok=True)  # its lock and engine records
        # Before any engine is adopted, launched or stopped: a second supervisor on this
        # runtime dir (a second `infergrid serve`) must never take the first one's engines.
        lock = RunLock(self.dirs.supervisor_lock, "supervisor")
        try:
            lock.acquire()
        except LockHeld as exc:
            log.critical("%s", exc)
            return EX_IN_USE
        try:
            return await self._run()
        finally:
            lock.release()

    async def _run(self) -> int:
        # the unit's ambient CAP_SETUID/CAP_SETGID are ours alone: no engine inherits them
        runas.drop_ambient()
        # engine records (0600), logs and sockets: the front door's group may pass (it
        # reaches the engines' sockets, 0770), may not list; others nothing (runas.py)
        runas.prepare_engines_dir(self.dirs.engines_dir)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        async with aiohttp.ClientSession(
            connector=EngineConnector(limit=64), trust_env=False,  # TCP or Unix socket
        ) as http:
            try:
                check_fit(self.cfg, self.ledger.devices, self.links)  # with NVML's GPUs
                self._make_runners(http)
                # engines as their own user where we can (runas.py)
                who = runas.run_as(self.dirs.engines_dir)
                for r in self.runners:
                    r.run_as = who
            except (AdapterConfigError, ConfigError) as exc:
                log.error("configuration error: %s", exc)
                return EX_CONFIG
            for d in self.ledger.devices:
                log.info("GPU %d memory ledger: %s from %s%s", d.index,
                         fmt_bytes(d.total) if d.total else "unlimited", d.source,
                         f" ({d.name})" if d.name else "")
            for r in self.runners:
                if r.devices:
                    log.info("engine %s placed on GPU %s", r.engine_id,
                             ",".join(map(str, r.devices)))
            ctx = zmq.asyncio.Context()
            link = self.link = SupervisorLink(ctx, self.dirs.supervisor_sock, self.instance,
                                              self.statuses, self._command)
            await asyncio.gather(*(r.adopt() for r in self.runners))
            await self._forget_unconfigured()
            self._hold_back_what_does_not_fit()
            tasks = [asyncio.create_task(r.run(), name=f"engine-{r.engine_id}")
                     for r in self.runners]
            tasks += link.tasks()
            tasks.append(asyncio.create_task(self._report_loop(link), name="report"))
            tasks.append(asyncio.create_task(self.notifier.watchdog_loop(), name="watchdog"))
            link.send_hello()
            self.notifier.ready(self._status_line())
            adopted = sum(1 for r in self.runners if r.rec is not None)
            log.info("supervisor %s up: %d engines configured, %d adopted (runtime %s)",
                     self.instance, len(self.runners), adopted, self.dirs.runtime)
            await self._stop.wait()
            self.notifier.stopping()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.stop_engines_on_exit:
                log.info("stopping every engine (the appliance is stopping)")
                await asyncio.gather(*(r.stop(remember=False) for r in self.runners),
                                     return_exceptions=True)
                for r in self.runners:  # the next start begins from the config
                    statefile.save_stopped(self.dirs.engines_dir, r.engine_id, False)
            else:
                log.info("exiting; engines keep running for the next supervisor")
            link.close()
            ctx.term()
        return 0


def main(cfg: Config, dirs: Dirs, stop_engines_on_exit: bool = False) -> int:
    """Run until SIGTERM/SIGINT.  Engines outlive it unless ``stop_engines_on_exit``."""
    stop = stop_engines_on_exit or os.environ.get("INFERGRID_STOP_ENGINES_ON_EXIT") == "1"
    return aio.run(Supervisor(cfg, dirs, stop).run())


__all__ = ["Supervisor", "main", "procs"]
