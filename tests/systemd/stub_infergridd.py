#!/usr/bin/python3
"""A stand-in for /usr/bin/infergridd that speaks the units' contract and nothing more.

Installed at /usr/bin/infergridd inside the namespace (stdlib only: it runs on the
root file system's Python).  Each role sends READY=1 and WATCHDOG=1 over
NOTIFY_SOCKET; the supervisor starts a detached "engine" (sleep, own session)
recorded in <runtime>/supervisor/engines/stub.json the way the real one does, and
adopts a living one instead; `stop-engines` stops the recorded engines.  Every call
goes to the journal (syslog identifier ``infergrid-stub``) so tests can see what
systemd ran: each unit runs as its own user with its own runtime subdirectory, so
there is no file all of them may write.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import syslog
import time

role = sys.argv[1]
runtime = "/run/infergrid"
if "--runtime-dir" in sys.argv:
    runtime = sys.argv[sys.argv.index("--runtime-dir") + 1]
engines = os.path.join(runtime, "supervisor", "engines")
syslog.openlog("infergrid-stub")


def log(line: str) -> None:
    syslog.syslog(syslog.LOG_NOTICE, line)


def notify(msg: str) -> None:
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        s.sendall(msg.encode())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


if role == "stop-engines":
    log("stop-engines")
    for name in os.listdir(engines) if os.path.isdir(engines) else []:
        with open(os.path.join(engines, name)) as f:
            pid = json.load(f)["pid"]
        if alive(pid):
            os.kill(pid, signal.SIGTERM)
        os.unlink(os.path.join(engines, name))
    sys.exit(0)

log(f"start {role} pid={os.getpid()} listen_fds={os.environ.get('LISTEN_FDS', '')}")
if role == "supervisor":
    os.makedirs(engines, exist_ok=True)
    state = os.path.join(engines, "stub.json")
    pid = 0
    if os.path.exists(state):
        with open(state) as f:
            pid = json.load(f)["pid"]
    if pid and alive(pid):
        log(f"adopt engine pid={pid}")
    else:
        engine = subprocess.Popen(["/bin/sleep", "infinity"], start_new_session=True)
        with open(state, "w") as f:
            json.dump({"pid": engine.pid}, f)
        log(f"launch engine pid={engine.pid}")


def on_term(signum: int, frame: object) -> None:
    log(f"stop {role}")
    sys.exit(0)


signal.signal(signal.SIGTERM, on_term)
listener = socket.socket(fileno=3) if os.environ.get("LISTEN_FDS") == "1" else None
notify("READY=1")
while True:
    notify("WATCHDOG=1")
    if listener is None:
        time.sleep(2)
        continue
    listener.settimeout(2)
    try:
        conn, _ = listener.accept()
    except TimeoutError:
        continue
    with conn:
        conn.recv(4096)
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
