"""The pyinfra config file the rollout and the rollback add (`pyinfra --config THIS_FILE`):
per-host results as JSON, see pyinfra_report."""

from aisha_infra.tools.pyinfra_report import install

install()
