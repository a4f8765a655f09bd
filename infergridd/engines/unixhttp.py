"""HTTP to an engine on a Unix socket, through the same aiohttp session as TCP.

An engine InferGrid launches listens on a Unix socket in the runtime dir where
its kind can (vLLM ``--uds``, the simulated engine): then only users who may
enter that directory can reach it at all — including the routes vLLM never
checks a key on (``/sleep``, ``/wake_up``, ``/reset_prefix_cache`` with
``VLLM_SERVER_DEV_MODE=1``, ``/metrics``, ``/health``).  DESIGN §10.

Its endpoint is then written ``unix:/path/to/engine.sock`` (in ``EngineStatus``,
``Dispatch`` and the engine record), and URLs are built as for TCP by appending
the path: ``unix:/run/infergrid/engines/m-0.sock/v1/models``.  The socket path
is everything up to the last ``.sock`` (ours always ends so; an HTTP path never
contains it).  ``engine_url`` turns that into an ``http://`` URL whose host
encodes the socket path (hex labels under ``.sock.invalid``, a name that can
never resolve), and ``EngineConnector`` connects such a host to the socket and
any other host over TCP as usual.  Connection pooling is per host, so each
socket has its own pool.  Hex, not the ``http+unix://%2F...`` convention: URL
hosts are lower-cased, and a socket path may have capitals.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.client_exceptions import UnixClientConnectorError

UNIX = "unix:"
_SUFFIX = ".sock.invalid"
_LABEL = 60  # hex digits per DNS label (at most 63)
#: sun_path holds 108 bytes with its NUL: the longest path a socket may have
MAX_SOCKET_PATH = 107


def unix_endpoint(path: Path | str) -> str:
    return UNIX + str(path)


def is_unix(endpoint: str) -> bool:
    return endpoint.startswith(UNIX)


def split_unix(url: str) -> tuple[str, str]:
    """``unix:/a/b.sock/v1/x`` → (``/a/b.sock``, ``/v1/x``)."""
    i = url.rfind(".sock")
    if not is_unix(url) or i < 0:
        raise ValueError(f"not a unix: engine URL ending its socket in .sock: {url!r}")
    return url[len(UNIX):i + len(".sock")], url[i + len(".sock"):] or "/"


def _host_for(sock: str) -> str:
    h = sock.encode().hex()
    return ".".join(h[i:i + _LABEL] for i in range(0, len(h), _LABEL)) + _SUFFIX


def socket_of_host(host: str) -> str | None:
    """The socket path a host from ``engine_url`` stands for; None for any other host."""
    if not host.endswith(_SUFFIX):
        return None
    try:
        return bytes.fromhex(host[:-len(_SUFFIX)].replace(".", "")).decode()
    except (ValueError, UnicodeDecodeError):
        return None


def engine_url(url: str) -> str:
    """An engine URL as aiohttp can request it: ``unix:`` ones rewritten, others as they are."""
    if not is_unix(url):
        return url
    sock, rest = split_unix(url)
    return f"http://{_host_for(sock)}{rest}"


class EngineConnector(aiohttp.TCPConnector):
    """``TCPConnector`` that connects ``engine_url``'s socket hosts to their Unix socket.

    Overrides aiohttp's ``_create_connection`` (stable since aiohttp 3.0, and what
    ``aiohttp.UnixConnector`` overrides for its single socket) so one session, one
    pool limit and one set of timeouts serve every engine, TCP or Unix.
    """

    async def _create_connection(self, req: Any, traces: Any, timeout: Any) -> Any:
        path = socket_of_host(req.url.raw_host or "")
        if path is None:
            return await super()._create_connection(req, traces, timeout)
        try:
            _, proto = await asyncio.wait_for(
                self._loop.create_unix_connection(self._factory, path), timeout.sock_connect)
        except OSError as exc:
            raise UnixClientConnectorError(path, req.connection_key, exc) from exc
        return proto
