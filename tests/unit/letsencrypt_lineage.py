"""/etc/letsencrypt exports as `aisha-infra certs export` makes them (certbot's layout:
live/<name>/*.pem are symlinks into archive/<name>/), and hostile variants of them."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from tests.unit import certfactory


def dir_(name: str, mode: int = 0o755) -> tuple:
    return ("dir", name, mode)


def file_(name: str, data: bytes, mode: int = 0o644) -> tuple:
    return ("file", name, data, mode)


def symlink(name: str, target: str) -> tuple:
    return ("symlink", name, target)


def hardlink(name: str, target: str) -> tuple:
    return ("hardlink", name, target)


def chardev(name: str) -> tuple:
    return ("chardev", name)


def lineage_members(domain: str = "aibots.test", leaf: certfactory.Issued | None = None,
                    key_pem: bytes | None = None) -> tuple[list[tuple], certfactory.Issued, certfactory.Issued]:
    """A certbot lineage for `domain` issued by a test root -> intermediate; `key_pem`
    replaces the leaf's key (to make a mismatch). Returns (members, root, leaf)."""
    root = certfactory.make_root()
    intermediate = certfactory.make_intermediate(root)
    leaf = leaf or certfactory.make_leaf(intermediate, [domain])
    archive, live = f"letsencrypt/archive/{domain}", f"letsencrypt/live/{domain}"
    members = [
        dir_("letsencrypt"),
        dir_("letsencrypt/archive", 0o700),
        dir_(archive),
        file_(f"{archive}/cert1.pem", leaf.pem),
        file_(f"{archive}/chain1.pem", intermediate.pem),
        file_(f"{archive}/fullchain1.pem", leaf.pem + intermediate.pem),
        file_(f"{archive}/privkey1.pem", key_pem or leaf.key_pem, 0o600),
        dir_("letsencrypt/live", 0o700),
        file_("letsencrypt/live/README", b"certbot's live/ directory\n"),
        dir_(live),
        *(symlink(f"{live}/{name}.pem", f"../../archive/{domain}/{name}1.pem")
          for name in ("cert", "chain", "fullchain", "privkey")),
        dir_("letsencrypt/renewal"),
        file_(f"letsencrypt/renewal/{domain}.conf", f"archive_dir = /etc/{archive}\n".encode()),
    ]
    return members, root, leaf


def write_archive(path: Path, members: list[tuple]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for kind, name, *rest in members:
            info = tarfile.TarInfo(name)
            info.uid = info.gid = 1000  # an ordinary user of the old host: never trusted
            info.uname = info.gname = "aisha"
            data = None
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, rest[0]
            elif kind == "file":
                data, info.mode = rest
                info.size = len(data)
            elif kind in ("symlink", "hardlink"):
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = rest[0]
            elif kind == "chardev":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return path
