from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.operations import systemd

from aisha_infra.deploy.config import host_settings
from aisha_infra.deploy.facts.system import SshdPorts
from aisha_infra.deploy.operations import ufw
from aisha_infra.deploy.settings import DEFAULTS, Settings
from aisha_infra.tasks.watch import metrics_firewall_rules


def connected_ssh_port() -> int | None:
    """The port pyinfra's SSH connection really uses (it may come from ~/.ssh/config)."""
    client = getattr(host.connector, "client", None)
    transport = client.get_transport() if client else None
    try:
        return transport.getpeername()[1] if transport else None
    except OSError:  # not a socket (a ProxyCommand): the inventory's port, if any
        return host.data.get("ssh_port")


def ssh_rules(settings: Settings, sshd_ports: list[int] | None, connected_port: int | None) -> list[str]:
    """Rules that keep SSH reachable: the ssh_port setting, every port sshd listens on and
    the port this run is connected on. An admin's own `limit PORT/tcp` rule (in
    firewall_extra_rules) keeps a port open in place of `allow` (ufw keeps one of the two).

    Raises PyinfraError, before anything is changed, when sshd's ports cannot be read or an
    extra rule would close one of them."""
    if not sshd_ports:
        raise PyinfraError(
            f"{host.name}: cannot tell which ports sshd listens on (`sshd -T` and `ss -ltnp` gave nothing), "
            "so the firewall is left as it is and nothing was changed. Make sure the deploy runs as root "
            "(or with _sudo) and that sshd and iproute2 are installed, or set firewall_enabled=False."
        )
    ports = sorted({settings.ssh_port, *sshd_ports, *([connected_port] if connected_port else [])})
    extra = set(settings.firewall_extra_rules)
    for port in ports:
        for closing in (f"deny {port}/tcp", f"reject {port}/tcp", f"deny {port}", f"reject {port}"):
            if closing in extra:
                raise PyinfraError(
                    f"{host.name}: firewall_extra_rules has {closing!r}, which would cut SSH (port {port}); "
                    "nothing was changed. Remove the rule, or move sshd to another port first."
                )
    return [f"allow {port}/tcp" for port in ports if not {f"limit {port}/tcp", f"limit {port}"} & extra]


@deploy("Firewall", data_defaults=DEFAULTS)
def configure_firewall():
    settings = host_settings()
    # Read while preparing, so a refusal comes before any host is changed.
    keep_ssh = ssh_rules(settings, host.get_fact(SshdPorts), connected_ssh_port())
    web = [f"allow {settings.nginx_http_port}/tcp", f"allow {settings.nginx_https_port}/tcp"]
    # SSH first: rules are added before anything is removed or enabled, so the
    # connection pyinfra runs over is never cut.
    ssh_ports = ", ".join(rule.split()[1].removesuffix("/tcp") for rule in keep_ssh) or "your limit rule"
    ufw.allow_only(
        name=(f"Allow only SSH ({ssh_ports}), HTTP ({settings.nginx_http_port}) and HTTPS ({settings.nginx_https_port})"
              + (", plus firewall_extra_rules" if settings.firewall_extra_rules else "")),
        rules=[*keep_ssh, *web, *settings.firewall_extra_rules, *metrics_firewall_rules(settings)],
        protect=keep_ssh,
    )
    ufw.default_policy(name="Deny incoming by default", direction="incoming", policy="deny")
    ufw.default_policy(name="Allow outgoing by default", direction="outgoing", policy="allow")
    ufw.enabled(name="Enable ufw (now and at boot)", enabled=True)
    # ufw.service loads the rules at boot; keep it enabled and marked active.
    systemd.service(name="Load ufw at boot (ufw.service)", service="ufw.service", running=True, enabled=True)
