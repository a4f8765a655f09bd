"""``infergrid``: the user's front command — ``serve`` the appliance, ``bench`` it."""

from __future__ import annotations

import argparse
import logging
import sys

from .. import logs
from .common import dirs_for, load_config_or_exit
from .extras import nvml_note, require, require_engines


def _serve(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="infergrid serve",
                                 description="run the three daemons as child processes")
    ap.add_argument("--config", required=True, help="configuration file")
    ap.add_argument("--listen", help="front door HOST:PORT (overrides the config)")
    ap.add_argument("--runtime-dir", help="sockets (default: per-user, or /run/infergrid as root)")
    ap.add_argument("--state-dir", help="durable state (default: per-user, or /var/lib/infergrid)")
    args = ap.parse_args(argv)
    cfg = load_config_or_exit(args.config, "infergrid")
    require_engines(cfg, "infergrid serve")
    dirs = dirs_for(cfg, args.runtime_dir, args.state_dir, user_defaults=True)
    logs.setup("serve", cfg.logging.level)
    note = nvml_note(cfg)
    if note:
        logging.getLogger("infergrid.serve").warning("%s", note)
    from .serve import Serve

    return Serve(cfg, args.config, dirs, args.listen).run()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: infergrid {serve,bench} ...\n\n"
              "  serve   run InferGrid (front door, scheduler, supervisor) in the foreground\n"
              "  bench   run the fairness benchmark (see infergrid bench --help)")
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "serve":
        return _serve(rest)
    if cmd == "bench":
        require("bench", "infergrid bench", "the benchmark")  # numpy, matplotlib
        from ..bench.cli import main as bench_main

        return bench_main(rest)
    print(f"infergrid: unknown command {cmd!r} (serve, bench)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
