"""The pure scheduling core: policies, quotas, tenants and engine capacity (no I/O).

Entry point: ``core.SchedulerCore``, a thin façade over one module per concept
(its docstring lists them; see also docs/internals.md, "Scheduling core").
Everything here is synchronous, runs on an injected monotonic clock and is
deterministic, so the daemons stay thin shells and the decisions are testable.
"""
