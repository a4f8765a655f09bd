"""The supervisor's GPU memory ledger: holdings by state, admission with the numbers,
config refusal of models that can never fit, NVML fallback."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from infergridd import config
from infergridd.supervisor import ledger
from infergridd.supervisor.ledger import Ledger

GiB = 1024**3


@dataclass
class Holder:
    engine_id: str
    memory_bytes: int
    holds: int

    def held_bytes(self) -> int:
        return self.holds


def test_free_and_shortfall_name_the_numbers() -> None:
    a = Holder("chat-0", 48 * GiB, 48 * GiB)
    b = Holder("coder-0", 48 * GiB, 512 * 1024**2)  # asleep: its CUDA context only
    led = Ledger(80 * GiB, "test")
    assert led.free([a, b]) == 80 * GiB - 48 * GiB - 512 * 1024**2
    why = led.shortfall(b, [a, b])
    assert "not enough GPU memory for coder-0" in why
    assert "needs 47.5 GiB" in why and "31.5 GiB free of 80.0 GiB" in why
    assert "chat-0 48.0 GiB" in why
    a.holds = 0  # chat went to sleep
    assert led.shortfall(b, [a, b]) == ""


def test_unlimited_ledger_admits_everything() -> None:
    a = Holder("a-0", 100 * GiB, 100 * GiB)
    assert Ledger(0).shortfall(a, [a]) == "" and Ledger(0).free([a]) == 0


def _cfg(text: str) -> config.Config:
    return config.loads("version: 1\ngpu: {total_memory: 80GiB}\n" + text, "t.yaml")


def test_config_refuses_pinned_models_that_cannot_fit() -> None:
    with pytest.raises(config.ConfigError) as err:
        _cfg("models: [{name: a, memory: 48GiB, pinned: true, preload: false},"
             " {name: b, memory: 0.5, pinned: true, preload: false}]")
    msg = str(err.value)
    assert "pinned models cannot all fit" in msg
    assert "a 48.0 GiB + b 40.0 GiB = 88.0 GiB > 80.0 GiB" in msg


def test_config_refuses_preloads_that_cannot_fit_and_a_model_too_big() -> None:
    with pytest.raises(config.ConfigError, match="preloaded models cannot all fit"):
        _cfg("models: [{name: a, memory: 48GiB}, {name: b, memory: 48GiB}]")
    with pytest.raises(config.ConfigError, match=r"models\[0\].memory.*2 replicas"):
        _cfg("models: [{name: a, memory: 48GiB, replicas: 2}]")
    ok = _cfg("models: [{name: a, memory: 48GiB}, {name: b, memory: 48GiB, preload: false}]")
    assert [m.name for m in ok.models] == ["a", "b"]


def test_check_fit_uses_the_real_total_for_fractions() -> None:
    cfg = config.loads("version: 1\nmodels: [{name: a, memory: 0.6, pinned: true},"
                       " {name: b, memory: 0.6, pinned: true}]")  # no total: not checked yet
    with pytest.raises(config.ConfigError, match="pinned"):
        config.check_fit(cfg, 80 * GiB)  # what the supervisor does with NVML's figure


def test_total_from_nvml_capped_by_config_else_config_else_unlimited(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    unset = config.loads("version: 1\n")
    set16 = config.loads("version: 1\ngpu: {total_memory: 16GiB}\n")
    set99 = config.loads("version: 1\ngpu: {total_memory: 99GiB}\n")
    monkeypatch.setattr(ledger, "nvml_total", lambda index: None)
    assert ledger.gpu_total(unset) == (0, "unlimited (no NVML, gpu.total_memory 0)")
    assert ledger.gpu_total(set16) == (16 * GiB, "gpu.total_memory (no NVML)")
    monkeypatch.setattr(ledger, "nvml_total", lambda index: 24 * GiB)
    assert ledger.gpu_total(unset) == (24 * GiB, "NVML (GPU 0)")
    # the operator may keep some back ...
    assert ledger.gpu_total(set16) == (16 * GiB, "gpu.total_memory (of 24.0 GiB per NVML (GPU 0))")
    # ... but not hand out memory the GPU does not have
    assert ledger.gpu_total(set99) == (24 * GiB, "NVML (GPU 0)")
    assert "99.0 GiB is more than the 24.0 GiB" in caplog.text


def test_nvml_absent_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails as without nvidia-ml-py
    assert ledger.nvml_total(0) is None
