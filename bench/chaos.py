#!/usr/bin/env python3
"""Chaos and soak run (issue 16): the real appliance under a seeded mixed load while a
seeded, printed fault schedule kills, restarts, stops and starves every part of it;
the invariants of DESIGN §3 checked every second and at the end.

  .venv/bin/python bench/chaos.py                      # CI-sized: 150 s of load, seed 1
  .venv/bin/python bench/chaos.py --hour --out soak.json   # the hour-long soak
  .venv/bin/python bench/chaos.py --load-s 30 --bug lost-done   # show a bug is caught

Exit status 0 when no invariant was violated, 1 otherwise.  Needs root for the
state-directory faults (a 16 MiB tmpfs, remounted read-only and filled); without
it those faults are reported as not applied.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from infergridd.bench.chaos_run import ChaosSettings, hour_settings, run_chaos


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hour", action="store_true", help="the hour-long soak settings")
    defaults = ChaosSettings()
    for f in fields(ChaosSettings):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):  # a flag that turns the default around
            on = getattr(defaults, f.name)
            ap.add_argument(("--no-" + flag[2:]) if on else flag, dest=f.name,
                            action="store_false" if on else "store_true", default=None)
        else:
            kind = {"int": int, "float": float, "str": str}[str(f.type)]
            ap.add_argument(flag, type=kind, default=None,
                            help=f"default {getattr(defaults, f.name)!r}")
    a = ap.parse_args(argv)
    s = hour_settings() if a.hour else ChaosSettings()
    for f in fields(ChaosSettings):
        value = getattr(a, f.name)
        if value is not None:
            setattr(s, f.name, value)
    report = run_chaos(s)
    return 1 if report["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
