"""One pyinfra @deploy per concern, and the whole host in their order (webhook_host)."""

from aisha_infra.tasks.app import roll_back_app
from aisha_infra.tasks.webhook_host import deploy_webhook_host

__all__ = ["deploy_webhook_host", "roll_back_app"]
