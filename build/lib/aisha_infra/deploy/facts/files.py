"""A whole directory tree read in one command."""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase


class DirectoryTree(FactBase):
    """
    Returns every entry below a directory with its owner, group, mode (and a file's SHA1),
    or None when it is missing or a symlink:

    .. code:: python

        {
            "": ("d", "root", "root", "755"),  # the directory itself
            "pkg": ("d", "root", "root", "755"),
            "pkg/app.py": ("f", "root", "root", "644", "3f786850e387550fdab836ed7e6dc881de23001b"),
        }

    pyinfra's files.sync reads two facts per file; this is one command for the tree.
    """

    @staticmethod
    def default():
        return None

    def command(self, path: str) -> str:
        p = shlex.quote(path)
        return (
            f"test -d {p} && ! test -L {p} || exit 0; cd {p} && "
            "find . -printf '%y %u %g %m %P\\n' && echo --- && find . -type f -exec sha1sum {} +"
        )

    def process(self, output):
        lines = list(output)
        if "---" not in lines:
            return None
        split = lines.index("---")
        tree = {}
        for line in lines[:split]:
            parts = line.split(" ", 4)
            if len(parts) < 4:  # a name with a newline in it: never equal to a wanted tree
                tree[line] = ("?",)
                continue
            tree[parts[4] if len(parts) > 4 else ""] = tuple(parts[:4])
        for line in lines[split + 1 :]:
            sha1, _, name = line.partition("  ./")
            if name in tree:
                tree[name] += (sha1,)
        return tree
