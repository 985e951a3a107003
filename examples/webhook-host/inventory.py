"""My webhook servers: a JSON list of [address, pyinfra data] pairs in hosts.json, or in
the file $WEBHOOK_HOSTS names, e.g. [["203.0.113.7", {"ssh_user": "admin", "_sudo": true}]]."""

import json
import os

with open(os.environ.get("WEBHOOK_HOSTS", "hosts.json")) as hosts_file:
    webhook_servers = [(address, data) for address, data in json.load(hosts_file)]
