"""Hosts by group: `canary` is deployed and health-gated before `production`.

Real servers: write a hosts file (see hosts.example.json) and run with
AISHA_HOSTS=hosts.json. Default: the local lab hosts (`aisha-infra lab up`).
"""

from aisha_infra.inventory import load_groups

_groups = load_groups()
canary = _groups["canary"]
production = _groups["production"]
