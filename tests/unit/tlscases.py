"""The TLS situations `aisha-infra diagnose` must tell apart, each as a chain file
(in the order a server sends it) and a key, plus the one finding it must produce."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .certfactory import DAY, NOW, make_intermediate, make_leaf, make_root, make_self_signed, new_key, write_pem

DOMAIN = "aibots.test"


@dataclass
class Case:
    name: str
    chain: Path
    key: Path
    # The one finding that is not ok among the TLS findings; None for the clean case.
    check: str | None
    severity: str | None = None
    fix_mentions: str = ""


@dataclass
class PKI:
    root: Path  # the trusted test root: pass as --ca-bundle
    cases: dict[str, Case]
    other_key: Path  # a key that belongs to none of the certificates


def build_pki(directory: Path) -> PKI:
    root = make_root()
    intermediate = make_intermediate(root)
    # A deeper hierarchy for the order case: root -> upper -> lower -> leaf.
    upper = make_intermediate(root, "Aisha Test Upper CA")
    lower = make_intermediate(upper, "Aisha Test Lower CA")
    unknown_root = make_root("Somebody Else Root CA")
    unknown_intermediate = make_intermediate(unknown_root, "Somebody Else Intermediate")
    staging_root = make_root("(STAGING) Pretend Pear X1")
    staging_intermediate = make_intermediate(staging_root, "(STAGING) Counterfeit Cashew R10")

    good = make_leaf(intermediate)
    ordered = make_leaf(lower)
    unknown = make_leaf(unknown_intermediate)
    staging = make_leaf(staging_intermediate)
    self_signed = make_self_signed()
    wrong_name = make_leaf(intermediate, ["other.test"])
    expired = make_leaf(intermediate, not_before=NOW - 100 * DAY, not_after=NOW - 10 * DAY)
    not_yet = make_leaf(intermediate, not_before=NOW + 5 * DAY, not_after=NOW + 95 * DAY)
    expiring = make_leaf(intermediate, not_before=NOW - 80 * DAY, not_after=NOW + 10 * DAY)

    def case(name, chain, key, check=None, severity=None, fix_mentions=""):
        chain_path = write_pem(directory / f"{name}.chain.pem", *(issued.pem for issued in chain))
        key_path = write_pem(directory / f"{name}.key.pem", key.key_pem)
        return name, Case(name, chain_path, key_path, check, severity, fix_mentions)

    cases = dict(
        [
            case("good", [good, intermediate], good),
            case("leaf_only", [good], good, "tls.incomplete_chain", "error", f"/etc/letsencrypt/live/{DOMAIN}/fullchain.pem"),
            case("wrong_order", [ordered, upper, lower], ordered, "tls.chain_order", "warn", "cat cert.pem chain.pem"),
            case("self_signed", [self_signed], self_signed, "tls.self_signed", "error", "tls_mode = 'letsencrypt'"),
            case("unknown_ca", [unknown, unknown_intermediate], unknown, "tls.untrusted_ca", "error", "--ca-bundle"),
            case("staging_ca", [staging, staging_intermediate], staging, "tls.staging_ca", "error", "letsencrypt_server = 'production'"),
            case("wrong_name", [wrong_name, intermediate], wrong_name, "tls.name_mismatch", "error", f"-d {DOMAIN}"),
            case("expired", [expired, intermediate], expired, "tls.expired", "error", "certbot renew"),
            case("not_yet_valid", [not_yet, intermediate], not_yet, "tls.not_yet_valid", "error", "timedatectl"),
            case("expiring", [expiring, intermediate], expiring, "tls.expiry", "warn", "certbot renew --dry-run"),
        ]
    )
    other = directory / "other.key.pem"
    other.write_bytes(make_leaf(intermediate, key=new_key()).key_pem)
    return PKI(write_pem(directory / "root.pem", root.pem), cases, other)
