"""YAML files decoded strictly into msgspec structs: ``infergrid.yaml`` and benchmark workloads.

Both refuse an unknown key or a wrong type with the file and the key's path
(``$.tenants[0].rate``), because a silently ignored key is a setting the
operator believes is active and is not (PEERS.md).  Each caller brings its own
struct, its own error class, and the checks a type system cannot express.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import msgspec
import yaml

T = TypeVar("T")


def read_text(path: Path, error: type[Exception]) -> str:
    """The file's text; ``error`` naming the file when it cannot be read."""
    try:
        return path.read_text()
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from None


def loads_struct(text: str, cls: type[T], source: str, error: type[Exception],
                 check: Callable[[T], None]) -> T:
    """YAML ``text`` (a mapping) as a ``cls``, then ``check``ed; every problem is an
    ``error`` that starts with ``source`` (and ``check`` raises ``error`` too)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise error(f"{source}: expected a mapping at the top level")
    try:
        obj = msgspec.convert(raw, cls, strict=True)
        check(obj)
    except (msgspec.ValidationError, error) as exc:
        raise error(f"{source}: {exc}") from None
    return obj
