"""Checks shared by the observability tests: which metric names a Prometheus text page
exports, which metrics a PromQL expression names, and the shipped dashboard and rules.

Test modules import it as ``from promcheck import ...`` (like ``appliance``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "packaging" / "grafana" / "infergrid.json"
RULES = REPO / "packaging" / "prometheus" / "infergrid-rules.yml"

#: the series a family of each type exposes (prometheus_client's text format)
_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count",
                                                              "_created"),
             "summary": ("_sum", "_count", "_created"), "gauge": ("",), "untyped": ("",)}
#: PromQL words that look like identifiers but are not metrics
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
             "unless", "offset", "bool", "inf", "nan"}
#: metrics Prometheus itself makes (the scrape's ``up``), allowed beside the appliance's
PROMETHEUS_OWN = {"up"}
#: Grafana's variables, as a value Prometheus accepts in their place
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h",
                "$tenant": ".*", "$model": ".*"}


def exported_names(text: str) -> set[str]:
    """Every series name ``text`` (a /metrics page) has or would have once labelled:
    the sample lines, plus each ``# TYPE`` family's series (a labelled histogram with no
    observation yet shows only its TYPE line)."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, fam, kind = line.split(maxsplit=3)
            kind = kind.strip()
            if kind == "counter" and fam.endswith("_total"):  # the 0.0.4 format names it so
                fam = fam[:-len("_total")]
            names.update(fam + s for s in _SUFFIXES.get(kind, ("",)))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def metric_names(expr: str) -> set[str]:
    """The metric (and recording rule) names a PromQL expression reads."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, regexes)
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges and subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    out = set()
    for m in re.finditer(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)\b(\s*\()?", e):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        out.add(name)
    return out


def grafana_to_promql(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return expr


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) for every query: panel targets (rows' panels too) and the
    template variables' queries."""
    out = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            for t in p.get("targets", []):
                out.append((p.get("title", "?"), t["expr"]))
            walk(p.get("panels", []))

    walk(dash.get("panels", []))
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query", "")
        m = re.match(r"label_values\((\w+)", q or "")
        if m:
            out.append((f"variable {v['name']}", m.group(1)))
    return out


def rules() -> dict[str, Any]:
    return yaml.safe_load(RULES.read_text())


def recorded(rule_doc: dict[str, Any]) -> set[str]:
    return {r["record"] for g in rule_doc["groups"] for r in g["rules"] if "record" in r}


def dangling(exported: set[str]) -> list[str]:
    """Every dashboard query or rule that names a metric neither ``exported`` nor recorded
    by the shipped rules (nor Prometheus' own ``up``): what a test must find empty."""
    doc = rules()
    known = exported | recorded(doc) | PROMETHEUS_OWN
    out = []
    for title, expr in dashboard_queries(dashboard()):
        names = metric_names(expr)
        if not names:
            out.append(f"panel {title!r}: no metric in {expr!r}")
        out += [f"panel {title!r}: {n} (in {expr!r})" for n in sorted(names - known)]
    for g in doc["groups"]:
        for r in g["rules"]:
            what = r.get("alert") or r.get("record")
            out += [f"rule {what}: {n}" for n in sorted(metric_names(r["expr"]) - known)]
    return out
