"""Two front-door processes on one scheduler (issue 17.3), against real processes.

``frontdoor.processes: 2``: both serve on the one port, both are peers the scheduler
lists, ``/metrics`` from either sums both, and SIGKILLing one while streams run leaves
every stream of the other complete (which process holds a stream is read from the
kernel: the client's port among the killed process's sockets).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import yaml
from appliance import DEMO_TENANTS, free_port, sim_model

pytestmark = pytest.mark.slow
KEY = "sk-quiet-demo"


def frontdoor_pids(app) -> list[int]:  # type: ignore[no-untyped-def]
    out = subprocess.run(["pgrep", "-f", f"infergridd frontdoor --config {app.config_path}"],
                         capture_output=True, text=True).stdout.split()
    return sorted(int(x) for x in out)


def peer_ports(pid: int, listen_port: int) -> set[int]:
    """The client ports of the connections ``pid`` accepted on ``listen_port`` (/proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            m = re.match(r"socket:\[(\d+)\]", os.readlink(fd))
        except OSError:
            continue
        if m:
            inodes.add(m.group(1))
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[9] in inodes and int(f[1].rsplit(":", 1)[1], 16) == listen_port:
                ports.add(int(f[2].rsplit(":", 1)[1], 16))
    return ports


async def one_stream(url: str, max_tokens: int, ports: list[int]) -> tuple[int, bool, int]:
    """(client port, ended with [DONE], content chunks) of one streamed request."""
    body = {"model": "demo", "stream": True, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "hello there"}]}
    done, chunks, port = False, 0, 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        try:
            async with s.post(url + "/v1/chat/completions", json=body,
                              headers={"Authorization": f"Bearer {KEY}"}) as r:
                assert r.connection is not None and r.connection.transport is not None
                port = r.connection.transport.get_extra_info("sockname")[1]
                ports.append(port)
                assert r.status == 200
                async for line in r.content:
                    if line.startswith(b"data: [DONE]"):
                        done = True
                    elif b'"content":"' in line and b'"content":""' not in line:
                        chunks += 1
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass
    return port, done, chunks


async def hold_streams(url: str, pids: list[int], listen_port: int, max_tokens: int,
                       batch: int = 20, most: int = 200
                       ) -> tuple[list[asyncio.Task[tuple[int, bool, int]]], dict[int, set[int]]]:
    """Streams running until every one of ``pids`` holds at least one of them.

    The processes share one accept queue, so which takes a connection is a race: on
    a loaded machine one process can win all of a batch (CI once saw 40 of 40).  So
    batches are added, up to ``most``, until each holds a stream.  Returns the tasks
    and, per pid, the client ports of these streams it held when last read."""
    ports: list[int] = []
    tasks: list[asyncio.Task[tuple[int, bool, int]]] = []
    held: dict[int, set[int]] = {p: set() for p in pids}
    while len(tasks) < most:
        tasks += [asyncio.create_task(one_stream(url, max_tokens, ports)) for _ in range(batch)]
        deadline = time.monotonic() + 10
        while len(ports) < len(tasks) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # only this call's streams: a process's table may still hold the closing
        # sockets of earlier connections (CI once read a stale one as a held stream)
        mine = set(ports)
        held = {p: peer_ports(p, listen_port) & mine for p in pids}
        if all(held.values()):
            break
    return tasks, held


def ok_requests(page: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(
        r'^infergrid_requests_total\{[^}]*outcome="ok"[^}]*\} (\S+)$', page, re.M))


async def test_two_frontdoors_share_a_port_and_survive_each_other(appliance_factory) -> None:
    admin = f"127.0.0.1:{free_port()}"  # shared by both processes too
    app = appliance_factory({"frontdoor": {"processes": 2}, "admin_listen": admin,
                             "models": [sim_model(max_num_seqs=64, step_s=0.02)],
                             "tenants": DEMO_TENANTS})
    pids = app.wait_for(lambda: (lambda ps: ps if len(ps) == 2 else None)(frontdoor_pids(app)),
                        what="two front-door processes")
    # both are the scheduler's peers, each its own identity
    st = app.wait_for(lambda: (lambda s: s if sorted(
        p["pid"] for p in s["peers"] if p["role"] == "frontdoor") == pids else None)(
        app.status()), what="both front doors in infergridctl status")
    names = [p["name"] for p in st["peers"] if p["role"] == "frontdoor"]
    assert len(set(names)) == 2
    text = app.ctl("status").stdout
    assert "front doors 2" in text
    assert all(f"{n} (pid {p})" in text for n, p in zip(
        names, [p["pid"] for p in st["peers"] if p["role"] == "frontdoor"], strict=True))

    # both serve (new connections spread over both), and /metrics sums both
    ports: list[int] = []
    short = await asyncio.gather(*[one_stream(app.url, 4, ports) for _ in range(40)])
    assert all(d and n == 4 for _, d, n in short)
    port = int(app.url.rsplit(":", 1)[1])
    async with aiohttp.ClientSession() as s:
        pages = []
        for _ in range(12):  # a fresh connection each: either process may answer
            async with s.get(f"http://{admin}/metrics", headers={"Connection": "close"}) as r:
                pages.append(await r.text())
            await asyncio.sleep(0.12)  # past the page cache
    assert {ok_requests(p) for p in pages} == {40.0}, [ok_requests(p) for p in pages]

    # SIGKILL one while both hold streams: every stream on the other completes
    victim, survivor = pids
    streams, held = await hold_streams(app.url, pids, port, 300)  # 6 s: none ends before the kill
    on_victim, on_survivor = held[victim], held[survivor]
    os.kill(victim, signal.SIGKILL)
    results = await asyncio.gather(*streams)
    mine = [r for r in results if r[0] in on_survivor]
    lost = [r for r in results if r[0] in on_victim]
    assert mine and lost, (len(mine), len(lost))  # both held streams
    assert all(d and n == 300 for _, d, n in mine), mine
    assert not any(d for _, d, _ in lost)  # the killed one's did break (the test can fail)
    # serve restarts the killed one; the scheduler lists two again, the survivor unchanged
    app.wait_for(lambda: (lambda ps: ps if len(ps) == 2 and survivor in ps else None)(
        sorted(p["pid"] for p in app.status()["peers"] if p["role"] == "frontdoor")),
        timeout=30, what="the killed front door restarted")


async def test_one_frontdoor_command_leads_n_processes_on_a_passed_socket(
        appliance_factory) -> None:
    """The packaged unit's way: one ``infergridd frontdoor``, socket-activated, with
    ``frontdoor.processes: 3`` runs three front doors on the passed socket, restarts a
    killed worker alone, and its SIGTERM stops them all (``workers.Workers``)."""
    app = appliance_factory({"models": [sim_model(max_num_seqs=64, step_s=0.02)],
                             "tenants": DEMO_TENANTS})
    cfg = dict(app.config, frontdoor={"processes": 3})
    cfg_path = app.root / "three.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    fd = sock.fileno()

    def pass_socket() -> None:  # what systemd does: the socket as fd 3, LISTEN_PID ours
        os.dup2(fd, 3)
        os.environ["LISTEN_FDS"] = "1"
        os.environ["LISTEN_PID"] = str(os.getpid())
        os.environ.pop("INFERGRID_FRONTDOOR_INDEX", None)

    leader = subprocess.Popen(
        [sys.executable, "-m", "infergridd.cli.infergridd", "frontdoor", "--config",
         str(cfg_path), "--runtime-dir", str(app.runtime), "--state-dir", str(app.state)],
        close_fds=False, preexec_fn=pass_socket, stdin=subprocess.DEVNULL)
    sock.close()
    try:
        def group() -> list[int]:
            out = subprocess.run(["pgrep", "-f", f"infergridd frontdoor --config {cfg_path}"],
                                 capture_output=True, text=True).stdout.split()
            return sorted(int(x) for x in out)

        def peers() -> list[int]:
            return sorted(p["pid"] for p in app.status()["peers"] if p["role"] == "frontdoor")

        three = app.wait_for(lambda: (lambda g: g if len(g) == 3 and set(g) <= set(peers())
                                      else None)(group()), timeout=30,
                             what="three front doors of one command, all the scheduler's peers")
        assert leader.pid in three
        ports: list[int] = []
        short = await asyncio.gather(*[one_stream(url, 4, ports) for _ in range(30)])
        assert all(d and n == 4 for _, d, n in short)
        # a worker killed under load: the others' streams complete, it comes back alone
        worker = next(p for p in three if p != leader.pid)
        listen_port = int(url.rsplit(":", 1)[1])
        streams, held = await hold_streams(url, three, listen_port, 300)
        others = set().union(*(ports for p, ports in held.items() if p != worker))
        os.kill(worker, signal.SIGKILL)
        results = await asyncio.gather(*streams)
        mine = [r for r in results if r[0] in others]
        assert mine and all(d and n == 300 for _, d, n in mine), mine
        again = app.wait_for(lambda: (lambda g: g if len(g) == 3 and worker not in g
                                      else None)(group()), timeout=30, what="worker restarted")
        assert leader.pid in again and set(three) - {worker} <= set(again)
    finally:
        leader.send_signal(signal.SIGTERM)
        leader.wait(60)
    assert leader.returncode == 0
    assert app.wait_for(lambda: not group() or None, timeout=20, what="all stopped")
