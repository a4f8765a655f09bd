"""``python -m infergridd.supervisor --config FILE [--runtime-dir D] [--state-dir D]``.

The same as ``infergridd supervisor ...``; handy in tests and when debugging one daemon.
"""

from __future__ import annotations

import sys

from ..cli.infergridd import main

if __name__ == "__main__":
    sys.exit(main(["supervisor", *sys.argv[1:]]))
