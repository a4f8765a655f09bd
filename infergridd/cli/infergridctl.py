"""``infergridctl``: steer a running appliance through the scheduler's control socket.

Exit status: 0 success; 1 the appliance is not reachable or the command
failed; 2 bad input (unknown tenant, a rate that is not a number, …).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import zmq

from .. import protocol as p
from ..config import DEFAULT_CONFIG_PATH, ConfigError, Dirs, load
from ..scheduler.commands import Command, registry
from ..transport.access import ROLE_GROUPS
from .common import candidate_runtime_dirs

EXIT_UNREACHABLE = 1
#: what to check when nothing answers: the pip way and the packaged way, both
NOT_RUNNING_HINT = ("is `infergrid serve` running? As a service: `systemctl status "
                    "infergrid-scheduler`; elsewhere: --runtime-dir DIR")


#: who may read (``control-ro.sock``) and who may change things (``control.sock``)
READ_GROUP = ROLE_GROUPS["control-ro"]
ADMIN_GROUP = ROLE_GROUPS["control"]


class Unreachable(Exception):
    pass


def build_parser(commands: dict[str, type[Command]]) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="infergridctl", description=__doc__.split("\n\n")[0])
    ap.add_argument("--runtime-dir", help="where the appliance's sockets are "
                    "(default: from --config, $INFERGRID_RUNTIME_DIR, /run/infergrid, "
                    "then the per-user directory of `infergrid serve`)")
    ap.add_argument("--config", help="read the runtime directory from this configuration")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}

    def add(path: str, cls: type[Command], help_: str) -> None:
        """``path`` is a wire name: ``status`` or ``group.command``."""
        parent = sub
        *group, leaf = path.split(".")
        if group:
            if group[0] not in groups:
                gp = sub.add_parser(group[0], help=f"{group[0]} commands")
                groups[group[0]] = gp.add_subparsers(dest="sub", metavar="SUBCOMMAND",
                                                     required=True)
            parent = groups[group[0]]
        sp = parent.add_parser(leaf, help=help_, description=help_)
        cls.add_arguments(sp)
        sp.set_defaults(command=cls.name)

    entries = [(name, cls, cls.help) for name, cls in commands.items()]
    entries += [(alias, cls, f"same as `{cls.name.replace('.', ' ')}`")  # old names
                for cls in commands.values() for alias in cls.aliases]
    for path, cls, help_ in sorted(entries, key=lambda e: ("." in e[0], e[0])):
        add(path, cls, help_)
    # Runs here, not in the scheduler: it must work when the appliance does not.
    doc = "check the installation: config, sockets, state, engines, GPU, port, units"
    sp = sub.add_parser("doctor", help=doc, description=doc)
    sp.add_argument("--config", default=argparse.SUPPRESS,
                    help=f"configuration to check (default {DEFAULT_CONFIG_PATH})")
    sp.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                    help="print the checks as JSON")
    sp.set_defaults(command="doctor")
    return ap


def _sockets(runtime: Path) -> tuple[Path, Path]:
    """(admin socket, read-only socket) of the appliance on ``runtime``."""
    d = Dirs(runtime=runtime, state=runtime)
    return d.control_sock, d.control_ro_sock


def find_control_socket(runtime_dir: str | None, config: str | None,
                        read_only: bool = False) -> Path:
    """The control socket to use: the admin one (``control.sock``) for a command that
    changes something; for a read, that one where we may use it, else ``control-ro.sock``
    (DESIGN §10: writes need the admin group, reads may be wider)."""
    if runtime_dir:
        runtime = Path(runtime_dir)
    elif config:
        try:
            cfg = load(config)
        except ConfigError as exc:
            raise Unreachable(f"configuration error: {exc}") from None
        runtime = Path(cfg.runtime_dir) if cfg.runtime_dir else _running()
    else:
        runtime = _running()
    rw, ro = _sockets(runtime)
    if read_only and _exists(ro) and not _usable(rw):
        return ro
    return rw


def _running() -> Path:
    """The first candidate runtime dir with a control socket in it."""
    candidates = candidate_runtime_dirs()
    for d in candidates:
        rw, ro = _sockets(d)
        if _exists(rw) or _exists(ro):
            return d
    raise Unreachable("InferGrid is not running: no control socket at "
                      + ", ".join(str(_sockets(d)[0]) for d in candidates)
                      + f" ({NOT_RUNNING_HINT})")


def _exists(sock_path: Path) -> bool:
    """Whether the socket is there; a runtime dir we may not enter is said plainly, not as
    "not running" or a traceback."""
    try:
        return sock_path.exists()
    except PermissionError:
        raise Unreachable(f"permission denied on {sock_path.parent}: only root and members "
                          f"of the {READ_GROUP} group may use infergridctl "
                          f"(adduser $USER {READ_GROUP}, then log in again)") from None


def _usable(sock_path: Path) -> bool:
    try:
        return sock_path.exists() and os.access(sock_path, os.R_OK | os.W_OK)
    except PermissionError:
        return False


def _denied(sock_path: Path) -> str:
    """What to do about a control socket we may not use (which group it needs)."""
    if sock_path.name == "control.sock":
        return (f"permission denied on {sock_path}: commands that change the appliance need "
                f"root or the {ADMIN_GROUP} group (adduser $USER {ADMIN_GROUP}, then log in "
                "again); reads need the infergrid group")
    return (f"permission denied on {sock_path}: only root and members of the {READ_GROUP} "
            f"group may use infergridctl (adduser $USER {READ_GROUP}, then log in again)")


def call(sock_path: Path, command: str, args: dict[str, Any], timeout_s: float) -> p.ControlReply:
    if not _exists(sock_path):
        raise Unreachable(f"InferGrid is not running: no control socket at {sock_path} "
                          f"({NOT_RUNNING_HINT})")
    if not os.access(sock_path, os.R_OK | os.W_OK):
        raise Unreachable(_denied(sock_path))
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.IDENTITY, f"ctl-{uuid.uuid4().hex[:8]}".encode())
    try:
        s.connect(f"ipc://{sock_path}")
        s.send(p.encode(p.ControlRequest(command=command, args=args,
                                         protocol_version=p.PROTOCOL_VERSION)))
        if not s.poll(int(timeout_s * 1000)):
            raise Unreachable(f"no answer from the scheduler at {sock_path} within "
                              f"{timeout_s:g}s ({NOT_RUNNING_HINT})")
        reply = p.decode(s.recv())
    finally:
        s.close(0)
    if not isinstance(reply, p.ControlReply):
        raise Unreachable(f"unexpected answer from {sock_path}: {type(reply).__name__}")
    return reply


def main(argv: list[str] | None = None) -> int:
    commands = registry()
    ap = build_parser(commands)
    ns = ap.parse_args(argv)
    if ns.command == "doctor":
        from .doctor import main as doctor

        return doctor(ns.config, ns.runtime_dir, ns.json)
    cls = commands[ns.command]
    try:
        sock = find_control_socket(ns.runtime_dir, ns.config, cls.read_only)
        waits = cls.reply_timeout(ns)  # a command that waits inside the scheduler
        timeout = ns.timeout if waits is None else max(ns.timeout, waits)
        reply = call(sock, ns.command, cls.to_args(ns), timeout)
    except Unreachable as exc:
        print(f"infergridctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if not reply.ok:
        print(f"infergridctl: {reply.error}", file=sys.stderr)
        return reply.exit_code or 1
    if ns.json:
        print(json.dumps(reply.result, indent=2, sort_keys=True))
    else:
        print(cls.render(reply.result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
