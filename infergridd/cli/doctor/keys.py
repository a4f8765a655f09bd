"""API keys in the configuration: none published in our own examples, none weak.

A key printed in the README or an example config is a key everyone knows; a
short or repetitive one can be guessed.  Both kinds get a WARN that says how to
replace it (``infergridctl tenant rotate-key``, which draws a strong key and
keeps only its hash).  Keys written as ``sha256:<hex>`` are checked against the
published ones too (by hash); their strength cannot be judged from a hash.

``PUBLIC_KEY_SHA256`` is kept in step with the repository by
``tests/unit/cli/test_doctor_keys.py``, which reads every key out of README.md,
configs/, docs/, man/ and packaging/ and fails if one is missing here (the
installed package has no README to read at run time).
"""

from __future__ import annotations

import hashlib
import math

from ...config import Config, hash_key
from .check import OK, WARN, Check

#: sha256 of every API key printed in InferGrid's README, configs/, docs/ and man pages
PUBLIC_KEY_SHA256 = frozenset({
    "b18864057c9da1520f8064e2db90fe561ea856a1befdeed7fe809d560b528990",  # sk-quiet-demo
    "86ba215e9a3e2abb6e8da164de88febbf90d401126f3405c56e4f065a09eff9d",  # sk-flooder-demo
})
#: keys the benchmark harness makes from tenant names (infergridd/bench/appliance.py)
PUBLIC_KEY_PREFIXES = ("sk-bench-",)
#: below this many estimated bits of guessing work a key is weak (a drawn key has ~190)
MIN_BITS = 96
#: a key of fewer distinct characters per position than this is repetitive, whatever its length
MIN_SHANNON_BITS_PER_CHAR = 3.0


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def strength_bits(key: str) -> float:
    """A rough upper bound on the guessing work of ``key`` (bits): its length times the
    log of the alphabet its character classes span, never more than its Shannon content
    allows.  Rough on purpose: it only has to catch the weak ones."""
    body = key[3:] if key.startswith("sk-") else key
    if not body:
        return 0.0
    pool = sum(n for test, n in ((str.islower, 26), (str.isupper, 26), (str.isdigit, 10))
               if any(test(c) for c in body))
    pool += 32 if any(not c.isalnum() for c in body) else 0
    per_char = shannon_bits_per_char(body)
    return len(body) * min(math.log2(max(pool, 2)), max(per_char, 0.0) * 2)


def shannon_bits_per_char(text: str) -> float:
    counts: dict[str, int] = {}
    for c in text:
        counts[c] = counts.get(c, 0) + 1
    n = len(text)
    return -sum(k / n * math.log2(k / n) for k in counts.values()) if n else 0.0


def is_public(key: str) -> bool:
    """Whether ``key`` (plain or ``sha256:<hex>``) is one of our published examples."""
    if key.startswith(PUBLIC_KEY_PREFIXES):
        return True
    return hash_key(key) in PUBLIC_KEY_SHA256


def check_keys(cfg: Config) -> list[Check]:
    out: list[Check] = []
    total = plain = 0
    for t in cfg.tenants:
        for key in t.keys:
            total += 1
            hashed = key.startswith("sha256:")
            plain += not hashed
            if is_public(key):
                out.append(Check(WARN, "keys", f"tenant {t.name!r} uses a key printed in "
                                 "InferGrid's examples (README, configs/, docs): anyone can "
                                 "use it", f"infergridctl tenant rotate-key {t.name}, then take "
                                 "the key out of the configuration"))
            elif not hashed and (strength_bits(key) < MIN_BITS or shannon_bits_per_char(
                    key) < MIN_SHANNON_BITS_PER_CHAR):
                out.append(Check(WARN, "keys", f"tenant {t.name!r} has a weak key "
                                 f"({len(key)} characters, ~{strength_bits(key):.0f} bits)",
                                 f"infergridctl tenant rotate-key {t.name} (draws ~190 bits)"))
    if not out:
        detail = (f"{total} configured key(s), none published or weak"
                  + (f"; {plain} in plain text (sha256:<hex> keeps them out of the file)"
                     if plain else "") if total else "no keys in the configuration")
        out.append(Check(OK, "keys", detail))
    return out


__all__ = ["PUBLIC_KEY_SHA256", "check_keys", "is_public", "strength_bits"]
