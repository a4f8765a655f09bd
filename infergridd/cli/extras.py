"""Optional extras (``pip install 'infergridd[bench]'``) that explain themselves.

A command that needs an extra the install lacks says which one and the pip
command that adds it, and exits 2, instead of dying in a ``ModuleNotFoundError``
traceback.  The extras are pyproject.toml's ``[project.optional-dependencies]``.
"""

from __future__ import annotations

import importlib.util
import sys

from ..config import Config

#: extra -> the modules it brings (import names)
EXTRAS: dict[str, tuple[str, ...]] = {
    "bench": ("numpy", "matplotlib"),
    "fast": ("uvloop",),
    "vllm": ("vllm",),
    "sglang": ("sglang",),
    "nvml": ("pynvml",),
}
EXIT_MISSING_EXTRA = 2


def importable(module: str) -> bool:
    """Without importing it (matplotlib takes a while); a module blocked with
    ``sys.modules[name] = None`` counts as missing, as ``import`` would say."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing(extra: str) -> list[str]:
    return [m for m in EXTRAS[extra] if not importable(m)]


def install_hint(extra: str) -> str:
    return f"pip install 'infergridd[{extra}]'"


def require(extra: str, prog: str, what: str) -> None:
    """Exit 2 with one line naming the extra when any of its modules is missing."""
    gone = missing(extra)
    if gone:
        print(f"{prog}: {what} needs the '{extra}' extra ({', '.join(gone)} not installed): "
              f"{install_hint(extra)}", file=sys.stderr)
        raise SystemExit(EXIT_MISSING_EXTRA)


def require_engines(cfg: Config, prog: str) -> None:
    """A vLLM or SGLang model launched with this interpreter (no ``models[].python``)
    needs that engine installed here; exit 2 naming the extra before anything starts."""
    for i, m in enumerate(cfg.models):
        if m.engine in ("vllm", "sglang") and not m.python:
            gone = missing(m.engine)
            if gone:
                print(f"{prog}: model {m.name!r} runs on {m.engine}, which is not installed "
                      f"in {sys.executable}: {install_hint(m.engine)} (or point "
                      f"models[{i}].python at an interpreter that has it)", file=sys.stderr)
                raise SystemExit(EXIT_MISSING_EXTRA)


def nvml_note(cfg: Config) -> str:
    """A warning for GPU engines without NVML (the GPU's memory is then not read), or ""."""
    if any(m.engine in ("vllm", "sglang") for m in cfg.models) and missing("nvml"):
        return (f"NVML (nvidia-ml-py) is not installed: the GPU's memory is taken from "
                f"gpu.total_memory, not read from the GPU; {install_hint('nvml')}")
    return ""
