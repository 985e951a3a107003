"""What ufw is doing on a host, read without changing anything."""

from __future__ import annotations

from pyinfra.api import FactBase

# The config files give the state and default policies; `ufw show added` lists the
# user rules even while ufw is inactive, which `ufw status` does not. It is a Python
# program (~0.15 s a call), so operations that need no rules skip it.
_SETTINGS_COMMAND = "grep -h '^ENABLED=' /etc/ufw/ufw.conf; grep -h '^DEFAULT_[A-Z]*_POLICY=' /etc/default/ufw || true"
_RULES_COMMAND = "ufw show added"

_POLICY_NAMES = {"ACCEPT": "allow", "DROP": "deny", "REJECT": "reject"}
_DIRECTIONS = {"INPUT": "incoming", "OUTPUT": "outgoing", "FORWARD": "routed"}


class UfwState(FactBase):
    """
    Returns ufw's state:

    .. code:: python

        {
            "enabled": True,
            "policies": {"incoming": "deny", "outgoing": "allow", "routed": "deny"},
            "rules": ["allow 22/tcp", "allow 80/tcp"],  # in order, as `ufw <rule>` takes them
        }

    With ``with_rules=False`` the rules are not read and "rules" is empty.
    """

    requires_command = "ufw"
    prefetch_cost = 4  # `ufw show added` is a Python program

    @staticmethod
    def default():
        return {"enabled": False, "policies": {}, "rules": []}

    def command(self, with_rules: bool = True) -> str:
        return f"{_SETTINGS_COMMAND}; {_RULES_COMMAND}" if with_rules else _SETTINGS_COMMAND

    def process(self, output):
        state = self.default()
        for line in output:
            line = line.strip()
            if line.startswith("ENABLED="):
                state["enabled"] = line.split("=", 1)[1].strip("\"'").lower() == "yes"
            elif line.startswith("DEFAULT_") and "_POLICY=" in line:
                key, value = line.split("=", 1)
                chain = key[len("DEFAULT_") : -len("_POLICY")]
                if chain in _DIRECTIONS:
                    policy = value.strip("\"'").upper()
                    state["policies"][_DIRECTIONS[chain]] = _POLICY_NAMES.get(policy, policy.lower())
            elif line.startswith("ufw "):
                state["rules"].append(line[len("ufw ") :])
        return state
