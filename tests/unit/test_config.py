"""Config errors must name the key and the reason; shipped configs must load."""

from __future__ import annotations

from pathlib import Path

import pytest

from infergridd import config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    cfg = config.load(path)
    assert cfg.version == 1
    assert cfg.models


def test_quickstart_is_what_the_readme_promises() -> None:
    cfg = config.load(ROOT / "configs" / "quickstart_fairness.yaml")
    assert cfg.listen == "127.0.0.1:8000"
    assert [m.name for m in cfg.models] == ["demo"] and cfg.models[0].engine == "sim"
    keys = {t.name: t.keys for t in cfg.tenants}
    assert keys == {"quiet": ["sk-quiet-demo"], "flooder": ["sk-flooder-demo"]}


@pytest.mark.parametrize(
    "text,expect",
    [
        ("version: 1\nmodels: [{name: a, engin: sim}]", "unknown field `engin` - at `$.models[0]`"),
        ("version: 1\ntenants: [{name: a, weight: x}]", "`$.tenants[0].weight`"),
        ("version: 2", "$.version"),
        ("version: 1\ntenants: [{name: a, weight: 0}]", "$.tenants[0].weight: must be greater"),
        ("version: 1\nlisten: nope", "$.listen"),
        ("version: 1\nmodels: [{name: a}, {name: a}]", "$.models[1].name: duplicate"),
        ("version: 1\nmodels: [{name: a, memory: lots}]", "$.models[0].memory"),
        ("version: 1\ntenants: [{name: a, keys: [k]}, {name: b, keys: [k]}]",
         "$.tenants[1].keys[0]: key already belongs"),
        ("version: 1\ntenants: [{name: a, keys: ['sha256:zz']}]", "64 hex digits"),
        ("version: 1\nscheduler: {policy: lottery}", "$.scheduler.policy"),
        ("version: 1\nscheduler: {kv_threshold: 2}", "$.scheduler.kv_threshold"),
        ("version: 1\nmodels: [{name: a, engine: openai}]", "$.models[0].url"),
        ("[1, 2]", "mapping at the top level"),
        ("version: 1\n  bad: indent: here", "not valid YAML"),
    ],
)
def test_errors_name_the_key(text: str, expect: str) -> None:
    with pytest.raises(config.ConfigError) as err:
        config.loads(text, "test.yaml")
    assert expect in str(err.value)
    assert str(err.value).startswith("test.yaml")


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="nope.yaml: cannot read"):
        config.load(tmp_path / "nope.yaml")


@pytest.mark.parametrize("value,total,expect", [
    (123, 0, 123), ("16GiB", 0, 16 * 1024**3), ("500MB", 0, 500_000_000), ("1.5G", 0, 1_500_000_000),
    (0.25, 80, 20),
])
def test_parse_size(value, total, expect) -> None:
    assert config.parse_size(value, total) == expect


def test_hash_key_accepts_prehashed() -> None:
    h = config.hash_key("sk-x")
    assert config.hash_key(f"sha256:{h}") == h
    assert len(h) == 64 and h != "sk-x"


def test_ipc_path_length_is_checked() -> None:
    with pytest.raises(config.ConfigError, match="too long"):
        config.Dirs.ipc(Path("/tmp/" + "x" * 120))


@pytest.mark.parametrize("text,suggestion", [
    ("version: 1\nlisen: 127.0.0.1:9000", "`lisen`; did you mean `listen`?"),
    ("version: 1\nmodels: [{name: a, enigne: sim}]",
     "`enigne` - at `$.models[0]`; did you mean `engine`?"),
    ("version: 1\nscheduler: {residency: {sleep_levl: 1}}", "did you mean `sleep_level`?"),
    ("version: 1\nmodels: [{name: a, engine_assist: {premept: true}}]",
     "did you mean `preempt`?"),
    ("version: 1\ntenants: [{name: a, wieght: 2}]", "did you mean `weight`?"),
])
def test_a_typo_names_the_nearest_key(text: str, suggestion: str) -> None:
    """A misspelt key: the path, and the real key it most likely meant (difflib against
    the fields of the struct at that path)."""
    with pytest.raises(config.ConfigError) as err:
        config.loads(text, "test.yaml")
    assert suggestion in str(err.value)


def test_no_suggestion_when_nothing_is_close() -> None:
    with pytest.raises(config.ConfigError) as err:
        config.loads("version: 1\nzzzqqq: 1", "test.yaml")
    assert "unknown field `zzzqqq`" in str(err.value) and "did you mean" not in str(err.value)


def test_max_model_len_is_a_model_key() -> None:
    cfg = config.loads("version: 1\nmodels: [{name: a, max_model_len: 4096}]")
    assert cfg.models[0].max_model_len == 4096
    assert config.loads("version: 1\nmodels: [{name: a}]").models[0].max_model_len == 0
    with pytest.raises(config.ConfigError, match=r"\$.models\[0\].max_model_len"):
        config.loads("version: 1\nmodels: [{name: a, max_model_len: -2}]")
