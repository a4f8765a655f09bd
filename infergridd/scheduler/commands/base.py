"""What every control command is: the ``Command`` base class and the ``CommandContext``
it runs in.

A command is one class that holds both of its sides, so that ``infergridctl``
and the scheduler cannot disagree about it:

* the wire side: ``name`` (``"tenant.set-rate"``, also the CLI path ``tenant set-rate``),
  and ``execute(ctx)``, run inside the scheduler on the arguments it was built with;
* the CLI side: ``help``, ``arguments`` (argparse flags; the same names are the wire
  arguments), ``render(result)`` for people (``--json`` prints the result itself) and
  ``reply_timeout(namespace)`` for a command that waits inside the scheduler.

Defining a subclass with a ``name`` registers it (``__init_subclass__``); the package
imports every module in it, so a new command is one new file and nothing else.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from ...config import Config, Dirs
    from ...core.core import SchedulerCore, Send
    from ..observe import Observer
    from ..peers import PeerTable


class CommandError(Exception):
    """A command refused its input; ``exit_code`` 2 means bad input (the usage convention)."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class CommandContext:
    """What a command may touch inside the scheduler, and nothing more: the core's
    façade, the configuration, who is connected, and the two ways out of the core
    (sending what it decided, saving its state)."""

    core: SchedulerCore
    cfg: Config
    #: the scheduler's id for this run and its start (wall clock), for ``status``
    instance: str
    started_at: float
    peers: PeerTable
    #: send the core's decisions (a residency change) to the peers now
    apply: Callable[[list[Send]], None]
    #: write the state file now (a runtime setting changed: it must survive a crash)
    persist: Callable[[], None]
    #: the configuration file this scheduler was started from (absolute; "" unknown)
    #: and its directories, for ``status`` (``infergridctl doctor`` reads them there)
    config_path: str = ""
    dirs: Dirs | None = None
    #: usage accounting and request traces (``usage``, ``trace``); None in bare tests
    observe: Observer | None = None


class Arg:
    """One argparse argument: ``Arg("--rpm", help=...)``.  Its ``dest`` is also the key
    of the wire argument, so the CLI and ``execute`` use one name."""

    __slots__ = ("flags", "options")

    def __init__(self, *flags: str, **options: Any) -> None:
        self.flags = flags
        self.options = options

    @property
    def dest(self) -> str:
        if "dest" in self.options:
            return str(self.options["dest"])
        long = next((f for f in self.flags if f.startswith("--")), self.flags[0])
        return long.lstrip("-").replace("-", "_")


#: every concrete command, by wire name; filled by ``Command.__init_subclass__``
_REGISTERED: dict[str, type[Command]] = {}


class Command:
    """One ``infergridctl`` command.  Subclasses set ``name`` and ``help``, list their
    ``arguments``, and implement ``execute`` and ``render``."""

    #: wire name; the CLI path is this with spaces for dots.  Empty: an abstract base.
    name: ClassVar[str] = ""
    #: other wire names (and CLI paths) that run this command, kept for old usage
    aliases: ClassVar[tuple[str, ...]] = ()
    #: one line for ``infergridctl --help`` and the man page
    help: ClassVar[str] = ""
    arguments: ClassVar[tuple[Arg, ...]] = ()
    #: reads only: logged at debug and no snapshot push to the front doors.  A command
    #: that changes anything is not read-only: it is for the admin group (DESIGN §10),
    #: which today the control socket's file mode (0660, group infergrid) enforces.
    read_only: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("name"):
            return
        for wire in (cls.name, *cls.aliases):
            other = _REGISTERED.get(wire)
            if other is not None and _where(other) != _where(cls):
                raise TypeError(f"command {wire!r} defined twice: {other.__module__}, "
                                f"{cls.__module__}")
            _REGISTERED[wire] = cls

    def __init__(self, args: dict[str, Any]) -> None:
        self.args = args

    # ------------------------------------------------------------------ CLI side
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        for a in cls.arguments:
            parser.add_argument(*a.flags, **a.options)

    @classmethod
    def to_args(cls, ns: argparse.Namespace) -> dict[str, Any]:
        """The wire arguments from the parsed command line."""
        return {a.dest: getattr(ns, a.dest) for a in cls.arguments}

    @classmethod
    def reply_timeout(cls, ns: argparse.Namespace) -> float | None:
        """How long infergridctl must wait for the answer, for a command that waits
        inside the scheduler; ``None``: the ``--timeout`` option decides."""
        return None

    @classmethod
    def render(cls, result: Any) -> str:
        """The result for people (``--json`` prints it as it is)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ scheduler side
    def execute(self, ctx: CommandContext) -> Any | Awaitable[Any]:
        """Run inside the scheduler; raise ``CommandError`` for bad input.  A command
        that must wait (a model draining) returns an awaitable, which the scheduler
        awaits in its own task so the control socket keeps answering meanwhile."""
        raise NotImplementedError

    def arg(self, key: str, default: Any = "") -> Any:
        return self.args.get(key, default)


def _where(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def registered() -> dict[str, type[Command]]:
    """Wire name (and alias) → command class, for what has been imported so far."""
    return dict(_REGISTERED)
