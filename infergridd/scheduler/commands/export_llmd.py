"""``infergridctl export llm-d``: the tenant policy as the Kubernetes resources llm-d reads.

Past one machine InferGrid builds no cluster (DESIGN §6): the path is
Kubernetes with llm-d / the Gateway API Inference Extension, whose Endpoint
Picker's flow control (the ``flowControl`` feature gate) queues requests by a
*FlowKey* — a fairness ID and a priority — serving the highest priority band
first and cycling through the fairness IDs within a band.  This writes
InferGrid's tenants in that form, so a team that outgrows the box keeps its
tenant policy (field and header names from llm-d's API reference:
https://llm-d.ai/docs/api-reference/inferenceobjective and
https://llm-d.ai/docs/api-reference/epp-http-headers):

* one ``InferenceObjective`` (``inference.networking.x-k8s.io/v1alpha2``) per
  priority band in use, ``spec.priority`` = ``-band`` (InferGrid serves the
  *lower* band first, llm-d the *higher* priority; band 0 is llm-d's default
  of 0), ``spec.poolRef`` naming the InferencePool;
* a ConfigMap with each tenant's fairness ID (its name) and objective: what
  the gateway's authentication layer must set on each request, per API key,
  as the ``x-gateway-inference-fairness-id`` and
  ``x-gateway-inference-objective`` headers (older llm-d releases, 0.8 and
  before, spell them ``x-llm-d-inference-…``).

What does not carry over is said in the output: llm-d cycles through tenants
within a band with equal turns, so weights other than 1, and the per-tenant
rpm/tpm quotas, are listed for the gateway's rate limiter but not enforced by
flow control.  The scheduler's *current* tenants are written (including ones
added with ``infergridctl tenant add``); API keys never are.
"""

from __future__ import annotations

import json
from typing import Any

from .base import Arg, Command, CommandContext

API_VERSION = "inference.networking.x-k8s.io/v1alpha2"
POOL_GROUP = "inference.networking.k8s.io"
FAIRNESS_HEADER = "x-gateway-inference-fairness-id"
OBJECTIVE_HEADER = "x-gateway-inference-objective"


def objective_name(band: int) -> str:
    return f"infergrid-band-{band}"


def _q(s: object) -> str:
    """A YAML scalar: JSON's quoting is valid YAML and never misreads a value."""
    return json.dumps(s)


def build(tenants: list[dict[str, Any]], pool: str, namespace: str) -> str:
    """The YAML documents for ``tenants`` (name, band, weight, rpm, tpm)."""
    bands = sorted({int(t["band"]) for t in tenants}) or [0]
    header = (
        "# InferGrid tenant policy for llm-d flow control (infergridctl export llm-d).\n"
        f"# Each request must carry {FAIRNESS_HEADER}: <tenant> and\n"
        f"# {OBJECTIVE_HEADER}: <objective>, set per API key by the gateway (see the\n"
        "# ConfigMap below). Enable the EPP's flowControl feature gate.\n"
        "# llm-d serves higher spec.priority first and takes equal turns among tenants in\n"
        "# a band: InferGrid weights and rpm/tpm quotas are listed, not enforced by it.\n")
    docs: list[str] = []
    for b in bands:
        docs.append("\n".join([
            f"apiVersion: {API_VERSION}",
            "kind: InferenceObjective",
            "metadata:",
            f"  name: {objective_name(b)}",
            f"  namespace: {_q(namespace)}",
            "  labels: {app.kubernetes.io/managed-by: infergrid}",
            "spec:",
            f"  priority: {-b}  # InferGrid band {b} (lower bands first there)",
            "  poolRef:",
            f"    group: {POOL_GROUP}",
            "    kind: InferencePool",
            f"    name: {_q(pool)}",
        ]))
    rows = []
    for t in tenants:
        rows.append(f"  - {{fairness_id: {_q(t['name'])}, objective: "
                    f"{objective_name(int(t['band']))}, weight: {t['weight']:g}, "
                    f"rpm: {t['rpm']:g}, tpm: {t['tpm']:g}}}")
    docs.append("\n".join([
        "apiVersion: v1",
        "kind: ConfigMap",
        "metadata:",
        "  name: infergrid-tenants",
        f"  namespace: {_q(namespace)}",
        "data:",
        "  headers.yaml: |",
        f"    fairness_header: {FAIRNESS_HEADER}",
        f"    objective_header: {OBJECTIVE_HEADER}",
        "    tenants:" + ("" if rows else " []"),
        *("  " + r for r in rows),
    ]))
    return header + "\n---\n".join(docs) + "\n"


class ExportLlmd(Command):
    name = "export.llm-d"
    help = ("write the tenants' fairness IDs and priority bands as llm-d flow-control "
            "resources (InferenceObjective per band, a ConfigMap of tenants)")
    arguments = (
        Arg("--pool", default="infergrid", metavar="NAME",
            help="the InferencePool the objectives refer to"),
        Arg("--namespace", default="default", metavar="NS",
            help="Kubernetes namespace (the InferencePool's)"),
    )
    read_only = True

    def execute(self, ctx: CommandContext) -> dict[str, Any]:
        tenants = [{"name": t.name, "band": t.band, "weight": t.weight, "rpm": t.rpm,
                    "tpm": t.tpm} for t in ctx.core.tenant_stats()]
        pool, ns = self.arg("pool") or "infergrid", self.arg("namespace") or "default"
        return {"tenants": tenants, "pool": pool, "namespace": ns,
                "yaml": build(tenants, pool, ns)}

    @classmethod
    def render(cls, r: dict[str, Any]) -> str:
        return str(r["yaml"]).rstrip("\n")
