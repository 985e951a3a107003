"""Provision a fal.ai webhook host for the Aisha Bot: `pyinfra inventory.py deploy.py`.

The first user of the packaged deploy (tasks/webhook_host.py: the order of the
concerns); settings come from host.data (group_data/, the hosts file, --data).
"""

from aisha_infra.tasks import deploy_webhook_host

deploy_webhook_host()
