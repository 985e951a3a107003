"""The reference webhook API as systemd runs it: a process, socket activation, SIGTERM."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BACKEND_DIR = Path(__file__).resolve().parents[2] / "backend"
WEBHOOK = "/api/v1/avatar/status_update"

# Plays systemd's part of socket activation: the socket on fd 3, LISTEN_FDS=1 and
# LISTEN_PID set to the pid of the service (exec keeps the pid).
ACTIVATE = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
os.execv(sys.executable, [sys.executable, "-m", "aisha_webhook_api", "serve"])
"""


class Service:
    """`python -m aisha_webhook_api serve` in a child process, logging to a file."""

    def __init__(self, tmp_path: Path, listener: socket.socket | None = None, **env: str) -> None:
        self.data_dir = tmp_path / "data"
        self.log_path = tmp_path / f"service-{time.monotonic_ns()}.log"
        environ = {
            key: value for key, value in os.environ.items()
            if not key.startswith(("AISHA_", "LISTEN_", "NOTIFY_SOCKET", "JOURNAL_STREAM"))
        }
        environ.update(AISHA_DATA_DIR=str(self.data_dir), AISHA_API_PORT="0", **env)
        if listener is None:
            command, pass_fds = [sys.executable, "-m", "aisha_webhook_api", "serve"], ()
        else:
            command = [sys.executable, "-c", ACTIVATE, str(listener.fileno())]
            pass_fds = (listener.fileno(),)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                command, cwd=BACKEND_DIR, env=environ, stdout=subprocess.DEVNULL, stderr=log,
                pass_fds=pass_fds,
            )
        self.port = self._wait_until_listening()

    def log(self) -> str:
        return self.log_path.read_text()

    def _wait_until_listening(self) -> int:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            found = re.search(r"listening on 127\.0\.0\.1:(\d+)", self.log())
            if found:
                return int(found.group(1))
            if self.proc.poll() is not None:
                raise AssertionError(f"service exited {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.02)
        self.proc.kill()
        raise AssertionError(f"service did not start:\n{self.log()}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=10)

    def stored_ids(self) -> list[str]:
        with sqlite3.connect(self.data_dir / "events.sqlite3") as db:
            return [row[0] for row in db.execute("SELECT request_id FROM events")]


def post(port: int, request_id: str) -> tuple[int, dict]:
    body = json.dumps({"request_id": request_id, "status": "OK", "payload": {}}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", WEBHOOK, body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_socket_activation_serves_and_restarts_without_refusing(tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    first = Service(tmp_path, listener)
    try:
        assert first.port == port and "socket-activated" in first.log()
        assert post(port, "before-restart")[1] == {
            "stored": True, "request_id": "before-restart", "flags": ["unsigned"]}
    finally:
        assert first.stop() == 0

    # No service runs now: a delivery waits in the socket's backlog instead of being refused.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(post, port, "during-restart")
        time.sleep(0.3)
        assert not pending.done()
        second = Service(tmp_path, listener)
        try:
            status, reply = pending.result(timeout=10)
            assert (status, reply["request_id"]) == (200, "during-restart")
        finally:
            assert second.stop() == 0
    listener.close()
    assert sorted(second.stored_ids()) == ["before-restart", "during-restart"]


def test_sigterm_under_load_loses_no_acknowledged_event(tmp_path):
    service = Service(tmp_path)
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(number: int) -> None:
        sequence = 0
        while not stop.is_set():
            request_id = f"client{number}-{sequence}"
            sequence += 1
            try:
                status, _ = post(service.port, request_id)
            except (OSError, http.client.HTTPException):
                time.sleep(0.01)  # refused or cut off: not acknowledged, fal would retry
                continue
            if 200 <= status < 300:
                with lock:
                    acknowledged.append(request_id)

    clients = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in clients:
        thread.start()
    try:
        time.sleep(0.5)
        assert service.stop() == 0
    finally:
        stop.set()
        for thread in clients:
            thread.join()

    stored = service.stored_ids()
    assert len(acknowledged) > 20, "the load did not reach the server"
    assert set(acknowledged) <= set(stored)
    assert len(stored) == len(set(stored))
    assert "received SIGTERM" in service.log() and "stopped" in service.log()


def test_request_in_flight_at_sigterm_is_finished(tmp_path):
    service = Service(tmp_path)
    body = b'{"request_id": "in-flight", "status": "OK", "payload": null}'
    head = (f"POST {WEBHOOK} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as conn:
        conn.sendall(head + body[:10])
        time.sleep(0.3)  # accepted; the handler now waits for the rest of the body
        service.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert service.proc.poll() is None, "exited with a request in flight"
        conn.sendall(body[10:])
        response = b""
        while chunk := conn.recv(65536):
            response += chunk
    assert response.startswith(b"HTTP/1.0 200 ")
    assert response.endswith(b'{"stored":true,"request_id":"in-flight","flags":["unsigned"]}')
    assert service.proc.wait(timeout=10) == 0
    assert service.stored_ids() == ["in-flight"]


def test_invalid_setting_stops_startup_naming_the_key(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "aisha_webhook_api"], cwd=BACKEND_DIR,
        env={**os.environ, "AISHA_DATA_DIR": str(tmp_path), "AISHA_API_PORT": "eighty"},
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert "AISHA_API_PORT: must be an integer, got 'eighty'" in result.stderr


def test_readiness_and_stopping_are_reported_to_systemd(tmp_path):
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(10)
        service = Service(tmp_path, NOTIFY_SOCKET=str(notify_path))
        assert notify.recv(256) == b"READY=1"
        assert service.stop() == 0
        assert notify.recv(256) == b"STOPPING=1"


def test_socket_activation_on_a_unix_socket(tmp_path):
    path = str(tmp_path / "api.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    log_path = tmp_path / "unix.log"
    environ = {key: value for key, value in os.environ.items() if not key.startswith("LISTEN_")}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", ACTIVATE, str(listener.fileno())], cwd=BACKEND_DIR,
            env={**environ, "AISHA_DATA_DIR": str(tmp_path / "data")},
            stderr=log, pass_fds=(listener.fileno(),),
        )
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(10)
            conn.connect(path)
            conn.sendall(b"GET /health HTTP/1.0\r\n\r\n")
            response = b""
            while chunk := conn.recv(65536):
                response += chunk
        assert response.startswith(b"HTTP/1.0 200 ")
        assert response.endswith(b'{"status":"healthy","service":"Aisha Bot FAL Webhook API"}')
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        listener.close()
    assert f"listening on {path} (socket-activated)" in log_path.read_text()
    assert 'unix "GET /health HTTP/1.0" 200' in log_path.read_text()
