"""Only an allowlist of request fields reaches an engine (issue 14, item 8)."""

from __future__ import annotations

import pytest

from infergridd.engines import fields
from infergridd.engines.fields import CHAT_PATH, forward

COMPLETIONS = "/v1/completions"
KINDS = ("vllm", "sglang", "sim", "openai")

#: what a tenant must never set on an engine, whatever its kind
FORBIDDEN = {
    "request_id": "other-tenants-id", "best_of": 8, "guided_json": {"type": "object"},
    "guided_regex": "a+", "guided_grammar": "root ::= x", "guided_choice": ["a"],
    "guided_decoding_backend": "outlines", "structural_tag": "{}",
    "chat_template": "{{ 7*7 }}", "chat_template_kwargs": {"x": 1},
    "add_generation_prompt": False, "continue_final_message": True, "documents": [],
    "rid": "r-1", "lora_path": "/other/adapter", "return_hidden_states": True,
    "store": True, "service_tier": "priority", "metadata": {"k": "v"}, "priority": -100,
    "cache_salt": "x", "kv_transfer_params": {}, "vllm_xargs": {}, "custom_logit_processor": "x",
}

STANDARD_CHAT = {
    "messages": [{"role": "user", "content": "hi"}], "model": "demo", "max_tokens": 5,
    "max_completion_tokens": 5, "temperature": 0.5, "top_p": 0.9, "n": 1, "stop": ["x"],
    "stream": True, "stream_options": {"include_usage": True}, "seed": 1,
    "presence_penalty": 0.1, "frequency_penalty": 0.1, "logit_bias": {"1": 1}, "logprobs": True,
    "top_logprobs": 2, "response_format": {"type": "json_object"},
    "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto",
    "parallel_tool_calls": False, "user": "u1",
}
STANDARD_COMPLETIONS = {
    "prompt": "hi", "model": "demo", "max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "n": 1,
    "stop": "x", "stream": False, "seed": 1, "presence_penalty": 0.0, "frequency_penalty": 0.0,
    "logit_bias": {}, "logprobs": 2, "echo": True, "suffix": "end", "user": "u1",
}


@pytest.mark.parametrize("kind", KINDS)
def test_standard_openai_fields_pass_unchanged(kind: str) -> None:
    out, dropped = forward(kind, CHAT_PATH, STANDARD_CHAT)
    assert out == STANDARD_CHAT and dropped == []
    out, dropped = forward(kind, COMPLETIONS, STANDARD_COMPLETIONS)
    assert out == STANDARD_COMPLETIONS and dropped == []


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("path", (CHAT_PATH, COMPLETIONS))
def test_forbidden_fields_are_dropped_for_every_kind(kind: str, path: str) -> None:
    body = {**(STANDARD_CHAT if path == CHAT_PATH else STANDARD_COMPLETIONS), **FORBIDDEN}
    out, dropped = forward(kind, path, body)
    assert not set(FORBIDDEN) & set(out), set(FORBIDDEN) & set(out)
    assert set(dropped) == set(FORBIDDEN)
    assert "guided_json" in body  # the caller's body is not changed


def test_each_kind_gets_its_own_extras_only() -> None:
    body = {**STANDARD_CHAT, "top_k": 5, "min_p": 0.1, "repetition_penalty": 1.1,
            "ignore_eos": True, "include_stop_str_in_output": True}
    assert set(forward("vllm", CHAT_PATH, body)[0]) == set(body)
    sg = forward("sglang", CHAT_PATH, body)[0]
    assert "top_k" in sg and "include_stop_str_in_output" not in sg
    oa, dropped = forward("openai", CHAT_PATH, body)
    assert set(oa) == set(STANDARD_CHAT)  # an external server gets the standard only
    assert "top_k" in dropped
    # an unknown kind is treated as the strictest
    assert set(forward("", CHAT_PATH, body)[0]) == set(STANDARD_CHAT)
    # chat-only fields do not ride on a completion, nor the reverse
    assert "messages" not in fields.allowed("vllm", COMPLETIONS)
    assert "best_of" not in fields.allowed("vllm", COMPLETIONS)
    assert "prompt" not in fields.allowed("vllm", CHAT_PATH)


def test_nested_stream_options_and_message_fields_are_filtered() -> None:
    body = {**STANDARD_CHAT,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
            "messages": [{"role": "user", "content": "hi", "chat_template": "x", "name": "n"},
                         {"role": "assistant", "content": None,
                          "tool_calls": [{"id": "1", "type": "function",
                                          "function": {"name": "f", "arguments": "{}"}}]}]}
    out, dropped = forward("vllm", CHAT_PATH, body)
    assert out["stream_options"] == {"include_usage": True}
    assert out["messages"][0] == {"role": "user", "content": "hi", "name": "n"}
    assert out["messages"][1] == body["messages"][1]
    assert sorted(dropped) == ["messages[0].chat_template", "stream_options.continuous_usage_stats"]


def test_front_door_shape_uses_the_models_engine_kind() -> None:
    from infergridd.config import ModelConfig

    body = {**STANDARD_CHAT, "top_k": 3, "store": True}
    assert "top_k" in fields.shape(ModelConfig(name="m", engine="sim"), CHAT_PATH, body)
    out = fields.shape(ModelConfig(name="m", engine="openai"), CHAT_PATH, body)
    assert "top_k" not in out and "store" not in out
    assert "top_k" not in fields.shape(None, CHAT_PATH, body)
