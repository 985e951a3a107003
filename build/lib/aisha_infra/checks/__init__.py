"""Checks made from the control machine over HTTPS: health, the probe delivery, and why TLS fails.
Used by the deploy's verify step and by the operator tools alike."""
