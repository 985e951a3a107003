"""Facts about certificates on a host, read with openssl (always present on Debian)."""

from __future__ import annotations

import hashlib
import shlex
from datetime import datetime, timezone

from pyinfra.api import FactBase


class CertificateState(FactBase):
    """
    Returns what a PEM certificate (and optionally its key) say, or None when missing:

    .. code:: python

        {
            "names": ["aibots.test"],   # subjectAltName DNS names
            "not_after": 1795000000,     # epoch seconds
            "issuer": "CN = aibots.test",
            "self_signed": True,
            "key_matches": True,        # None when no key was given
            "serial": "5F3A...",
        }
    """

    requires_command = "openssl"
    prefetch_cost = 4  # openssl x509, and openssl pkey for the key: ~25 ms of CPU each

    def command(self, cert: str, key: str | None = None) -> str:
        c = shlex.quote(cert)
        lines = [
            f"test -f {c} || exit 0",
            # One openssl x509 (each costs ~25 ms of CPU): the public key's PEM is hashed in process.
            f"openssl x509 -in {c} -noout -serial -enddate -issuer -subject -ext subjectAltName -pubkey 2>/dev/null || exit 0",
        ]
        if key:
            k = shlex.quote(key)
            lines.append(f"echo key_pub=$(openssl pkey -in {k} -pubout 2>/dev/null | sha256sum | cut -c1-64)")
        return "; ".join(lines)

    @staticmethod
    def default():
        return None

    def process(self, output):
        info = {"names": [], "not_after": None, "issuer": "", "subject": "", "serial": "", "key_matches": None}
        key_pub = None
        public_key: list[str] = []  # the certificate's public key, PEM, as `openssl x509 -pubkey` prints it
        for line in output:
            line = line.strip()
            if public_key and not public_key[-1].startswith("-----END") or line == "-----BEGIN PUBLIC KEY-----":
                public_key.append(line)
            elif line.startswith("serial="):
                info["serial"] = line.split("=", 1)[1]
            elif line.startswith("notAfter="):
                when = datetime.strptime(line.split("=", 1)[1].replace("  ", " "), "%b %d %H:%M:%S %Y GMT")
                info["not_after"] = int(when.replace(tzinfo=timezone.utc).timestamp())
            elif line.startswith("issuer="):
                info["issuer"] = line.split("=", 1)[1].strip()
            elif line.startswith("subject="):
                info["subject"] = line.split("=", 1)[1].strip()
            elif line.startswith("DNS:"):
                info["names"] = [part.strip()[4:] for part in line.split(",") if part.strip().startswith("DNS:")]
            elif line.startswith("key_pub="):
                key_pub = line.split("=", 1)[1]
        if info["not_after"] is None:
            return None
        cert_pub = hashlib.sha256("".join(f"{line}\n" for line in public_key).encode()).hexdigest()
        info["self_signed"] = info["issuer"] == info["subject"]
        # sha256 of empty input: the key file was missing or unreadable.
        empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        if key_pub is not None:
            info["key_matches"] = key_pub != empty and key_pub == cert_pub
        return info


# Long enough for the workers of a reload made earlier in the run to hand over.
SERVED_SETTLE_TRIES, SERVED_SETTLE_INTERVAL = 20, 0.5

_SERVED_VS_CONFIGURED = r"""
path=$(sed -n 's/^[[:space:]]*ssl_certificate[[:space:]][[:space:]]*\([^;]*\);.*/\1/p' {config} | head -n 1)
[ -n "$path" ] && [ -r "$path" ] || exit 0
# The first PEM certificate's SHA-256 fingerprint, as `openssl x509 -fingerprint -sha256`
# prints it, from its base64 (an openssl run costs ~25 ms of CPU, these a few).
fingerprint() {{
    body=$(sed -n '/-BEGIN CERTIFICATE-/,/-END CERTIFICATE-/{{/-END CERTIFICATE-/q;/-BEGIN CERTIFICATE-/d;p;}}')
    [ -n "$body" ] || return 0
    printf '%s\n' "$body" | base64 -d 2>/dev/null | sha256sum | cut -c1-64 | tr a-f A-F | sed 's/../&:/g; s/:$//'
}}
configured=$(fingerprint < "$path")
tries=0
while :; do
    served=$(timeout 5 openssl s_client -connect 127.0.0.1:{port} -servername {domain} </dev/null 2>/dev/null | fingerprint)
    if [ -z "$served" ] || [ "$served" = "$configured" ] || [ "$tries" -ge {tries} ]; then break; fi
    tries=$((tries + 1)); sleep {interval}
done
{unsettled}
[ -n "$served" ] || exit 0
echo "path=$path"; echo "configured=$configured"; echo "served=$served"
"""


class ServedCertificate(FactBase):
    """
    The certificate nginx serves on 127.0.0.1:`port` for SNI `domain` and the one its
    `config` (the file with ssl_certificate) names, as SHA-256 fingerprints; None when
    nothing is served or the file names none. A difference is read again for a few
    seconds before it counts (a reload made just before is still handing over); with
    ``settle=False`` it is not waited for: the command exits 3 unless nginx serves the
    configured certificate.

    .. code:: python

        {"path": "/etc/letsencrypt/live/aibots.test/fullchain.pem", "configured": "AB:..", "served": "CD:.."}
    """

    requires_command = "openssl"
    # A prefetch (maybe read before a reload that is still to come) does not wait for nginx
    # to hand over: it keeps only "serves the configured one"; anything else is read again,
    # settling, when verify asks (aisha_infra/deploy/prefetch.py).
    prefetch_arguments = {"settle": False}
    prefetch_cost = 5  # an openssl s_client TLS handshake

    def command(self, port: int, domain: str, config: str, settle: bool = True) -> str:
        return _SERVED_VS_CONFIGURED.format(
            config=shlex.quote(config), port=int(port), domain=shlex.quote(domain),
            tries=SERVED_SETTLE_TRIES if settle else 0, interval=SERVED_SETTLE_INTERVAL,
            unsettled="" if settle else '[ -n "$served" ] && [ "$served" = "$configured" ] || exit 3',
        ).strip()

    @staticmethod
    def default():
        return None

    def process(self, output):
        values = dict(line.strip().split("=", 1) for line in output if "=" in line)
        if not {"path", "configured", "served"} <= values.keys():
            return None
        return {key: values[key] for key in ("path", "configured", "served")}
