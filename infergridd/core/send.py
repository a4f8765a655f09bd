"""``Send``: the one kind of action the core returns to its I/O shell.

Every core method that decides something returns a list of these instead of
sending, so the core stays pure and a test can read its decisions.
"""

from __future__ import annotations

from typing import NamedTuple

from .. import protocol as p


class Send(NamedTuple):
    """One action for the I/O shell: send ``msg`` to ``peer`` ("" = every supervisor)."""

    peer: str
    msg: p.Message
