"""bench/hops.py: the client's, the front door's and the scheduler's marks joined by
request id into per-hop medians; the daemons found by the title they give themselves."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[3] / "bench" / "hops.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_hops", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_marks_are_joined_by_request_id_into_hop_medians() -> None:
    hops = _load()
    via, fd, sched = [], {}, {}
    order = [h[1] for h in hops.HOPS] + [hops.HOPS[-1][2]]
    for i in range(3):
        rid = f"cmpl-{i}"
        t = {name: 1000 * (k + 1) * (i + 1) for k, name in enumerate(order)}  # µs apart
        via.append({"rid": rid, "c_send": t["c_send"], "c_first": t["c_first"]})
        fd[rid] = {k: v for k, v in t.items() if not k.startswith(("c_", "sched_"))}
        sched[rid] = {"sched_rx": t["sched_rx"], "sched_sent": t["sched_sent"]}
    via.append({"rid": "cmpl-lost", "c_send": 0, "c_first": 5})  # no daemon marks: left out
    direct = [{"c_send": 0, "c_first": 2000}]
    r = hops.breakdown(via, direct, fd, sched)
    assert r["n"] == 3
    assert [h["p50_us"] for h in r["hops"]] == [2.0] * len(hops.HOPS)  # median of 1, 2, 3
    assert r["ttft_direct_p50_us"] == 2.0
    assert "| Submit → scheduler | 2 |" in hops.render(r)


def test_daemons_are_found_by_their_process_title(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    hops = _load()
    conf = tmp_path / "infergrid.yaml"
    proc = tmp_path / "proc"
    for pid, argv in {"11": b"infergridd frontdoor --config %s" % str(conf).encode() + b" " * 20,
                      "12": b"python\0-m\0infergridd.cli.infergridd\0scheduler\0--config\0%s\0"
                      % str(conf).encode(),
                      "13": b"infergridd frontdoor --config /elsewhere.yaml"}.items():
        (proc / pid).mkdir(parents=True)
        (proc / pid / "cmdline").write_bytes(argv)

    class _Serve:
        config_path = conf

    real = Path
    monkeypatch.setattr(hops, "Path", lambda p: proc if p == "/proc" else real(p))
    assert hops.pids_of(_Serve()) == {"frontdoor": 11, "scheduler": 12}
