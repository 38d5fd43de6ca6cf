"""A fault-injecting HTTP proxy on 127.0.0.1 in front of a real S3 server, for retry tests.

Each request is forwarded unchanged (its SigV4 signature covers the Host header the client sent,
which the server sees as is) unless `fault(method, path)` names a fault for it:
  reset     the connection is reset (RST) before any reply
  503       a ServiceUnavailable error reply, nothing forwarded
  stall     nothing is sent for `stall_s` seconds, then the connection is closed
  truncate  the real reply's headers and half its body, then the connection is closed
Every request gets at most one fault and a retry is a new request, so a bounded number of faults
only delays a client that retries.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
UNAVAILABLE = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code>'
               b"<Message>injected by the test proxy</Message></Error>")


class FaultProxy:
    def __init__(self, upstream: str, fault: Callable[[str, str], str | None] = lambda m, p: None, stall_s: float = 3.0):
        self.upstream = urlsplit(upstream)
        self.fault = fault
        self.stall_s = stall_s
        self.injected: dict[str, int] = {}
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def handle_one_request(self):
                try:
                    super().handle_one_request()
                except (ConnectionError, TimeoutError):
                    self.close_connection = True

            def _any(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                kind = proxy.fault(self.command, self.path)
                if kind:
                    with proxy._lock:
                        proxy.injected[kind] = proxy.injected.get(kind, 0) + 1
                if kind == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return
                if kind == "stall":
                    time.sleep(proxy.stall_s)
                    self.close_connection = True
                    return
                if kind == "503":
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(UNAVAILABLE)))
                    self.end_headers()
                    self.wfile.write(UNAVAILABLE)
                    return
                up = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    up.request(self.command, self.path, body=body or None, headers=headers)
                    resp = up.getresponse()
                    data = resp.read()
                finally:
                    up.close()
                self.send_response_only(resp.status, resp.reason)  # the server's own Date and Server follow
                for k, v in resp.getheaders():
                    if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                # A HEAD reply carries the object's length and no body.
                self.send_header("Content-Length", resp.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                if kind == "truncate" and data:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def every_nth(n: int, kinds: list[str], match: Callable[[str, str], bool] = lambda m, p: True):
    """A fault schedule: every n-th matching request gets the next kind of `kinds`, in turn."""
    state = {"seen": 0, "next": 0}
    lock = threading.Lock()

    def fault(method: str, path: str) -> str | None:
        if not match(method, path):
            return None
        with lock:
            state["seen"] += 1
            if state["seen"] % n:
                return None
            state["next"] += 1
            return kinds[(state["next"] - 1) % len(kinds)]

    return fault
