"""fal webhook signature verification (https://docs.fal.ai/model-endpoints/webhooks).

fal signs each delivery with Ed25519. The signed message is, UTF-8 encoded:

    request_id "\\n" user_id "\\n" timestamp "\\n" sha256_hex(raw body)

taken from the X-Fal-Webhook-Request-Id, -User-Id and -Timestamp headers; the
signature is hex in X-Fal-Webhook-Signature. It must verify against one of the keys
fal publishes as a JWKS (OKP / Ed25519, `x` base64url), and the timestamp must be
within five minutes of now.

A genuine delivery is never refused for our own trouble: keys fetched from fal are
also kept on disk (the last good copy survives restarts and serves while fal's JWKS is
unreachable); when the keys cannot be loaded, or a signature matches no cached key while
fal's JWKS cannot be fetched (fal may have rotated its key), the caller answers 503 and
fal retries. 401 is only for a signature proven wrong against keys fetched just now.

`cryptography` is imported only here, and only when verification is enabled.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import http.client
import json
import logging
import os
import threading
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

TIMESTAMP_TOLERANCE_SECONDS = 300
MAX_JWKS_BYTES = 1024 * 1024
JWKS_FETCH_TIMEOUT_SECONDS = 10
# After a signature fails against the cached keys, refetch (fal may have rotated its
# key) at most this often, so forged requests cannot hammer fal's JWKS endpoint.
MIN_REFRESH_INTERVAL_SECONDS = 60
# With no key at all every delivery gets 503: try again sooner, still bounded.
RETRY_WITHOUT_KEYS_SECONDS = 5

HEADER_REQUEST_ID = "X-Fal-Webhook-Request-Id"
HEADER_USER_ID = "X-Fal-Webhook-User-Id"
HEADER_TIMESTAMP = "X-Fal-Webhook-Timestamp"
HEADER_SIGNATURE = "X-Fal-Webhook-Signature"


class InvalidSignature(Exception):
    """The delivery is not proven to come from fal (answer 401)."""


class KeysUnavailable(Exception):
    """fal's public keys cannot be loaded (answer 503 so that fal retries later)."""


def signed_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    body_digest = hashlib.sha256(body).hexdigest()
    return "\n".join((request_id, user_id, timestamp, body_digest)).encode("utf-8")


def parse_jwks(document: bytes) -> list:
    """Ed25519 public keys of a JWKS document; other key types are skipped."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        keys = json.loads(document)["keys"]
    except (ValueError, KeyError, TypeError) as exc:
        raise KeysUnavailable(f"not a JWKS document: {exc}") from exc
    public_keys = []
    for jwk in keys if isinstance(keys, list) else []:
        if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            continue
        try:
            # fal's live JWKS pads `x`; strict base64url omits padding. Accept both.
            raw = base64.urlsafe_b64decode(str(jwk.get("x", "")).rstrip("=") + "==")
            public_keys.append(Ed25519PublicKey.from_public_bytes(raw))
        except (binascii.Error, ValueError) as exc:
            log.warning("skipping unusable JWKS key %s: %s", jwk.get("kid", "?"), exc)
    if not public_keys:
        raise KeysUnavailable("JWKS holds no usable Ed25519 key")
    return public_keys


class JwksKeys:
    """fal's public keys from a URL or a local file, cached for `cache_seconds`.

    When a refresh fails, the previous keys stay in use until a later refresh succeeds.
    With `cache_file`, every document fetched from the URL is saved there, and read back
    when the URL cannot be fetched and no keys are in memory (after a restart).
    """

    def __init__(
        self, *, url: str, file: Path | None, cache_seconds: int,
        cache_file: Path | None = None,
        min_refresh_interval: float = MIN_REFRESH_INTERVAL_SECONDS,
        retry_without_keys: float = RETRY_WITHOUT_KEYS_SECONDS,
    ) -> None:
        self.source = str(file) if file else url
        self._url = url
        self._file = file
        self._cache_file = None if file else cache_file
        self._cache_seconds = cache_seconds
        self._min_refresh_interval = min_refresh_interval
        self._retry_without_keys = retry_without_keys
        self._lock = threading.Lock()
        self._keys: list = []
        self._loaded_at: float | None = None
        self._attempted_at: float | None = None
        self._last_failure: str | None = None  # why the last refresh failed, None if it worked

    def _read(self) -> bytes:
        if self._file:
            return self._file.read_bytes()
        request = urllib.request.Request(self._url, headers={"Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=JWKS_FETCH_TIMEOUT_SECONDS) as response:
            document = response.read(MAX_JWKS_BYTES + 1)
        if len(document) > MAX_JWKS_BYTES:
            raise KeysUnavailable(f"{self._url}: JWKS larger than {MAX_JWKS_BYTES} bytes")
        return document

    def _refresh(self) -> None:
        self._attempted_at = time.monotonic()
        try:
            document = self._read()
            keys = parse_jwks(document)
        except (OSError, http.client.HTTPException, KeysUnavailable) as exc:
            self._last_failure = f"cannot load fal keys from {self.source}: {exc}"
            if not self._keys:
                self._keys = self._read_cache()
            if not self._keys:
                raise KeysUnavailable(self._last_failure) from exc
            log.warning("keeping %d cached fal keys: %s", len(self._keys), self._last_failure)
            return
        self._keys, self._loaded_at, self._last_failure = keys, time.monotonic(), None
        log.info("loaded %d fal signing keys from %s", len(keys), self.source)
        self._write_cache(document)

    def _read_cache(self) -> list:
        if not self._cache_file or not self._cache_file.exists():
            return []
        try:
            keys = parse_jwks(self._cache_file.read_bytes())
        except (OSError, KeysUnavailable) as exc:
            log.warning("unusable JWKS cache %s: %s", self._cache_file, exc)
            return []
        log.warning("using %d fal keys from the last good copy %s", len(keys), self._cache_file)
        return keys

    def _write_cache(self, document: bytes) -> None:
        """Replace the cache atomically: a crash leaves the old copy or the new one."""
        if not self._cache_file or self._cache_file.exists() and self._cache_file.read_bytes() == document:
            return
        partial = self._cache_file.with_name(self._cache_file.name + ".partial")
        try:
            with open(partial, "wb") as out:
                out.write(document)
                out.flush()
                os.fsync(out.fileno())
            os.replace(partial, self._cache_file)
        except OSError as exc:
            log.warning("cannot save fal keys to %s: %s", self._cache_file, exc)

    def get(self) -> list:
        with self._lock:
            now = time.monotonic()
            expired = self._loaded_at is None or now - self._loaded_at >= self._cache_seconds
            if expired and self._may_refresh(now):
                self._refresh()
            if not self._keys:
                raise KeysUnavailable(self._last_failure or f"no fal keys loaded from {self.source} yet")
            return list(self._keys)

    def refresh_after_mismatch(self) -> bool:
        """Refetch after a signature matched no cached key (fal may have rotated it).

        True if fresh keys were loaded and are worth trying. Raises KeysUnavailable when
        the keys cannot be fetched now: the signature may be by a key we cannot see yet.
        """
        with self._lock:
            if self._may_refresh(time.monotonic()):
                before = self._keys
                self._refresh()
                if self._last_failure is None:
                    return self._keys is not before
            if self._last_failure:
                raise KeysUnavailable(f"signature matches no cached key and {self._last_failure}")
            return False

    def _may_refresh(self, now: float) -> bool:
        interval = self._min_refresh_interval if self._keys else self._retry_without_keys
        return self._attempted_at is None or now - self._attempted_at >= interval


class SignatureVerifier:
    def __init__(self, keys: JwksKeys) -> None:
        from cryptography.exceptions import InvalidSignature as CryptoInvalidSignature

        self._crypto_invalid = CryptoInvalidSignature
        self.keys = keys

    def verify(self, headers: Mapping[str, str], body: bytes) -> str:
        """Return the fal user id of a correctly signed delivery, else raise InvalidSignature."""
        values = {}
        for name in (HEADER_REQUEST_ID, HEADER_USER_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE):
            value = headers.get(name)
            if not value:
                raise InvalidSignature(f"missing header {name}")
            values[name] = value.strip()
        timestamp = values[HEADER_TIMESTAMP]
        try:
            skew = abs(time.time() - int(timestamp))
        except ValueError:
            raise InvalidSignature(f"{HEADER_TIMESTAMP} is not unix time: {timestamp!r}") from None
        if skew > TIMESTAMP_TOLERANCE_SECONDS:
            raise InvalidSignature(f"timestamp {timestamp} is {skew:.0f}s away from now")
        try:
            signature = bytes.fromhex(values[HEADER_SIGNATURE])
        except ValueError:
            raise InvalidSignature(f"{HEADER_SIGNATURE} is not hex") from None
        message = signed_message(
            values[HEADER_REQUEST_ID], values[HEADER_USER_ID], timestamp, body
        )
        if self._matches_any(self.keys.get(), signature, message):
            return values[HEADER_USER_ID]
        if self.keys.refresh_after_mismatch() and self._matches_any(
            self.keys.get(), signature, message
        ):
            return values[HEADER_USER_ID]
        raise InvalidSignature("signature matches no fal key")

    def _matches_any(self, keys: list, signature: bytes, message: bytes) -> bool:
        for key in keys:
            try:
                key.verify(signature, message)
                return True
            except self._crypto_invalid:
                continue
        return False
