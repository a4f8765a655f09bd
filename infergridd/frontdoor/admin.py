"""The operator's listener (``admin_listen``): ``/metrics``, the detailed ``/health``, and
whatever other operator pages register here.

The public port faces tenants, perhaps the internet.  What only an operator
should read lives here instead: ``/metrics`` (every tenant's name and traffic)
and ``/health`` with each missing model's reason (an engine's last log lines:
paths, arguments, a traceback).  Bind it to loopback or a management network.
With ``admin_listen`` empty there is no admin listener; the public port then
keeps ``/metrics`` (so a default install can still be scraped), and its
``/health`` never carries the reasons.

To add an operator page, register its route before the front door starts::

    from infergridd.frontdoor import admin
    admin.ROUTES.append(("GET", "/status", my_handler))

A handler gets the front door as ``request.app[FD]`` like every other route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from .app import FD, health_detail, metrics
from .edge import EdgeGuard, EdgeRunner
from .errors import error_middleware
from .status_page import status

if TYPE_CHECKING:
    from .main import Frontdoor

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: (method, path, handler) served on the admin listener; others append their pages here
ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/metrics", metrics),
    ("GET", "/health", health_detail),
    ("GET", "/status", status),  # status_page.py: the live status page
]

#: the admin listener is for a few operators and scrapers, not for tenants
MAX_CONNECTIONS = 64


def build_admin_app(fd: Frontdoor, guard: EdgeGuard) -> web.Application:
    app = web.Application(middlewares=[guard.middleware, error_middleware],
                          client_max_size=64 * 1024)
    app[FD] = fd
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    return app


async def start_admin(fd: Frontdoor) -> EdgeRunner | None:
    """Serve the admin routes on ``admin_listen``; ``None`` when it is empty."""
    where = fd.cfg.admin_listen
    if not where:
        return None
    lim = fd.cfg.limits
    guard = EdgeGuard(max_connections=MAX_CONNECTIONS, header_timeout_s=lim.header_timeout_s,
                      keepalive_timeout_s=lim.keepalive_timeout_s,
                      max_requests_per_connection=lim.max_requests_per_connection)
    runner = EdgeRunner(build_admin_app(fd, guard), guard, access_log=None,
                        keepalive_timeout=lim.keepalive_timeout_s, shutdown_timeout=1.0)
    await runner.setup()
    host, _, port = where.rpartition(":")
    # several front-door processes (frontdoor.processes) share the admin port too: any of
    # them answers, and /metrics sums them all (workers.py)
    await web.TCPSite(runner, host.strip("[]"), int(port), reuse_address=True,
                      reuse_port=fd.processes > 1).start()
    return runner
