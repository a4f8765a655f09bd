"""Logging: structured fields to journald under systemd, plain stderr lines elsewhere.

Call sites pass fields with ``extra={"fields": {"TENANT": "acme"}}``; under
journald they become journal fields (``journalctl TENANT=acme`` works), on
stderr they are appended as ``key=value``.  The journal protocol is spoken
directly over its datagram socket, so no C extension is needed.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

JOURNAL_SOCKET = "/run/systemd/journal/socket"

_PRIORITY = {
    logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7,
}


def _journal_field(name: str, value: str) -> bytes:
    data = value.encode("utf-8", "replace")
    if b"\n" in data:
        return name.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
    return name.encode() + b"=" + data + b"\n"


class JournalHandler(logging.Handler):
    """Writes each record as one journal entry with PRIORITY and custom fields."""

    def __init__(self, identifier: str) -> None:
        super().__init__()
        self.identifier = identifier
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            parts = [
                _journal_field("MESSAGE", self.format(record)),
                _journal_field("PRIORITY", str(_PRIORITY.get(record.levelno, 6))),
                _journal_field("SYSLOG_IDENTIFIER", self.identifier),
                _journal_field("LOGGER", record.name),
                _journal_field("CODE_FILE", record.pathname),
                _journal_field("CODE_LINE", str(record.lineno)),
            ]
            for k, v in (getattr(record, "fields", None) or {}).items():
                parts.append(_journal_field(k.upper(), str(v)))
            self.sock.sendto(b"".join(parts), JOURNAL_SOCKET)
        except Exception:  # noqa: BLE001 - a log line must never take a daemon down
            self.handleError(record)


class _StderrFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            base += " " + " ".join(f"{k.lower()}={v}" for k, v in fields.items())
        return base


def under_journald() -> bool:
    """True when stderr is connected to the journal (systemd sets JOURNAL_STREAM)."""
    stream = os.environ.get("JOURNAL_STREAM")
    if not stream or not os.path.exists(JOURNAL_SOCKET):
        return False
    try:
        dev, ino = (int(x) for x in stream.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return st.st_dev == dev and st.st_ino == ino


def setup(role: str, level: str = "info") -> logging.Logger:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler
    if under_journald():
        handler = JournalHandler(f"infergrid-{role}")
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_StderrFormatter(
            f"%(asctime)s %(levelname)s {role}[%(process)d] %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return logging.getLogger(f"infergrid.{role}")


def fields(**kw: object) -> dict[str, dict[str, object]]:
    """``log.info("...", extra=fields(tenant=t, model=m))``."""
    return {"fields": {k.upper(): v for k, v in kw.items() if v is not None}}
