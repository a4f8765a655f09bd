"""Where new tenant API keys come from: the one random draw of the scheduler.

The scheduling core is pure (DESIGN §5; tests/unit/test_architecture.py): it is
given this function, as it is given its clock, so it never draws a random
number itself and a test can give it a deterministic source instead.
"""

from __future__ import annotations

import secrets

#: every key InferGrid issues starts with this, so a leaked one is recognisable
KEY_PREFIX = "sk-ig-"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(24)
