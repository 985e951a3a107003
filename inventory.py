"""Hosts by group: `canary` is deployed and health-gated before `production`.

Real servers: write a hosts file (see hosts.example.json) and run with
AISHA_HOSTS=hosts.json. Default: the local lab hosts (`aisha-infra lab up`).
"""

from pyinfra.context import ctx_state

from aisha_infra.config import validate_before_connecting
from aisha_infra.inventory import load_groups

_groups = load_groups()
if ctx_state.isset():  # run by the pyinfra CLI (not just imported by a tool)
    validate_before_connecting(ctx_state.get())
canary = _groups["canary"]
production = _groups["production"]
