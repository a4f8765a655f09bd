#!/usr/bin/python3
"""Load for the systemd tier, run *inside* the namespace by the root file system's python3.

Stdlib only (http.client, threads).  Starts ``--streams`` streaming chat requests at once
and, for ``--trickle-s`` seconds, one more new connection every ``--trickle-every`` seconds
(those are the ones a restart could refuse).  Writes ``started`` to stderr once every
stream has its response headers, then, when all are done, one JSON object to stdout:
``{"results": [{"kind", "status", "bytes", "done", "error", "elapsed_s"}, ...]}``.
"""

import argparse
import http.client
import json
import sys
import threading
import time

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, default=8000)
ap.add_argument("--key", default="sk-quiet-demo")
ap.add_argument("--model", default="demo")
ap.add_argument("--streams", type=int, default=20)
ap.add_argument("--max-tokens", type=int, default=60)
ap.add_argument("--trickle-s", type=float, default=0.0)
ap.add_argument("--trickle-every", type=float, default=0.1)
ap.add_argument("--trickle-tokens", type=int, default=4)
ap.add_argument("--timeout", type=float, default=60.0)
args = ap.parse_args()

results: list[dict] = []
lock = threading.Lock()
headers_in = threading.Semaphore(0)


def one(kind: str, max_tokens: int) -> None:
    t0 = time.monotonic()
    res = {"kind": kind, "status": 0, "bytes": 0, "done": False, "error": ""}
    body = json.dumps({"model": args.model, "stream": True, "max_tokens": max_tokens,
                       "messages": [{"role": "user", "content": f"systemd tier {kind}"}]})
    try:
        conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=args.timeout)
        conn.request("POST", "/v1/chat/completions", body=body, headers={
            "Authorization": f"Bearer {args.key}", "Content-Type": "application/json"})
        resp = conn.getresponse()
        res["status"] = resp.status
        if kind == "stream":
            headers_in.release()
        data = b""
        while True:
            chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(65536)
            if not chunk:
                break
            data += chunk
        res["bytes"] = len(data)
        res["done"] = b"data: [DONE]" in data
        if b'"error"' in data:
            res["error"] = data[-300:].decode(errors="replace")
        conn.close()
    except Exception as exc:  # noqa: BLE001 - every failure is a result
        res["error"] = f"{type(exc).__name__}: {exc}"
        if kind == "stream" and res["status"] == 0:
            headers_in.release()
    res["elapsed_s"] = round(time.monotonic() - t0, 3)
    with lock:
        results.append(res)


threads = [threading.Thread(target=one, args=("stream", args.max_tokens))
           for _ in range(args.streams)]
for t in threads:
    t.start()
for _ in range(args.streams):
    headers_in.acquire(timeout=args.timeout)
print("started", file=sys.stderr, flush=True)
end = time.monotonic() + args.trickle_s
while time.monotonic() < end:
    t = threading.Thread(target=one, args=("new", args.trickle_tokens))
    t.start()
    threads.append(t)
    time.sleep(args.trickle_every)
for t in threads:
    t.join()
print(json.dumps({"results": results}))
