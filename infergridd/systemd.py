"""The small part of systemd a daemon talks to: readiness, watchdog, status.

All calls are no-ops outside systemd (no ``NOTIFY_SOCKET``), so the same daemon
runs under ``infergrid serve``, in tests and under a unit.
"""

from __future__ import annotations

import asyncio
import os

import sdnotify


class Notifier:
    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._n = sdnotify.SystemdNotifier() if self.enabled else None

    def _send(self, msg: str) -> None:
        if self._n is not None:
            self._n.notify(msg)

    def ready(self, status: str = "") -> None:
        self._send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, status: str) -> None:
        self._send(f"STATUS={status}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def watchdog_interval_s(self) -> float | None:
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        return int(usec) / 1_000_000

    async def watchdog_loop(self) -> None:
        """Feed the watchdog from the event loop itself: a stuck loop stops feeding it."""
        interval = self.watchdog_interval_s()
        if interval is None:
            return
        while True:
            self._send("WATCHDOG=1")
            await asyncio.sleep(interval / 3)


def listen_fds() -> list[int]:
    """File descriptors passed by socket activation (sd_listen_fds), starting at 3."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    n = int(os.environ.get("LISTEN_FDS", "0") or 0)
    return list(range(3, 3 + n))
