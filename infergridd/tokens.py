"""Prompt-size estimates shared by the front door and the simulated engine.

The scheduler needs a cost before the engine has seen the prompt; the engine's
real ``usage`` corrects it at ``Done``.  Four characters per token is the usual
rule of thumb for English BPE vocabularies.
"""

from __future__ import annotations

from typing import Any

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 4  # role and separators per chat message


def estimate_text(text: str) -> int:
    return max(1, -(-len(text) // CHARS_PER_TOKEN))


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def estimate_messages(messages: list[dict[str, Any]]) -> int:
    return sum(
        MESSAGE_OVERHEAD_TOKENS + estimate_text(_content_text(m.get("content", "")))
        for m in messages
    )


def estimate_prompt(prompt: Any) -> int:
    """``prompt`` of /v1/completions: a string, a list of strings, or token ids."""
    if isinstance(prompt, str):
        return estimate_text(prompt)
    if isinstance(prompt, list):
        if all(isinstance(x, int) for x in prompt):
            return max(1, len(prompt))
        return sum(estimate_prompt(p) for p in prompt)
    return 1
