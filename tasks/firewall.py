from pyinfra.api import deploy
from pyinfra.operations import systemd

from aisha_infra.operations import ufw
from aisha_infra.settings import Settings


@deploy("Firewall")
def configure_firewall(settings: Settings):
    ssh_rule = f"allow {settings.ssh_port}/tcp"
    # SSH first: rules are added before anything is removed or enabled, so the
    # connection pyinfra runs over is never cut.
    ufw.allow_only(
        name=f"Allow only SSH ({settings.ssh_port}), HTTP ({settings.nginx_http_port}) and HTTPS ({settings.nginx_https_port})",
        rules=[ssh_rule, f"allow {settings.nginx_http_port}/tcp", f"allow {settings.nginx_https_port}/tcp"],
        protect=ssh_rule,
    )
    ufw.default_policy(name="Deny incoming by default", direction="incoming", policy="deny")
    ufw.default_policy(name="Allow outgoing by default", direction="outgoing", policy="allow")
    ufw.enabled(name="Enable ufw (now and at boot)", enabled=True)
    # ufw.service loads the rules at boot; keep it enabled and marked active.
    systemd.service(name="Load ufw at boot (ufw.service)", service="ufw.service", running=True, enabled=True)
