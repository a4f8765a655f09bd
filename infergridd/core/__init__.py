"""The pure scheduling core: policies, quotas, tenants and engine capacity (no I/O).

Entry point: ``core.SchedulerCore`` (see docs/internals.md, "Scheduling core").
Everything here is synchronous, runs on an injected monotonic clock and is
deterministic, so the daemons stay thin shells and the decisions are testable.
"""
