"""A tiny HTTPS server on 127.0.0.1 (ephemeral port) that serves a given chain file
exactly as written, and answers like the webhook API: GET /health and POST
/api/v1/avatar/status_update. Use as a context manager: it always stops."""

from __future__ import annotations

import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HEALTHY = {"status": "healthy", "service": "Aisha Bot FAL Webhook API"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like nginx
    timeout = 5  # a client that stalls cannot hold a thread for long
    server: _TLSServer

    def do_GET(self):
        if self.path == "/health":
            self._reply(self.server.health_status, self.server.health_body)
        else:
            self._reply(404, {"error": "not found"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"null")
        self.server.posted.append({"headers": dict(self.headers), "body": body})
        if self.path != "/api/v1/avatar/status_update":
            self._reply(404, {"error": "not found"})
        elif self.headers.get("Content-Type") != "application/json":
            self._reply(415, {"error": "Content-Type must be application/json"})
        else:
            self._reply(200, {"stored": True, "request_id": body["request_id"]})

    def _reply(self, status, document):
        data = json.dumps(document, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):  # keep test output clean
        pass


class _TLSServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, context: ssl.SSLContext):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.context = context
        self.health_status = 200
        self.health_body = HEALTHY
        self.posted: list[dict] = []
        self.connections = 0

    def get_request(self):
        sock, address = super().get_request()
        self.connections += 1
        # The handshake happens in the handler's thread, on first read.
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def handle_error(self, request, client_address):
        pass  # clients that reject our certificate abort handshakes: expected here


class LocalTLSServer:
    """`with LocalTLSServer(chain_path, key_path) as server:` then server.port."""

    def __init__(self, chain_file: Path, key_file: Path):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(chain_file), str(key_file))
        self._server = _TLSServer(context)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def connections(self) -> int:
        """TCP connections accepted so far."""
        return self._server.connections

    @property
    def posted(self) -> list[dict]:
        return self._server.posted

    def set_health(self, status: int, body) -> None:
        self._server.health_status, self._server.health_body = status, body

    def __enter__(self) -> LocalTLSServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
