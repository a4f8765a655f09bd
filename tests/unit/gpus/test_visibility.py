"""What operators see of GPUs: each GPU's ledger (``gpu list``), and the tenant policy
exported for llm-d (parsed back as YAML, the way kubectl would read it)."""

from __future__ import annotations

import yaml

from infergridd import config
from infergridd import protocol as p
from infergridd.core.gpu_view import gpu_ledgers
from infergridd.core.memory import GpuMemory
from infergridd.scheduler.commands.export_llmd import build
from infergridd.scheduler.commands.gpu_list import GpuList

GiB = 1024**3


def test_gpu_ledgers_split_resident_and_sleeping_per_gpu() -> None:
    cfg = config.load("configs/two_gpus.yaml")
    mem = GpuMemory(cfg)
    engines = [
        p.EngineStatus(engine_id="big-0", model="big", kind="sim", state="ready",
                       memory_bytes=12 * GiB, devices=[0, 1]),
        p.EngineStatus(engine_id="chat-0", model="chat", kind="sim", state="sleeping1",
                       memory_bytes=GiB, devices=[1]),
        p.EngineStatus(engine_id="embed-0", model="embed", kind="sim", state="ready",
                       memory_bytes=4 * GiB, devices=[0]),
        p.EngineStatus(engine_id="coder-0", model="coder", kind="sim", state="stopped",
                       devices=[1]),
    ]
    g0, g1 = gpu_ledgers(mem, engines)
    assert (g0["index"], g0["total_bytes"], g0["resident_bytes"], g0["free_bytes"]) == \
        (0, 24 * GiB, 16 * GiB, 8 * GiB)
    assert [e["engine_id"] for e in g0["resident"]] == ["big-0", "embed-0"]
    assert (g1["resident_bytes"], g1["sleeping_bytes"], g1["free_bytes"]) == \
        (12 * GiB, GiB, 11 * GiB)
    mem.gpus = [p.GpuDevice(index=0, total_bytes=24 * GiB, free_bytes=7 * GiB, name="H100"),
                p.GpuDevice(index=1, total_bytes=24 * GiB, free_bytes=3 * GiB)]
    g0, g1 = gpu_ledgers(mem, engines)  # the supervisor's figures win once reported
    assert g0["free_bytes"] == 7 * GiB and g0["name"] == "H100" and g1["free_bytes"] == 3 * GiB
    text = GpuList.render({"gpus": [g0, g1]})
    assert "big-0 12.0 GiB (TP 0,1)" in text and "chat-0 1.0 GiB" in text


def test_llmd_export_is_one_objective_per_band_and_the_tenants_headers() -> None:
    tenants = [{"name": "quiet", "band": 0, "weight": 1.0, "rpm": 0.0, "tpm": 0.0},
               {"name": "batch", "band": 2, "weight": 3.0, "rpm": 60.0, "tpm": 0.0}]
    docs = list(yaml.safe_load_all(build(tenants, "chat-pool", "ml")))
    objectives = [d for d in docs if d["kind"] == "InferenceObjective"]
    assert [(o["metadata"]["name"], o["spec"]["priority"]) for o in objectives] == [
        ("infergrid-band-0", 0), ("infergrid-band-2", -2)]  # lower band first = higher prio
    for o in objectives:
        assert o["apiVersion"] == "inference.networking.x-k8s.io/v1alpha2"
        assert o["metadata"]["namespace"] == "ml"
        assert o["spec"]["poolRef"] == {"group": "inference.networking.k8s.io",
                                        "kind": "InferencePool", "name": "chat-pool"}
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    h = yaml.safe_load(cm["data"]["headers.yaml"])
    assert h["fairness_header"] == "x-gateway-inference-fairness-id"
    assert h["objective_header"] == "x-gateway-inference-objective"
    assert h["tenants"][1] == {"fairness_id": "batch", "objective": "infergrid-band-2",
                               "weight": 3, "rpm": 60, "tpm": 0}


def test_metrics_have_per_gpu_memory_gauges() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from infergridd.frontdoor.metrics import SnapshotCollector

    col = SnapshotCollector()
    col.snapshot = p.Snapshot(
        instance="x",
        gpus=[p.GpuDevice(index=0, total_bytes=24 * GiB, free_bytes=8 * GiB),
              p.GpuDevice(index=1, total_bytes=24 * GiB, free_bytes=11 * GiB)],
        engines=[p.EngineStatus(engine_id="big-0", model="big", kind="sim", state="ready",
                                memory_bytes=12 * GiB, devices=[0, 1]),
                 p.EngineStatus(engine_id="chat-0", model="chat", kind="sim",
                                state="sleeping1", memory_bytes=GiB, devices=[1])])
    reg = CollectorRegistry()
    reg.register(col)
    text = generate_latest(reg).decode()
    values = {ln.split(" ")[0]: float(ln.split(" ")[1]) for ln in text.splitlines()
              if ln.startswith("infergrid_gpu_memory_bytes{")}
    assert values['infergrid_gpu_memory_bytes{device="0",state="resident"}'] == 12 * GiB
    assert values['infergrid_gpu_memory_bytes{device="1",state="sleeping"}'] == GiB
    assert values['infergrid_gpu_memory_bytes{device="1",state="free"}'] == 11 * GiB
    assert values['infergrid_gpu_memory_bytes{device="0",state="total"}'] == 24 * GiB
