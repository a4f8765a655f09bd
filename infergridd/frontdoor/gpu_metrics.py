"""``/metrics``: each GPU's memory ledger, ``infergrid_gpu_memory_bytes{device,state}``.

From the scheduler's snapshot: each GPU's total and free figures as the
supervisor's ledger reports them, and what the engines placed on it hold
(``EngineStatus.memory_bytes`` on each of its ``devices``), split into
``resident`` (awake or coming up) and ``sleeping`` (kept while asleep).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily

from .. import protocol as p

ASLEEP = (p.EngineState.SLEEPING1, p.EngineState.SLEEPING2)


def gpu_families(snap: p.Snapshot) -> Iterator[GaugeMetricFamily]:
    """One gauge family: per GPU, bytes ``total``, ``free``, ``resident``, ``sleeping``."""
    fam = GaugeMetricFamily("infergrid_gpu_memory_bytes", "GPU memory per the supervisor's "
                            "ledger: total, free, held by resident and by sleeping engines",
                            labels=["device", "state"])
    first = snap.gpus[0].index if snap.gpus else 0
    for g in snap.gpus:
        held = {"resident": 0, "sleeping": 0}
        for e in snap.engines:
            if g.index in (e.devices or [first]):
                held["sleeping" if e.state in ASLEEP else "resident"] += e.memory_bytes
        dev = str(g.index)
        fam.add_metric([dev, "total"], float(g.total_bytes))
        fam.add_metric([dev, "free"], float(g.free_bytes))
        fam.add_metric([dev, "resident"], float(held["resident"]))
        fam.add_metric([dev, "sleeping"], float(held["sleeping"]))
    yield fam
