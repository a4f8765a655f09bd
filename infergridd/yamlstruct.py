"""YAML files decoded strictly into msgspec structs: ``infergrid.yaml`` and benchmark workloads.

Both refuse an unknown key or a wrong type with the file and the key's path
(``$.tenants[0].rate``), because a silently ignored key is a setting the
operator believes is active and is not (PEERS.md).  A misspelt key also gets the
nearest real one ("did you mean `listen`?").  Each caller brings its own
struct, its own error class, and the checks a type system cannot express.
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

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
    except msgspec.ValidationError as exc:
        raise error(f"{source}: {exc}{did_you_mean(str(exc), cls)}") from None
    except error as exc:
        raise error(f"{source}: {exc}") from None
    return obj


_UNKNOWN = re.compile(r"unknown field `([^`]*)`(?: - at `([^`]*)`)?")
_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[\d+\]")


def did_you_mean(message: str, cls: type) -> str:
    """For msgspec's "unknown field `lisen`" (at ``$.path``): "; did you mean `listen`?",
    naming the closest field of the struct at that path; "" when nothing is close."""
    m = _UNKNOWN.search(message)
    if not m:
        return ""
    struct = _struct_at(cls, m.group(2) or "$")
    if struct is None:
        return ""
    names = [f.encode_name for f in msgspec.structs.fields(struct)]
    close = difflib.get_close_matches(m.group(1), names, n=1, cutoff=0.6)
    return f"; did you mean `{close[0]}`?" if close else ""


def _struct_at(cls: Any, path: str) -> type[msgspec.Struct] | None:
    """The struct type a ``$.models[0].engine_assist`` path leads to in ``cls``."""
    tp = _as_struct(cls)
    for step in _STEP.finditer(path[1:]):
        if tp is None:
            return None
        if step.group(1) is None:  # [i]: the element type of a list field, already unwrapped
            continue
        field = next((f for f in msgspec.structs.fields(tp) if f.encode_name == step.group(1)),
                     None)
        tp = _as_struct(field.type) if field is not None else None
    return tp


def _as_struct(tp: Any) -> type[msgspec.Struct] | None:
    """``tp`` itself, a list's element type or a union's member, when that is a struct."""
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return tp
    for arg in typing.get_args(tp):
        found = _as_struct(arg)
        if found is not None:
            return found
    return None
