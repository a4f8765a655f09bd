"""The shipped Grafana dashboard and Prometheus rules (``packaging/grafana``,
``packaging/prometheus``, installed under /usr/share/infergrid/): every query names a
metric the front door really exports (collected from its own registry here, from a
running appliance's /metrics in tests/integration/test_status_metrics.py), the rules
pass ``promtool check rules`` where promtool is installed, and both are in the .deb."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from promcheck import (
    DASHBOARD,
    REPO,
    RULES,
    dangling,
    dashboard,
    dashboard_queries,
    exported_names,
    grafana_to_promql,
    metric_names,
    recorded,
    rules,
)

from infergridd import protocol as p
from infergridd.frontdoor.metrics import FrontdoorMetrics


def registry_text() -> str:
    """The front door's /metrics page with a Snapshot holding one of everything."""
    m = FrontdoorMetrics()
    m.snapshot.snapshot = p.Snapshot(
        instance="x",
        tenants=[p.TenantStats(name="acme", rejected={"rate_limit_exceeded": 1})],
        engines=[p.EngineStatus(engine_id="demo-0", model="demo", kind="sim", state="ready",
                                assist="on", assist_counters={"preemptions": 1})],
        models=[p.ModelInfo(name="demo", state="ready", ready_engines=1)])
    m.snapshot.received_at = 0.0
    return m.render().decode()


def test_the_name_collector_and_the_expression_reader() -> None:
    """The helpers the checks rest on, on known input (so a check cannot pass vacuously)."""
    names = exported_names("# TYPE a_seconds histogram\n# TYPE b counter\nc{x=\"1\"} 2\n")
    assert {"a_seconds_bucket", "a_seconds_count", "b_total", "c"} <= names
    assert "a_seconds" not in names and "b" not in names
    expr = ('histogram_quantile(0.9, sum by (tenant, le) (rate(x_bucket{t=~"a|b"}[5m]))) '
            '/ on (tenant) group_left y:rec or vector(0) > bool 1')
    assert metric_names(expr) == {"x_bucket", "y:rec"}
    assert metric_names("changes((max by (e) (s{state=\"ready\"}) or z * 0)[30m:15s])") == {
        "s", "z"}


def test_every_dashboard_and_rule_query_names_an_exported_metric() -> None:
    exported = exported_names(registry_text())
    assert "infergrid_ttft_seconds_bucket" in exported  # the collector saw the registry
    assert "infergrid_engine_kv_usage" in exported  # and the Snapshot's families
    assert dangling(exported) == []
    # and the check finds a dangling name: a metric nobody exports
    assert dangling(exported - {"infergrid_engine_kv_usage"})


def test_the_dashboard_covers_what_operators_ask() -> None:
    dash = dashboard()
    assert dash["uid"] == "infergrid" and dash["panels"]
    used = set().union(*(metric_names(e) for _, e in dashboard_queries(dash)))
    for needed in ("infergrid_ttft_seconds_bucket", "infergrid_queue_wait_seconds_bucket",
                   "infergrid_tokens_total", "infergrid_rejections_total",
                   "infergrid_engine_running", "infergrid_engine_waiting",
                   "infergrid_engine_kv_usage", "infergrid_engine_state",
                   "infergrid_model_ready_engines", "infergrid_engine_restarts"):
        assert needed in used, needed
    ids = [pn["id"] for pn in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for pn in dash["panels"]:
        g = pn["gridPos"]
        assert g["x"] + g["w"] <= 24, pn["title"]


def test_rules_structure() -> None:
    """What promtool checks first, by hand (it runs below where it is installed)."""
    doc = rules()
    alerts = {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}
    assert {"InferGridEngineDown", "InferGridTenantStarved", "InferGridSwapThrash",
            "InferGridPersistent5xx"} <= set(alerts)
    for g in doc["groups"]:
        assert set(g) <= {"name", "interval", "rules", "limit"} and g["rules"]
        for r in g["rules"]:
            assert ("alert" in r) != ("record" in r), r
            assert isinstance(r["expr"], str) and r["expr"].strip()
            if "for" in r:
                assert re.fullmatch(r"\d+[smhd]", r["for"]), r["for"]
            if "alert" in r:
                assert r["labels"]["severity"] in ("warning", "critical")
                assert r["annotations"]["summary"]
            else:
                assert re.fullmatch(r"[a-z_]+:[a-z0-9_:]+", r["record"]), r["record"]
    assert "infergrid:tenant_ttft_solo_baseline" in recorded(doc)
    starved = alerts["InferGridTenantStarved"]
    assert "infergrid:tenant_ttft_solo_baseline" in starved["expr"] and starved["for"] == "5m"


def _promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus); the "
                    "rules' structure and metric names are checked above without it")
    return tool


def test_promtool_check_rules() -> None:
    out = subprocess.run([_promtool(), "check", "rules", str(RULES)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Grafana does not check PromQL; promtool does, once each query is a recording rule."""
    tool = _promtool()
    queries = [grafana_to_promql(e) for _, e in dashboard_queries(dashboard())]
    doc = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:q{i}", "expr": q} for i, q in enumerate(queries)]}]}
    f = tmp_path / "dashboard-queries.yml"
    f.write_text(yaml.safe_dump(doc))
    out = subprocess.run([tool, "check", "rules", str(f)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    # and a broken query fails it (the check is not vacuous)
    f.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [
        {"record": "x:y", "expr": "sum by (tenant (infergrid_tenant_queued)"}]}]}))
    bad = subprocess.run([tool, "check", "rules", str(f)], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode != 0


def test_shipped_in_the_deb() -> None:
    install = (REPO / "packaging" / "debian" / "infergrid.install").read_text().splitlines()
    for path, dest in ((DASHBOARD, "usr/share/infergrid/grafana/"),
                       (RULES, "usr/share/infergrid/prometheus/")):
        rel = str(path.relative_to(REPO))
        assert any(line.split()[:2] == [rel, dest] for line in install), (rel, install)
