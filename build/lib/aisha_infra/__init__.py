"""aisha-infra: the pyinfra deploy of the Aisha Bot's fal.ai webhook hosts.

deploy/  the deploy library (settings, rendering, operations, facts); with tasks/,
         templates/ and backend/ (shipped as aisha_infra.tasks, .templates, .backend)
checks/  HTTPS checks from the control machine (verify step and tools)
tools/   the operator tools behind `aisha-infra` (diagnose, rollout, status, ...)
lab/     disposable Debian test hosts; production code never imports it
"""
