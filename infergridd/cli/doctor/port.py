"""The listen port: free, or held by our own front door (or systemd's socket for it)."""

from __future__ import annotations

import os
from pathlib import Path

from ...config import Config
from .check import FAIL, OK, WARN, Check


def listening_inodes(port: int, proc: Path = Path("/proc")) -> set[int]:
    """Socket inodes listening on TCP ``port`` (any address), from /proc/net/tcp{,6}."""
    found: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                found.add(int(f[9]))
    return found


def socket_holders(inodes: set[int], proc: Path = Path("/proc")) -> dict[int, str]:
    """pid → command line of the processes holding one of ``inodes`` (those we may see)."""
    want = {f"socket:[{i}]" for i in inodes}
    out: dict[int, str] = {}
    for pdir in proc.iterdir():
        if not pdir.name.isdigit():
            continue
        try:
            for fd in (pdir / "fd").iterdir():
                if os.readlink(fd) in want:
                    raw = (pdir / "cmdline").read_bytes()
                    out[int(pdir.name)] = raw.replace(b"\0", b" ").decode(errors="replace").strip()
                    break
        except OSError:
            continue
    return out


def _ours(cmdline: str) -> bool:
    words = cmdline.split()
    return ("frontdoor" in words and any("infergridd" in w for w in words)) or (
        "serve" in words and any(Path(w).name == "infergrid" for w in words))


def check_port(cfg: Config, proc: Path = Path("/proc")) -> Check:
    """The listen port is free, or held by our front door (or systemd's socket for it)."""
    host, _, port_s = cfg.listen.rpartition(":")
    port = int(port_s)
    inodes = listening_inodes(port, proc)
    if not inodes:
        return Check(OK, "port", f"{cfg.listen} is free")
    holders = socket_holders(inodes, proc)
    if not holders:
        return Check(WARN, "port", f"{cfg.listen} is in use by a process this user cannot see",
                     f"run as root to see who (ss -ltnp 'sport = :{port}')")
    ours = {pid: c for pid, c in holders.items() if _ours(c)}
    systemd = {pid: c for pid, c in holders.items() if Path(c.split()[0] if c else "").name
               in ("systemd", "init")}
    others = {pid: c for pid, c in holders.items() if pid not in ours and pid not in systemd}
    if others:
        who = ", ".join(f"pid {pid} ({c[:60]})" for pid, c in sorted(others.items()))
        return Check(FAIL, "port", f"{cfg.listen} is held by {who}",
                     "stop that process, or change listen: (and the .socket unit's "
                     "ListenStream=)")
    if ours:
        who = ", ".join(f"pid {pid}" for pid in sorted(ours))
        extra = " via systemd's socket" if systemd else ""
        return Check(OK, "port", f"{cfg.listen} is held by our front door ({who}){extra}")
    return Check(OK, "port", f"{cfg.listen} is held by systemd (infergrid-frontdoor.socket); "
                 "the front door starts on the first connection")
