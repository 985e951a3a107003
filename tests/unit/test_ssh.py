"""The operator tools' SSH (aisha_infra/tools/ssh.py): connection data read as pyinfra reads it,
~/.ssh/config honoured (checked with `ssh -G`, which resolves the configuration the real
client would use, without connecting), host key policies, sudo, and no secret in argv."""

from __future__ import annotations

import argparse
import shutil
import subprocess

import pytest

from aisha_infra.tools import ssh as ssh_module
from aisha_infra.lab.hosts import pyinfra_ssh_data
from aisha_infra.tools.ssh import SSHError, SSHHost, add_ssh_arguments, ssh_flags_given, ssh_overrides


def option(argv: list[str], name: str) -> str | None:
    values = [argv[i + 1].split("=", 1)[1] for i, a in enumerate(argv[:-1])
              if a == "-o" and argv[i + 1].startswith(f"{name}=")]
    return values[-1] if values else None


def effective_config(ssh: SSHHost) -> dict[str, str]:
    """What the system ssh client would use for this connection (`ssh -G`)."""
    argv = ssh.ssh_command()
    output = subprocess.run([argv[0], "-G", *argv[1:]], capture_output=True, text=True,
                            check=True, timeout=10).stdout
    return dict(line.split(" ", 1) for line in output.splitlines() if " " in line)


def test_nothing_set_means_pyinfras_defaults_and_the_users_ssh_config():
    argv = SSHHost.from_data("web-1.example.com", {}).ssh_command()
    assert option(argv, "StrictHostKeyChecking") == "accept-new"  # pyinfra's default
    assert option(argv, "UserKnownHostsFile") is None  # ~/.ssh/known_hosts, as pyinfra
    assert option(argv, "BatchMode") == "yes"
    # neither user, port nor key: ~/.ssh/config (or ssh's defaults) decide
    assert not {"-l", "-p", "-i", "-F"} & set(argv)
    assert argv[-2:] == ["--", "web-1.example.com"]


def test_lab_data_turns_checking_off_and_only_it():
    lab = SSHHost.from_data("lab-1", {**pyinfra_ssh_data("/keys/lab"), "ssh_hostname": "198.18.7.2"})
    argv = lab.ssh_command("true")
    assert option(argv, "StrictHostKeyChecking") == "no"
    assert option(argv, "UserKnownHostsFile") == "/dev/null"
    assert option(argv, "IdentityAgent") == "none"  # ssh_allow_agent: False
    assert argv[argv.index("-i") + 1] == "/keys/lab" and option(argv, "IdentitiesOnly") == "yes"
    assert argv[-3:] == ["--", "198.18.7.2", "true"]


@pytest.mark.parametrize("policy, openssh", [
    ("accept-new", "accept-new"), ("yes", "yes"), ("ask", "yes"), ("no", "no"), ("off", "no")])
def test_host_key_policies_as_pyinfra_names_them(policy, openssh, tmp_path):
    known = tmp_path / "known_hosts"
    argv = SSHHost.from_data("h", {"ssh_strict_host_key_checking": policy,
                                   "ssh_known_hosts_file": str(known)}).ssh_command()
    assert option(argv, "StrictHostKeyChecking") == openssh
    assert option(argv, "UserKnownHostsFile") == str(known)


def test_an_unknown_policy_is_refused_naming_the_key():
    with pytest.raises(SSHError, match=r"ssh_strict_host_key_checking='maybe' for h: use one of"):
        SSHHost.from_data("h", {"ssh_strict_host_key_checking": "maybe"})


def test_inventory_data_and_flags():
    data = {"ssh_hostname": "198.18.7.2", "ssh_user": "admin", "ssh_port": 2222, "ssh_key": "~/k"}
    argv = SSHHost.from_data("web-1", data).ssh_command()
    assert argv[argv.index("-l") + 1] == "admin" and argv[argv.index("-p") + 1] == "2222"
    assert not argv[argv.index("-i") + 1].startswith("~")  # expanded, as pyinfra does
    overridden = SSHHost.from_data("web-1", data, user="root", port=None, key=None)
    assert (overridden.user, overridden.port, overridden.key) == ("root", 2222, "~/k")


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the ssh client")
def test_ssh_config_applies_unless_the_inventory_says_otherwise(tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text("Host web-1\n  HostName 198.18.7.2\n  Port 2200\n  User deploy\n"
                      "  ProxyJump bastion.example.com\n")
    from_config = effective_config(SSHHost.from_data("web-1", {"ssh_config_file": str(config)}))
    assert (from_config["hostname"], from_config["port"], from_config["user"]) == (
        "198.18.7.2", "2200", "deploy")
    assert from_config["proxyjump"] == "bastion.example.com"
    assert from_config["stricthostkeychecking"] == "accept-new"

    data = {"ssh_config_file": str(config), "ssh_port": 22, "ssh_user": "admin"}
    overridden = effective_config(SSHHost.from_data("web-1", data))
    assert (overridden["port"], overridden["user"]) == ("22", "admin")
    assert overridden["proxyjump"] == "bastion.example.com"  # still through the bastion


def test_sudo_as_the_data_says():
    plain = SSHHost.from_data("h", {"ssh_user": "admin"})
    assert plain.ssh_command("nginx -t")[-1] == "nginx -t"
    sudo = SSHHost.from_data("h", {"ssh_user": "admin", "_sudo": True})
    assert sudo.ssh_command("nginx -t")[-1] == "sudo -H -n sh -c 'nginx -t'"
    other = SSHHost.from_data("h", {"_sudo": True, "_sudo_user": "aisha"})
    assert other.ssh_command("id")[-1] == "sudo -H -u aisha -n sh -c id"


def test_sudo_password_goes_to_stdin_never_to_argv(monkeypatch):
    seen = {}

    def fake_run(argv, **kwargs):
        seen.update(argv=argv, **kwargs)
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(ssh_module.subprocess, "run", fake_run)
    host = SSHHost.from_data("h", {"ssh_user": "admin", "_sudo": True, "_sudo_password": "s3cr€t"})
    host.run("cat /etc/shadow", timeout=5)
    assert seen["argv"][-1] == "sudo -H -S -k -p '' sh -c 'cat /etc/shadow'"
    assert not any("s3cr" in part for part in seen["argv"])
    assert seen["input"] == "s3cr€t\n" and seen["timeout"] == 5
    assert "s3cr" not in repr(host)

    host.run("tar -czf - /etc/letsencrypt", timeout=5, text=False)
    assert seen["input"] == "s3cr€t\n".encode()


def test_without_a_password_stdin_is_closed(monkeypatch):
    seen = {}
    monkeypatch.setattr(ssh_module.subprocess, "run",
                        lambda argv, **kw: seen.update(kw) or subprocess.CompletedProcess(argv, 0))
    SSHHost.from_data("h", {"_sudo": True}).run("true", timeout=5)
    assert seen["input"] is None and seen["stdin"] is subprocess.DEVNULL


@pytest.mark.parametrize("stderr, says", [
    ("sudo: a password is required\n", "give it as _sudo_password"),
    ("[sudo] password for admin: \nsudo: 1 incorrect password attempt\n", "_sudo_password for h is wrong"),
    ("@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@\nHost key verification failed.\n",
     "ssh-keygen -R h"),
    ("admin@h: Permission denied (publickey).\n", "admin@h: Permission denied (publickey)."),
])
def test_failures_say_the_fix(stderr, says):
    result = subprocess.CompletedProcess([], 1, "", stderr)
    assert says in SSHHost("h").failure(result)


def test_a_timeout_names_the_host_and_the_limit(monkeypatch):
    def too_slow(argv, **kwargs):
        raise subprocess.TimeoutExpired(argv, kwargs["timeout"])

    monkeypatch.setattr(ssh_module.subprocess, "run", too_slow)
    with pytest.raises(SSHError, match="ssh to h did not finish within 3 s"):
        SSHHost("h").run("true", timeout=3)


def test_command_line_flags_override_the_inventory():
    parser = argparse.ArgumentParser()
    add_ssh_arguments(parser)
    none = parser.parse_args([])
    assert not ssh_flags_given(none)
    lab_data = {**pyinfra_ssh_data("/keys/lab"), "ssh_user": "admin", "_sudo": True}
    assert SSHHost.from_data("h", lab_data, **ssh_overrides(none)) == SSHHost.from_data("h", lab_data)

    args = parser.parse_args(["--ssh-user", "admin", "--known-hosts-file", "/tmp/kh",
                              "--strict-host-key-checking", "yes", "--ssh-port", "2222"])
    host = SSHHost.from_data("h", {}, **ssh_overrides(args))
    assert (host.user, host.port, host.known_hosts_file, host.host_key_policy, host.sudo) == (
        "admin", 2222, "/tmp/kh", "yes", True)  # a user other than root: sudo
    assert not SSHHost.from_data("h", {}, **ssh_overrides(parser.parse_args(["--ssh-user", "root"]))).sudo
    with pytest.raises(SystemExit):  # checking off is for the lab's own data, not a flag
        parser.parse_args(["--strict-host-key-checking", "off"])


def test_diagnose_refuses_an_unknown_policy_in_one_line(tmp_path, capsys):
    from aisha_infra import cli

    inventory = tmp_path / "inventory.py"
    inventory.write_text("canary = [('web-1', {'ssh_strict_host_key_checking': 'maybe'})]\n")
    assert cli.main(["diagnose", "--inventory", str(inventory)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aisha-infra diagnose: ssh_strict_host_key_checking='maybe' for web-1")
    assert "Traceback" not in err
