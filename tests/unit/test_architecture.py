"""The architecture's rules as a test: layers, "never" imports, wire messages, module size.

``docs/internals.md`` draws the map; this file makes the parts of it that a
careless import could break fail the default tier.  ``violations(root)`` reads
every module under ``root/infergridd`` with ``ast`` (nothing is imported, so a
module that needs vLLM or a GPU is checked like any other), resolves relative
imports to absolute names, counts imports inside functions and under
``TYPE_CHECKING`` too, and returns one ``path:line: what`` string per breach.

The contracts (see ``CONTRACTS`` and the checks below):

* the pure core (``infergridd.core``) imports no I/O, concurrency, clock or
  randomness module, no third-party package but ``msgspec``, and of InferGrid
  only ``protocol``, ``config``, ``assist.policy`` and itself; it reaches no
  daemon, transport, engine, CLI or bench module even through another module;
  it names no ``time.``/``random.``-like module attribute (best effort);
* ``infergridd.assist.policy`` (loaded into the engine's own process) imports
  only pure stdlib helpers and nothing of InferGrid;
* ``infergridd.protocol`` imports only ``msgspec`` and typing helpers;
* the three daemons never import one another, the core never imports a
  daemon, the front door and the supervisor never import the core, and the
  simulated engine imports no daemon — directly or through another module;
* every wire message lives in ``protocol.py``: no tagged ``msgspec.Struct``
  on the wire's tag field, no ``_Msg`` subclass and no msgpack outside it
  (a tagged union with its own ``tag_field``, like a workload file's
  ``dist``, is a YAML schema, not a wire message);
* no module is longer than ``MAX_LINES``.

The meta-tests at the end run the same function over a small fake tree and
over a copy of the real one with a forbidden import written in, so this test
is known to fail when a rule is broken.
"""

from __future__ import annotations

import ast
import re
import shutil
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAX_LINES = 450

#: stdlib modules that do I/O, run concurrently, read the wall clock or draw random numbers
IMPURE_STDLIB = frozenset({
    "asyncio", "socket", "subprocess", "threading", "selectors", "multiprocessing",
    "concurrent", "signal", "random", "secrets", "uuid", "time", "datetime", "os",
    "pathlib", "shutil", "tempfile", "glob", "io", "fcntl", "http", "urllib",
})
#: module names whose attributes the pure code must not use (``time.monotonic()``, ``random.random()``)
IMPURE_NAMES = frozenset({"time", "random", "secrets", "os", "datetime", "uuid"})
DAEMONS_AND_IO = (
    "infergridd.frontdoor", "infergridd.scheduler", "infergridd.supervisor",
    "infergridd.engines", "infergridd.transport", "infergridd.zmqio", "infergridd.sim",
    "infergridd.cli", "infergridd.bench", "infergridd.systemd", "infergridd.logs",
)
CORE_MAY_IMPORT = ("infergridd.core", "infergridd.protocol", "infergridd.config",
                   "infergridd.assist.policy")
POLICY_STDLIB = frozenset({"__future__", "typing", "dataclasses", "collections",
                           "collections.abc", "enum", "math"})
PROTOCOL_MAY_IMPORT = frozenset({"__future__", "typing", "enum", "dataclasses",
                                 "collections.abc", "msgspec"})


@dataclass(frozen=True)
class Never:
    """Modules under ``layer`` never import (directly or through others) anything under ``never``."""

    layer: str
    never: tuple[str, ...]
    why: str


CONTRACTS = (
    Never("infergridd.core", DAEMONS_AND_IO, "the pure core is driven by the daemon, never the reverse"),
    Never("infergridd.frontdoor", ("infergridd.supervisor", "infergridd.core", "infergridd.scheduler"),
          "the front door talks to the scheduler only over the wire"),
    Never("infergridd.supervisor", ("infergridd.frontdoor", "infergridd.core", "infergridd.scheduler"),
          "the supervisor runs engines; it neither serves requests nor schedules them"),
    Never("infergridd.scheduler", ("infergridd.frontdoor", "infergridd.supervisor"),
          "the scheduler daemon reaches its peers only over the wire"),
    Never("infergridd.sim", ("infergridd.frontdoor", "infergridd.scheduler", "infergridd.supervisor",
                             "infergridd.core", "infergridd.transport", "infergridd.zmqio"),
          "the simulated engine stands in for vLLM and knows nothing of InferGrid's daemons"),
)


@dataclass(frozen=True)
class Import:
    line: int
    name: str  # absolute dotted name; a submodule where ``from pkg import sub`` names one


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _module_names(root: Path) -> dict[str, Path]:
    out = {}
    for path in sorted((root / "infergridd").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(tree: ast.Module, module: str, is_pkg: bool, known: dict[str, Path]) -> list[Import]:
    """Every import in the module, anywhere in it, with relative names made absolute."""
    package = module if is_pkg else module.rpartition(".")[0]
    out: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [Import(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append(Import(node.lineno, sub if sub in known else target))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id == "__import__"))
              and not node.args[0].value.startswith(".")):
            out.append(Import(node.lineno, node.args[0].value))  # importlib.import_module("x.y")
    return out


def _internal_edges(name: str, known: dict[str, Path]) -> list[str]:
    """The InferGrid modules that importing ``name`` executes: it, then its parent packages."""
    parts = name.split(".")
    return [m for m in (".".join(parts[:i]) for i in range(len(parts), 0, -1)) if m in known]


def _chain(start: str, never: tuple[str, ...], graph: dict[str, list[str]]) -> list[str] | None:
    """The shortest import chain from ``start`` to a module under ``never``, if any."""
    seen, todo = {start: [start]}, deque([start])
    while todo:
        mod = todo.popleft()
        if any(_under(mod, n) for n in never):
            return seen[mod]
        for nxt in graph.get(mod, ()):
            if nxt not in seen:
                seen[nxt] = [*seen[mod], nxt]
                todo.append(nxt)
    return None


def _impure_attributes(tree: ast.Module) -> list[tuple[int, str]]:
    return [(n.lineno, f"{n.value.id}.{n.attr}") for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
            and n.value.id in IMPURE_NAMES]


def _wire_tag_field(trees: dict[str, ast.Module]) -> str:
    for node in ast.walk(trees.get("infergridd.protocol", ast.Module(body=[], type_ignores=[]))):
        if isinstance(node, ast.ClassDef) and node.name == "_Msg":
            for kw in node.keywords:
                if kw.arg == "tag_field" and isinstance(kw.value, ast.Constant):
                    return str(kw.value.value)
    return "t"


def violations(root: Path) -> list[str]:
    """Every breach of the contracts in the tree ``root/infergridd``, as ``path:line: what``."""
    known = _module_names(root)
    trees: dict[str, ast.Module] = {}
    out: list[str] = []
    for mod, path in known.items():
        text = path.read_text(encoding="utf-8")
        where = path.relative_to(root).as_posix()
        if len(text.splitlines()) > MAX_LINES:
            out.append(f"{where}:1: {len(text.splitlines())} lines, over {MAX_LINES}: split it by concept")
        try:
            trees[mod] = ast.parse(text, filename=where)
        except SyntaxError as e:
            out.append(f"{where}:{e.lineno or 1}: does not parse: {e.msg}")
    imports = {m: _imports(t, m, known[m].name == "__init__.py", known) for m, t in trees.items()}
    graph = {m: [e for i in imps for e in _internal_edges(i.name, known) if e != m]
             for m, imps in imports.items()}
    wire_tag = _wire_tag_field(trees)

    for mod, imps in imports.items():
        where = known[mod].relative_to(root).as_posix()
        for i in imps:
            top = i.name.partition(".")[0]
            if _under(mod, "infergridd.core"):
                if top in IMPURE_STDLIB:
                    out.append(f"{where}:{i.line}: the pure core imports {i.name} (I/O, clock or randomness)")
                elif top == "infergridd" and not any(_under(i.name, a) for a in CORE_MAY_IMPORT):
                    out.append(f"{where}:{i.line}: the pure core imports {i.name}; "
                               f"it may import only {', '.join(CORE_MAY_IMPORT)}")
                elif top not in ("infergridd", "msgspec") and top not in sys.stdlib_module_names:
                    out.append(f"{where}:{i.line}: the pure core imports third-party {i.name}")
            if mod == "infergridd.assist.policy" and i.name not in POLICY_STDLIB:
                out.append(f"{where}:{i.line}: the engine step policy imports {i.name}; "
                           f"it may import only {', '.join(sorted(POLICY_STDLIB))}")
            if mod == "infergridd.protocol" and i.name not in PROTOCOL_MAY_IMPORT \
                    and not _under(i.name, "msgspec"):
                out.append(f"{where}:{i.line}: the protocol imports {i.name}; "
                           f"it may import only {', '.join(sorted(PROTOCOL_MAY_IMPORT))}")
            for c in CONTRACTS:
                if not _under(mod, c.layer):
                    continue
                for edge in _internal_edges(i.name, known) or [i.name]:
                    if _under(edge, c.layer):
                        continue  # its own imports are checked where they leave the layer
                    chain = _chain(edge, c.never, graph)
                    if chain is None:
                        continue
                    via = "" if len(chain) == 1 else f" (via {' -> '.join(chain)})"
                    out.append(f"{where}:{i.line}: {c.layer} imports {chain[-1]}{via}: {c.why}")
                    break
        if _under(mod, "infergridd.core") or mod == "infergridd.assist.policy":
            out += [f"{where}:{line}: pure code uses {attr} (inject a clock or a source instead)"
                    for line, attr in _impure_attributes(trees[mod])]
        if mod != "infergridd.protocol":
            out += _wire_breaches(trees[mod], where, wire_tag)
    return out


def _wire_breaches(tree: ast.Module, where: str, wire_tag: str) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            kws = {kw.arg: kw.value for kw in node.keywords}
            field = kws.get("tag_field")
            own_field = isinstance(field, ast.Constant) and field.value != wire_tag
            bases = [ast.unparse(b) for b in node.bases]
            if ("tag" in kws and not own_field) or any(b.split(".")[-1] == "_Msg" for b in bases):
                out.append(f"{where}:{node.lineno}: wire message {node.name} outside "
                           "infergridd/protocol.py: every wire message lives there")
        elif isinstance(node, ast.Attribute) and node.attr == "msgpack":
            out.append(f"{where}:{node.lineno}: msgpack outside infergridd/protocol.py: "
                       "encode and decode through protocol.encode/decode")
    return out


# -- the real tree --------------------------------------------------------------------------

#: breaches known today that only a change outside this test can remove (reported, not hidden:
#: a test would fail the day they are gone, so the entry goes with them).  None today.
KNOWN: dict[str, str] = {}


def _unlined(v: str) -> str:
    return re.sub(r":\d+: ", ": ", v, count=1)


def test_real_tree_keeps_the_contracts() -> None:
    found = violations(REPO)
    for v in found:
        print(v, "(known, see KNOWN)" if _unlined(v) in KNOWN else "")
    new = [v for v in found if _unlined(v) not in KNOWN]
    assert not new, "architecture contracts broken:\n" + "\n".join(new)


# -- the checker bites ---------------------------------------------------------------------

_FAKE = {
    "infergridd/__init__.py": "",
    "infergridd/protocol.py": "import msgspec\nclass _Msg(msgspec.Struct, tag_field='t'):\n    pass\n"
                              "class Submit(_Msg, tag='submit'):\n    pass\n",
    "infergridd/config/__init__.py": "import os\n",
    "infergridd/core/__init__.py": "",
    "infergridd/core/books.py": "from __future__ import annotations\nimport heapq\n"
                                "from .. import protocol\nfrom ..config import Config\n",
    "infergridd/frontdoor/__init__.py": "",
    "infergridd/frontdoor/app.py": "import asyncio\nfrom ..protocol import Submit\nfrom . import relay\n"
                                   "from .. import shared\n",
    "infergridd/frontdoor/relay.py": "import aiohttp\n",
    "infergridd/shared.py": "import json\n",
    "infergridd/supervisor/__init__.py": "",
    "infergridd/supervisor/engine.py": "import subprocess\n",
    "infergridd/sim/__init__.py": "",
    "infergridd/sim/model.py": "import random\nclass Dist(msgspec.Struct, tag='fixed', tag_field='dist'):\n"
                               "    pass\n",
    "infergridd/assist/__init__.py": "",
    "infergridd/assist/policy.py": "from dataclasses import dataclass\n",
}


def _tree(tmp_path: Path, extra: dict[str, str]) -> Path:
    for rel, text in {**_FAKE, **extra}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


def test_fake_tree_is_clean(tmp_path: Path) -> None:
    assert violations(_tree(tmp_path, {})) == []


@pytest.mark.parametrize(("path", "text", "expected"), [
    ("infergridd/core/books.py", "def f():\n    import asyncio\n",
     "infergridd/core/books.py:2: the pure core imports asyncio"),
    ("infergridd/core/books.py", "from ..frontdoor.app import x\n",
     "infergridd/core/books.py:1: infergridd.core imports infergridd.frontdoor.app"),
    ("infergridd/core/books.py", "from .. import shared\n",
     "the pure core imports infergridd.shared; it may import only"),
    ("infergridd/core/books.py", "def now(clock):\n    return time.monotonic()\n",
     "infergridd/core/books.py:2: pure code uses time.monotonic"),
    ("infergridd/core/books.py", "import numpy\n", "the pure core imports third-party numpy"),
    ("infergridd/frontdoor/relay.py", "from infergridd.supervisor import engine\n",
     "infergridd/frontdoor/relay.py:1: infergridd.frontdoor imports infergridd.supervisor.engine"),
    ("infergridd/shared.py", "from .supervisor.engine import run\n",
     "infergridd/frontdoor/app.py:4: infergridd.frontdoor imports infergridd.supervisor.engine "
     "(via infergridd.shared -> infergridd.supervisor.engine)"),
    ("infergridd/frontdoor/relay.py", "import importlib\nimportlib.import_module('infergridd.core.books')\n",
     "infergridd/frontdoor/relay.py:2: infergridd.frontdoor imports infergridd.core.books"),
    ("infergridd/supervisor/engine.py", "from ..frontdoor import app\n",
     "infergridd.supervisor imports infergridd.frontdoor.app"),
    ("infergridd/sim/model.py", "from infergridd.core import books\n",
     "infergridd/sim/model.py:1: infergridd.sim imports infergridd.core.books"),
    ("infergridd/assist/policy.py", "import time\n", "the engine step policy imports time"),
    ("infergridd/protocol.py", "from . import config\n", "the protocol imports infergridd.config"),
    ("infergridd/frontdoor/relay.py", "import msgspec\nclass Ping(msgspec.Struct, tag='ping'):\n    pass\n",
     "infergridd/frontdoor/relay.py:2: wire message Ping outside infergridd/protocol.py"),
    ("infergridd/frontdoor/relay.py", "import msgspec\nb = msgspec.msgpack.encode(1)\n",
     "infergridd/frontdoor/relay.py:2: msgpack outside infergridd/protocol.py"),
    ("infergridd/sim/model.py", "x = 1\n" * (MAX_LINES + 1), "infergridd/sim/model.py:1: 451 lines"),
])
def test_checker_catches(tmp_path: Path, path: str, text: str, expected: str) -> None:
    found = violations(_tree(tmp_path, {path: text}))
    print("\n".join(found))
    assert any(expected in v for v in found), found


def test_forbidden_import_in_a_copy_of_the_real_tree_fails(tmp_path: Path) -> None:
    shutil.copytree(REPO / "infergridd", tmp_path / "infergridd",
                    ignore=shutil.ignore_patterns("__pycache__"))
    before = set(violations(tmp_path))
    for rel, line in (("core/dispatch.py", "import asyncio\n"),
                      ("frontdoor/relay.py", "from ..core.core import SchedulerCore\n"),
                      ("supervisor/health.py", "from ..frontdoor import sse\n")):
        with (tmp_path / "infergridd" / rel).open("a") as f:
            f.write(line)
    new = sorted(set(violations(tmp_path)) - before)
    print("\n".join(new))
    assert any("infergridd/core/dispatch.py" in v and "imports asyncio" in v for v in new), new
    assert any("infergridd/frontdoor/relay.py" in v and "imports infergridd.core.core" in v
               for v in new), new
    assert any("infergridd/supervisor/health.py" in v and "imports infergridd.frontdoor.sse" in v
               for v in new), new
