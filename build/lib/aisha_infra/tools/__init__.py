"""The operator tools behind `aisha-infra` (diagnose, rollout, status, certs, events, webhook)."""
