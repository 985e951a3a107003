"""HTTP front of the service: health check and the fal webhook endpoint.

A webhook is answered 2xx only after `EventStore.add` has committed it; any failure to
store answers 503 so that fal delivers it again. Any JSON object is accepted: what does
not look like fal's format (no request_id, a status other than OK/ERROR) is stored as
sent and flagged, never refused, so a change in fal's payload loses nothing. Only a body
that is not a JSON object (400) or too large (413) is refused for its content.

Checks of the deploy, rollout and `diagnose` send the header `X-Aisha-Probe: 1`: such a
delivery goes through the same checks (signature, JSON) and is answered 200 without
being stored. fal never sends that header.

Each request gets one log line (the journal under systemd): the client, the request,
the answer and, for a delivery, its request_id, status and what happened to it
(stored / duplicate / probe / refused) and why. On SIGTERM the server stops
accepting, lets in-flight requests finish, then closes the database. With systemd
socket activation the listening socket outlives the process, so connections made
during a restart wait in its backlog instead of being refused.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
import signal
import socket
import socketserver
import threading
import time
from collections.abc import Mapping, MutableMapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from aisha_webhook_api import SERVICE_NAME, __version__
from aisha_webhook_api.config import ConfigError, Settings
from aisha_webhook_api.store import Event, EventStore, StoreUnavailable, utc_now

log = logging.getLogger(__name__)

HEALTH_PATH = "/health"
WEBHOOK_PATH = "/api/v1/avatar/status_update"
ALLOWED_METHODS = {HEALTH_PATH: ("GET", "HEAD"), WEBHOOK_PATH: ("POST",)}
HEALTHY = {"status": "healthy", "service": SERVICE_NAME}
EVENT_STATUSES = ("OK", "ERROR")
MAX_REQUEST_ID_LENGTH = 256
# fal's deliveries nest a few levels; thousands of levels only serve to exhaust the stack.
MAX_JSON_DEPTH = 64
PROBE_HEADER = "X-Aisha-Probe"
# After answering 413 we read (and drop) up to this much of the refused body, so that
# closing the connection does not reset it before the client has read the answer.
MAX_DISCARDED_BYTES = 8 * 1024 * 1024
SD_LISTEN_FDS_START = 3


class BadRequest(ValueError):
    """The body is not a JSON object (answer 400)."""


def parse_event(body: bytes, *, fal_user_id: str | None) -> Event:
    """Any JSON object becomes an event; what is not as fal sends it is flagged."""
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("body is not valid UTF-8 JSON") from None
    except RecursionError:
        raise BadRequest(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    if not isinstance(document, dict):
        raise BadRequest("body must be a JSON object")
    if _depth(document) > MAX_JSON_DEPTH:
        raise BadRequest(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    flags = [] if fal_user_id else ["unsigned"]
    request_id = document.get("request_id")
    if not _usable_request_id(request_id):
        request_id = f"generated-{uuid.uuid4()}"
        flags.append("request_id_generated")
    status = document.get("status")
    if status not in EVENT_STATUSES:
        flags.append("unknown_status")
    return Event(
        request_id=request_id,
        gateway_request_id=_text_or_none(document.get("gateway_request_id")),
        status=_text_or_none(status),
        payload=_json_or_none(document.get("payload")),
        error=_text_or_none(document.get("error")),
        payload_error=_text_or_none(document.get("payload_error")),
        fal_user_id=fal_user_id,
        raw_body=body,
        received_at=utc_now(),
        flags=tuple(flags),
    )


def _usable_request_id(value) -> bool:
    """A request_id we can deduplicate on and print in a log line as it is."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_REQUEST_ID_LENGTH
        and value.isprintable()
        and not any(c.isspace() for c in value)
    )


def _depth(document) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, pending = 0, [(document, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, depth)
            if depth <= MAX_JSON_DEPTH:
                children = value.values() if isinstance(value, dict) else value
                pending.extend((child, depth + 1) for child in children)
    return deepest


def _json_or_none(value) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _text_or_none(value) -> str | None:
    return value if value is None or isinstance(value, str) else _json_or_none(value)


def _claimed_request_id(header: str | None, body: bytes) -> str:
    """For the log line of a refused delivery: the request_id it claims (header, else body)."""
    if header:
        return _loggable(header)
    try:
        request_id = json.loads(body).get("request_id")
    except (ValueError, RecursionError, AttributeError):
        return "-"
    return request_id if _usable_request_id(request_id) else "-"


def _loggable(value) -> str:
    """A value from the request as one log token: as is if plain, else JSON-quoted, cut short."""
    if isinstance(value, str) and value and value.isprintable() and " " not in value:
        return value[:MAX_REQUEST_ID_LENGTH]
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 80 else text[:77] + "..."


class WebhookApp:
    """What the service does, independent of HTTP plumbing."""

    def __init__(self, settings: Settings, store: EventStore, verifier=None) -> None:
        self.settings = settings
        self.store = store
        self.verifier = verifier  # a signature.SignatureVerifier, or None when disabled

    @classmethod
    def open(cls, settings: Settings) -> WebhookApp:
        store = EventStore(settings.database_path)  # makes the data dir the JWKS cache lives in
        verifier = build_verifier(settings) if settings.verify_signatures else None
        return cls(settings, store, verifier)

    def health(self) -> tuple[int, dict]:
        try:
            self.store.check_ready()
        except StoreUnavailable as exc:
            log.error("health check failed: %s", exc)
            return 503, {"status": "unhealthy", "service": SERVICE_NAME, "reason": str(exc)}
        return 200, HEALTHY

    def receive(self, headers: Mapping[str, str], body: bytes) -> tuple[int, dict, str]:
        """Verify, parse and store one delivery: (HTTP status, JSON reply, log note)."""
        fal_user_id = None
        if self.verifier is not None:
            from aisha_webhook_api.signature import HEADER_REQUEST_ID, InvalidSignature, KeysUnavailable

            try:
                fal_user_id = self.verifier.verify(headers, body)
            except InvalidSignature as exc:
                claimed = _claimed_request_id(headers.get(HEADER_REQUEST_ID), body)
                note = f"refused request_id={claimed} why=invalid signature: {exc}"
                return 401, {"error": "invalid signature"}, note
            except KeysUnavailable as exc:
                # Our trouble, not the sender's: fal retries a 503.
                log.error("cannot verify signatures: %s", exc)
                claimed = _claimed_request_id(headers.get(HEADER_REQUEST_ID), body)
                note = f"refused request_id={claimed} why=signature keys unavailable, fal will retry: {exc}"
                return 503, {"error": "signature keys unavailable"}, note
        try:
            event = parse_event(body, fal_user_id=fal_user_id)
        except BadRequest as exc:
            return 400, {"error": str(exc)}, f"refused why={exc}"
        described = f"request_id={event.request_id} status={_loggable(event.status)}" + (
            f" flags={','.join(event.flags)}" if event.flags else ""
        )
        if headers.get(PROBE_HEADER):
            try:
                self.store.check_ready()
            except StoreUnavailable as exc:
                return 503, {"error": "event store unavailable"}, f"probe {described} why={exc}"
            return 200, {"probe": True, "stored": False, "request_id": event.request_id}, (
                f"probe {described} not stored ({PROBE_HEADER})"
            )
        try:
            stored = self.store.add(event)
        except StoreUnavailable as exc:
            log.error("request_id=%s not stored: %s", event.request_id, exc)
            return 503, {"error": "event store unavailable"}, f"refused {described} why={exc}"
        outcome = "stored" if stored else "duplicate"
        reply = {outcome: True, "request_id": event.request_id}
        if event.flags:
            reply["flags"] = list(event.flags)
        return 200, reply, f"{outcome} {described}"

    def close(self) -> None:
        self.store.close()


def build_verifier(settings: Settings):
    """Signature checking, imported only when enabled (it needs `cryptography`)."""
    from aisha_webhook_api.signature import JwksKeys, KeysUnavailable, SignatureVerifier

    keys = JwksKeys(
        url=settings.jwks_url, file=settings.jwks_file, cache_seconds=settings.jwks_cache_seconds,
        cache_file=settings.jwks_cache_path,
    )
    try:
        keys.get()
    except KeysUnavailable as exc:
        if settings.jwks_file:
            raise ConfigError(f"AISHA_FAL_JWKS_FILE: {exc}") from exc
        # fal's endpoint may be briefly unreachable; webhooks get 503 (and are retried)
        # until the keys load.
        log.warning("%s; will retry on the next webhook", exc)
    return SignatureVerifier(keys)


class RequestHandler(BaseHTTPRequestHandler):
    server_version = f"aisha-webhook-api/{__version__}"
    # One request per connection: nothing idles in keep-alive, so shutdown only waits
    # for requests actually in flight. nginx talks HTTP/1.0 to upstreams by default.
    protocol_version = "HTTP/1.0"
    server: WebhookServer

    def setup(self) -> None:
        self.timeout = self.server.app.settings.request_timeout
        self._started = time.monotonic()
        self._note = ""
        super().setup()

    def dispatch(self) -> None:
        path = urlsplit(self.path).path
        allowed = ALLOWED_METHODS.get(path)
        try:
            if allowed is None:
                self.send_json(404, {"error": "not found"})
            elif self.command not in allowed:
                self.send_json(405, {"error": "method not allowed"}, {"Allow": ", ".join(allowed)})
            elif path == HEALTH_PATH:
                self.send_json(*self.server.app.health())
            else:
                self.handle_webhook()
        except (ConnectionError, TimeoutError) as exc:
            log.warning("%s %s: client connection lost: %s", self.command, self.path, exc)
            self.close_connection = True
        except Exception:
            log.exception("%s %s failed", self.command, self.path)
            self.send_json(500, {"error": "internal error"})

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = dispatch

    def handle_webhook(self) -> None:
        # The Content-Type is not checked: a JSON object is taken whatever it is labelled.
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.refuse(411, "chunked bodies are not supported; send Content-Length")
            return
        declared = self.headers.get("Content-Length")
        if declared is None:
            self.refuse(411, "Content-Length required")
            return
        try:
            length = int(declared)
        except ValueError:
            length = -1
        if length < 0:
            self.refuse(400, "invalid Content-Length")
            return
        limit = self.server.app.settings.max_body_bytes
        if length > limit:
            self._note = f"refused why=body of {length} bytes is larger than {limit}"
            self.send_json(413, {"error": f"body larger than {limit} bytes"})
            self._discard(length)
            return
        body = self.rfile.read(length)
        if len(body) != length:
            raise ConnectionError(f"body ended after {len(body)} of {length} bytes")
        status, reply, self._note = self.server.app.receive(self.headers, body)
        self.send_json(status, reply)

    def refuse(self, status: int, reason: str) -> None:
        self._note = f"refused why={reason}"
        self.send_json(status, {"error": reason})

    def send_json(self, status: int, document: dict, headers: Mapping[str, str] = {}) -> None:
        body = json.dumps(document, separators=(",", ":")).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def _discard(self, length: int) -> None:
        self.close_connection = True
        remaining = min(length, MAX_DISCARDED_BYTES)
        self.connection.settimeout(2.0)
        try:
            while remaining > 0 and (chunk := self.rfile.read1(min(remaining, 65536))):
                remaining -= len(chunk)
        except OSError:
            pass

    def version_string(self) -> str:
        return self.server_version

    def address_string(self) -> str:
        # AF_UNIX peers (a socket unit with ListenStream=/run/...) have no address.
        if isinstance(self.client_address, tuple) and self.client_address:
            return str(self.client_address[0])
        return "unix"

    def log_request(self, code="-", size="-") -> None:
        """The one log line of each request (also for requests http.server rejects itself)."""
        elapsed_ms = (time.monotonic() - getattr(self, "_started", time.monotonic())) * 1000
        headers = getattr(self, "headers", None)
        forwarded = headers.get("X-Real-IP") if headers else None
        client = self.address_string() + (f" for={forwarded}" if forwarded else "")
        status = getattr(code, "value", code)
        note = getattr(self, "_note", "")
        log.info('%s "%s" %s %.1fms%s', client, getattr(self, "requestline", ""), status,
                 elapsed_ms, f" {note}" if note else "")

    def log_message(self, format: str, *args) -> None:
        log.warning("%s %s", self.address_string(), format % args)


class WebhookServer(ThreadingHTTPServer):
    """Serves on an already listening socket (bound here or passed by systemd)."""

    daemon_threads = False  # server_close() waits for requests in flight
    block_on_close = True

    def __init__(self, listener: socket.socket, app: WebhookApp) -> None:
        socketserver.BaseServer.__init__(self, listener.getsockname(), RequestHandler)
        self.socket = listener
        self.address_family = listener.family
        self.app = app


def systemd_listener(environ: MutableMapping[str, str]) -> socket.socket | None:
    """The socket systemd passed us (sd_listen_fds protocol), or None."""
    if "LISTEN_FDS" not in environ or environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    count = environ["LISTEN_FDS"]
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        environ.pop(name, None)  # not for our children
    if count != "1":
        raise ConfigError(f"LISTEN_FDS: the socket unit must pass one socket, got {count!r}")
    listener = socket.socket(fileno=SD_LISTEN_FDS_START)
    listener.set_inheritable(False)
    if listener.type != socket.SOCK_STREAM or not listener.getsockopt(
        socket.SOL_SOCKET, socket.SO_ACCEPTCONN
    ):
        raise ConfigError("LISTEN_FDS: fd 3 is not a listening stream socket "
                          "(the socket unit needs ListenStream= and Accept=no)")
    return listener


def bound_listener(settings: Settings) -> socket.socket:
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    return socket.create_server((settings.host, settings.port), family=family, backlog=128)


def describe(address) -> str:
    if isinstance(address, tuple):
        host, port = address[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(address) or "unnamed unix socket"


def sd_notify(state: str) -> None:
    """Tell systemd our state when run as Type=notify; a no-op otherwise."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.connect(address)
            notify.sendall(state.encode())
    except OSError as exc:
        log.warning("sd_notify(%s) failed: %s", state, exc)


STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def serve(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT, then stop gracefully; the process's main loop."""
    # Block the stop signals before any thread exists, so every thread inherits the
    # mask and only the waiter below receives them. (A Python signal handler may never
    # run while the main thread blocks and the kernel picks another thread.)
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    listener = systemd_listener(os.environ)
    activation = "socket-activated" if listener else "bound"
    app = WebhookApp.open(settings)
    listener = listener or bound_listener(settings)
    server = WebhookServer(listener, app)

    def stop_on_signal() -> None:
        signum = signal.sigwait(STOP_SIGNALS)
        log.info("received %s, shutting down", signal.Signals(signum).name)
        sd_notify("STOPPING=1")
        server.shutdown()  # serve_forever returns; new connections wait in a systemd socket

    threading.Thread(target=stop_on_signal, name="stop-signal", daemon=True).start()
    log.info("listening on %s (%s), events in %s, signature verification %s",
             describe(server.server_address), activation, settings.database_path,
             "on" if app.verifier else "off")
    sd_notify("READY=1")
    server.serve_forever()
    server.server_close()  # close our listening fd, wait for requests in flight
    app.close()
    log.info("stopped")
    return 0
