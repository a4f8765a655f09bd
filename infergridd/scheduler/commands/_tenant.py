"""Shared pieces of the ``tenant`` commands: the name argument and error mapping."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from . import CommandError

T = TypeVar("T")


def name_arg(parser: Any) -> None:
    parser.add_argument("name", help="tenant name")


def apply(ctx: Any, change: Callable[[], T]) -> T:
    """Run a registry change; bad input → CommandError (exit 2); persist at once on success."""
    try:
        result = change()
    except (ValueError, KeyError) as exc:
        msg = exc.args[0] if exc.args else str(exc)
        raise CommandError(str(msg)) from None
    ctx.persist(force=True)
    return result
