"""The Let's Encrypt carry-over archive (`aisha-infra certs export`), checked on the
control machine before anything reaches a host.

The archive comes from an old server, often one replaced because it was compromised,
and the host unpacks it as root: so it is opened here with Python's tarfile, every
member is checked (only `letsencrypt/...`, regular files, directories and symlinks
that stay inside the tree; no absolute paths, `..`, devices or hard links), every
certificate must match its key, and what is uploaded is a re-packed copy of the
checked members only (owned by root, no set-id bits, no group/other write).
"""

from __future__ import annotations

import gzip
import io
import posixpath
import tarfile
import zlib
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

ROOT = "letsencrypt"
# /etc/letsencrypt of one server is a few hundred small files: far more is not one.
MAX_MEMBERS = 10_000
MAX_BYTES = 64 * 1024 * 1024
_SAFE_MODE_BITS = 0o755  # strips set-id, sticky and group/other write


class ArchiveError(ValueError):
    """The archive must not be restored; the message says why."""


def _member_problem(member: tarfile.TarInfo) -> str | None:
    """What is wrong with one member on its own."""
    name = member.name
    if name.startswith("/"):
        return "is an absolute path"
    if ".." in name.split("/"):
        return "contains '..'"
    if any(ord(char) < 32 or ord(char) == 127 for char in name + member.linkname):
        return "contains a control character"
    if posixpath.normpath(name) != name:
        return "is not a normalised path"
    if name != ROOT and not name.startswith(ROOT + "/"):
        return f"is outside {ROOT}/ (the archive must hold /etc/letsencrypt only)"
    if name == ROOT and not member.isdir():
        return "is not a directory"
    if member.issym():
        if member.linkname.startswith("/"):
            return f"is a symbolic link to an absolute path ({member.linkname})"
        return None
    if member.islnk():
        return "is a hard link (certbot makes none)"
    if member.isdev() or member.isfifo():
        return "is a device or FIFO"
    if not (member.isfile() or member.isdir()):
        return "is not a regular file, directory or symbolic link"
    return None


def _placement_problem(member: tarfile.TarInfo, symlinks: set[str]) -> str | None:
    """What is wrong given the whole archive: nothing is written through a symbolic link,
    and a link's target, walked step by step as the kernel would, stays in the tree
    without passing through another link (whose `..` could lead anywhere)."""
    parts = member.name.split("/")
    for end in range(1, len(parts)):
        if "/".join(parts[:end]) in symlinks:
            return "lies below a symbolic link"
    if not member.issym():
        return None
    walked = parts[:-1]
    steps = [step for step in member.linkname.split("/") if step not in ("", ".")]
    for index, step in enumerate(steps):
        if step == "..":
            walked = walked[:-1]
            if not walked:
                return f"is a symbolic link leaving {ROOT}/ ({member.linkname})"
            continue
        walked = walked + [step]
        if index < len(steps) - 1 and "/".join(walked) in symlinks:
            return f"is a symbolic link through another symbolic link ({member.linkname})"
    return None


def _read_members(path: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    names: set[str] = set()
    total = 0
    with tarfile.open(path, "r:*") as archive:
        for member in archive:
            if len(members) >= MAX_MEMBERS:
                raise ArchiveError(f"holds more than {MAX_MEMBERS} entries: not an /etc/letsencrypt export")
            member.name = member.name.rstrip("/")
            problem = _member_problem(member)
            if problem:
                raise ArchiveError(f"member {member.name!r} {problem}")
            if member.name in names:
                raise ArchiveError(f"member {member.name!r} appears twice")
            names.add(member.name)
            data = None
            if member.isfile():
                total += member.size
                if total > MAX_BYTES:
                    raise ArchiveError(f"unpacks to more than {MAX_BYTES // (1024 * 1024)} MiB: not an /etc/letsencrypt export")
                data = archive.extractfile(member).read()
            members.append((member, data))
    symlinks = {member.name for member, _ in members if member.issym()}
    for member, _ in members:
        problem = _placement_problem(member, symlinks)
        if problem:
            raise ArchiveError(f"member {member.name!r} {problem}")
    return members


def _resolve(name: str, members: dict[str, tuple[tarfile.TarInfo, bytes | None]]) -> bytes | None:
    """Contents of `name`, following symlinks inside the archive (as certbot's live/ does)."""
    for _ in range(8):  # bounded: a link loop is simply "missing"
        entry = members.get(name)
        if entry is None:
            return None
        member, data = entry
        if not member.issym():
            return data
        name = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
    return None


def _public_key(certificate_or_key) -> bytes:
    return certificate_or_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _lineage_problem(lineage: str, members: dict) -> str | None:
    live = f"{ROOT}/live/{lineage}"
    key_pem = _resolve(f"{live}/privkey.pem", members)
    if key_pem is None:
        return f"live/{lineage}/privkey.pem is missing"
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        return f"live/{lineage}/privkey.pem is not an unencrypted PEM private key"
    for certificate_file in ("fullchain.pem", "cert.pem"):
        pem = _resolve(f"{live}/{certificate_file}", members)
        if pem is None:
            if certificate_file == "fullchain.pem":
                return f"live/{lineage}/fullchain.pem is missing"
            continue
        try:
            leaf = x509.load_pem_x509_certificates(pem)[0]
        except ValueError:
            return f"live/{lineage}/{certificate_file} is not a PEM certificate"
        if _public_key(leaf) != _public_key(key):
            return f"live/{lineage}/{certificate_file} does not match live/{lineage}/privkey.pem"
    return None


def _repack(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    # mtime=0: the same checked content always gives the same bytes
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as compressed:
        with tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as archive:
            for member, data in members:
                clean = tarfile.TarInfo(member.name)
                clean.type = tarfile.REGTYPE if member.isfile() else member.type  # no sparse/contiguous
                clean.linkname = member.linkname if member.issym() else ""
                clean.mode = member.mode & _SAFE_MODE_BITS
                clean.mtime = member.mtime
                clean.uid = clean.gid = 0
                clean.uname = clean.gname = "root"
                clean.size = len(data) if data is not None else 0
                archive.addfile(clean, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def checked_archive(path: str | Path, domain: str) -> bytes:
    """The archive at `path` re-packed from its checked members, ready to upload;
    raises ArchiveError naming the first fault."""
    try:
        members = _read_members(Path(path).expanduser())
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise ArchiveError(f"is not a readable tar.gz archive ({exc})") from None
    by_name = {member.name: (member, data) for member, data in members}
    lineages = sorted(
        name.split("/")[2] for name, (member, _) in by_name.items()
        if name.count("/") == 2 and name.startswith(f"{ROOT}/live/") and member.isdir()
    )
    if domain not in lineages:
        held = ", ".join(lineages) or "none"
        raise ArchiveError(f"holds no certificate for {domain} (live/ has: {held}); export the host that served it")
    for lineage in lineages:
        problem = _lineage_problem(lineage, by_name)
        if problem:
            raise ArchiveError(problem)
    return _repack(members)
