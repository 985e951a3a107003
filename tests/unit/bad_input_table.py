"""The bad-input table: hostile or mistyped settings, hosts files, restore archives,
JWKS files and app environments, each with the words its one error must hold.

tests/unit/test_bad_input.py checks each against the validation functions;
tests/e2e/test_bad_input.py runs each through the real `pyinfra inventory.py deploy.py`
against a lab host and proves no command reached it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.unit import certfactory
from tests.unit.letsencrypt_lineage import (chardev, file_, hardlink, lineage_members, symlink,
                                            write_archive)

DOMAIN = "aibots.test"  # group_data/all.py's


@dataclass
class Case:
    id: str
    expected: str  # words the error must hold
    data: dict = field(default_factory=dict)  # settings of the (first) host; "{files}" = the files dir
    # the hosts file's text from its list of entries (None: no file at all)
    hosts: Callable[[list], str | None] | None = None

    def hosts_text(self, entries: list, files: Path) -> str | None:
        entries = json.loads(json.dumps(entries))
        entries[0].setdefault("data", {}).update(
            {key: value.replace("{files}", str(files)) if isinstance(value, str) else value
             for key, value in self.data.items()}
        )
        return self.hosts(entries) if self.hosts else json.dumps(entries)


def _archive_with(*extra: tuple) -> Callable[[Path], None]:
    return lambda path: write_archive(path, lineage_members()[0] + list(extra))


ARCHIVES = {
    "outside.tar.gz": _archive_with(file_("cron.d/aisha", b"* * * * * root id\n")),
    "dotdot.tar.gz": _archive_with(file_("letsencrypt/../sudoers.d/aisha", b"aisha ALL=(ALL) NOPASSWD: ALL\n")),
    "absolute.tar.gz": _archive_with(file_("/etc/cron.d/aisha", b"* * * * * root id\n")),
    "abslink.tar.gz": _archive_with(symlink("letsencrypt/shadow", "/etc/shadow")),
    "escaping-link.tar.gz": _archive_with(symlink("letsencrypt/etc", "../../etc")),
    "below-link.tar.gz": _archive_with(symlink("letsencrypt/l", "live"), file_("letsencrypt/l/x", b"x")),
    "through-link.tar.gz": _archive_with(symlink("letsencrypt/here", "."),
                                         symlink("letsencrypt/cron", "here/../cron.d")),
    "unnormalised.tar.gz": _archive_with(file_("letsencrypt/./renewal/x.conf", b"x")),
    "device.tar.gz": _archive_with(chardev("letsencrypt/null")),
    "hardlink.tar.gz": _archive_with(hardlink("letsencrypt/passwd", "etc/passwd")),
    "mismatch.tar.gz": lambda path: write_archive(
        path, lineage_members(key_pem=certfactory.Issued(None, certfactory.new_key()).key_pem)[0]),
    "other-domain.tar.gz": lambda path: write_archive(path, lineage_members("other.test")[0]),
    "not-a-tar.tar.gz": lambda path: path.write_bytes(b"\x1f\x8b\x08 certainly not gzip"),
}

JWKS = {
    "jwks-truncated.json": '{"keys": [',
    "jwks-empty.json": '{"keys": []}',
    "jwks-rsa-only.json": json.dumps({"keys": [{"kty": "RSA", "kid": "r1", "n": "sXch", "e": "AQAB"}]}),
    "jwks-bad-x.json": json.dumps({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1", "x": "c2hvcnQ"}]}),
}


def make_files(directory: Path) -> Path:
    """Every JWKS and archive the table refers to as "{files}/<name>"."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in JWKS.items():
        (directory / name).write_text(text)
    for name, build in ARCHIVES.items():
        build(directory / name)
    return directory


def _replace_first(**changes) -> Callable[[list], str]:
    def change(entries: list) -> str:
        for key, value in changes.items():
            if value is None:
                entries[0].pop(key, None)
            else:
                entries[0][key] = value
        return json.dumps(entries)
    return change


CASES = [
    # --- settings that would inject into nginx / systemd files, or mean something else there
    Case("domain-injection", "aisha_domain: 'bad domain;touch /tmp/x' contains characters not allowed in a DNS name: ' ', ';', '/'",
         data={"aisha_domain": "bad domain;touch /tmp/x"}),
    Case("command-newline", "app_start_command: '/bin/true\\nUser=root' contains a control character ('\\n')",
         data={"app_start_command": "/bin/true\nUser=root"}),
    Case("jwks-url-newline", "fal_jwks_url: 'https://x\\nExecStartPre=+/bin/sh -c id' contains a control character",
         data={"fal_jwks_url": "https://x\nExecStartPre=+/bin/sh -c id"}),
    Case("log-dir-include", "aisha_log_dir: '/var/log/aisha;\\n include /etc/shadow' contains a control character",
         data={"aisha_log_dir": "/var/log/aisha;\n include /etc/shadow"}),
    Case("base-dir-space", "aisha_base_dir: '/opt/aisha backend;x' contains characters not allowed in a path on the host: ' ', ';'",
         data={"aisha_base_dir": "/opt/aisha backend;x"}),
    Case("data-dir-dotdot", "aisha_data_dir: '/var/lib/../../etc' is not a normalised path",
         data={"aisha_data_dir": "/var/lib/../../etc"}),
    Case("base-dir-relative", "aisha_base_dir: 'opt/aisha' is not an absolute path",
         data={"aisha_base_dir": "opt/aisha"}),
    Case("jwks-url-http", "fal_jwks_url: 'http://rest.alpha.fal.ai/.well-known/jwks.json' must use https://",
         data={"fal_jwks_url": "http://rest.alpha.fal.ai/.well-known/jwks.json"}),
    Case("jwks-url-no-host", "fal_jwks_url: 'https:///jwks.json' has no host name",
         data={"fal_jwks_url": "https:///jwks.json"}),
    Case("acme-credentials", "must not hold credentials",
         data={"letsencrypt_server": "https://user:secret@acme.example/dir"}),
    Case("email-self-signed", "letsencrypt_email: 'not-an-email' is not an e-mail address",
         data={"letsencrypt_email": "not-an-email"}),
    Case("command-relative", "app_start_command: 'gunicorn app:app' must start with an absolute path",
         data={"app_start_command": "gunicorn app:app"}),
    Case("command-systemd-dollar", "contains '$', which systemd's ExecStart= reads its own way",
         data={"app_start_command": "/bin/sh -c 'echo $HOME'"}),
    Case("command-unclosed-quote", "cannot be split like a shell command line (No closing quotation)",
         data={"app_start_command": "/usr/bin/python3 -c 'print(1)"}),
    Case("unknown-key", "nginx_https_prot: is not a setting of this deploy; did you mean 'nginx_https_port'?",
         data={"nginx_https_prot": 9443}),
    # --- the bundled app's environment, judged by the app's own configuration rules
    Case("env-timeout-zero", "app_environment: the bundled app refuses AISHA_REQUEST_TIMEOUT: must be between 1 and 3600, got 0",
         data={"app_environment": {"AISHA_REQUEST_TIMEOUT": "0"}}),
    Case("env-bad-boolean", "the bundled app refuses AISHA_FAL_VERIFY_SIGNATURES: must be 1 or 0",
         data={"app_environment": {"AISHA_FAL_VERIFY_SIGNATURES": "maybe"}}),
    Case("body-limit-beyond-the-app", "app_max_body_bytes: the bundled app refuses AISHA_MAX_BODY_BYTES: must be between 1 and 67108864",
         data={"app_max_body_bytes": 100 * 1024 * 1024}),
    Case("env-newline", "app_environment: LOG_LEVEL='info\\nUser=root' contains a control character",
         data={"app_environment": {"LOG_LEVEL": "info\nUser=root"}}),
    Case("env-nested", "app_environment: OPTIONS={'a': 1}: values must be text or numbers",
         data={"app_environment": {"OPTIONS": {"a": 1}}}),
    # --- JWKS files
    Case("jwks-truncated", "jwks-truncated.json' is not a usable JWKS (not a JWKS document",
         data={"fal_jwks_file": "{files}/jwks-truncated.json"}),
    Case("jwks-empty", "jwks-empty.json' is not a usable JWKS (JWKS holds no usable Ed25519 key)",
         data={"fal_jwks_file": "{files}/jwks-empty.json"}),
    Case("jwks-rsa-only", "jwks-rsa-only.json' is not a usable JWKS (JWKS holds no usable Ed25519 key)",
         data={"fal_jwks_file": "{files}/jwks-rsa-only.json"}),
    Case("jwks-bad-key", "jwks-bad-x.json' is not a usable JWKS (JWKS holds no usable Ed25519 key)",
         data={"fal_jwks_file": "{files}/jwks-bad-x.json"}),
    Case("jwks-missing", "fal_jwks_file: '/nonexistent/jwks.json' is not a file on the control machine",
         data={"fal_jwks_file": "/nonexistent/jwks.json"}),
    # --- Let's Encrypt restore archives
    Case("archive-outside", "member 'cron.d/aisha' is outside letsencrypt/",
         data={"letsencrypt_restore_archive": "{files}/outside.tar.gz"}),
    Case("archive-dotdot", "member 'letsencrypt/../sudoers.d/aisha' contains '..'",
         data={"letsencrypt_restore_archive": "{files}/dotdot.tar.gz"}),
    Case("archive-absolute", "member '/etc/cron.d/aisha' is an absolute path",
         data={"letsencrypt_restore_archive": "{files}/absolute.tar.gz"}),
    Case("archive-absolute-link", "member 'letsencrypt/shadow' is a symbolic link to an absolute path (/etc/shadow)",
         data={"letsencrypt_restore_archive": "{files}/abslink.tar.gz"}),
    Case("archive-escaping-link", "member 'letsencrypt/etc' is a symbolic link leaving letsencrypt/ (../../etc)",
         data={"letsencrypt_restore_archive": "{files}/escaping-link.tar.gz"}),
    Case("archive-below-link", "member 'letsencrypt/l/x' lies below a symbolic link",
         data={"letsencrypt_restore_archive": "{files}/below-link.tar.gz"}),
    Case("archive-through-link", "member 'letsencrypt/cron' is a symbolic link through another symbolic link (here/../cron.d)",
         data={"letsencrypt_restore_archive": "{files}/through-link.tar.gz"}),
    Case("archive-unnormalised", "member 'letsencrypt/./renewal/x.conf' is not a normalised path",
         data={"letsencrypt_restore_archive": "{files}/unnormalised.tar.gz"}),
    Case("archive-device", "member 'letsencrypt/null' is a device or FIFO",
         data={"letsencrypt_restore_archive": "{files}/device.tar.gz"}),
    Case("archive-hardlink", "member 'letsencrypt/passwd' is a hard link",
         data={"letsencrypt_restore_archive": "{files}/hardlink.tar.gz"}),
    Case("archive-key-mismatch", "live/aibots.test/fullchain.pem does not match live/aibots.test/privkey.pem",
         data={"letsencrypt_restore_archive": "{files}/mismatch.tar.gz"}),
    Case("archive-other-domain", "holds no certificate for aibots.test (live/ has: other.test)",
         data={"letsencrypt_restore_archive": "{files}/other-domain.tar.gz"}),
    Case("archive-not-tar", "not-a-tar.tar.gz' is not a readable tar.gz archive",
         data={"letsencrypt_restore_archive": "{files}/not-a-tar.tar.gz"}),
    # --- hosts files
    Case("hosts-groups-string", "groups 'canary' is not a list of group names",
         hosts=_replace_first(groups="canary")),
    Case("hosts-group-typo", "group 'Canary' is unknown (did you mean 'canary'?); every host is in one of: canary, production",
         hosts=_replace_first(groups=["Canary"])),
    Case("hosts-group-unknown", "group 'web' is unknown; every host is in one of: canary, production",
         hosts=_replace_first(groups=["web"])),
    Case("hosts-two-stages", "is in canary and production: rollout stages follow one another",
         hosts=_replace_first(groups=["canary", "production"])),
    Case("hosts-no-name", 'host 1 has no "name"', hosts=_replace_first(name=None)),
    Case("hosts-name-not-string", "host 1 name 42 is not a non-empty string", hosts=_replace_first(name=42)),
    Case("hosts-data-list", "data ['aisha_domain'] is not an object of settings", hosts=_replace_first(data=["aisha_domain"])),
    Case("hosts-key-typo", "has unknown key 'group' (did you mean 'groups'?)", hosts=_replace_first(group=["canary"])),
    Case("hosts-not-json", "is not valid JSON: Expecting value", hosts=lambda entries: '{"hosts": ['),
    Case("hosts-not-a-list", "must be a non-empty JSON list of hosts", hosts=lambda entries: json.dumps({"name": "x"})),
    Case("hosts-missing", "cannot read hosts file", hosts=lambda entries: None),
]
