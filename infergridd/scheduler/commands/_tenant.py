"""The shape of the ``tenant`` commands: the name argument, and a registry change that
maps bad input to exit 2 and is saved at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .base import Arg, Command, CommandContext, CommandError

T = TypeVar("T")

NAME_ARG = Arg("name", help="tenant name")


class TenantCommand(Command):
    """A command about one tenant, named by the first argument."""

    arguments = (NAME_ARG,)

    @property
    def tenant(self) -> Any:
        """The name as given (the registry checks it)."""
        return self.arg("name")

    @staticmethod
    def change(ctx: CommandContext, change: Callable[[], T]) -> T:
        """Run a registry change; bad input → CommandError (exit 2); persist at once on
        success, so a runtime setting survives a scheduler crash."""
        try:
            result = change()
        except (ValueError, KeyError) as exc:
            msg = exc.args[0] if exc.args else str(exc)
            raise CommandError(str(msg)) from None
        ctx.persist()
        return result
