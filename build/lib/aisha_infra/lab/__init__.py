"""Disposable Debian test hosts (systemd-nspawn in their own network namespaces)."""
