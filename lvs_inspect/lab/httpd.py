"""The real servers' web server: ``python -m lvs_inspect.lab.httpd ADDR PORT NAME [--size BYTES]``.

A threaded HTTP/1.0 server (one connection per request, as the lab's client makes them):
GET answers ``SIZE`` bytes of text starting with ``hello from NAME``; POST reads the body and
answers how many bytes it got. Prints ``ready`` on stdout once listening, runs until SIGTERM.
The server name is set rather than looked up (``HTTPServer.server_bind`` would call
``socket.getfqdn``, a reverse DNS query that would leave the real server before the capture).
"""
from __future__ import annotations

import argparse
import http.server
import signal
import socketserver
import sys


def body_for(name: str, size: int) -> bytes:
    head = f"hello from {name}\n".encode()
    if size <= len(head):
        return head
    line = f"{name} filler line to make the answer a few kilobytes long\n".encode()
    fill = (line * (size // len(line) + 1))[: size - len(head)]
    return head + fill


def make_server(addr: str, port: int, name: str, size: int) -> http.server.ThreadingHTTPServer:
    payload = body_for(name, size)

    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = f"lvs-lab/{name}"
        sys_version = ""
        protocol_version = "HTTP/1.0"

        def _send(self, code: int, data: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._send(200, payload)

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            got = 0
            while got < n:
                chunk = self.rfile.read(min(65536, n - got))
                if not chunk:
                    break
                got += len(chunk)
            self._send(200, f"hello from {name}: got {got} bytes\n".encode())

        def log_message(self, fmt, *args):
            sys.stderr.write(f"{self.client_address[0]}:{self.client_address[1]} {fmt % args}\n")

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

        def server_bind(self):
            socketserver.TCPServer.server_bind(self)
            self.server_name, self.server_port = name, port

    return Server((addr, port), Handler)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lvs_inspect.lab.httpd")
    ap.add_argument("addr")
    ap.add_argument("port", type=int)
    ap.add_argument("name")
    ap.add_argument("--size", type=int, default=2000, help="bytes in a GET answer (default 2000)")
    a = ap.parse_args(argv)
    server = make_server(a.addr, a.port, a.name, a.size)

    def stop(_sig, _frame):
        raise SystemExit(0)
    signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except (SystemExit, KeyboardInterrupt):
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
