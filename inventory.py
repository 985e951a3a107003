"""Hosts by group: `canary` is deployed and health-gated before `production`.

Real servers: write a hosts file (see hosts.example.json) and run with
AISHA_HOSTS=hosts.json. Default: the local lab hosts (`aisha-infra lab up`).
"""

import os
from pathlib import Path

from pyinfra.context import ctx_state

from aisha_infra.deploy.config import validate_before_connecting
from aisha_infra.deploy.inventory import read_hosts_file

if os.environ.get("AISHA_HOSTS"):
    _groups = read_hosts_file(Path(os.environ["AISHA_HOSTS"]))
else:
    from aisha_infra.lab.inventory import lab_groups  # the local test hosts

    _groups = lab_groups()
if ctx_state.isset():  # run by the pyinfra CLI (not just imported by a tool)
    validate_before_connecting(ctx_state.get())
canary = _groups["canary"]
production = _groups["production"]
