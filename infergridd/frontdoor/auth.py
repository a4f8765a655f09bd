"""API key → tenant.  Keys are compared as sha256 digests; plain keys are never kept.

The table comes from the scheduler (runtime changes made with infergridctl
reach every front door with the next Snapshot); until the first Snapshot
arrives, the configuration's keys are used so the front door can answer
401 correctly from its first second.
"""

from __future__ import annotations

import hashlib

from ..config import Config, hash_key
from ..protocol import AuthEntry
from .errors import ApiError


class Authenticator:
    """Maps ``Authorization: Bearer <key>`` to a tenant name, or refuses with 401."""

    def __init__(self, cfg: Config) -> None:
        self._config_none = "default" if cfg.auth == "none" else ""
        self.none_tenant = self._config_none
        self.version = -1  # no table from the scheduler yet: the config's keys
        self._table = {hash_key(k): t.name for t in cfg.tenants for k in t.keys}

    def update(self, version: int, entries: list[AuthEntry]) -> None:
        """Replace the table with the scheduler's (it includes keys added at runtime)."""
        self._table = {e.key_sha256: e.tenant for e in entries}
        self.version = version

    def set_none_tenant(self, name: str) -> None:
        """With ``auth: none`` every request belongs to this tenant (scheduler's choice)."""
        self.none_tenant = name or self._config_none

    def tenant(self, authorization: str | None) -> str:
        if self.none_tenant:
            return self.none_tenant
        if not authorization:
            raise ApiError(401, "invalid_api_key",
                           "missing API key: send it as 'Authorization: Bearer <key>'")
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, "invalid_api_key", "malformed Authorization header; "
                           "expected 'Bearer <key>'")
        tenant = self._table.get(hashlib.sha256(key.strip().encode()).hexdigest())
        if tenant is None:
            raise ApiError(401, "invalid_api_key", "incorrect API key provided")
        return tenant
