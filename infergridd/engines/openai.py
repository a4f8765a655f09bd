"""An external OpenAI-compatible endpoint (``engine: openai``, ``url:``, ``api_key:``).

InferGrid does not run it, so there is nothing to launch, sleep or stop, and
no load figures to read: the scheduler's dispatch window falls back to the
configured ``max_num_seqs`` as the in-flight cap.  Its health is checked
with ``GET /v1/models``, but only every few seconds: the endpoint may be a
paid service that counts calls.
"""

from __future__ import annotations

import time

import aiohttp

from ..config import ModelConfig
from .base import EngineAdapter, EngineError, EngineMetrics

HEALTH_EVERY_S = 5.0


class OpenAIAdapter(EngineAdapter):
    kind = "openai"
    managed = False
    supports_sleep = False
    supports_priority = False

    def __init__(self, model: ModelConfig) -> None:
        super().__init__(model)
        self._last_ok = 0.0
        self.base_url = model.url.rstrip("/")
        if self.base_url.endswith("/v1"):
            self.base_url = self.base_url[: -len("/v1")]

    def endpoint(self, port: int) -> str:
        return self.base_url

    async def ready(self, http: aiohttp.ClientSession, endpoint: str, api_key: str) -> bool:
        try:
            await self._request(http, "GET", f"{endpoint}/v1/models", api_key, timeout_s=5.0)
        except EngineError:
            return False
        self._last_ok = time.monotonic()
        return True

    async def metrics(self, http: aiohttp.ClientSession, endpoint: str,
                      api_key: str) -> EngineMetrics:
        """Zeros (unknown); raises ``EngineError`` when the endpoint stopped answering."""
        if time.monotonic() - self._last_ok >= HEALTH_EVERY_S:
            await self._request(http, "GET", f"{endpoint}/v1/models", api_key, timeout_s=5.0)
            self._last_ok = time.monotonic()
        return EngineMetrics()
