"""The repository the tests run from (the installed package has no such root)."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
