"""``infergridd ROLE``: run one daemon — what each systemd unit starts.

``infergridd frontdoor|scheduler|supervisor --config FILE`` runs until
SIGTERM; ``infergridd stop-engines`` stops every engine the supervisor
recorded (the supervisor unit's stop hook, and ``infergrid serve`` on exit);
``infergridd check-config`` validates a file and exits.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .. import logs
from .common import DEFAULT_CONFIG_PATH, dirs_for, load_config_or_exit, set_title, with_listen

ROLES = ("frontdoor", "scheduler", "supervisor")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="infergridd", description=__doc__.split("\n\n")[0])
    ap.add_argument("role", choices=[*ROLES, "stop-engines", "check-config"])
    ap.add_argument("--config", default=DEFAULT_CONFIG_PATH, help="configuration file")
    ap.add_argument("--runtime-dir", help="sockets and engine records (default /run/infergrid)")
    ap.add_argument("--state-dir", help="durable state (default /var/lib/infergrid)")
    ap.add_argument("--listen", help="front door HOST:PORT (overrides the config)")
    ap.add_argument("--user-dirs", action="store_true",
                    help="default to per-user directories (what infergrid serve uses)")
    ap.add_argument("--timeout", type=float, default=30.0, help="stop-engines: seconds per engine")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = load_config_or_exit(args.config, "infergridd")
    if args.role == "check-config":
        print(f"{args.config}: OK ({len(cfg.models)} models, {len(cfg.tenants)} tenants)")
        return 0
    cfg = with_listen(cfg, args.listen)
    dirs = dirs_for(cfg, args.runtime_dir, args.state_dir, user_defaults=args.user_dirs)
    logs.setup(args.role, cfg.logging.level)
    if args.role == "stop-engines":
        from ..runlock import EX_IN_USE, LockHeld
        from ..supervisor.procs import stop_all_engines

        try:
            stop_all_engines(dirs, args.timeout)
        except LockHeld as exc:  # a supervisor runs: its engines are not ours to stop
            print(f"infergridd: {exc}", file=sys.stderr)
            return EX_IN_USE
        return 0
    set_title(f"infergridd {args.role} --config {args.config}")
    mod = importlib.import_module(f"infergridd.{args.role}.main")
    if args.role == "scheduler":  # it tells `infergridctl status` (and doctor) its file
        return int(mod.main(cfg, dirs, config_path=os.path.abspath(args.config)) or 0)
    return int(mod.main(cfg, dirs) or 0)


if __name__ == "__main__":
    sys.exit(main())
