"""The front door daemon: wiring of the HTTP app, the scheduler link and shutdown.

On SIGTERM it stops accepting (under socket activation systemd keeps the
listening socket, so new connections wait in its backlog for the next
instance), lets the streams in flight finish within ``drain_timeout_s``,
hands the last ``Done``s to the scheduler, and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable

import aiohttp
import zmq.asyncio
from aiohttp import web

from .. import aio
from .. import protocol as p
from ..config import Config, Dirs
from ..engines.context import exact_count, max_model_len
from ..engines.unixhttp import EngineConnector
from ..systemd import Notifier, listen_fds
from . import status_page, workers
from .admin import start_admin
from .app import build_app
from .auth import Authenticator
from .edge import EdgeGuard, EdgeRunner, raise_fd_limit
from .engine_client import EngineClient
from .link import FrontdoorLink
from .metrics import FrontdoorMetrics
from .room import Room

log = logging.getLogger("infergrid.frontdoor")

#: slot leases a front door asks for per model with ``frontdoor.fast_path`` (core/leases.py)
LEASES_PER_MODEL = 1


class Frontdoor:
    def __init__(self, cfg: Config, dirs: Dirs) -> None:
        self.cfg = cfg
        self.dirs = dirs
        self.instance = uuid.uuid4().hex[:12]
        self.started_at = time.time()
        self.model_names = {m.name for m in cfg.models}
        #: per model: (context length to check requests against, 0: none; exact count)
        self.context = {m.name: (max_model_len(m), exact_count(m)) for m in cfg.models}
        self.auth = Authenticator(cfg)
        #: one of ``frontdoor.processes`` peers on one listening socket (workers.py)
        self.processes = workers.processes(cfg.frontdoor.processes)
        self.metrics = FrontdoorMetrics(
            workers.metrics_dir(dirs.runtime) if self.processes > 1 else None, workers.index())
        self.room = Room(cfg.limits, self._tenant_count_limit)
        lim = cfg.limits
        self.guard = EdgeGuard(max_connections=lim.max_connections,
                               header_timeout_s=lim.header_timeout_s,
                               keepalive_timeout_s=lim.keepalive_timeout_s,
                               max_requests_per_connection=lim.max_requests_per_connection)
        self._watch_edge()
        self.snapshot: p.Snapshot | None = None
        self.fast_tenants: dict[str, int] = {}
        self.ever_ready: set[str] = set()  # models seen loaded (see app.missing_models)
        self.active = 0
        self.idle = asyncio.Event()
        self.draining = False
        self.notifier = Notifier()
        #: called when told to stop, before draining (``main``: the leader's workers)
        self.on_stop: Callable[[], None] | None = None
        self.http: aiohttp.ClientSession
        self.engines: EngineClient
        self.link: FrontdoorLink

    def fast_lease(self, tenant: str, model: str) -> tuple[p.LeaseInfo, int] | None:
        """A slot lease for this request and the tenant's band; None: ask the scheduler."""
        band = self.fast_tenants.get(tenant)
        if band is None:
            return None
        lease = self.link.take_lease(model, tenant)
        if lease is None:
            return None
        self.metrics.fast_dispatches.inc()  # the caller starts it on the lease at once
        return lease, band

    def _tenant_count_limit(self, tenant: str) -> int:
        """The per-tenant request bound the front door applies itself: only while the
        scheduler is away (else the scheduler applies it, runtime changes included)."""
        if self.link.connected:
            return 0
        t = next((t for t in self.cfg.tenants if t.name == tenant), None)
        return (t.max_queued if t is not None else 0) or self.cfg.scheduler.max_queued_per_tenant

    def _watch_edge(self) -> None:
        m, room, guard = self.metrics, self.room, self.guard
        m.watch("infergrid_frontdoor_waiting_bytes", "request bytes waiting in the front "
                "door (read or queued, not dispatched)", lambda: room.bytes)
        m.watch("infergrid_frontdoor_waiting_requests", "requests waiting in the front door",
                lambda: room.requests)
        m.watch("infergrid_frontdoor_connections", "open client connections",
                lambda: len(guard.conns))
        m.watch("infergrid_frontdoor_connections_evicted", "idle or slow connections closed "
                "to make room for new ones", lambda: guard.evicted)
        m.watch("infergrid_frontdoor_connections_timed_out", "connections closed for sending "
                "no whole request in time", lambda: guard.timed_out)

    def on_snapshot(self, snap: p.Snapshot) -> None:
        if snap.auth is not None:
            self.auth.update(snap.auth_version, snap.auth)
        self.auth.set_none_tenant(snap.auth_none_tenant)
        self.snapshot = snap
        # tenants the fast path may serve (no rpm/tpm quota: those stay on the
        # scheduler's path), with their bands for the engine priority
        self.fast_tenants = {t.name: t.band for t in snap.tenants if not t.rpm and not t.tpm}
        self.ever_ready.update(m.name for m in snap.models if m.ready_engines > 0 or
                               m.state in (p.EngineState.SLEEPING1, p.EngineState.SLEEPING2))
        self.metrics.snapshot.snapshot = snap
        self.metrics.snapshot.received_at = time.monotonic()
        status_page.observe(self)  # the status page's throughput and TTFT history

    async def run(self) -> int:
        self.dirs.runtime.mkdir(mode=0o750, parents=True, exist_ok=True)
        ctx = zmq.asyncio.Context()
        self.link = FrontdoorLink(ctx, self.dirs.frontdoor_sock, self.instance, self.on_snapshot,
                                  LEASES_PER_MODEL if self.cfg.frontdoor.fast_path else 0)
        self.metrics.snapshot.connected = lambda: self.link.connected
        self.http = aiohttp.ClientSession(
            connector=EngineConnector(limit=0, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=None), auto_decompress=False)
        self.engines = EngineClient(self.http)  # its own HTTP on engines' Unix sockets
        self.link.start()
        raise_fd_limit(self.cfg.limits.max_connections)
        runner = EdgeRunner(build_app(self, self.guard), self.guard, handler_cancellation=True,
                            access_log=None, shutdown_timeout=1.0,
                            keepalive_timeout=self.cfg.limits.keepalive_timeout_s)
        await runner.setup()
        admin = await start_admin(self)
        fds = listen_fds()
        if fds:
            for fd in fds:
                sock = socket.socket(fileno=fd)
                sock.setblocking(False)
                await web.SockSite(runner, sock).start()
            where = f"socket-activated fd(s) {fds}"
        else:
            host, _, port = self.cfg.listen.rpartition(":")
            await web.TCPSite(runner, host.strip("[]"), int(port), backlog=1024,
                              reuse_address=True, reuse_port=self.processes > 1).start()
            where = f"http://{self.cfg.listen}"
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        watchdog = asyncio.create_task(self.notifier.watchdog_loop())
        if admin is not None:
            where += f" (admin: http://{self.cfg.admin_listen})"
        self.notifier.ready(f"serving on {where}")
        log.info("front door %s serving on %s", self.instance, where)
        await stop.wait()
        if self.on_stop is not None:  # the unit's leader: its workers drain beside it
            self.on_stop()
        await self.drain(runner)
        if admin is not None:
            await admin.cleanup()
        watchdog.cancel()
        await self.link.wait_acked(2.0)
        await self.link.aclose()
        self.engines.close()
        await self.http.close()
        ctx.term()
        log.info("front door stopped")
        return 0

    async def drain(self, runner: web.AppRunner) -> None:
        self.draining = True
        self.notifier.stopping()
        for site in list(runner.sites):
            await site.stop()
        self.link.give_up_leases()  # their slots go back now, not when we are gone
        bound = self.cfg.limits.drain_timeout_s
        log.info("draining: %d request(s) in progress, waiting up to %.0fs", self.active, bound)
        t0 = time.monotonic()
        self.idle.clear()
        if self.active:
            try:
                await asyncio.wait_for(self.idle.wait(), bound)
            except asyncio.TimeoutError:
                log.warning("drain timed out with %d request(s) still in progress", self.active)
        log.info("drained in %.1fs", time.monotonic() - t0)
        await runner.cleanup()


def main(cfg: Config, dirs: Dirs) -> int:
    n = workers.processes(cfg.frontdoor.processes)
    if n < 2 or workers.INDEX_ENV in os.environ:  # alone, or one of serve's / a leader's
        return aio.run(Frontdoor(cfg, dirs).run())
    group = workers.Workers(n, listen_fds(), dirs.runtime)  # the unit's N processes
    group.start()
    leader = Frontdoor(cfg, dirs)
    leader.on_stop = group.terminate
    try:
        return aio.run(leader.run())
    finally:
        group.stop(cfg.limits.drain_timeout_s + 5)
