"""Control commands: discovered without a list, one name per command (old names as
aliases), and the control handler's replies, run in-process against a real core."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from infergridd import protocol as p
from infergridd.config import loads
from infergridd.core.core import SchedulerCore
from infergridd.scheduler.commands import Command, CommandContext, lookup, registry
from infergridd.scheduler.control import ControlHandler
from infergridd.scheduler.peers import PeerTable

CONFIG = """
version: 1
models: [{name: demo, engine: sim}]
tenants: [{name: quiet, keys: [sk-quiet-test]}]
"""


def test_every_module_of_the_package_is_found() -> None:
    assert set(registry()) == {
        "status", "model.list", "model.load", "model.unload", "model.sleep", "model.wake",
        "tenant.list", "tenant.show", "tenant.add", "tenant.remove", "tenant.set-rate",
        "tenant.set-weight", "tenant.rotate-key", "usage", "trace", "gpu.list",
        "export.llm-d"}
    assert all(issubclass(c, Command) and c.help for c in registry().values())


def test_models_is_model_list() -> None:
    assert lookup("models") is lookup("model.list") is registry()["model.list"]
    assert lookup("nothing") is None


def test_only_the_reads_are_read_only() -> None:
    reads = {n for n, c in registry().items() if c.read_only}
    assert reads == {"status", "model.list", "tenant.list", "tenant.show", "usage", "trace",
                     "gpu.list", "export.llm-d"}


def test_cli_arguments_are_the_wire_arguments() -> None:
    cls = registry()["tenant.set-rate"]
    ap = argparse.ArgumentParser()
    cls.add_arguments(ap)
    ns = ap.parse_args(["acme", "--rpm", "6", "--burst", "2"])
    assert cls.to_args(ns) == {"name": "acme", "rpm": "6", "tpm": None, "burst": "2",
                               "unlimited": False}
    sleep = registry()["model.sleep"]
    ap = argparse.ArgumentParser()
    sleep.add_arguments(ap)
    ns = ap.parse_args(["demo", "--wait", "7"])
    assert sleep.to_args(ns) == {"name": "demo", "wait": 7.0, "level": None}
    assert sleep.reply_timeout(ns) == 12.0
    assert registry()["status"].reply_timeout(ns) is None


class World:
    def __init__(self) -> None:
        cfg = loads(CONFIG)
        self.core = SchedulerCore(cfg, lambda: 0.0)
        self.sent: list[Any] = []
        self.saves = 0
        self.writes = 0
        ctx = CommandContext(core=self.core, cfg=cfg, instance="test", started_at=0.0,
                             peers=PeerTable(), apply=self.sent.extend, persist=self._save)
        self.handler = ControlHandler(ctx, after_write=self._write)

    def _save(self) -> None:
        self.saves += 1

    def _write(self) -> None:
        self.writes += 1

    def ask(self, command: str, **args: Any) -> p.ControlReply:
        reply = self.handler.handle(p.encode(p.ControlRequest(
            command=command, args=args, protocol_version=p.PROTOCOL_VERSION)))
        if not isinstance(reply, p.ControlReply):
            reply = asyncio.run(reply)
        assert isinstance(reply, p.ControlReply)
        return reply


def test_reads_answer_and_change_nothing() -> None:
    w = World()
    old, new = w.ask("models"), w.ask("model.list")
    assert old.ok and old.result == new.result
    assert [m["name"] for m in new.result["models"]] == ["demo"]
    assert w.ask("tenant.show", name="quiet").ok and w.ask("status").ok
    assert (w.writes, w.saves) == (0, 0)


def test_a_write_is_saved_and_pushed() -> None:
    w = World()
    r = w.ask("tenant.set-rate", name="quiet", rpm="6")
    assert r.ok and r.result["effective"]["rpm"] == 6
    assert (w.writes, w.saves) == (1, 1)


def test_errors_become_exit_codes() -> None:
    w = World()
    assert w.ask("nothing").exit_code == 2
    assert w.ask("tenant.show", name="nobody").exit_code == 2
    r = w.ask("model.load", name="nope", wait=0)
    assert (r.ok, r.exit_code) == (False, 2) and "demo" in r.error
    bad = w.handler.handle(b"not msgpack")
    assert isinstance(bad, p.ControlReply) and bad.exit_code == 2


def test_a_model_command_returns_at_once_with_wait_zero() -> None:
    w = World()
    r = w.ask("model.unload", name="demo", wait=0)
    assert r.ok and r.result["action"] == "unload" and "done" in r.result


def test_tenant_show_prints_a_table_like_every_other_command() -> None:
    """``tenant show`` printed JSON without ``--json``; now settings (configured and
    effective) and counters as tables, and ``--json`` prints the result itself."""
    w = World()
    w.ask("tenant.set-rate", name="quiet", rpm="6")
    r = w.ask("tenant.show", name="quiet")
    out = registry()["tenant.show"].render(r.result)
    assert out.splitlines()[0] == "tenant quiet"
    assert not out.lstrip().startswith("{")
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert rows["SETTING"] == ["CONFIGURED", "EFFECTIVE"]
    assert rows["rpm"] == ["unlimited", "6"] and rows["weight"] == ["1", "1"]
    assert "QUEUED" in rows and "REJECTED" in out


def test_models_and_model_list_are_one_command_on_the_command_line() -> None:
    from infergridd.cli.infergridctl import build_parser

    ap = build_parser(registry())
    a, b = ap.parse_args(["models"]), ap.parse_args(["model", "list"])
    assert a.command == b.command == "model.list"


def test_status_says_where_the_instance_lives(tmp_path) -> None:
    """``infergridctl doctor`` finds a pip install's configuration here."""
    from infergridd.config import Dirs

    cfg = loads(CONFIG)
    dirs = Dirs(runtime=tmp_path / "run", state=tmp_path / "state")
    ctx = CommandContext(core=SchedulerCore(cfg, lambda: 0.0), cfg=cfg, instance="t",
                         started_at=0.0, peers=PeerTable(), apply=lambda s: None,
                         persist=lambda: None, config_path="/srv/ig.yaml", dirs=dirs)
    r = ControlHandler(ctx, after_write=lambda: None).handle(p.encode(p.ControlRequest(
        command="status", args={}, protocol_version=p.PROTOCOL_VERSION)))
    s = r.result["scheduler"]
    assert (s["config"], s["runtime_dir"], s["state_dir"]) == (
        "/srv/ig.yaml", str(tmp_path / "run"), str(tmp_path / "state"))
    assert "config /srv/ig.yaml" in registry()["status"].render(r.result)


def test_status_shows_the_fast_paths_leases() -> None:
    """Leases held and who wants how many (a busy front door wants none): an operator
    must be able to see slots lent out, as they count as taken."""
    cfg = loads(CONFIG)
    core = SchedulerCore(cfg, lambda: 0.0)
    ctx = CommandContext(core=core, cfg=cfg, instance="t", started_at=0.0, peers=PeerTable(),
                         apply=lambda s: None, persist=lambda: None)
    status = registry()["status"]

    def run() -> dict:
        r = ControlHandler(ctx, after_write=lambda: None).handle(p.encode(p.ControlRequest(
            command="status", args={}, protocol_version=p.PROTOCOL_VERSION)))
        return r.result

    r = run()
    assert r["leases"] == {"held": 0, "granted": 0, "wants": {}}
    assert "slot leases" not in status.render(r)  # nobody asks: no line
    core.leases.hello("fd-a", 1)
    r = run()
    assert r["leases"]["wants"] == {"fd-a": 1}
    assert "slot leases: 0 held, 0 granted since start; wanted per model by fd-a 1" in \
        status.render(r)
