"""The prompt estimate covers the whole body, not only ``content`` (issue 14, item 1).

Every test here builds a body whose real prompt is large in some part the old estimate
(message ``content`` only) did not look at, and checks the estimate sees it.
"""

from __future__ import annotations

import json

from infergridd import tokens
from infergridd.config import Limits
from infergridd.frontdoor.validate import CHAT, COMPLETIONS, parse

BIG = "x" * 400_000  # 100,000 tokens at four characters a token
MODELS = {"demo"}
LIMITS = Limits(max_body_bytes=2 << 20)


def _chat(**extra: object) -> dict:
    return {"model": "demo", "max_tokens": 16,
            "messages": [{"role": "user", "content": "hi"}], **extra}


def test_plain_messages_keep_their_estimate() -> None:
    # 4 overhead + 40 chars / 4: what the simulated engine's tests pin too
    assert tokens.estimate_chat(_chat(messages=[{"role": "user", "content": "x" * 40}])) == 14


def test_tools_are_counted() -> None:
    tools = [{"type": "function", "function": {"name": "f", "description": BIG,
                                               "parameters": {"type": "object"}}}]
    assert tokens.estimate_chat(_chat(tools=tools)) > 100_000


def test_tool_call_arguments_and_names_are_counted() -> None:
    msg = {"role": "assistant", "content": None,
           "tool_calls": [{"id": "c1", "type": "function",
                           "function": {"name": "f", "arguments": BIG}}]}
    assert tokens.estimate_chat(_chat(messages=[msg])) > 100_000
    assert tokens.estimate_chat(_chat(messages=[{"role": "user", "content": "a",
                                                 "name": BIG}])) > 100_000


def test_response_format_schema_is_counted_and_plain_text_is_not() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": {"description": BIG}}}
    assert tokens.estimate_chat(_chat(response_format=fmt)) > 100_000
    assert tokens.estimate_chat(_chat(response_format={"type": "text"})) \
        == tokens.estimate_chat(_chat())


def test_text_parts_are_counted_and_media_parts_cost_a_fixed_amount() -> None:
    parts = [{"type": "text", "text": BIG}, {"type": "text", "text": BIG}]
    assert tokens.estimate_chat(_chat(messages=[{"role": "user", "content": parts}])) > 200_000
    # a 1 MB base64 picture is not 250,000 tokens: it would be refused as too long
    img = [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + BIG}}]
    n = tokens.estimate_chat(_chat(messages=[{"role": "user", "content": img}]))
    assert tokens.MEDIA_PART_TOKENS <= n < 200


def test_completion_prompt_lists_and_suffix() -> None:
    assert tokens.estimate_completion({"prompt": [BIG]}) == 100_000
    assert tokens.estimate_completion({"prompt": [[1, 2, 3]]}) == 3
    assert tokens.estimate_completion({"prompt": "a", "suffix": BIG}) > 100_000


def test_front_door_submits_the_whole_body_estimate() -> None:
    """What ``Submit.prompt_tokens`` carries to the quota, the prefill window and the guard."""
    tools = [{"type": "function", "function": {"name": "f", "description": BIG}}]
    r = parse(CHAT, json.dumps(_chat(tools=tools)).encode(), LIMITS, MODELS)
    assert r.prompt_tokens > 100_000
    r = parse(COMPLETIONS, json.dumps({"model": "demo", "prompt": "a", "suffix": BIG}).encode(),
              LIMITS, MODELS)
    assert r.prompt_tokens > 100_000 and not r.prompt_exact
