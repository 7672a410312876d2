"""The lab's client: ``python -m lvs_inspect.lab.client HOST PORT -n N [--post BYTES]``.

N sequential HTTP/1.0 requests, one TCP connection each, made by the kernel's TCP stack of the
namespace it runs in. Prints one JSON object per request
(``{"i", "ok", "status", "server", "bytes", "error", "ms"}``) and a summary line
``{"summary": {...}}``. A request that fails (refused, reset, timed out) is recorded, not fatal:
the faults are meant to make some of them fail.
"""
from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import time


def one_request(host: str, port: int, *, timeout: float, post: int) -> dict:
    t0 = time.monotonic()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    out = {"ok": False, "status": None, "server": None, "bytes": 0, "error": None}
    try:
        if post:
            body = (b"lvs-lab upload " * (post // 15 + 1))[:post]
            conn.request("POST", "/upload", body=body, headers={"Connection": "close"})
        else:
            conn.request("GET", "/hello.txt", headers={"Connection": "close"})
        r = conn.getresponse()
        data = r.read()
        out.update(ok=200 <= r.status < 300, status=r.status, bytes=len(data))
        first = data.split(b"\n", 1)[0].decode(errors="replace")
        if first.startswith("hello from "):
            out["server"] = first[len("hello from "):].split(":")[0]
    except (OSError, http.client.HTTPException) as e:
        if isinstance(e, socket.timeout):
            out["error"] = "timed out"
        elif isinstance(e, ConnectionRefusedError):
            out["error"] = "connection refused"
        elif isinstance(e, ConnectionResetError):
            out["error"] = "connection reset"
        else:
            out["error"] = f"{type(e).__name__}: {e}"
    finally:
        conn.close()
    out["ms"] = round((time.monotonic() - t0) * 1000, 1)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lvs_inspect.lab.client")
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("-n", "--requests", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=2.0, help="per request, seconds (default 2)")
    ap.add_argument("--post", type=int, default=0, metavar="BYTES", help="upload BYTES with POST instead of GET")
    ap.add_argument("--pause", type=float, default=0.05, help="seconds between requests")
    a = ap.parse_args(argv)
    ok = failed = 0
    servers: dict[str, int] = {}
    errors: dict[str, int] = {}
    for i in range(a.requests):
        r = one_request(a.host, a.port, timeout=a.timeout, post=a.post)
        r["i"] = i + 1
        print(json.dumps(r), flush=True)
        if r["ok"]:
            ok += 1
            servers[r["server"] or "?"] = servers.get(r["server"] or "?", 0) + 1
        else:
            failed += 1
            key = r["error"] or f"HTTP {r['status']}"
            errors[key] = errors.get(key, 0) + 1
        if a.pause:
            time.sleep(a.pause)
    print(json.dumps({"summary": {"requests": a.requests, "ok": ok, "failed": failed,
                                  "servers": servers, "errors": errors}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
