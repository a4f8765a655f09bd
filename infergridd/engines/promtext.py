"""A small, forgiving reader of the Prometheus text format engines expose on ``/metrics``.

The supervisor needs a handful of gauges and counters four times a second,
summed over label sets (vLLM labels by model name and engine index, SGLang
by tp rank).  A full client library would be heavier and stricter than we
want: a line we cannot read is skipped, never an error, because one odd
metric from a newer engine version must not make the engine look unhealthy.
"""

from __future__ import annotations

import math


def _split_sample(line: str) -> tuple[str, str] | None:
    """``name{labels} value [ts]`` → (name, rest after the labels), respecting quotes."""
    brace = line.find("{")
    space = line.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        name = line[:brace]
        i, quoted, escaped = brace + 1, False, False
        while i < len(line):
            c = line[i]
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                quoted = not quoted
            elif c == "}" and not quoted:
                return name.strip(), line[i + 1:]
            i += 1
        return None  # unterminated label set
    if space == -1:
        return None
    return line[:space], line[space:]


def parse(text: str) -> dict[str, float]:
    """Every sample's value, summed per metric name across label sets."""
    out: dict[str, float] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        split = _split_sample(line)
        if split is None:
            continue
        name, rest = split
        fields = rest.split()
        if not name or not fields:
            continue
        try:
            value = float(fields[0])
        except ValueError:
            continue
        if math.isnan(value):
            continue
        out[name] = out.get(name, 0.0) + value
    return out


def first(samples: dict[str, float], *names: str, default: float = 0.0) -> float:
    """The first of ``names`` present (newer name first, then older engine versions')."""
    for n in names:
        if n in samples:
            return samples[n]
    return default
