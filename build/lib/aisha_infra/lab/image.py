"""Base images for the lab: one debootstrap per Debian release, built once and cached.

Also the host side prerequisites (root, a Debian-like system, the tools the lab calls) and
the apt mirror configuration the images share with this machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

SUPPORTED_RELEASES = ("bookworm", "trixie")  # Debian 12, Debian 13
DEFAULT_RELEASE = "bookworm"
DEFAULT_CACHE_DIR = "/var/cache/aisha-lab"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
IMAGE_PACKAGES = (
    "systemd,systemd-sysv,dbus,openssh-server,python3,sudo,ca-certificates,iproute2"
)
DEBOOTSTRAP_TIMEOUT_S = 1800
IMAGE_LOCK_TIMEOUT_S = 2400  # long enough for another process's build to finish

# command the lab runs -> Debian package that provides it
HOST_TOOLS = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "iptables": "iptables",
    "nsenter": "util-linux",
    "ip": "iproute2",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}


class LabError(RuntimeError):
    """The lab cannot do what was asked; the message says why and what to do."""


def run_command(
    cmd: list[str], *, timeout: float = 60, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess:
    """Run a host command with a time bound; failures become a LabError naming the command."""
    try:
        result = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"`{' '.join(cmd)}` did not finish within {timeout:.0f} s") from exc
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise LabError(f"`{' '.join(cmd)}` failed (exit {result.returncode}): {detail}")
    return result


@contextlib.contextmanager
def file_lock(path: Path, timeout: float, what: str) -> Iterator[None]:
    """Exclusive lock on `path` between processes, waiting at most `timeout` seconds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LabError(
                        f"{what}: another process holds {path} for more than {timeout:.0f} s"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- host prerequisites -------------------------------------------------------------------

def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError(
            "the lab needs root (systemd-nspawn, veth links, iptables, /var/lib/aisha-lab): "
            "run it with sudo"
        )


def is_debian_like() -> bool:
    try:
        fields = dict(
            line.split("=", 1)
            for line in Path("/etc/os-release").read_text().splitlines()
            if "=" in line
        )
    except OSError:
        return Path("/etc/debian_version").exists()
    ids = f"{fields.get('ID', '')} {fields.get('ID_LIKE', '')}".replace('"', "").split()
    return "debian" in ids or Path("/etc/debian_version").exists()


def ensure_host_tools() -> None:
    """Install the lab's host tools with apt-get if any is missing."""
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})
    if not missing:
        return
    require_root()
    if not is_debian_like():
        raise LabError(
            f"the lab needs {', '.join(missing)} and installs them with apt-get, "
            "but this machine is not Debian-like: install them by hand"
        )
    print(f"lab: installing host tools: {' '.join(missing)}", flush=True)
    env_cmd = ["env", "DEBIAN_FRONTEND=noninteractive"]
    run_command([*env_cmd, "apt-get", "update", "-q"], timeout=600)
    run_command(
        [*env_cmd, "apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        timeout=1200,
    )


# --- apt mirrors --------------------------------------------------------------------------

def apt_source_uris(root: Path = Path("/")) -> list[str]:
    """Repository URIs from root's sources.list, sources.list.d/*.list and *.sources."""
    apt_dir = root / "etc/apt"
    uris: list[str] = []
    one_line_files = [apt_dir / "sources.list", *sorted(apt_dir.glob("sources.list.d/*.list"))]
    for path in one_line_files:
        for line in _read_lines(path):
            words = line.split("#", 1)[0].split()
            if words and words[0] in ("deb", "deb-src"):
                # options like [signed-by=...] come before the URI
                uris += [w for w in words[1:] if "://" in w][:1]
    for path in sorted(apt_dir.glob("sources.list.d/*.sources")):
        for line in _read_lines(path):
            if line.lower().startswith("uris:"):
                uris += line.split(":", 1)[1].split()
    return list(dict.fromkeys(uris))


def apt_source_hosts(root: Path = Path("/")) -> list[str]:
    hosts = (urllib.parse.urlsplit(uri).hostname for uri in apt_source_uris(root))
    return list(dict.fromkeys(h for h in hosts if h))


def host_mirrors() -> tuple[str, str]:
    """(Debian mirror, security mirror) this machine's apt already uses."""
    uris = [u.rstrip("/") for u in apt_source_uris() if u.startswith("http")]
    security = [u for u in uris if u.endswith("/debian-security")]
    main = [u for u in uris if u.endswith("/debian")]
    return (main[0] if main else DEFAULT_MIRROR,
            security[0] if security else DEFAULT_SECURITY_MIRROR)


def _read_lines(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text().splitlines()]
    except OSError:
        return []


# --- the image ----------------------------------------------------------------------------

def cache_dir() -> Path:
    return Path(os.environ.get("AISHA_LAB_CACHE", DEFAULT_CACHE_DIR))


def check_release(release: str) -> None:
    if release not in SUPPORTED_RELEASES:
        raise LabError(
            f"release {release!r} is not supported: choose one of {', '.join(SUPPORTED_RELEASES)}"
        )


def ensure_image(release: str = DEFAULT_RELEASE) -> Path:
    """Path of the cached base image for `release`, built first if needed.

    The build goes to a temporary directory renamed when complete, so a crashed build is
    never used; the lock keeps two concurrent `up`s from building the same image twice.
    """
    check_release(release)
    image = cache_dir() / release
    if image.is_dir():
        return image
    require_root()
    with file_lock(cache_dir() / f".{release}.lock", IMAGE_LOCK_TIMEOUT_S, f"image {release}"):
        if image.is_dir():  # another process built it while we waited
            return image
        building = cache_dir() / f".{release}.building"
        remove_tree(building)  # left over by a crashed build
        started = time.monotonic()
        print(f"lab: building the {release} base image (about a minute, once)...", flush=True)
        mirror, security_mirror = host_mirrors()
        run_command(
            ["debootstrap", "--variant=minbase", f"--include={IMAGE_PACKAGES}",
             release, str(building), mirror],
            timeout=DEBOOTSTRAP_TIMEOUT_S,
        )
        customize_image(building, release, mirror, security_mirror)
        os.rename(building, image)
        print(f"lab: {release} image ready in {time.monotonic() - started:.0f} s: {image}",
              flush=True)
    return image


def customize_image(root: Path, release: str, mirror: str, security_mirror: str) -> None:
    """What every copy shares: full apt sources, no SSH host keys, no package cache."""
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    write_file(root, "etc/apt/sources.list.d/debian.sources", apt_sources(
        release, mirror, security_mirror))
    # each copy gets its own SSH host key (and machine id) from the lab before it boots
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    write_file(root, "etc/ssh/sshd_config.d/aisha-lab-hostkey.conf",
               "# The lab generates only an ed25519 host key per copy (fast).\n"
               "HostKey /etc/ssh/ssh_host_ed25519_key\n")
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()  # smaller image, faster copies
    (root / "root/.ssh").mkdir(mode=0o700, exist_ok=True)


def apt_sources(release: str, mirror: str, security_mirror: str) -> str:
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    return (
        f"Types: deb\nURIs: {mirror}\nSuites: {release} {release}-updates\n"
        f"Components: main\nSigned-By: {keyring}\n\n"
        f"Types: deb\nURIs: {security_mirror}\nSuites: {release}-security\n"
        f"Components: main\nSigned-By: {keyring}\n"
    )


def write_file(root: Path, relative: str, content: str, mode: int = 0o644) -> None:
    """Write a file inside a rootfs without ever following a symlink out of it."""
    path = root / relative
    if path.is_symlink():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    path.chmod(mode)


def remove_tree(path: Path) -> None:
    """Remove a rootfs tree we created, first unmounting anything a crash left mounted in it
    (debootstrap mounts /proc and /sys inside its target), never crossing into other mounts."""
    if not path.exists():
        return
    prefix = str(path.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for mount_point in sorted((m for m in mounts if m.startswith(prefix)), reverse=True):
        run_command(["umount", "--lazy", mount_point], timeout=30)
    run_command(["rm", "-rf", "--one-file-system", "--", str(path)], timeout=300)
