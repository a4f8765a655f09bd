"""API key → tenant.  Keys are compared as sha256 digests; plain keys are never kept.

The table comes from the scheduler only: it holds the tenants and their hashed
keys, configured and added at runtime alike, and it alone knows which keys
``infergridctl tenant rotate-key`` or ``tenant remove`` took away (they live in
its state file, not in the configuration).  So the front door never serves on
its own reading of the configuration's keys: until the first Snapshot brings
the table a request waits for it (``wait_ready``, a few seconds: a restarted
front door hears from the scheduler within milliseconds) and then gets 503
(retry shortly), never 200 with a key that may have been rotated away; every
later Snapshot that changes the table replaces it.

``auth: none`` opens the appliance to anyone who can reach the port, so it
takes both views: the scheduler's (the Snapshot names the tenant every request
then belongs to) *and* this front door's own configuration.  If they disagree
(one unit was given another file, or the file changed under one of them), the
front door keeps asking for keys and says why in its log.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

from ..config import Config
from ..protocol import AuthEntry
from .errors import ApiError

log = logging.getLogger("infergrid.frontdoor")

#: seconds a client is asked to wait before the first key table arrives
NO_TABLE_RETRY_S = 1.0
#: how long a request waits for the first key table before that 503
NO_TABLE_WAIT_S = 5.0


class Authenticator:
    """Maps ``Authorization: Bearer <key>`` to a tenant name, or refuses with 401."""

    def __init__(self, cfg: Config) -> None:
        self._config_open = cfg.auth == "none"  # this unit's own view
        self.none_tenant = ""  # open only once the scheduler agrees
        self.version = -1  # no table from the scheduler yet: nobody is let in
        self._table: dict[str, str] = {}
        self._disagreement = ""
        self._arrived = asyncio.Event()

    @property
    def ready(self) -> bool:
        """Whether the scheduler's table has arrived (before that, every request gets 503)."""
        return self.version >= 0 or bool(self.none_tenant)

    def update(self, version: int, entries: list[AuthEntry]) -> None:
        """Replace the table with the scheduler's (it includes keys added at runtime)."""
        self._table = {e.key_sha256: e.tenant for e in entries}
        self.version = version
        self._arrived.set()

    async def wait_ready(self, timeout_s: float = NO_TABLE_WAIT_S) -> None:
        """Until the scheduler's first table is here (at most ``timeout_s``); ``tenant``
        then says 503 if it is still missing."""
        if self.ready:
            return
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout_s)
        except asyncio.TimeoutError:
            pass

    def set_none_tenant(self, name: str) -> None:
        """The scheduler's ``auth: none`` tenant ("" under ``auth: keys``); taken only when
        this front door's own configuration says ``auth: none`` too."""
        if bool(name) != self._config_open:
            why = ("the scheduler runs with auth: none but this front door's configuration "
                   "says auth: keys" if name else
                   "this front door's configuration says auth: none but the scheduler's "
                   "says auth: keys")
            if why != self._disagreement:
                log.error("%s: API keys stay required until both say auth: none", why)
            self._disagreement = why
        else:
            self._disagreement = ""
        self.none_tenant = name if self._config_open else ""
        if self.none_tenant:
            self._arrived.set()

    def tenant(self, authorization: str | None) -> str:
        if self.none_tenant:
            return self.none_tenant
        if self.version < 0:
            raise ApiError(503, "scheduler_unavailable",
                           "the front door has no API key table from the scheduler yet; "
                           "retry shortly", retry_after_s=NO_TABLE_RETRY_S)
        if not authorization:
            raise ApiError(401, "invalid_api_key",
                           "missing API key: send it as 'Authorization: Bearer <key>'")
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, "invalid_api_key", "malformed Authorization header; "
                           "expected 'Bearer <key>'")
        # a header's bytes that are not UTF-8 arrive as surrogates: hash the bytes as sent
        # (no key matches them; a plain encode() raised, and the client got a 500)
        raw = key.strip().encode(errors="surrogateescape")
        tenant = self._table.get(hashlib.sha256(raw).hexdigest())
        if tenant is None:
            raise ApiError(401, "invalid_api_key", "incorrect API key provided")
        return tenant
