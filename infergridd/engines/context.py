"""A model's context length (``models[].max_model_len``), for the front door's check.

The front door refuses a request whose prompt and ``max_tokens`` cannot fit the
model's context before it is queued or charged (OpenAI's 400
``context_length_exceeded``).  It needs the length without asking the engine:

* ``models[].max_model_len`` when set (> 0);
* else what the engine is launched with: vLLM's and the simulated engine's
  ``args.max_model_len``, SGLang's ``args.context_length``; the simulated engine
  without one uses its profile's ``max_model_len``;
* else 0: unknown, not checked here (the engine refuses, and the front door passes
  its error on in InferGrid's shape).

``-1`` turns the check off for a model whatever its engine says.
"""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig

#: the ``args`` keys that set the context length, per engine (flag spelling accepted too)
_ARG_KEYS = {"vllm": ("max_model_len",), "sim": ("max_model_len",),
             "sglang": ("context_length",)}


def _positive_int(v: Any) -> int:
    if isinstance(v, bool):
        return 0
    try:
        n = int(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0
    return n if n > 0 else 0


def _from_args(m: ModelConfig) -> int:
    for key in _ARG_KEYS.get(m.engine, ()):
        for spelling in (key, key.replace("_", "-")):
            n = _positive_int(m.args.get(spelling))
            if n:
                return n
    return 0


def _sim_profile_len(m: ModelConfig) -> int:
    from ..sim.profile import ProfileError, load_profile, parse_override

    overrides: dict[str, Any] = {}
    sets = m.args.get("set") or []
    for text in sets if isinstance(sets, list) else [sets]:
        try:
            key, value = parse_override(str(text))
        except ProfileError:
            continue
        overrides[key] = value
    try:
        return load_profile(str(m.args.get("profile") or "fast-test"), overrides).max_model_len
    except (ProfileError, TypeError, ValueError):
        return 0  # the engine itself will say what is wrong with its profile


def max_model_len(m: ModelConfig) -> int:
    """The context length the front door checks requests for ``m`` against; 0: none."""
    if m.max_model_len != 0:
        return max(0, m.max_model_len)
    n = _from_args(m)
    if n or m.engine != "sim":
        return n
    return _sim_profile_len(m)


def exact_count(m: ModelConfig) -> bool:
    """Whether InferGrid's prompt estimate is the engine's own count (the simulated engine
    counts prompts the same way); for a real tokenizer it is only an estimate."""
    return m.engine == "sim"
