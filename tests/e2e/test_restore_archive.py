"""Carrying /etc/letsencrypt to a new host without trusting the archive: a hostile one
is refused before the host is touched, a certbot lineage restores and is served, owned
by root, with nothing left behind; no ACME server is involved (the lineage comes from
the test PKI, so nothing would be issued even if one answered)."""

from __future__ import annotations

import socket
import ssl

import pytest
from cryptography import x509

from tests.e2e.deploylib import run_deploy, write_hosts_file
from tests.e2e.nocontact import assert_refused_before_connecting, ssh_logins
from tests.unit.certfactory import write_pem
from tests.unit.letsencrypt_lineage import file_, lineage_members, symlink, write_archive

pytestmark = pytest.mark.e2e
DOMAIN = "aibots.test"


def served_certificate(address: str) -> x509.Certificate:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # which certificate is served is the point here
    with socket.create_connection((address, 8443), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=DOMAIN) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


class Replacement:
    """A fresh lab host about to receive the certificate of the one it replaces."""

    def __init__(self, host, work):
        self.host, self.work = host, work
        members, root, self.leaf = lineage_members(DOMAIN)
        self.good = write_archive(work / "letsencrypt.tar.gz", members)
        self.hostile = write_archive(work / "hostile.tar.gz", members + [
            file_("letsencrypt/../cron.d/aisha", b"* * * * * root touch /tmp/owned\n"),
        ])
        self.escaping = write_archive(work / "escaping.tar.gz", members + [symlink("letsencrypt/keys", "/root")])
        self.root = write_pem(work / "root.pem", root.pem)

    def hosts_file(self, archive) -> str:
        data = {"tls_mode": "letsencrypt", "letsencrypt_email": "ops@aibots.test",
                # never contacted: the restored certificate is valid for exactly these names
                "letsencrypt_server": "https://acme.aibots.test/dir",
                "verify_ca_bundle": str(self.root), "letsencrypt_restore_archive": str(archive)}
        return write_hosts_file(self.work / "hosts.json", [self.host], data=data)


@pytest.fixture(scope="module")
def replacement(lab, tmp_path_factory):
    host = lab.add_hosts(count=1)[0]
    try:
        yield Replacement(host, tmp_path_factory.mktemp("restore"))
    finally:
        lab.destroy_host(host.name)


def test_hostile_archives_are_refused_before_the_host_is_touched(replacement):
    logins = ssh_logins(replacement.host)
    assert logins >= 1
    run = run_deploy(replacement.hosts_file(replacement.hostile), timeout=120)
    assert_refused_before_connecting(run, "member 'letsencrypt/../cron.d/aisha' contains '..'; nothing from it was restored")
    run = run_deploy(replacement.hosts_file(replacement.escaping), timeout=120)
    assert_refused_before_connecting(run, "member 'letsencrypt/keys' is a symbolic link to an absolute path (/root)")
    assert ssh_logins(replacement.host) == logins + 1  # this query's own login only
    assert replacement.host.run("test -e /etc/letsencrypt/live", check=False).returncode != 0


def test_a_certbot_lineage_restores_and_is_served(replacement):
    run = run_deploy(replacement.hosts_file(replacement.good)).check()
    assert "requesting a certificate" not in run.output and "TLS state: OK" in run.output
    assert served_certificate(replacement.host.address).serial_number == replacement.leaf.cert.serial_number

    host_run = replacement.host.run
    keys = host_run(f"stat -c '%a %U:%G' /etc/letsencrypt/archive/{DOMAIN}/privkey1.pem").stdout.split()
    assert keys == ["600", "root:root"]
    owners = set(host_run("find /etc/letsencrypt -printf '%u:%g\\n'").stdout.split())
    assert owners == {"root:root"}, owners  # the archive's owners were not trusted
    assert host_run(f"readlink /etc/letsencrypt/live/{DOMAIN}/fullchain.pem").stdout.strip() == \
        f"../../archive/{DOMAIN}/fullchain1.pem"
    leftovers = host_run("ls -a /etc /root | grep -c aisha-letsencrypt-restore || true").stdout.strip()
    assert leftovers == "0"  # staging directory and uploaded payload removed

    second = run_deploy(replacement.hosts_file(replacement.good)).check()
    assert second.totals["changed"] == 0, second.changed_operations
