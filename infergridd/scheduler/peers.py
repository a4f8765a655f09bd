"""Who is connected to the scheduler, and when each was last heard from.

The scheduler learns its peers only from their ``Hello``: after its own
restart it knows nobody, answers ``HelloRequired`` to whatever it hears, and
every peer re-sends its full state.  A peer silent for longer than the
heartbeat budget is gone; its leftovers are dropped by the core.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..protocol import HEARTBEAT_INTERVAL_S, HEARTBEAT_MISSES


@dataclass
class Peer:
    name: str  # the ZeroMQ identity, decoded: "fd-…" or "sv-…"
    role: str
    instance: str
    pid: int
    last_seen: float
    done_seq: int = 0  # highest Done.seq applied, acknowledged in heartbeats
    auth_version_sent: int = -1  # the front door's copy of the auth table
    extra: dict[str, object] = field(default_factory=dict)


class PeerTable:
    def __init__(self, timeout_s: float = HEARTBEAT_INTERVAL_S * HEARTBEAT_MISSES) -> None:
        self.timeout_s = timeout_s
        self._peers: dict[str, Peer] = {}

    def get(self, name: str) -> Peer | None:
        return self._peers.get(name)

    def add(self, peer: Peer) -> Peer | None:
        """Register ``peer``; returns a previous entry under the same name, if any."""
        old = self._peers.get(peer.name)
        self._peers[peer.name] = peer
        return old

    def remove(self, name: str) -> None:
        self._peers.pop(name, None)

    def seen(self, name: str, now: float) -> None:
        p = self._peers.get(name)
        if p is not None:
            p.last_seen = now

    def expired(self, now: float) -> list[Peer]:
        return [p for p in self._peers.values() if now - p.last_seen > self.timeout_s]

    def by_role(self, role: str) -> list[Peer]:
        return [p for p in self._peers.values() if p.role == role]

    def all(self) -> list[Peer]:
        return list(self._peers.values())
