"""An engine's own errors in InferGrid's shape, and the context-length check before queueing."""

from __future__ import annotations

import json

import msgspec
import pytest

from infergridd import config
from infergridd.engines.context import exact_count, max_model_len
from infergridd.frontdoor.errors import ApiError, engine_error
from infergridd.frontdoor.validate import CHAT, COMPLETIONS, check_context, parse

TOO_LONG = ("This model's maximum context length is 2048 tokens. However, you requested "
            "3000 tokens (2900 in the messages, 100 in the completion).")


@pytest.mark.parametrize("status,body", [
    # vLLM today, and the simulated engine
    (400, {"error": {"message": TOO_LONG, "type": "BadRequestError", "param": None,
                     "code": 400}}),
    # older vLLM and SGLang: the flat error object
    (400, {"object": "error", "message": TOO_LONG, "type": "BadRequestError", "param": None,
           "code": 400}),
])
def test_a_prompt_too_long_from_the_engine(status: int, body: dict) -> None:
    e = engine_error(status, body)
    assert e.body() == {"error": {"message": TOO_LONG, "type": "invalid_request_error",
                                  "param": None, "code": "context_length_exceeded"}}
    assert e.status == 400


@pytest.mark.parametrize("status,body,want_status,code,type_", [
    (400, {"error": {"message": "bad temperature", "param": "temperature", "code": 400}},
     400, "invalid_request", "invalid_request_error"),
    (404, {"object": "error", "message": "The model `x` does not exist.", "code": 404},
     404, "not_found", "not_found_error"),
    (422, {"detail": [{"loc": ["body", "messages"], "msg": "field required"}]},
     422, "invalid_request", "invalid_request_error"),
    (401, {"error": {"message": "Unauthorized", "code": 401}}, 502, "engine_error",
     "server_error"),
    (400, {"error": {"message": "x", "code": "some_code"}}, 400, "some_code",
     "invalid_request_error"),
    (400, b"plain text", 400, "invalid_request", "invalid_request_error"),
])
def test_every_engine_error_has_our_shape(status, body, want_status, code, type_) -> None:
    e = engine_error(status, body)
    out = msgspec.json.decode(e.response().body)["error"]
    assert (e.status, out["code"], out["type"]) == (want_status, code, type_)
    assert isinstance(out["code"], str) and out["message"]
    assert set(out) == {"message", "type", "param", "code"}


LIMITS = config.Limits(max_tokens_cap=10_000, default_max_tokens=64)


def _chat(chars: int, max_tokens: int = 100) -> bytes:
    return json.dumps({"model": "demo", "max_tokens": max_tokens,
                       "messages": [{"role": "user", "content": "x" * chars}]}).encode()


def test_context_checked_before_queueing() -> None:
    fits = parse(CHAT, _chat(4 * 1900), LIMITS, {"demo"})  # 4 + 1900 + 100 <= 2048
    check_context(fits, 2048, exact=True)
    check_context(fits, 0, exact=True)  # unknown: not checked
    big = parse(CHAT, _chat(4 * 2000), LIMITS, {"demo"})
    with pytest.raises(ApiError) as err:
        check_context(big, 2048, exact=True)
    e = err.value
    assert (e.status, e.code, e.param) == (400, "context_length_exceeded", "messages")
    assert "maximum context length is 2048 tokens" in e.message and "2104 tokens" in e.message
    assert e.body()["error"]["type"] == "invalid_request_error"


def test_an_estimate_never_refuses_what_a_real_tokenizer_may_fit() -> None:
    """For vLLM/SGLang the prompt is only estimated (4 characters a token): refused only
    when it cannot fit even at 6; token ids are counted exactly."""
    near = parse(CHAT, _chat(4 * 2000), LIMITS, {"demo"})
    check_context(near, 2048, exact=False)  # ~1337..2004 real tokens: the engine decides
    with pytest.raises(ApiError, match="at least"):
        check_context(parse(CHAT, _chat(6 * 2100), LIMITS, {"demo"}), 2048, exact=False)
    ids = parse(COMPLETIONS, json.dumps({"model": "demo", "prompt": list(range(2000)),
                                         "max_tokens": 100}).encode(), LIMITS, {"demo"})
    with pytest.raises(ApiError) as err:
        check_context(ids, 2048, exact=False)
    assert err.value.param == "prompt" and "at least" not in err.value.message


def test_a_models_context_length() -> None:
    cfg = config.loads("""
version: 1
models:
  - {name: quick, engine: sim, args: {profile: tiny-cpu}}
  - {name: fast, engine: sim}
  - {name: set, engine: sim, args: {profile: tiny-cpu, max_model_len: 512}}
  - {name: own, engine: sim, max_model_len: 100, args: {max-model-len: 512}}
  - {name: unchecked, engine: sim, max_model_len: -1}
  - {name: v, engine: vllm, args: {model: /m, max_model_len: 4096}}
  - {name: v0, engine: vllm, args: {model: /m}}
  - {name: sg, engine: sglang, args: {model_path: /m, context_length: 32768}}
  - {name: ext, engine: openai, url: "http://x"}
""")
    got = {m.name: max_model_len(m) for m in cfg.models}
    assert got == {"quick": 2048, "fast": 8192, "set": 512, "own": 100, "unchecked": 0, "v": 4096,
                   "v0": 0, "sg": 32768, "ext": 0}
    assert [exact_count(m) for m in cfg.models[:2]] == [True, True]
    assert not exact_count(cfg.models[5])
