"""The host's firewall, from `ufw status verbose`: is it on, and does its first
matching rule let fal (and SSH, HTTP) in?"""

from __future__ import annotations

import re
import shlex

from aisha_infra.checks.findings import Finding
from aisha_infra.tools.diagnose.remote import last_line


def ufw_finding(rc: int, out: str, err: str, https_port: int) -> Finding:
    """Is the firewall on, and does it let fal (and SSH, HTTP) in?"""
    if rc != 0:
        if rc == 127 or "not found" in err:
            return Finding(
                "ufw",
                "warn",
                "ufw is not installed: the host has no firewall of ours.",
                "Re-run the deploy (firewall_enabled = True installs and enables it).",
            )
        return Finding("ufw", "warn", f"`ufw status verbose` failed: {last_line(err)}.", "Run it on the host to see why.")
    if not re.search(r"^Status:\s*active", out, re.MULTILINE):
        return Finding(
            "ufw",
            "warn",
            "ufw is inactive: every listening port is open to the world.",
            "Re-run the deploy (firewall_enabled = True), or `ufw allow 22/tcp && ufw allow 80/tcp && "
            f"ufw allow {https_port}/tcp && ufw --force enable`.",
        )
    decisions = ufw_port_decisions(out)
    allowed = ufw_allowed_ports(out)
    action, rule = decisions.get(https_port, (None, None))
    if action in ("DENY", "REJECT"):
        return Finding(
            "ufw",
            "error",
            f"ufw is active and its first rule for {https_port}/tcp is `{rule}`: ufw applies the first "
            "matching rule, so fal's requests are dropped even if an allow follows.",
            f"`ufw delete {_ufw_rule_command(rule)}` (or find its number with `ufw status numbered` and "
            f"`ufw delete NUMBER`), then check with `ufw status verbose`.",
        )
    if https_port not in allowed:
        return Finding(
            "ufw",
            "error",
            f"ufw is active but does not allow {https_port}/tcp from anywhere: fal's requests are dropped.",
            f"`ufw allow {https_port}/tcp` (fal's source addresses are not fixed, so allow all).",
        )
    missing = [str(p) for p in (22, 80) if p not in allowed]
    if missing:
        return Finding(
            "ufw",
            "warn",
            f"ufw allows {https_port}/tcp but not {', '.join(missing)}/tcp (SSH for deploys, 80 for "
            "Let's Encrypt).",
            " && ".join(f"ufw allow {p}/tcp" for p in missing),
        )
    return Finding("ufw", "ok", f"ufw is active and allows 22, 80 and {https_port}/tcp.")


_UFW_APPS = {"openssh": {22}, "nginx http": {80}, "nginx https": {443}, "nginx full": {80, 443}}
_UFW_RULE = re.compile(r"^(?P<to>.+?)\s{2,}(?P<action>ALLOW|LIMIT|DENY|REJECT)(?: IN)?\s{2,}(?P<from>.+?)\s*$")


def ufw_port_decisions(status: str) -> dict[int, tuple[str, str]]:
    """{TCP port: (action, rule line)} of the first rule from anywhere that matches
    each port in `ufw status verbose`: ufw applies the first match, in order."""
    decisions: dict[int, tuple[str, str]] = {}
    for line in status.splitlines():
        match = _UFW_RULE.match(line.strip())
        if not match or not match.group("from").startswith("Anywhere"):
            continue
        for port in _ufw_rule_ports(match.group("to")):
            decisions.setdefault(port, (match.group("action"), line.strip()))
    return decisions


def ufw_allowed_ports(status: str) -> set[int]:
    """TCP ports `ufw status verbose` lets in from anywhere."""
    return {port for port, (action, _) in ufw_port_decisions(status).items() if action in ("ALLOW", "LIMIT")}


def _ufw_rule_ports(to: str) -> set[int]:
    to = to.replace("(v6)", "").split(" on ")[0].strip()
    if to.lower() in _UFW_APPS:
        return set(_UFW_APPS[to.lower()])
    spec, _, proto = to.partition("/")
    if proto not in ("", "tcp"):
        return set()
    ports: set[int] = set()
    for part in spec.split(","):
        low, _, high = part.partition(":")
        if low.isdigit() and (not high or high.isdigit()):
            ports.update(range(int(low), int(high or low) + 1))
    return ports


def _ufw_rule_command(rule: str) -> str:
    """`8443/tcp  DENY IN  Anywhere` -> `deny 8443/tcp`, as `ufw delete` takes it."""
    match = _UFW_RULE.match(rule)
    to = match.group("to").replace("(v6)", "").strip()
    return f"{match.group('action').lower()} {to if to.lower() not in _UFW_APPS else shlex.quote(to)}"


