"""pyproject.toml in the form current setuptools reads without a deprecation warning."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_license_is_an_spdx_expression() -> None:
    """``license = {text = ...}`` (a TOML table) warns on every install since setuptools
    77 and stops building in 2027; the SPDX string needs setuptools >= 77 to build."""
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0"
    assert all((ROOT / f).is_file() for f in project.get("license-files", []))
    assert not any(c.startswith("License ::") for c in project.get("classifiers", []))
    (req,) = [r for r in PYPROJECT["build-system"]["requires"] if r.startswith("setuptools")]
    m = re.fullmatch(r"setuptools>=(\d+)", req.replace(" ", ""))
    assert m and int(m.group(1)) >= 77, req
