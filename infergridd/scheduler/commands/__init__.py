"""Control commands: one module per command, holding its message, its CLI and its docs.

Each command is a ``Command`` subclass (see ``base``); defining one registers it,
and ``registry()`` imports every module of this package first, so there is no
list to keep.  ``infergridctl`` builds its parser from the registry and the
scheduler runs what it finds there, so a command cannot exist on one side only.
Modules whose name starts with ``_`` hold shared shapes (``_model``, ``_tenant``).
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import Arg, Command, CommandContext, CommandError, registered

__all__ = ["Arg", "Command", "CommandContext", "CommandError", "lookup", "registry"]


def _import_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def registry() -> dict[str, type[Command]]:
    """Every command once, by its wire name, single words first (``status``), then the
    groups (``model …``, ``tenant …``) in name order: the order of ``--help``."""
    _import_all()
    commands = {cls.name: cls for cls in registered().values()}
    return dict(sorted(commands.items(), key=lambda kv: ("." in kv[0], kv[0])))


def lookup(name: str) -> type[Command] | None:
    """The command for a wire name or one of its aliases (``models`` → ``model.list``)."""
    _import_all()
    return registered().get(name)
