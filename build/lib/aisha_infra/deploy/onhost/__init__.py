"""Programs the deploy ships to the hosts and runs there (Python standard library only)."""
