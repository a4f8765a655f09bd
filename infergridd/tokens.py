"""Prompt-size estimates shared by the front door and the simulated engine.

The scheduler needs a cost before the engine has seen the prompt; the engine's
real ``usage`` corrects it at ``Done`` (both ways: ``core/charging.py``).  Four
characters per token is the usual rule of thumb for English BPE vocabularies.

The estimate covers everything the engine turns into prompt tokens, not only
the messages' text: a chat template renders ``tools`` (their JSON schemas)
into the prompt, assistant ``tool_calls`` and their arguments, message
``name``s, every text part of a multi-part ``content``, and a structured
``response_format`` schema (counted too: it is the tenant's to make large, and
the engine's usage refunds what the engine did not count).  An estimate that
saw only ``content`` let a tenant put a 100,000-token prompt in ``tools`` and
pay for five tokens — at admission (the ``tpm`` quota), in the prefill window
and in the guard.  Non-text parts (images, audio, files) are counted a fixed
amount each: an engine counts an image by its pixels, not by the bytes of its
base64, so counting the bytes would refuse a picture as "too long".
"""

from __future__ import annotations

from typing import Any

import msgspec

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 4  # the chat template's role and separators per message
TOOLS_OVERHEAD_TOKENS = 16  # the template's frame around the tool schemas
MEDIA_PART_TOKENS = 85  # an image/audio/file part (OpenAI's low-detail image cost)

_json = msgspec.json.encode


def estimate_text(text: str) -> int:
    return max(1, -(-len(text) // CHARS_PER_TOKEN))


def _chars(obj: Any) -> int:
    """Characters of ``obj`` as the template would render it: strings as they are,
    anything structured as its JSON."""
    if obj is None:
        return 0
    if isinstance(obj, str):
        return len(obj)
    try:
        return len(_json(obj))
    except (TypeError, ValueError, OverflowError):
        return 0


def _content_tokens(content: Any) -> int:
    """A message's ``content``: a string, or parts (text counted, media a fixed cost)."""
    if isinstance(content, str):
        return estimate_text(content)
    if not isinstance(content, list):
        return estimate_text("")
    chars = media = 0
    for part in content:
        if not isinstance(part, dict):
            continue
        text = part.get("text")
        if isinstance(text, str):
            chars += len(text)
        elif part.get("type") not in (None, "text"):
            media += 1
    return max(1, -(-chars // CHARS_PER_TOKEN)) + media * MEDIA_PART_TOKENS


def _message_tokens(m: Any) -> int:
    if not isinstance(m, dict):
        return MESSAGE_OVERHEAD_TOKENS
    n = MESSAGE_OVERHEAD_TOKENS + _content_tokens(m.get("content", ""))
    extra = sum(_chars(m.get(k)) for k in ("name", "tool_calls", "function_call",
                                             "tool_call_id", "refusal"))
    return n + -(-extra // CHARS_PER_TOKEN)


def estimate_messages(messages: list[dict[str, Any]]) -> int:
    """The messages alone, each with its template overhead."""
    return sum(_message_tokens(m) for m in messages)


def estimate_chat(body: dict[str, Any]) -> int:
    """A /v1/chat/completions body: the messages, and the tools, tool choice and
    structured output schema the template or the engine adds to them."""
    messages = body.get("messages")
    n = estimate_messages(messages) if isinstance(messages, list) else 1
    tools = body.get("tools")
    if tools:
        n += TOOLS_OVERHEAD_TOKENS + -(-_chars(tools) // CHARS_PER_TOKEN)
    extra = 0
    choice = body.get("tool_choice")
    if isinstance(choice, dict):  # a named function; "auto"/"none" add nothing
        extra += _chars(choice)
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        extra += _chars(fmt)
    return n + -(-extra // CHARS_PER_TOKEN)


def estimate_prompt(prompt: Any) -> int:
    """``prompt`` of /v1/completions: a string, a list of strings, or token ids."""
    if isinstance(prompt, str):
        return estimate_text(prompt)
    if isinstance(prompt, list):
        if all(isinstance(x, int) for x in prompt):
            return max(1, len(prompt))
        return sum(estimate_prompt(p) for p in prompt)
    return 1


def estimate_completion(body: dict[str, Any]) -> int:
    """A /v1/completions body: the prompt (every entry of a list) and a ``suffix``."""
    n = estimate_prompt(body.get("prompt"))
    suffix = body.get("suffix")
    if isinstance(suffix, str) and suffix:
        n += estimate_text(suffix)
    return n
