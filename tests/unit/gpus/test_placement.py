"""GPUs: placement (best fit, pins, replicas apart, tensor-parallel groups), the checks
that name the model and the reason, discovery, the per-GPU ledger, engine flags."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from infergridd import config
from infergridd.config import ModelConfig
from infergridd.config.placement import Device, place
from infergridd.engines import adapter_for
from infergridd.supervisor import devices as devs
from infergridd.supervisor.ledger import Ledger

GiB = 1024**3


def _cfg(gpus: str, models: str) -> config.Config:
    return config.loads(f"version: 1\ngpu: {{devices: [{gpus}]}}\nmodels: [{models}]\n", "t.yaml")


TWO = "{index: 0, total_memory: 24GiB}, {index: 1, total_memory: 24GiB}"
FOUR = ", ".join(f"{{index: {i}, total_memory: 24GiB}}" for i in range(4))


def test_two_gpus_example_places_tp_on_both_and_pins_the_swappers() -> None:
    cfg = config.load("configs/two_gpus.yaml")
    placed = place(cfg, config.placement.configured_devices(cfg))
    assert placed["big-0"] == (0, 1)
    assert placed["chat-0"] == (1,) and placed["coder-0"] == (1,)
    assert placed["embed-0"] == (0,)


def test_replicas_go_to_different_gpus_and_best_fit_packs() -> None:
    cfg = _cfg(FOUR, "{name: m, memory: 8GiB, replicas: 4}")
    assert sorted(place(cfg, config.placement.configured_devices(cfg)).values()) == \
        [(0,), (1,), (2,), (3,)]
    # best fit: the second model goes where it fits tightest (beside the first), keeping
    # a whole GPU free for the tensor-parallel model placed first of all
    cfg = _cfg(TWO, "{name: a, memory: 10GiB}, {name: b, memory: 10GiB},"
                    " {name: t, memory: 20GiB, gpus: 1}")
    placed = place(cfg, config.placement.configured_devices(cfg))
    assert placed["t-0"] != placed["a-0"] and placed["a-0"] == placed["b-0"]


def test_pinned_replicas_take_groups_from_the_list() -> None:
    cfg = _cfg(FOUR, "{name: m, memory: 8GiB, gpus: 2, replicas: 2, devices: [3, 2, 1, 0]}")
    placed = place(cfg, config.placement.configured_devices(cfg))
    assert placed == {"m-0": (2, 3), "m-1": (0, 1)}


@pytest.mark.parametrize(("models", "expect"), [
    ("{name: big, gpus: 3, memory: 1GiB}",
     r"models\[0\]\.gpus: model 'big' needs 3 GPUs per engine, more than the 2 this machine"),
    ("{name: pin, devices: [2], memory: 1GiB}",
     r"models\[0\]\.devices: model 'pin' is pinned to GPU 2, which this machine does not have"),
    ("{name: a, devices: [1], memory: 16GiB}, {name: b, devices: [1], memory: 16GiB}",
     r"preloaded models cannot all fit on GPU 1: a 16.0 GiB \+ b 16.0 GiB = 32.0 GiB > 24.0"),
    ("{name: a, devices: [0], memory: 16GiB, pinned: true, preload: false},"
     " {name: b, devices: [0], memory: 16GiB, pinned: true, preload: false}",
     r"pinned models cannot all fit on GPU 0: a 16.0 GiB \+ b"),
    ("{name: tp, gpus: 2, devices: [0], memory: 1GiB}",
     r"models\[0\]\.devices: model 'tp' needs 2 GPUs per engine but is pinned to 1"),
    ("{name: x, gpus: 0}", r"models\[0\]\.gpus: model 'x': must be at least 1"),
])
def test_bad_placements_are_config_errors_naming_the_model(models: str, expect: str) -> None:
    with pytest.raises(config.ConfigError, match=expect):
        _cfg(TWO, models)


def test_lazy_models_pinned_together_beyond_memory_are_fine() -> None:
    """Overlapping pins beyond a GPU are refused only for preloaded or pinned models:
    lazily loaded ones swap there (configs/two_gpus.yaml relies on it)."""
    cfg = _cfg(TWO, "{name: a, devices: [1], memory: 16GiB, preload: false},"
                    " {name: b, devices: [1], memory: 16GiB, preload: false}")
    assert [m.name for m in cfg.models] == ["a", "b"]


def test_shorthand_defers_gpu_counts_to_the_machine() -> None:
    """Without gpu.devices the GPU count is NVML's, known only on the machine: the
    supervisor checks (check_fit with its devices) and refuses there."""
    cfg = config.loads("version: 1\nmodels: [{name: tp, gpus: 2}]\n")
    with pytest.raises(config.ConfigError, match="needs 2 GPUs per engine, more than the 1"):
        config.check_fit(cfg, devs.discover(cfg, lambda: None))
    two = [Device(0, 80 * GiB), Device(1, 80 * GiB)]
    config.check_fit(cfg, two)
    assert place(cfg, two) == {"tp-0": (0, 1)}


def test_discovery_nvml_wins_config_may_only_lower() -> None:
    nv = [Device(0, 80 * GiB, "GPU-a", "H100", "NVML"), Device(1, 80 * GiB, "GPU-b", "H100", "NVML")]
    plain = config.loads("version: 1\n")
    assert [d.index for d in devs.discover(plain, lambda: nv)] == [0, 1]
    assert devs.discover(plain, lambda: None)[0].total == 0  # no NVML, no figure: unlimited
    capped = config.loads("version: 1\ngpu: {total_memory: 40GiB}\n")
    assert [d.total for d in devs.discover(capped, lambda: nv)] == [40 * GiB, 40 * GiB]
    one = config.loads("version: 1\ngpu: {device_index: 1}\n")
    assert [(d.index, d.uuid) for d in devs.discover(one, lambda: nv)] == [(1, "GPU-b")]
    listed = config.loads("version: 1\ngpu: {devices: [{index: 1, total_memory: 99GiB}]}\n")
    got = devs.discover(listed, lambda: nv)
    assert [(d.index, d.total, d.name) for d in got] == [(1, 80 * GiB, "H100")]
    assert [d.total for d in devs.discover(listed, lambda: None)] == [99 * GiB]


def test_place_env_sets_exactly_the_engine_gpus_unless_the_model_does() -> None:
    env: dict[str, str] = {}
    devs.place_env((1, 3), env)
    assert env == {"CUDA_VISIBLE_DEVICES": "1,3", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    own = {"CUDA_VISIBLE_DEVICES": "2"}
    devs.place_env((1,), own)
    assert own["CUDA_VISIBLE_DEVICES"] == "2"


@dataclass
class Holder:
    engine_id: str
    memory_bytes: int
    holds: int
    devices: tuple[int, ...]

    def held_bytes(self) -> int:
        return self.holds


def test_ledger_per_gpu_admits_only_what_fits_on_every_gpu_of_the_engine() -> None:
    led = Ledger([Device(0, 24 * GiB), Device(1, 24 * GiB)])
    big = Holder("big-0", 12 * GiB, 0, (0, 1))
    chat = Holder("chat-0", 16 * GiB, 16 * GiB, (1,))
    embed = Holder("embed-0", 4 * GiB, 4 * GiB, (0,))
    hs = [big, chat, embed]
    why = led.shortfall(big, hs)  # room on GPU 0, not on GPU 1
    assert "needs 12.0 GiB, 8.0 GiB free of 24.0 GiB on GPU 1 (held: chat-0 16.0 GiB)" in why
    assert "GPU 0" not in why
    chat.holds = 512 * 1024**2  # chat asleep
    assert led.shortfall(big, hs) == ""
    big.holds = 12 * GiB
    assert led.free(hs, 0) == 8 * GiB and led.free(hs, 1) == 24 * GiB - 12.5 * GiB
    assert led.used(hs) == 2 * 12 * GiB + 4 * GiB + 512 * 1024**2  # TP holds on each
    rep = led.report(hs)
    assert [(g.index, g.total_bytes, g.free_bytes) for g in rep] == [
        (0, 24 * GiB, 8 * GiB), (1, 24 * GiB, int(11.5 * GiB))]


def test_tensor_parallel_flags() -> None:
    v = adapter_for(ModelConfig(name="t", engine="vllm", args={"model": "/m"}, gpus=2))
    argv = v.launch_spec(1, "k").argv
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    one = adapter_for(ModelConfig(name="t", engine="vllm", args={"model": "/m"}))
    assert "--tensor-parallel-size" not in one.launch_spec(1, "k").argv
    s = adapter_for(ModelConfig(name="t", engine="sglang", args={"model_path": "/m"}, gpus=4))
    argv = s.launch_spec(1, "k").argv
    assert argv[argv.index("--tp-size") + 1] == "4"
    own = adapter_for(ModelConfig(name="t", engine="sglang",
                                  args={"model_path": "/m", "tp_size": 2}, gpus=2))
    assert own.launch_spec(1, "k").argv.count("--tp-size") == 1


def test_the_sim_reports_the_gpus_it_was_given(monkeypatch: pytest.MonkeyPatch) -> None:
    from infergridd.sim import devices as simdev
    from infergridd.sim.metrics import SimMetrics
    from infergridd.sim.model import EngineModel
    from infergridd.sim.profile import load_profile

    assert simdev.visible_devices({"CUDA_VISIBLE_DEVICES": "0, 1"}) == ["0", "1"]
    assert simdev.visible_devices({}) == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    text = SimMetrics().render_vllm(EngineModel(load_profile("fast-test"), clock=lambda: 0.0), "m")
    assert 'infergrid_sim_visible_device{device="2"} 1' in text
    assert 'infergrid_sim_visible_device{device="3"} 1' in text


def test_doctor_explains_a_placement_that_cannot_fit() -> None:
    from infergridd.cli.doctor.check import FAIL, OK
    from infergridd.cli.doctor.gpus import check_gpus

    cfg = config.load("configs/two_gpus.yaml")
    devices = config.placement.configured_devices(cfg)
    [c] = check_gpus(cfg, None, devices=devices)
    assert c.status == OK
    assert c.detail.startswith("GPU 0 (24.0 GiB): big-0* 12.0 GiB, embed-0 4.0 GiB; GPU 1 "
                               "(24.0 GiB): big-0* 12.0 GiB, chat-0 16.0 GiB, coder-0* 16.0 GiB")
    checks = check_gpus(cfg, lambda i: ("H100", 24 * GiB, (24 if i == 0 else 10) * GiB),
                        devices=devices)
    assert [c.status for c in checks] == [OK, OK, FAIL]
    assert "the preloaded engines placed on it need 16.0 GiB" in checks[2].detail
    # on a machine with one GPU (NVML found one), the TP model cannot be placed
    [c] = check_gpus(cfg, None, devices=[Device(0, 80 * GiB)])
    assert c.status == FAIL and "model 'big' needs 2 GPUs per engine" in c.detail
    [c] = check_gpus(cfg, None, devices=[Device(0, 80 * GiB), Device(2, 80 * GiB)])
    assert c.status == FAIL and "model 'embed' is pinned to GPU 0" not in c.detail
    assert "model 'chat' is pinned to GPU 1, which this machine does not have" in c.detail


def test_nvml_devices_through_a_stand_in_pynvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """The NVML calls ``nvml_devices`` makes, answered by a stand-in module (no GPU here):
    every GPU's index, UUID, name (bytes from older bindings) and total memory."""
    import sys
    import types

    calls: list[str] = []

    class Mem:
        def __init__(self, total: int) -> None:
            self.total = total

    fake = types.SimpleNamespace(
        nvmlInit=lambda: calls.append("init"), nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlDeviceGetCount=lambda: 2, nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: [b"NVIDIA H100", "NVIDIA L4"][h],
        nvmlDeviceGetUUID=lambda h: f"GPU-{h}",
        nvmlDeviceGetMemoryInfo=lambda h: Mem([80 * GiB, 24 * GiB][h]),
        nvmlDeviceGetTopologyCommonAncestor=lambda a, b: 10 * (a + b))
    monkeypatch.setitem(sys.modules, "pynvml", types.ModuleType("pynvml"))
    for k, v in vars(fake).items():
        setattr(sys.modules["pynvml"], k, v)
    got = devs.nvml_devices()
    assert [(d.index, d.uuid, d.name, d.total) for d in got or []] == [
        (0, "GPU-0", "NVIDIA H100", 80 * GiB), (1, "GPU-1", "NVIDIA L4", 24 * GiB)]
    assert calls == ["init", "shutdown"]
    assert devs.nvml_links([0, 1]) == {(0, 1): 10}

    def broken() -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    sys.modules["pynvml"].nvmlInit = broken  # type: ignore[attr-defined]
    assert devs.nvml_devices() is None
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed
    assert devs.nvml_devices() is None


def test_tensor_parallel_groups_take_the_fastest_link_among_equal_fits() -> None:
    """NVML topology: GPUs 0-2 and 1-3 are NVLinked pairs (level 0), every other pair
    goes across the CPU sockets (50): a TP-2 engine lands on a linked pair, and a
    second one on the other pair; without topology it is by memory (and index) alone."""
    cfg = _cfg(FOUR, "{name: t, memory: 8GiB, gpus: 2, replicas: 2}")
    devices = config.placement.configured_devices(cfg)
    links = {(a, b): 50 for a in range(4) for b in range(4) if a < b} | {(0, 2): 0, (1, 3): 0}
    assert place(cfg, devices, links) == {"t-0": (0, 2), "t-1": (1, 3)}
    assert place(cfg, devices) == {"t-0": (0, 1), "t-1": (2, 3)}
    # memory first: a linked pair where it cannot fit beside the preloaded is not chosen
    cfg = _cfg(FOUR, "{name: p, memory: 20GiB, devices: [2]},"
                     " {name: t, memory: 8GiB, gpus: 2}")
    assert place(cfg, devices, links)["t-0"] == (1, 3)
