"""Tenants: the configuration's list plus what ``infergridctl tenant …`` changed at run time.

The registry keeps the two apart so that ``tenant list`` can show configured
and effective values side by side, and so that only the runtime changes go to
the state file (``export``/``import_``): an operator who edits the YAML file
sees the edit take effect for every setting not overridden at run time.

Keys: ``add``, ``rotate_key`` and ``add_key`` return a new plain key exactly
once; only its sha256 is kept (``config.hash_key``).  Every change that can
affect authentication bumps ``auth_version``, which tells the scheduler to
push a fresh auth table to the front doors.

Validation: every mutating method raises ``ValueError`` with a message fit
for the operator (unknown tenant, weight <= 0, negative or non-numeric rate,
too many tenants); nothing is changed when it raises.

``auth: none``: a single implicit tenant ``default`` exists (unless the
configuration lists one by that name) and every request uses it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..config import Config, TenantConfig, hash_key
from ..protocol import AuthEntry
from .policy import TenantView

DEFAULT_TENANT = "default"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: settings an operator can change at run time, and so what the state file may hold
_RUNTIME_FIELDS = ("weight", "rpm", "tpm", "burst")


@dataclass(frozen=True)
class TenantSettings:
    """Effective settings of one tenant (what the scheduler applies now)."""

    name: str
    weight: float = 1.0
    band: int = 0
    rpm: float = 0.0
    tpm: float = 0.0
    burst: float = 0.0
    max_queued: int = 0  # 0: scheduler.max_queued_per_tenant
    queue_deadline_s: float = 0.0  # 0: scheduler.queue_deadline_s
    keys: tuple[str, ...] = ()  # sha256 hex

    def public(self) -> dict[str, Any]:
        """The view for ``tenant list``/``show``: settings and a key count, never hashes."""
        d = asdict(self)
        d.pop("name")
        d["keys"] = len(self.keys)
        return d


def _from_config(t: TenantConfig) -> TenantSettings:
    return TenantSettings(
        name=t.name, weight=t.weight, band=t.band, rpm=t.rpm, tpm=t.tpm, burst=t.burst,
        max_queued=t.max_queued, queue_deadline_s=t.queue_deadline_s,
        keys=tuple(hash_key(k) for k in t.keys),
    )


def _number(what: str, value: object, *, positive: bool = False) -> float:
    """A finite number from a number or a numeric string (CLI arguments arrive as text)."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{what} must be a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError(f"{what} must be a number, got {value!r}") from None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{what} must be greater than 0, got {value:g}")
    if value < 0:
        raise ValueError(f"{what} cannot be negative, got {value:g}")
    return float(value)


class TenantRegistry(TenantView):
    """Configured tenants + runtime overrides; see the module docstring."""

    def __init__(self, cfg: Config, new_key: Callable[[], str] | None = None) -> None:
        self._new_key = new_key  # injected (infergridd/keys.py): the core draws no randomness
        self.max_tenants = cfg.scheduler.max_tenants
        self._configured: dict[str, TenantSettings] = {t.name: _from_config(t) for t in cfg.tenants}
        if cfg.auth == "none" and DEFAULT_TENANT not in self._configured:
            self._configured[DEFAULT_TENANT] = TenantSettings(name=DEFAULT_TENANT)
        self.implicit_default = cfg.auth == "none"
        # runtime state, all that export() writes
        self._added: dict[str, TenantSettings] = {}  # tenants that exist only at run time
        self._removed: set[str] = set()  # configured tenants removed at run time
        self._overrides: dict[str, dict[str, Any]] = {}  # configured name -> changed fields
        self.version = 1  # any change
        self.auth_version = 1  # a change to who a key belongs to
        self._effective: dict[str, TenantSettings] = {}
        self._rebuild()

    # ------------------------------------------------------------------ reading
    def _rebuild(self) -> None:
        eff: dict[str, TenantSettings] = {}
        for name, t in self._configured.items():
            if name in self._removed:
                continue
            over = self._overrides.get(name, {})
            fields = {k: v for k, v in over.items() if k in _RUNTIME_FIELDS}
            if "keys" in over:
                fields["keys"] = tuple(over["keys"])
            eff[name] = replace(t, **fields)
        eff.update(self._added)
        self._effective = eff

    def names(self) -> list[str]:
        """Every tenant in force: configured ones first (file order), then runtime additions."""
        return list(self._effective)

    def get(self, name: str) -> TenantSettings | None:
        return self._effective.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._effective

    def __len__(self) -> int:
        return len(self._effective)

    def weight(self, name: str) -> float:
        t = self._effective.get(name)
        return t.weight if t is not None else 1.0

    def band(self, name: str) -> int:
        t = self._effective.get(name)
        return t.band if t is not None else 0

    def configured(self, name: str) -> dict[str, Any] | None:
        """What the config file says, ``None`` for a tenant added at run time."""
        self._require(name)
        t = self._configured.get(name)
        return t.public() if t is not None and name not in self._added else None

    def effective(self, name: str) -> dict[str, Any]:
        return self._require(name).public()

    def auth_table(self) -> tuple[int, list[AuthEntry]]:
        """(auth_version, entries) in a stable order: tenants as listed, keys as added."""
        entries = [AuthEntry(key_sha256=k, tenant=t.name)
                   for t in self._effective.values() for k in t.keys]
        return self.auth_version, entries

    def tenant_for_key(self, plain_key: str) -> str | None:
        """Which tenant a plain key belongs to (tests, diagnostics)."""
        h = hash_key(plain_key)
        for t in self._effective.values():
            if h in t.keys:
                return t.name
        return None

    def _require(self, name: object) -> TenantSettings:
        if not isinstance(name, str) or name not in self._effective:
            raise ValueError(f"unknown tenant {name!r}")
        return self._effective[name]

    # ------------------------------------------------------------------ changing
    def _changed(self, auth: bool) -> None:
        self._rebuild()
        self.version += 1
        if auth:
            self.auth_version += 1

    def _set(self, name: str, **fields: Any) -> None:
        """Apply runtime changes to an existing tenant, wherever it came from."""
        if name in self._added:
            extra = dict(fields)
            if "keys" in extra:
                extra["keys"] = tuple(extra["keys"])
            self._added[name] = replace(self._added[name], **extra)
        else:
            over = self._overrides.setdefault(name, {})
            over.update({k: (list(v) if k == "keys" else v) for k, v in fields.items()})
            base = self._configured[name]
            for k in _RUNTIME_FIELDS:  # an override equal to the config is no override
                if k in over and over[k] == getattr(base, k):
                    del over[k]
            if not over:
                del self._overrides[name]

    def add(self, name: str, weight: object = 1.0) -> str:
        """A new tenant with one new key; returns the plain key (the only time it exists)."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(
                f"invalid tenant name {name!r}: use letters, digits, '.', '_', '-' "
                "(at most 64, starting with a letter or digit)")
        if name in self._effective:
            raise ValueError(f"tenant {name!r} already exists")
        if len(self._effective) >= self.max_tenants:
            raise ValueError(f"too many tenants (scheduler.max_tenants is {self.max_tenants})")
        w = _number("weight", weight, positive=True)
        key = self._draw_key()
        if name in self._configured:  # removed earlier at run time: it comes back fresh
            self._removed.discard(name)
            self._overrides[name] = {"keys": [hash_key(key)]}
            if w != self._configured[name].weight:
                self._overrides[name]["weight"] = w
        else:
            self._added[name] = TenantSettings(name=name, weight=w, keys=(hash_key(key),))
        self._changed(auth=True)
        return key

    def remove(self, name: str) -> None:
        """The tenant's keys stop working at once; the core rejects what it had queued."""
        self._require(name)
        if self.implicit_default and name == DEFAULT_TENANT:
            raise ValueError("the implicit tenant 'default' of auth: none cannot be removed")
        if name in self._added:
            del self._added[name]
        else:
            self._removed.add(name)
            self._overrides.pop(name, None)
        self._changed(auth=True)

    def set_weight(self, name: str, weight: object) -> None:
        self._require(name)
        w = _number("weight", weight, positive=True)
        self._set(name, weight=w)
        self._changed(auth=False)

    def set_rate(self, name: str, rpm: object = None, tpm: object = None, burst: object = None,
                 unlimited: bool = False) -> None:
        """Hard quotas; 0 means unlimited; ``unlimited=True`` clears all three."""
        self._require(name)
        if unlimited:
            if any(v is not None for v in (rpm, tpm, burst)):
                raise ValueError("unlimited cannot be combined with rpm, tpm or burst")
            fields: dict[str, float] = {"rpm": 0.0, "tpm": 0.0, "burst": 0.0}
        else:
            fields = {k: _number(k, v) for k, v in (("rpm", rpm), ("tpm", tpm), ("burst", burst))
                      if v is not None}
            if not fields:
                raise ValueError("give rpm, tpm, burst or unlimited")
        self._set(name, **fields)
        self._changed(auth=False)

    def rotate_key(self, name: str) -> str:
        """Replace every key of the tenant with one new key, returned once."""
        self._require(name)
        key = self._draw_key()
        self._set(name, keys=[hash_key(key)])
        self._changed(auth=True)
        return key

    def add_key(self, name: str) -> str:
        """One more key for the tenant (for a rollover without downtime), returned once."""
        t = self._require(name)
        key = self._draw_key()
        self._set(name, keys=[*t.keys, hash_key(key)])
        self._changed(auth=True)
        return key

    def _draw_key(self) -> str:
        if self._new_key is None:
            raise ValueError("this scheduler core was built without a key source")
        return self._new_key()

    # ------------------------------------------------------------------ persistence
    def export(self) -> dict[str, Any]:
        """The runtime changes only, JSON-able; hashes, never plain keys."""
        return {
            "added": {n: {"weight": t.weight, "rpm": t.rpm, "tpm": t.tpm, "burst": t.burst,
                          "keys": list(t.keys)} for n, t in self._added.items()},
            "removed": sorted(self._removed),
            "overrides": {n: dict(o) for n, o in self._overrides.items()},
        }

    def import_(self, data: dict[str, Any]) -> None:
        """Restore ``export``'s output; raises ``ValueError`` naming what is malformed.

        A tenant removed at run time stays removed even if the file still lists it
        (a revoked key must not come back); a runtime tenant that the config now
        also lists keeps its runtime settings and keys.
        """
        if not isinstance(data, dict):
            raise ValueError("tenant state: expected a mapping")
        added: dict[str, TenantSettings] = {}
        overrides: dict[str, dict[str, Any]] = {}
        for name, d in _mapping(data, "added").items():
            fields = _runtime_fields(name, d)
            if name in self._configured:
                overrides[name] = {**fields, "keys": list(fields.get("keys", ()))}
            else:
                added[name] = TenantSettings(name=name, **{
                    **fields, "keys": tuple(fields.get("keys", ()))})
        for name, d in _mapping(data, "overrides").items():
            if name in self._configured:
                overrides[name] = _runtime_fields(name, d)
        removed = data.get("removed", [])
        if not isinstance(removed, list) or not all(isinstance(n, str) for n in removed):
            raise ValueError("tenant state: 'removed' must be a list of names")
        self._added, self._overrides = added, overrides
        self._removed = {n for n in removed if n in self._configured}
        if self.implicit_default:
            self._removed.discard(DEFAULT_TENANT)
        self._changed(auth=True)


def _mapping(data: dict[str, Any], key: str) -> dict[str, Any]:
    v = data.get(key, {})
    if not isinstance(v, dict):
        raise ValueError(f"tenant state: {key!r} must be a mapping")
    return v


def _runtime_fields(name: str, d: object) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise ValueError(f"tenant state: entry for {name!r} must be a mapping")
    out: dict[str, Any] = {}
    for k in _RUNTIME_FIELDS:
        if k in d:
            out[k] = _number(f"tenant state: {name}.{k}", d[k], positive=(k == "weight"))
    if "keys" in d:
        keys = d["keys"]
        if not isinstance(keys, list) or not all(
                isinstance(k, str) and re.fullmatch(r"[0-9a-f]{64}", k) for k in keys):
            raise ValueError(f"tenant state: {name}.keys must be a list of sha256 hex digests")
        out["keys"] = list(keys)
    return out
