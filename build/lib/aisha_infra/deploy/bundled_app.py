"""The bundled app's own rules, applied on the control machine before anything is uploaded.

One source of truth: the deploy imports the app's configuration and JWKS parsing from
backend/aisha_webhook_api instead of restating them, so what the deploy accepts is
exactly what the app will start with.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Mapping
from pathlib import Path

from aisha_infra.deploy.settings import BUNDLED_BACKEND

_PACKAGE = "aisha_webhook_api"
# A JWKS is a few keys; anything far larger is not one.
MAX_JWKS_BYTES = 1024 * 1024


def _module(name: str):
    """aisha_webhook_api.<name> from the bundled source (it is not installed on the
    control machine, and must not shadow an installed copy of another version)."""
    if _PACKAGE not in sys.modules:
        package_dir = BUNDLED_BACKEND / _PACKAGE
        spec = importlib.util.spec_from_file_location(
            _PACKAGE, package_dir / "__init__.py", submodule_search_locations=[str(package_dir)]
        )
        package = importlib.util.module_from_spec(spec)
        sys.modules[_PACKAGE] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"{_PACKAGE}.{name}")


def environment_problem(environment: Mapping[str, str]) -> tuple[str, str] | None:
    """(variable, the app's own words) when the app would refuse to start with
    `environment`, else None."""
    config = _module("config")
    try:
        config.Settings.from_env(dict(environment))
    except config.ConfigError as exc:
        variable, _, detail = str(exc).partition(": ")
        return variable, detail or str(exc)
    return None


def jwks_problem(path: Path) -> str | None:
    """Why the app could not verify signatures with the JWKS file at `path`, or None."""
    try:
        if path.stat().st_size > MAX_JWKS_BYTES:
            return f"is larger than {MAX_JWKS_BYTES} bytes: not a JWKS document"
        document = path.read_bytes()
    except OSError as exc:
        return f"cannot be read: {exc.strerror}"
    signature = _module("signature")
    try:
        signature.parse_jwks(document)
    except signature.KeysUnavailable as exc:
        return f"is not a usable JWKS ({exc}); it needs at least one OKP/Ed25519 key, like fal's published JWKS"
    return None
