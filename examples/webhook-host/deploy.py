from aisha_infra.tasks import deploy_webhook_host

deploy_webhook_host()
