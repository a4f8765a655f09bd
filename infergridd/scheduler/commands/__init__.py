"""Control commands: one module per command, holding its message, its CLI and its docs.

Each module defines:

* ``NAME`` — the wire name (``"tenant.set-rate"``), also the CLI path (``tenant set-rate``);
* ``HELP`` — one line for ``infergridctl --help`` and the man page;
* ``add_arguments(parser)`` and ``to_args(namespace) -> dict`` — the CLI side;
* ``execute(ctx, args) -> result`` — runs inside the scheduler (``ctx`` is the
  daemon's ``CommandContext``); raises ``CommandError`` for bad input;
* ``render(result) -> str`` — human-readable output (``--json`` prints the result);
* optionally ``reply_timeout(namespace) -> float`` — how long infergridctl waits for the
  answer, for a command whose ``execute`` returns a coroutine (it waits inside the
  scheduler, in its own task, e.g. ``model unload`` draining requests in flight).

``infergridctl`` builds its parser from this registry, so a command cannot
exist on one side only.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class CommandError(Exception):
    """A command refused its input; ``exit_code`` 2 means bad input (the usage convention)."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


_MODULES = (
    "status",
    "models",
    "model_list",
    "model_load",
    "model_unload",
    "model_sleep",
    "model_wake",
    "tenant_list",
    "tenant_show",
    "tenant_add",
    "tenant_remove",
    "tenant_set_rate",
    "tenant_set_weight",
    "tenant_rotate_key",
)


def registry() -> dict[str, ModuleType]:
    out: dict[str, ModuleType] = {}
    for name in _MODULES:
        mod = importlib.import_module(f"{__name__}.{name}")
        out[mod.NAME] = mod
    return out
