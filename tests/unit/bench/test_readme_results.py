"""README's Results tables are exactly what the benchmark commands wrote."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_readme_results_match_the_reports() -> None:
    spec = importlib.util.spec_from_file_location("readme_results",
                                                  ROOT / "bench" / "readme_results.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    readme = (ROOT / "README.md").read_text()
    assert mod.BLOCK.search(readme), "README has no results blocks"
    assert mod.render(readme) == readme, \
        "README tables differ from bench/results: run python bench/readme_results.py"
