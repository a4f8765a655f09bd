"""Which request fields reach an engine: an allowlist per engine kind (DESIGN §10).

The front door used to forward the tenant's body verbatim, so anything an
engine understands was the tenant's to set: vLLM's ``request_id`` (collides
with another tenant's request in the engine's own books), ``best_of`` (n
sequences computed, one charged), guided-decoding grammars (``guided_json``,
``guided_regex``, ``guided_grammar``: compiled in the engine, unbounded cost),
``chat_template`` / ``chat_template_kwargs`` (Jinja run in the engine on the
tenant's say), SGLang's ``rid`` and ``lora_path`` (another adapter's weights),
and OpenAI's ``store`` / ``service_tier`` / ``metadata`` (data kept, or a
billing tier chosen, on InferGrid's upstream account).

So only the fields below pass; the rest are **dropped silently**, as vLLM
itself ignores fields it does not know and as OpenAI SDKs expect of a server
that lacks an optional feature (a client that sends ``store`` or ``metadata``
keeps working).  The standard OpenAI sampling and tool fields pass to every
kind; vLLM, SGLang and the simulated engine also get the harmless sampling
extras they share (``top_k``, ``min_p``, ...), never their request-identity,
grammar, template or adapter fields.  Inside the body, ``stream_options``
keeps only ``include_usage`` and each chat message only the OpenAI message
fields.  ``priority`` is never the client's: the scheduler's engine priority
is added after this filter (``frontdoor/relay.py``).
"""

from __future__ import annotations

import logging
from typing import Any

from ..config import ModelConfig

log = logging.getLogger("infergrid.frontdoor")

CHAT_PATH = "/v1/chat/completions"

#: OpenAI fields common to both endpoints
_COMMON = frozenset({
    "model", "max_tokens", "temperature", "top_p", "n", "stop", "stream", "stream_options",
    "seed", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "user",
})
#: /v1/chat/completions only
_CHAT = _COMMON | {"messages", "max_completion_tokens", "top_logprobs", "response_format",
                   "tools", "tool_choice", "parallel_tool_calls"}
#: /v1/completions only (``best_of`` is left out on purpose: n sequences run, one is kept)
_COMPLETIONS = _COMMON | {"prompt", "echo", "suffix"}

#: sampling extras vLLM and SGLang both take; none names a request, a grammar, a template
#: or an adapter, and output stays bounded by ``max_tokens`` (capped and charged)
_SAMPLING_EXTRAS = frozenset({
    "top_k", "min_p", "repetition_penalty", "stop_token_ids", "min_tokens", "ignore_eos",
    "skip_special_tokens",
})

#: per engine kind: the extras on top of the OpenAI fields
EXTRAS: dict[str, frozenset[str]] = {
    "vllm": _SAMPLING_EXTRAS | {"include_stop_str_in_output"},
    "sglang": _SAMPLING_EXTRAS,
    "sim": _SAMPLING_EXTRAS,  # stands in for vLLM or SGLang
    "openai": frozenset(),  # an external server, maybe OpenAI itself: the standard only
}

#: what a chat message may carry into the engine's chat template
MESSAGE_FIELDS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id", "refusal"})
STREAM_OPTIONS = frozenset({"include_usage"})


def allowed(kind: str, path: str) -> frozenset[str]:
    """The top-level fields a request to ``path`` may carry to an engine of ``kind``
    (an unknown kind gets the OpenAI fields only)."""
    base = _CHAT if path == CHAT_PATH else _COMPLETIONS
    return base | EXTRAS.get(kind, frozenset())


def forward(kind: str, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``body`` reduced to what an engine of ``kind`` may see, and the dropped names
    (dotted for nested ones: ``messages[0].chat_template``).  ``body`` is not changed."""
    keep = allowed(kind, path)
    out: dict[str, Any] = {}
    dropped: list[str] = []
    for k, v in body.items():
        if k in keep:
            out[k] = v
        else:
            dropped.append(k)
    opts = out.get("stream_options")
    if isinstance(opts, dict) and not opts.keys() <= STREAM_OPTIONS:
        dropped += [f"stream_options.{k}" for k in opts if k not in STREAM_OPTIONS]
        out["stream_options"] = {k: v for k, v in opts.items() if k in STREAM_OPTIONS}
    messages = out.get("messages")
    if isinstance(messages, list):
        clean = []
        for i, m in enumerate(messages):
            if isinstance(m, dict) and not m.keys() <= MESSAGE_FIELDS:
                dropped += [f"messages[{i}].{k}" for k in m if k not in MESSAGE_FIELDS]
                m = {k: v for k, v in m.items() if k in MESSAGE_FIELDS}
            clean.append(m)
        out["messages"] = clean
    return out, dropped


def shape(model: ModelConfig | None, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """The front door's one call: ``body`` as the engine serving ``model`` may see it.

    Dropped names are logged at debug level (never the values: they are the tenant's)."""
    kind = model.engine if model is not None else ""
    out, dropped = forward(kind, path, body)
    if dropped:
        log.debug("not forwarded to the %s engine: %s", kind or "unknown", ", ".join(dropped[:20]))
    return out
