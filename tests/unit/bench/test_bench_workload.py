"""Workload files: every packaged one loads, and a misspelt key is an error naming it."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

from infergridd.bench import workload
from infergridd.bench.workload import Fixed, LogNormal, Uniform, WorkloadError

REPO = Path(__file__).resolve().parents[3]
NAMES = ["bursty", "hero", "hero-2rps", "hero-dense", "long-prompt-flooder", "tenants8"]

BASE = """
name: t
duration_s: 10
warmup_s: 1
tenants:
  - name: flooder
    flood: true
  - name: quiet
    rate: 2
    prompt: {dist: uniform, low: 10, high: 20}
    output: {dist: lognormal, median: 50, sigma: 0.3, min: 5, max: 100}
"""


def test_packaged_workloads_load() -> None:
    assert workload.packaged_names() == NAMES
    for name in NAMES:
        w = workload.load(name)
        assert w.name == name
    hero = workload.load("hero")
    assert [t.name for t in hero.flooders()] == ["flooder"]
    assert hero.tenant("quiet").rate == 1.0
    assert workload.load("hero-dense").tenant("quiet").rate == 4.0
    t8 = workload.load("tenants8")
    assert len(t8.tenants) == 8 and {t.weight for t in t8.tenants} == {1, 2, 3, 4}
    assert all(t.flood for t in t8.tenants)


def test_repo_copies_match_packaged() -> None:
    """bench/workloads/ (what a checkout reads) and the packaged copies never drift."""
    pkg = REPO / "infergridd" / "bench" / "workloads"
    for name in NAMES:
        assert filecmp.cmp(pkg / f"{name}.yaml", REPO / "bench" / "workloads" / f"{name}.yaml",
                           shallow=False), name


def test_load_by_path(tmp_path: Path) -> None:
    p = tmp_path / "mine.yaml"
    p.write_text(BASE)
    w = workload.load(str(p))
    assert isinstance(w.tenant("flooder").prompt, Fixed)
    assert isinstance(w.tenant("quiet").prompt, Uniform)
    assert isinstance(w.tenant("quiet").output, LogNormal)


def test_unknown_workload_name_lists_packaged() -> None:
    with pytest.raises(WorkloadError, match="hero"):
        workload.load("no-such-workload")


@pytest.mark.parametrize("text, where", [
    (BASE + "colour: blue\n", "colour"),
    (BASE.replace("rate: 2", "rate: 2\n    rat: 3"), "rat"),
    (BASE.replace("sigma: 0.3", "sigma: 0.3, mean: 4"), "mean"),
    (BASE.replace("dist: uniform", "dist: gaussian"), "dist"),
    (BASE.replace("flood: true", "flood: true\n    burst: {every_s: 1, count: 2}"), "burst"),
])
def test_unknown_key_is_named(text: str, where: str) -> None:
    with pytest.raises(WorkloadError) as e:
        workload.loads(text, "x.yaml")
    assert where in str(e.value) and "x.yaml" in str(e.value)


@pytest.mark.parametrize("text, where", [
    (BASE.replace("rate: 2", "rate: 0"), "$.tenants[1].rate"),
    (BASE.replace("flood: true", "flood: true\n    rate: 3"), "$.tenants[0].rate"),
    (BASE.replace("low: 10", "low: 30"), "$.tenants[1].prompt"),
    (BASE.replace("name: quiet", "name: flooder"), "duplicate"),
    (BASE.replace("warmup_s: 1", "warmup_s: 10"), "warmup_s"),
    (BASE.replace("rate: 2", "rate: two"), "rate"),
])
def test_invalid_values_are_named(text: str, where: str) -> None:
    with pytest.raises(WorkloadError, match=r".*" + where.replace("$", r"\$").replace("[", r"\[")
                       .replace("]", r"\]")):
        workload.loads(text)


def test_repo_workloads_are_the_packaged_ones() -> None:
    """bench/workloads/ (what the issue and README point at) must not drift from the copies
    pip installs with the package."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    repo = {p.name: p.read_text() for p in (root / "bench" / "workloads").glob("*.yaml")}
    pkg = {p.name: p.read_text()
           for p in (root / "infergridd" / "bench" / "workloads").glob("*.yaml")}
    assert repo and repo == pkg
