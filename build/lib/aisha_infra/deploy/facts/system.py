"""What a host runs, read without changing anything: sshd's ports, nginx's version,
and whether the system is one this deploy supports."""

from __future__ import annotations

import re

from pyinfra.api import FactBase

SUPPORTED_DEBIAN = {12: "bookworm", 13: "trixie"}


def unsupported_system(distribution: dict | None) -> str | None:
    """Why a host's system (pyinfra's LinuxDistribution fact) is not supported, or None."""
    distribution = distribution or {}
    name, major = distribution.get("name"), distribution.get("major")
    if name == "Debian" and major in SUPPORTED_DEBIAN:
        return None
    meta = distribution.get("release_meta") or {}
    found = meta.get("PRETTY_NAME") or " ".join(str(part) for part in (name, major) if part) or "an unknown system"
    supported = " and ".join(f"Debian {major} ({codename})" for major, codename in SUPPORTED_DEBIAN.items())
    return f"runs {found}; this deploy supports {supported} only"


class SshdPorts(FactBase):
    """
    The TCP ports sshd listens on, from its effective configuration (`sshd -T`) and
    its listening sockets (`ss`), sorted; None when neither could be read.
    """

    # sshd -T needs root (it loads the host keys), as does ss's process column.
    def command(self) -> str:
        return (
            "{ sshd -T 2>/dev/null || /usr/sbin/sshd -T 2>/dev/null; } | grep -Ei '^(port|listenaddress) ' || true; "
            "ss -Hltnp 2>/dev/null | grep -F '\"sshd' || true"
        )

    def process(self, output):
        ports = set()
        for line in output:
            fields = line.split()
            if len(fields) >= 2 and fields[0].lower() == "port" and fields[1].isdigit():
                ports.add(int(fields[1]))
            elif len(fields) >= 2 and fields[0].lower() == "listenaddress":
                port = fields[1].rsplit(":", 1)[-1]
                if port.isdigit():
                    ports.add(int(port))
            elif len(fields) >= 4 and "sshd" in line:  # ss: State Recv-Q Send-Q Local:Port Peer users:...
                port = fields[3].rsplit(":", 1)[-1]
                if port.isdigit():
                    ports.add(int(port))
        return sorted(ports) or None


_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")


class NginxVersion(FactBase):
    """
    nginx's version as (major, minor, patch): the installed nginx's, else the version apt
    would install (a fresh host has no nginx yet); None when neither is known.
    """

    def command(self) -> str:
        return (
            "if command -v nginx >/dev/null 2>&1; then nginx -v 2>&1; "
            "else apt-cache policy nginx 2>/dev/null | grep -F 'Candidate:' || true; fi"
        )

    def process(self, output):
        for line in output:
            if "nginx/" in line or "Candidate:" in line:
                match = _VERSION.search(line)
                if match:
                    return tuple(int(part) for part in match.groups())
        return None


def wants_http2_directive(version: tuple[int, int, int] | None) -> bool:
    """nginx 1.25.1 introduced `http2 on;` and deprecated `listen ... http2`."""
    return version is not None and version >= (1, 25, 1)
