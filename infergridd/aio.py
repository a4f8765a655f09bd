"""One way to run a daemon's event loop: uvloop when it is installed.

Why: every token a tenant sees crosses the front door's event loop, and on a
small machine the loop's own cost is a visible share of time to first token
(bench/overhead.py).  uvloop runs the same asyncio code with a loop written in
C; it is an optional dependency (``pip install infergridd[fast]``, on in the
.deb).  ``INFERGRID_UVLOOP=0`` turns it off, to compare or to rule it out.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def uvloop_wanted() -> bool:
    return os.environ.get("INFERGRID_UVLOOP", "1") not in ("0", "false", "no")


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop's loop when installed and wanted, else the stock one."""
    if uvloop_wanted():
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)


def loop_name() -> str:
    """The running loop's kind, for start-up logs and ``infergridctl status``."""
    loop = asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
