"""The request path's cached lookups (issue 17 follow-up): per (tenant, model) metric
children made once and still the registry's own, client timeouts made once."""

from __future__ import annotations

from prometheus_client import generate_latest

from infergridd.frontdoor import relay
from infergridd.frontdoor.metrics import FrontdoorMetrics


def test_metric_children_are_made_once_and_count_in_the_registry() -> None:
    m = FrontdoorMetrics()
    a = m.of("t1", "m")
    assert m.of("t1", "m") is a and m.of("t2", "m") is not a
    assert a.outcome("ok") is a.outcome("ok")
    a.outcome("ok").inc()
    a.tokens_out.inc(7)
    a.phase_first.observe(0.002)
    page = generate_latest(m.registry).decode()
    assert 'infergrid_requests_total{model="m",outcome="ok",tenant="t1"} 1.0' in page
    assert 'infergrid_tokens_total{direction="out",model="m",tenant="t1"} 7.0' in page
    assert ('infergrid_request_phase_seconds_count{model="m",phase="engine_first_token",'
            'tenant="t1"} 1.0') in page


def test_client_timeouts_are_made_once() -> None:
    assert relay._timeout(30.0) is relay._timeout(30.0)
    assert relay._timeout(30.0).total == 30.0
