"""Reading ZeroMQ in the loop's reader callback (transport/drain.py): every message is
delivered, including one whose descriptor edge a send on the same socket ate, and a
drained socket's sends go without a future (sockets.send_nowait)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from infergridd.transport.drain import Drain, drain_of
from infergridd.transport.sockets import bind_router, connect_dealer, send_nowait

log = logging.getLogger("test.drain")


@pytest.fixture
async def pair() -> AsyncIterator[tuple[zmq.asyncio.Socket, zmq.asyncio.Socket]]:
    d = Path(tempfile.mkdtemp(prefix="igdr-", dir="/tmp"))
    ctx = zmq.asyncio.Context()
    router = bind_router(ctx, d / "r.sock")
    dealer = connect_dealer(ctx, d / "r.sock", b"fd-a", immediate=False)
    yield router, dealer
    router.close(0)
    dealer.close(0)
    ctx.term()
    shutil.rmtree(d, ignore_errors=True)


async def _until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    end = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < end, "timed out"
        await asyncio.sleep(0.005)


async def test_every_message_reaches_the_handler_in_order(pair) -> None:  # type: ignore[no-untyped-def]
    router, dealer = pair
    got: list[bytes] = []
    drain = Drain(router, lambda frames: got.append(frames[1]))
    assert drain_of(router) is drain
    for i in range(1000):  # more than one batch per wake-up
        send_nowait(dealer, [str(i).encode()], "m", log)
    await _until(lambda: len(got) == 1000)
    assert got == [str(i).encode() for i in range(1000)]
    drain.close()
    assert drain_of(router) is None


async def test_a_reply_sent_from_the_handler_does_not_strand_the_next_message(pair) -> None:  # type: ignore[no-untyped-def]
    """Ping-pong: each message is answered from inside the handler (a send on the drained
    socket, which can consume the edge that announced the next message); with no
    ``kick`` after the send the exchange stalls."""
    router, dealer = pair
    seen: list[bytes] = []

    def on_router(frames: list[bytes]) -> None:
        seen.append(frames[1])
        send_nowait(router, [frames[0], b"ack"], "ack", log)

    acks: list[bytes] = []

    def on_dealer(frames: list[bytes]) -> None:
        acks.append(frames[-1])
        if len(acks) < 300:
            send_nowait(dealer, [b"n%d" % len(acks)], "next", log)

    Drain(router, on_router)
    Drain(dealer, on_dealer)
    send_nowait(dealer, [b"n0"], "first", log)
    await _until(lambda: len(acks) == 300)
    assert seen == [b"n%d" % i for i in range(300)]


async def test_a_handler_that_raises_does_not_stop_the_reader(pair, caplog) -> None:  # type: ignore[no-untyped-def]
    router, dealer = pair
    got: list[bytes] = []

    def handle(frames: list[bytes]) -> None:
        if frames[1] == b"bad":
            raise ValueError("boom")
        got.append(frames[1])

    Drain(router, handle)
    for m in (b"a", b"bad", b"b"):
        send_nowait(dealer, [m], "m", log)
    await _until(lambda: got == [b"a", b"b"])
    assert "error handling a message" in caplog.text


async def test_a_drained_router_drops_a_send_to_an_unknown_peer(pair, caplog) -> None:  # type: ignore[no-untyped-def]
    router, _ = pair
    Drain(router, lambda frames: None)
    with caplog.at_level(logging.DEBUG, "test.drain"):
        send_nowait(router, [b"fd-nobody", b"x"], "Dispatch", log, "peer gone")
    assert "peer gone; dropped Dispatch" in caplog.text


async def test_kick_reads_a_message_whose_edge_was_eaten(pair) -> None:  # type: ignore[no-untyped-def]
    """Any operation on the socket can consume the descriptor's signal (here a read of
    ``EVENTS``, as libzmq's send does when it processes commands): the waiting message
    is then announced by nothing, and only ``kick`` finds it."""
    import time
    router, dealer = pair
    got: list[bytes] = []
    drain = Drain(router, lambda frames: got.append(frames[1]))
    await asyncio.sleep(0.05)
    send_nowait(dealer, [b"x"], "m", log)
    time.sleep(0.1)  # arrives while the loop does not run
    assert drain.raw.getsockopt(zmq.EVENTS) & zmq.POLLIN  # the edge is eaten here
    await asyncio.sleep(0.3)
    assert got == []  # nothing announced it
    drain.kick()
    await _until(lambda: got == [b"x"])


async def test_a_send_on_a_drained_socket_kicks_it(pair, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    router, dealer = pair
    drain = Drain(dealer, lambda frames: None)
    kicks: list[bool] = []
    monkeypatch.setattr(drain, "kick", lambda force=False: kicks.append(force))
    send_nowait(dealer, [b"x"], "m", log)
    assert kicks == [False]
