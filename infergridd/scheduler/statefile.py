"""The scheduler's durable state: tenant changes made at run time and fairness counters.

Written atomically (temp file, fsync, rename, fsync of the directory) so a
crash leaves either the old or the new file, never half of one.

A file that exists but cannot be read back stops start-up, naming the file
and the remedy.  Falling back to the config would be worse than not starting:
it would silently bring back a tenant that an operator removed (a revoked key
working again) and forget keys handed out with ``infergridctl tenant add``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..fsutil import write_atomic

STATE_FILE = "scheduler-state.json"
STATE_FORMAT = 1


class StateFileError(RuntimeError):
    """The state file exists but is unusable; the message names it and says what to do."""


def save(state_dir: Path, state: dict[str, Any]) -> None:
    body = {"format": STATE_FORMAT, "state": state}
    # 0600: runtime tenants' key hashes and settings are the scheduler's alone
    write_atomic(state_dir / STATE_FILE, json.dumps(body, sort_keys=True, indent=1).encode(),
                 mode=0o600)


def load(state_dir: Path) -> dict[str, Any] | None:
    """The saved state, ``None`` when there is none yet; ``StateFileError`` when unusable."""
    path = state_dir / STATE_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateFileError(f"{path}: cannot read: {exc.strerror}") from None
    remedy = (
        f"move it aside (mv {path} {path}.bad) to start from the configuration alone; "
        "runtime tenant changes and fairness counters in it are then lost"
    )
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateFileError(f"{path}: corrupted ({exc}); {remedy}") from None
    if not isinstance(body, dict) or not isinstance(body.get("state"), dict):
        raise StateFileError(f"{path}: not an InferGrid state file; {remedy}")
    if body.get("format") != STATE_FORMAT:
        raise StateFileError(
            f"{path}: state format {body.get('format')!r}, this version reads {STATE_FORMAT}; "
            f"{remedy}"
        )
    return body["state"]
