"""Engine adapters: one small module per engine kind behind ``base.EngineAdapter``.

``adapter_for(model_cfg)`` is the only constructor the daemons call, so a new
engine kind is one module plus one line here.
"""

from __future__ import annotations

from ..config import ModelConfig
from .base import AdapterConfigError, EngineAdapter, EngineError, EngineMetrics, LaunchSpec


def adapter_for(model: ModelConfig) -> EngineAdapter:
    """The adapter for ``model.engine``; ``AdapterConfigError`` if its args are unusable."""
    if model.engine == "vllm":
        from .vllm import VllmAdapter

        return VllmAdapter(model)
    if model.engine == "sglang":
        from .sglang import SglangAdapter

        return SglangAdapter(model)
    if model.engine == "openai":
        from .openai import OpenAIAdapter

        return OpenAIAdapter(model)
    if model.engine == "sim":
        from .sim import SimSglangAdapter, SimVllmAdapter

        if str(model.args.get("personality", "vllm")) == "sglang":
            return SimSglangAdapter(model)
        return SimVllmAdapter(model)
    raise AdapterConfigError(f"model {model.name!r}: unknown engine {model.engine!r}")


__all__ = ["AdapterConfigError", "EngineAdapter", "EngineError", "EngineMetrics", "LaunchSpec",
           "adapter_for"]
