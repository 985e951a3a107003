"""Every setting of the service, read from the environment and validated in one place.

The systemd unit sets these with Environment=; everything has a safe default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_JWKS_URL = "https://rest.alpha.fal.ai/.well-known/jwks.json"

# key -> (default, one-line description); the single list of what can be set.
SETTINGS = {
    "AISHA_DATA_DIR": ("/var/lib/aisha", "directory of the event database (must be writable)"),
    "AISHA_API_HOST": ("127.0.0.1", "address to bind when not socket-activated"),
    "AISHA_API_PORT": ("8000", "port to bind when not socket-activated"),
    "AISHA_MAX_BODY_BYTES": ("1048576", "largest accepted webhook body; larger gets 413"),
    "AISHA_REQUEST_TIMEOUT": ("10", "seconds a client may take to send its request"),
    "AISHA_FAL_VERIFY_SIGNATURES": ("0", "1 to require a valid fal signature (401 otherwise)"),
    "AISHA_FAL_JWKS_URL": (DEFAULT_JWKS_URL, "where fal publishes its webhook signing keys"),
    "AISHA_FAL_JWKS_FILE": ("", "local JWKS file used instead of the URL when set"),
    "AISHA_FAL_JWKS_CACHE_SECONDS": ("86400", "how long fetched keys are used before refetching"),
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ValueError):
    """A setting has a value the service cannot run with; the message names the key."""


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    host: str
    port: int
    max_body_bytes: int
    request_timeout: float
    verify_signatures: bool
    jwks_url: str
    jwks_file: Path | None
    jwks_cache_seconds: int

    @property
    def database_path(self) -> Path:
        return self.data_dir / "events.sqlite3"

    @property
    def jwks_cache_path(self) -> Path:
        """The last JWKS fetched from the URL, kept across restarts."""
        return self.data_dir / "fal-jwks-cache.json"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(key: str) -> str:
            return env.get(key, SETTINGS[key][0]).strip()

        data_dir = get("AISHA_DATA_DIR")
        if not data_dir or not os.path.isabs(data_dir):
            raise ConfigError(f"AISHA_DATA_DIR: must be an absolute path, got {data_dir!r}")
        host = get("AISHA_API_HOST")
        if not host:
            raise ConfigError("AISHA_API_HOST: must not be empty")
        jwks_url = get("AISHA_FAL_JWKS_URL")
        if urlsplit(jwks_url).scheme not in ("https", "http") or not urlsplit(jwks_url).netloc:
            raise ConfigError(f"AISHA_FAL_JWKS_URL: must be an http(s) URL, got {jwks_url!r}")
        jwks_file = get("AISHA_FAL_JWKS_FILE")
        if jwks_file and not os.path.isabs(jwks_file):
            raise ConfigError(f"AISHA_FAL_JWKS_FILE: must be an absolute path, got {jwks_file!r}")
        return cls(
            data_dir=Path(data_dir),
            host=host,
            port=_integer(get, "AISHA_API_PORT", 0, 65535),
            max_body_bytes=_integer(get, "AISHA_MAX_BODY_BYTES", 1, 64 * 1024 * 1024),
            request_timeout=float(_integer(get, "AISHA_REQUEST_TIMEOUT", 1, 3600)),
            verify_signatures=_boolean(get, "AISHA_FAL_VERIFY_SIGNATURES"),
            jwks_url=jwks_url,
            jwks_file=Path(jwks_file) if jwks_file else None,
            jwks_cache_seconds=_integer(get, "AISHA_FAL_JWKS_CACHE_SECONDS", 60, 7 * 86400),
        )


def _integer(get, key: str, low: int, high: int) -> int:
    raw = get(key)
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{key}: must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{key}: must be between {low} and {high}, got {value}")
    return value


def _boolean(get, key: str) -> bool:
    raw = get(key).lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigError(f"{key}: must be 1 or 0, got {raw!r}")
