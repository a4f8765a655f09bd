"""The scheduler daemon: a thin ZeroMQ shell around the pure ``SchedulerCore``.

Everything that decides lives in ``infergridd.core``; this module only
moves bytes: it decodes what peers send, calls the core, and sends the
``Send`` actions it returns.  One receiver task per socket (a cancelled
``recv`` can lose a message), sends never block (a full-state ``Hello``
recovers anything dropped).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import signal
import time
import uuid
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from .. import aio
from .. import protocol as p
from ..config import Config, Dirs
from ..core.core import SchedulerCore, Send
from ..keys import new_key
from ..logs import fields
from ..runlock import EX_IN_USE, LockHeld
from ..systemd import Notifier
from ..transport import hops
from ..transport.access import PeerCred, peer_cred
from ..transport.sockets import BindLock, send_nowait
from . import statefile
from .commands import CommandContext
from .control import ControlHandler
from .endpoints import ControlSockets, PeerSockets, Refused, screen
from .observe import Observer
from .peers import Peer, PeerTable

log = logging.getLogger("infergrid.scheduler")

TICK_S = 0.05
SNAPSHOT_EVERY_S = 0.5


class SchedulerDaemon:
    def __init__(self, cfg: Config, dirs: Dirs, clock=time.monotonic,
                 config_path: str = "") -> None:
        self.cfg = cfg
        self.dirs = dirs
        self.clock = clock
        self.instance = uuid.uuid4().hex[:12]
        self.core = SchedulerCore(cfg, clock, new_key)
        self.core.leases.prefix = self.instance  # a lease dies with this process
        self.peers = PeerTable()
        self.observe = Observer(self.core, dirs.state)  # usage and request traces
        self.notifier = Notifier()
        self.started_at = time.time()
        self._stop = asyncio.Event()
        self._saved_state = ""
        self.control = ControlHandler(
            CommandContext(core=self.core, cfg=cfg, instance=self.instance,
                           started_at=self.started_at, peers=self.peers, apply=self._apply,
                           persist=functools.partial(self.persist, force=True),
                           config_path=config_path, dirs=dirs, observe=self.observe),
            after_write=self._snapshot_all)
        self._peer_io: PeerSockets | None = None
        self._ctl_io: ControlSockets | None = None
        self._ctl_tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> int:
        self.dirs.runtime.mkdir(mode=0o750, parents=True, exist_ok=True)
        self.dirs.scheduler_dir.mkdir(mode=0o750, exist_ok=True)  # sockets; see endpoints.py
        self.dirs.state.mkdir(mode=0o700, parents=True, exist_ok=True)  # keys, counters
        lock = BindLock(self.dirs.scheduler_lock)
        lock.acquire()
        try:
            state = statefile.load(self.dirs.state)
            if state is not None:
                try:
                    self.core.import_state(state)
                except (ValueError, KeyError, TypeError) as exc:
                    raise statefile.StateFileError(
                        f"{self.dirs.state / statefile.STATE_FILE}: unusable ({exc}); move it "
                        "aside to start from the configuration alone") from None
                log.info("restored state from %s", self.dirs.state / statefile.STATE_FILE)
            self._saved_state = json.dumps(self.core.export_state(), sort_keys=True)
            ctx = zmq.asyncio.Context()
            self._peer_io = PeerSockets(ctx, self.dirs)  # one socket per role (DESIGN §10)
            self._ctl_io = ControlSockets(ctx, self.dirs)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop.set)
            # peers are read in the loop's reader callbacks (transport/drain.py)
            drains = [self._peer_io.serve(role, functools.partial(self._on_peer_frames, role))
                      for role in self._peer_io.socks]
            tasks = [
                *(asyncio.create_task(self._ctl_rx(role), name=f"{role}-rx")
                  for role in self._ctl_io.socks),
                asyncio.create_task(self._ticker(), name="tick"),
                asyncio.create_task(self._housekeeping(), name="housekeeping"),
                asyncio.create_task(self.notifier.watchdog_loop(), name="watchdog"),
            ]
            self.notifier.ready(f"policy={self.cfg.scheduler.policy} instance={self.instance}")
            log.info(
                "scheduler %s listening on %s (policy %s)",
                self.instance, self.dirs.scheduler_dir, self.cfg.scheduler.policy,
            )
            await self._stop.wait()
            self.notifier.stopping()
            log.info("stopping")
            for d in drains:
                d.close()
            for t in [*tasks, *self._ctl_tasks]:
                t.cancel()
            await asyncio.gather(*tasks, *self._ctl_tasks, return_exceptions=True)
            self.persist(force=True)
            self.observe.close()
            self._peer_io.close()
            self._ctl_io.close()
            ctx.term()
            return 0
        finally:
            lock.release()

    def persist(self, force: bool = False) -> None:
        """Write the state file if it changed (counters, runtime tenant settings)."""
        text = json.dumps(self.core.export_state(), sort_keys=True)
        if not force and text == self._saved_state:
            return
        try:
            statefile.save(self.dirs.state, json.loads(text))
            self._saved_state = text
        except OSError as exc:
            log.error("cannot write state to %s: %s", self.dirs.state, exc)

    # ------------------------------------------------------------------ sending
    def _send(self, peer: str, msg: p.Message) -> None:
        assert self._peer_io is not None
        self._peer_io.send(peer, [p.encode(msg)], type(msg).__name__)

    def _apply(self, sends: list[Send], observe: bool = True) -> None:
        """Send what the core decided (``observe``: and record it in the traces first; a
        caller that passes False records it itself, after)."""
        if observe:
            self.observe.sent(sends)
        for s in sends:
            if s.peer:
                self._send(s.peer, s.msg)
            else:  # every supervisor
                for sv in self.peers.by_role("supervisor"):
                    self._send(sv.name, s.msg)
            if isinstance(s.msg, p.Reject):
                log.info("rejected %s: %s", s.msg.request_id, s.msg.reason,
                         extra=fields(request_id=s.msg.request_id, code=s.msg.code))
            elif isinstance(s.msg, p.EngineCommand):
                log.info("engine %s: %s%s (command %s)", s.msg.engine_id, s.msg.action,
                         f" level {s.msg.level}" if s.msg.action == "sleep" else "",
                         s.msg.command_id, extra=fields(engine=s.msg.engine_id))

    # ------------------------------------------------------------------ receiving
    def _on_peer_frames(self, role: str, name: str, msg: p.Message,
                        cred: PeerCred | None) -> None:
        """A message from ``role``'s socket: screened (``endpoints.screen``), then handled."""
        assert self._peer_io is not None
        try:
            checked = screen(role, name, msg, cred, self._peer_io.access[role])
        except Refused as exc:
            log.error("refused a Hello from %s on the %s socket (pid %s): %s", name, role,
                      cred.pid if cred else "?", exc)
            self._send(name, p.Welcome(instance=self.instance,
                                       protocol_version=p.PROTOCOL_VERSION,
                                       accepted=False, reason=str(exc)))
            return
        if checked is not None:
            self._on_peer_message(name, checked)

    def _on_peer_message(self, name: str, msg: p.Message) -> None:
        now = self.clock()
        if isinstance(msg, p.Hello):
            self._on_hello(name, msg, now)
            return
        peer = self.peers.get(name)
        if peer is None:
            self._send(name, p.HelloRequired(instance=self.instance))
            return
        peer.last_seen = now
        if isinstance(msg, p.Heartbeat):
            self._send(name, p.Heartbeat(instance=self.instance,
                                         ack_done_seq=self.observe.ack(name, peer.done_seq)))
        elif isinstance(msg, p.Submit):
            rx = hops.now() if hops.ON else 0
            sends = self.core.submit(name, msg)
            # the Dispatch goes first: the front door waits for it, the books do not
            self._apply(sends, observe=False)
            sent = hops.now() if rx else 0
            self.observe.submitted(name, msg, sends, why=not msg.lease_id)
            if msg.lease_id:
                self.observe.leased(msg)
            self.observe.sent(sends)
            if rx:
                hops.write("scheduler", {"rid": msg.request_id, "sched_rx": rx,
                                         "sched_sent": sent, "sched_done": hops.now()})
        elif isinstance(msg, p.Progress):
            self.observe.progress(msg.items)
            for request_id, tokens in msg.items:
                self.core.progress(request_id, tokens)
            self._apply(self.core.after_progress())
        elif isinstance(msg, p.Done):
            peer.done_seq = max(peer.done_seq, msg.seq)
            self.observe.done(name, msg)
            self._apply(self.core.done(name, msg))
        elif isinstance(msg, p.Leases):  # leases given back unused; how many it wants now
            self._apply(self.core.lease_return(name, msg.revoke, msg.wants))
        elif isinstance(msg, p.Cancel):
            self.observe.cancelled(msg.request_id)
            self._apply(self.core.cancel(name, msg.request_id))
        elif isinstance(msg, p.EngineUpdate):
            self._apply(self.core.engines_update(name, msg.engines, msg.gpu_total_bytes,
                                                 msg.gpu_free_bytes, msg.gpus))
        elif isinstance(msg, p.EngineCommandResult):
            log.log(logging.INFO if msg.ok else logging.WARNING,
                    "engine %s command %s: %s (%.2fs)", msg.engine_id, msg.command_id,
                    "ok" if msg.ok else msg.error, msg.elapsed_s,
                    extra=fields(engine=msg.engine_id))
            self._apply(self.core.command_result(name, msg))
        else:
            log.warning("unexpected %s from %s", type(msg).__name__, name)

    def _on_hello(self, name: str, hello: p.Hello, now: float) -> None:
        if p.protocol_major(hello.protocol_version) != p.protocol_major(p.PROTOCOL_VERSION):
            reason = (
                f"protocol {hello.protocol_version} is not compatible with the scheduler's "
                f"{p.PROTOCOL_VERSION}; upgrade the units together"
            )
            log.error("refused %s %s (pid %d): %s", hello.role, name, hello.pid, reason)
            self._send(name, p.Welcome(instance=self.instance,
                                       protocol_version=p.PROTOCOL_VERSION,
                                       accepted=False, reason=reason))
            return
        old = self.peers.add(Peer(name=name, role=hello.role, instance=hello.instance,
                                  pid=hello.pid, last_seen=now))
        if old is None:
            log.info("%s %s connected (pid %d, %d queued, %d in flight, %d engines)",
                     hello.role, name, hello.pid, len(hello.queued), len(hello.inflight),
                     len(hello.engines))
        seqs = [d.seq for d in hello.undelivered_done]
        self.peers.get(name).done_seq = max(seqs, default=old.done_seq if old else 0)  # type: ignore[union-attr]
        self._send(name, p.Welcome(instance=self.instance, protocol_version=p.PROTOCOL_VERSION))
        self.observe.hello(name, hello)
        sends = self.core.peer_hello(name, hello)
        self.observe.hello_applied(hello, sends)
        self._apply(sends)
        if hello.role == "frontdoor":
            self._send_snapshot(self.peers.get(name))  # type: ignore[arg-type]

    # ------------------------------------------------------------------ periodic work
    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self._apply(self.core.tick())
            except Exception:  # noqa: BLE001
                log.exception("tick failed")

    async def _housekeeping(self) -> None:
        last_save = self.clock()
        while True:
            await asyncio.sleep(SNAPSHOT_EVERY_S)
            try:
                now = self.clock()
                for peer in self.peers.expired(now):
                    log.warning("%s %s (pid %d) went silent; dropping its leftovers",
                                peer.role, peer.name, peer.pid)
                    self.peers.remove(peer.name)
                    self._apply(self.core.peer_gone(peer.name))
                    self.observe.peer_gone(peer.name)
                self._snapshot_all()
                self.observe.housekeeping()
                if now - last_save >= self.cfg.scheduler.snapshot_interval_s:
                    self.persist()
                    last_save = now
                self.notifier.status(self._status_line())
            except Exception:  # noqa: BLE001
                log.exception("housekeeping failed")

    def _status_line(self) -> str:
        stats = self.core.tenant_stats()
        queued = sum(t.queued for t in stats)
        inflight = sum(t.inflight for t in stats)
        return (f"{len(self.peers.by_role('frontdoor'))} front door(s), "
                f"{len(self.peers.by_role('supervisor'))} supervisor(s), "
                f"{queued} queued, {inflight} in flight")

    def _snapshot_all(self) -> None:
        """Every front door gets the current snapshot (keys and settings) now."""
        for fd in self.peers.by_role("frontdoor"):
            self._send_snapshot(fd)

    def _send_snapshot(self, peer: Peer) -> None:
        version, entries = self.core.auth_table()
        send_auth = version != peer.auth_version_sent
        snap = p.Snapshot(
            instance=self.instance,
            auth_version=version,
            auth=entries if send_auth else None,
            auth_none_tenant="default" if self.cfg.auth == "none" else "",
            models=self.core.model_infos(),
            tenants=self.core.tenant_stats(),
            engines=[_redacted(e) for e in self.core.engine_statuses()],
            policy=self.cfg.scheduler.policy,
            gpus=self.core.residency.memory.gpus,
        )
        self._send(peer.name, snap)
        if send_auth:
            peer.auth_version_sent = version

    # ------------------------------------------------------------------ control socket
    async def _ctl_rx(self, role: str) -> None:
        """Requests on ``control.sock`` (every command) or ``control-ro.sock`` (reads)."""
        assert self._ctl_io is not None
        sock = self._ctl_io.socks[role]
        access = self._ctl_io.access[role]
        while True:
            frames = await sock.recv_multipart(copy=False)
            if len(frames) != 2:
                continue
            ident, cred = frames[0].bytes, peer_cred(frames[1])
            admitted = access.admits(cred)
            if not admitted:
                log.warning("control: refused a request from uid %s (pid %s) on %s",
                            cred.uid if cred else "?", cred.pid if cred else "?", role)
            reply = self.control.handle(frames[1].bytes, writable=ControlSockets.WRITABLE[role],
                                        admitted=admitted)
            if inspect.isawaitable(reply):  # a command that waits (model unload): answer later
                task = asyncio.create_task(self._reply_later(sock, ident, reply),
                                           name="ctl-wait")
                self._ctl_tasks.add(task)
                task.add_done_callback(self._ctl_tasks.discard)
                continue
            send_nowait(sock, [ident, p.encode(reply)], "control reply", log)

    async def _reply_later(self, sock: zmq.asyncio.Socket, ident: bytes, pending: Any) -> None:
        reply = await pending
        send_nowait(sock, [ident, p.encode(reply)], "control reply", log)


def _redacted(e: p.EngineStatus) -> p.EngineStatus:
    """Front doors get engine keys only in Dispatch; metrics never carry them."""
    return msgspec.structs.replace(e, api_key="")


def main(cfg: Config, dirs: Dirs, config_path: str = "") -> int:
    """Run until SIGTERM/SIGINT; ``config_path`` is shown by ``status`` (``infergridctl
    doctor`` finds the running instance's configuration there)."""
    try:
        return aio.run(SchedulerDaemon(cfg, dirs, config_path=config_path).run())
    except statefile.StateFileError as exc:
        log.critical("%s", exc)
        return 1
    except LockHeld as exc:  # another InferGrid runs on this runtime dir
        log.critical("%s", exc)
        return EX_IN_USE
    except RuntimeError as exc:
        log.critical("%s", exc)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit("run it as: infergridd scheduler --config FILE")

