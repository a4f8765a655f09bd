"""Per-engine records in ``<runtime>/engines/<engine_id>.json``.

They are how a restarted supervisor finds the engines the previous one left
running (DESIGN §3) and how ``stop_all_engines`` finds what to stop.  Each is
written atomically (temp file, fsync, rename) so a crash leaves the old or the
new record, never half of one, and with mode 0600 because it holds the
engine's API key; each is read without following a symlink (``read_nofollow``).  ``start_time`` (clock ticks since boot, /proc/PID/stat
field 22) is what proves a live pid is still *our* process.
"""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec

from ..fsutil import read_nofollow, write_atomic

log = logging.getLogger("infergrid.supervisor")

RECORD_FORMAT = 1


class EngineRecord(msgspec.Struct, omit_defaults=True):
    engine_id: str
    model: str
    kind: str
    pid: int
    start_time: int  # clock ticks since boot; with pid, identifies the process
    port: int
    api_key: str
    generation: int
    argv: list[str] = []
    started_at: float = 0.0  # wall clock of the launch
    config_hash: str = ""  # the model config it was launched from
    sleep_level: int = 0  # 0: awake
    #: a sleep or wake under way ("sleep1", "sleep2", "wake"), written before the call:
    #: a supervisor that dies mid-way leaves the next one the engine's true direction
    transition: str = ""
    #: where it listens: ``unix:/path.sock`` or ``http://127.0.0.1:PORT``; "" (older
    #: records): the adapter's loopback endpoint on ``port``
    endpoint: str = ""
    format: int = RECORD_FORMAT


def record_path(engines_dir: Path, engine_id: str) -> Path:
    return engines_dir / f"{engine_id}.json"


def log_path(engines_dir: Path, engine_id: str) -> Path:
    return engines_dir / f"{engine_id}.log"


def save(engines_dir: Path, rec: EngineRecord) -> None:
    write_atomic(record_path(engines_dir, rec.engine_id), msgspec.json.encode(rec), mode=0o600)


def load(engines_dir: Path, engine_id: str) -> EngineRecord | None:
    """The record, or None when there is none or it is unreadable (logged: we then start
    fresh, which at worst leaves an orphan we cannot prove is ours — safer than guessing)."""
    path = record_path(engines_dir, engine_id)
    try:
        return msgspec.json.decode(read_nofollow(path), type=EngineRecord)
    except FileNotFoundError:
        return None
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        log.warning("ignoring unreadable engine record %s: %s", path, exc)
        return None


ASSIST_SUFFIX = ".assist.json"  # supervisor/assist.py's stats_path


def load_all(engines_dir: Path) -> list[EngineRecord]:
    try:
        # an engine's assist stats file (``<id>.assist.json``) lives beside its record
        names = sorted(p.name for p in engines_dir.glob("*.json")
                       if not p.name.endswith(ASSIST_SUFFIX))
    except OSError:
        return []
    out = []
    for name in names:
        rec = load(engines_dir, name[: -len(".json")])
        if rec is not None:
            out.append(rec)
    return out


def intent_path(engines_dir: Path, engine_id: str) -> Path:
    return engines_dir / f"{engine_id}.stopped"


#: Contents of an intent file: why the scheduler stopped the engine.
EVICTED = "evicted"
UNLOADED = "unloaded"


def save_stopped(engines_dir: Path, engine_id: str, stopped: bool, unloaded: bool = False) -> None:
    """Remember that the scheduler stopped this engine, so that a restarted supervisor
    does not start a preloaded model behind its back; and whether it was an operator's
    unload, so that a restarted *scheduler* learns it (``EngineStatus.unloaded``) and
    keeps refusing the model's requests instead of loading it on the next one.  The
    files live in the runtime dir: an appliance (re)start begins from the config."""
    path = intent_path(engines_dir, engine_id)
    if stopped:
        write_atomic(path, f"{UNLOADED if unloaded else EVICTED}\n".encode(), mode=0o600)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def stopped_intent(engines_dir: Path, engine_id: str) -> str:
    """"" (not stopped by command), ``EVICTED`` or ``UNLOADED``; a file from an older
    version (or unreadable) counts as an eviction, the cautious reading."""
    try:
        raw = read_nofollow(intent_path(engines_dir, engine_id), 64)
        text = raw.decode(errors="replace").strip()
    except FileNotFoundError:
        return ""
    except OSError:
        return EVICTED
    return UNLOADED if text == UNLOADED else EVICTED


def is_stopped(engines_dir: Path, engine_id: str) -> bool:
    return intent_path(engines_dir, engine_id).exists()


def remove(engines_dir: Path, engine_id: str) -> None:
    try:
        record_path(engines_dir, engine_id).unlink()
    except FileNotFoundError:
        pass
