"""Pebble (Let's Encrypt's test ACME server) and its mock DNS, run for one lab host.

Pebble listens on the host-side address of the lab host's veth, under the name
pebble.test (a hosts entry inside the lab host), with an HTTPS certificate from a
CA made here. pebble-challtestsrv answers Pebble's DNS queries with the lab host's
address, so HTTP-01 validation reaches the host's real nginx on port 80.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.unit.certfactory import make_leaf, make_root, write_pem

ACME_NAME = "pebble.test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_https_identity(directory: Path, address: str) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for Pebble's own HTTPS (name pebble.test + address)."""
    ca = make_root("aisha-infra test ACME CA")
    server = make_leaf(ca, [ACME_NAME, address])
    ca_path = write_pem(directory / "acme-ca.pem", ca.pem)
    cert_path = write_pem(directory / "pebble.pem", server.pem)
    key_path = write_pem(directory / "pebble.key", server.key_pem)
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


@dataclass
class Pebble:
    """One Pebble + challtestsrv pair serving one lab host (`target`), from `listen`."""

    workdir: Path
    listen: str   # host-side veth address, reachable from the lab host
    target: str   # the lab host's address: what the mock DNS answers
    processes: list = field(default_factory=list)

    def __post_init__(self):
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.acme_ca, self.cert, self.key = _write_https_identity(self.workdir, self.listen)
        self.port = 14000
        self.management_port = _free_port()
        self.dns_port = _free_port()
        self.challtest_management_port = _free_port()

    @property
    def directory_url(self) -> str:
        return f"https://{ACME_NAME}:{self.port}/dir"

    def start(self) -> "Pebble":
        config = self.workdir / "pebble-config.json"
        config.write_text(json.dumps({"pebble": {
            "listenAddress": f"{self.listen}:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(self.cert), "privateKey": str(self.key),
            "httpPort": 80, "tlsPort": 443, "ocspResponderURL": "", "externalAccountBindingRequired": False,
        }}))
        self._spawn("challtestsrv", ["pebble-challtestsrv", "-defaultIPv4", self.target, "-defaultIPv6", "",
                                     "-dns01", f"127.0.0.1:{self.dns_port}",
                                     "-management", f"127.0.0.1:{self.challtest_management_port}",
                                     "-http01", "", "-https01", "", "-tlsalpn01", ""])
        self._spawn("pebble", ["pebble", "-config", str(config), "-dnsserver", f"127.0.0.1:{self.dns_port}"],
                    env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"})
        self._wait_for_port(self.listen, self.port)
        self._wait_for_port("127.0.0.1", self.management_port)
        return self

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
        self.processes.clear()

    def root_pem(self) -> str:
        """The root Pebble signs with (new at every start): what clients must trust."""
        context = ssl.create_default_context(cafile=str(self.acme_ca))
        context.check_hostname = False  # management API is on 127.0.0.1, its cert names pebble.test
        url = f"https://127.0.0.1:{self.management_port}/roots/0"
        with urllib.request.urlopen(url, context=context, timeout=10) as answer:
            return answer.read().decode()

    def _spawn(self, name: str, command: list[str], env: dict | None = None) -> None:
        log = open(self.workdir / f"{name}.log", "ab")
        self.processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                                               start_new_session=True))

    def _wait_for_port(self, address: str, port: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.processes):
                logs = "\n".join(p.read_text()[-2000:] for p in self.workdir.glob("*.log"))
                raise RuntimeError(f"Pebble exited early:\n{logs}")
            try:
                with socket.create_connection((address, port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"Pebble did not listen on {address}:{port} within {timeout} s")
