"""Everything that is not a pyinfra deploy: settings, custom operations and facts,
checks, the rollout driver and the lab of disposable Debian hosts."""
