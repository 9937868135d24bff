"""/healthz, /readyz and /metrics for the threaded services, on the port named ``metrics``."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


def serve(address: str, port: int, ready: Callable[[], tuple[bool, str]]) -> ThreadingHTTPServer:
    """Start the endpoints in a daemon thread; ``ready`` says whether the service can do its work, and why not."""

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._send(200, b'{"status":"ok"}', "application/json")
            elif path == "/readyz":
                ok, why = ready()
                body = json.dumps({"status": "ready" if ok else "not_ready", "detail": why}).encode()
                self._send(200 if ok else 503, body, "application/json")
            elif path == "/metrics":
                self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
            else:
                self._send(404, b'{"error":"not_found"}', "application/json")

        def log_message(self, format: str, *args: object) -> None:  # quiet: probes would flood the log
            return

    server = ThreadingHTTPServer((address, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="endpoints", daemon=True).start()
    return server
