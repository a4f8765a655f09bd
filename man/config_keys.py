#!/usr/bin/env python3
"""Every key of infergrid.yaml, walked from the msgspec structs in infergridd/config/schema.py.

    python man/config_keys.py           # one scdoc entry stub per key, to paste into
                                        # infergrid.yaml.5.scd when a key is added
    python man/config_keys.py --paths   # just the key paths

tests/unit/test_manpages.py uses ``walk()`` and ``heading()`` to check that
infergrid.yaml.5.scd documents every key, with its real type and default.
"""

from __future__ import annotations

import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infergridd.config import Config  # noqa: E402


class Key(NamedTuple):
    path: str  # "scheduler.token_bucket.rate_per_s", "models[].max_num_seqs"
    type: str  # as written in the man page: "number", "string or integer", ...
    default: str  # as written in the man page, "" when the key is required
    required: bool


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Literal:
        if len(args) == 1:
            return f"must be {args[0]}"
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(type_name(a) for a in args)
    if origin is list:
        inner = args[0]
        if isinstance(inner, type) and issubclass(inner, msgspec.Struct):
            return "list of mappings"
        return f"list of {type_name(inner)}s"
    if origin is dict:
        return f"mapping of string to {type_name(args[1])}"
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return "mapping"
    names = {str: "string", int: "integer", float: "number", bool: "boolean", object: "any"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def default_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '""' if value == "" else value
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, (list, dict)):
        return "[]" if isinstance(value, list) else "{}"
    return str(value)


def walk(struct: type[msgspec.Struct] = Config, prefix: str = "") -> Iterator[Key]:
    for f in msgspec.structs.fields(struct):
        path = prefix + f.encode_name
        tp = f.type
        required = f.required
        nested: Any = None
        if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
            nested, sub = tp, path + "."
        elif typing.get_origin(tp) is list:
            inner = typing.get_args(tp)[0]
            if isinstance(inner, type) and issubclass(inner, msgspec.Struct):
                nested, sub = inner, path + "[]."
        if required:
            default = ""
        elif nested is not None and typing.get_origin(tp) is not list:
            default = "see below"
        elif f.default is not msgspec.NODEFAULT:
            default = default_text(f.default)
        else:
            default = default_text(f.default_factory())
        yield Key(path, type_name(tp), default, required)
        if nested is not None:
            yield from walk(nested, sub)


def heading(key: Key) -> str:
    """The scdoc line that opens a key's entry in infergrid.yaml.5.scd."""
    if key.required:
        return f"*{key.path}* ({key.type}; required)"
    return f"*{key.path}* ({key.type}; default: {key.default})"


def main(argv: list[str]) -> int:
    for key in walk():
        if "--paths" in argv:
            print(key.path)
        else:
            print(heading(key))
            print("\tTODO: what it means.\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
