"""The shared peer link's handshake, without a scheduler: what each message makes it do."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq.asyncio

from infergridd import protocol as p
from infergridd.transport.peerlink import HELLO_RETRY_S, PeerLink


class _Link(PeerLink):
    ROLE = "supervisor"
    IDENTITY_PREFIX = "t-"
    REFUSED_RETRY_S = 7.0
    log = logging.getLogger("test.peerlink")

    def __init__(self, ctx: zmq.asyncio.Context, path: Path) -> None:
        super().__init__(ctx, path, "abc")
        self.sent: list[p.Message] = []
        self.beats: list[p.Heartbeat] = []
        self.role_msgs: list[p.Message] = []

    def send(self, msg: p.Message) -> None:
        self.sent.append(msg)

    def _fill_hello(self, hello: p.Hello) -> None:
        hello.engines = [p.EngineStatus(engine_id="e-0", model="m", kind="sim")]

    def _digest(self) -> dict[str, int]:
        return {"engines": 1}

    def _on_role_message(self, msg: p.Message) -> bool:
        if isinstance(msg, p.EngineCommand):
            self.role_msgs.append(msg)
            return True
        return False

    def _on_heartbeat(self, hb: p.Heartbeat) -> None:
        self.beats.append(hb)

    def hellos(self) -> list[p.Hello]:
        return [m for m in self.sent if isinstance(m, p.Hello)]


@pytest.fixture
def link() -> Iterator[_Link]:
    ctx = zmq.asyncio.Context()
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        lk = _Link(ctx, Path(d) / "s.sock")
        try:
            yield lk
        finally:
            lk.close()
            ctx.term()


def _welcome(instance: str = "s1", accepted: bool = True, reason: str = "") -> p.Welcome:
    return p.Welcome(instance=instance, protocol_version=p.PROTOCOL_VERSION,
                     accepted=accepted, reason=reason)


def test_hello_carries_the_role_state_and_identity(link: _Link) -> None:
    link.send_hello()
    (hello,) = link.hellos()
    assert (hello.role, hello.instance, hello.protocol_version) == \
        ("supervisor", "abc", p.PROTOCOL_VERSION)
    assert [e.engine_id for e in hello.engines] == ["e-0"]
    assert link.identity == "t-abc" and link.sock.get(zmq.IDENTITY) == b"t-abc"


def test_welcome_refusal_and_acceptance(link: _Link, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, "test.peerlink"):
        link._on_message(_welcome(accepted=False, reason="old"))
        link._on_message(_welcome(accepted=False, reason="old"))
        link._on_message(_welcome(accepted=False, reason="older"))
    assert len([r for r in caplog.records if "refused" in r.getMessage()]) == 2
    assert not link.welcomed and link.refused == "older" and not link.connected
    link._on_message(_welcome("s1"))
    assert link.welcomed and link.connected and link.refused == ""
    assert link.scheduler_instance == "s1"


def test_hello_required_and_a_new_instance_ask_for_a_hello(link: _Link) -> None:
    link._on_message(_welcome("s1"))
    link._on_message(p.HelloRequired(instance="s2"))
    assert len(link.hellos()) == 1 and not link.welcomed and link.scheduler_instance == "s2"
    link._on_message(_welcome("s2"))
    # a heartbeat from the same instance: no Hello, the role sees it
    link._on_message(p.Heartbeat(instance="s2", ack_done_seq=3))
    assert len(link.hellos()) == 1 and link.beats[-1].ack_done_seq == 3
    # a new instance right after a Hello waits (its snapshot may show it too) ...
    link._on_message(p.Heartbeat(instance="s3"))
    assert len(link.hellos()) == 1
    # ... and says Hello once half a retry has passed
    link.last_hello = time.monotonic() - HELLO_RETRY_S
    link._on_message(p.Heartbeat(instance="s3"))
    assert len(link.hellos()) == 2 and not link.welcomed


def test_role_messages_go_to_the_role_others_are_logged(
        link: _Link, caplog: pytest.LogCaptureFixture) -> None:
    cmd = p.EngineCommand(command_id="c", engine_id="e-0", action="wake")
    link._on_message(cmd)
    assert link.role_msgs == [cmd]
    with caplog.at_level(logging.WARNING, "test.peerlink"):
        link._on_message(p.Cancel(request_id="r"))
    assert "unexpected Cancel from the scheduler" in caplog.text


async def test_timer_retries_hello_at_the_refusal_pace_and_beats_only_when_welcomed(
        link: _Link, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_Link, "TICK_S", 0.01)
    tasks = link.tasks()
    try:
        link.send_hello()
        link._on_message(_welcome(accepted=False, reason="no"))
        link.last_hello = time.monotonic() - HELLO_RETRY_S  # a plain retry would be due now
        n = len(link.hellos())
        await asyncio.sleep(0.1)
        assert len(link.hellos()) == n and not any(isinstance(m, p.Heartbeat) for m in link.sent)
        link.last_hello = time.monotonic() - link.REFUSED_RETRY_S
        await _until(lambda: len(link.hellos()) == n + 1)
        link._on_message(_welcome("s1"))
        await _until(lambda: any(isinstance(m, p.Heartbeat) for m in link.sent))
        beat = next(m for m in link.sent if isinstance(m, p.Heartbeat))
        assert beat.digest == {"engines": 1} and beat.instance == "abc"
        # silence for longer than the misses allow: no longer welcomed, Hello again
        link.last_heard = time.monotonic() - p.HEARTBEAT_INTERVAL_S * (p.HEARTBEAT_MISSES + 1)
        link.last_hello = 0.0
        n = len(link.hellos())
        await _until(lambda: len(link.hellos()) == n + 1)
        assert not link.welcomed
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)
