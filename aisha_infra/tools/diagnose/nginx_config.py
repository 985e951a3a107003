"""nginx's configuration as the host has it: read over the Runner (`nginx -T`, or
following the includes when the configuration is broken) and parsed just enough to
find the certificate files nginx serves a domain with."""

from __future__ import annotations

import fnmatch
import posixpath
import re

from aisha_infra.deploy import paths
from aisha_infra.tools.diagnose.remote import Runner

_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|#[^\n]*|[{};]|[^\s{};"\'#]+')
MAX_INCLUDE_DEPTH = 10
MAX_CONFIG_FILES = 200
_SAFE_GLOB = re.compile(r"^[A-Za-z0-9_./*?@+=:,\[\]-]+$")


def read_nginx_config(run: Runner, nginx_conf: str = paths.NGINX_CONF) -> dict[str, str]:
    """nginx's configuration files {path: text}, as `nginx -T` dumps them. When the
    configuration is broken (e.g. a key that does not match its certificate), `nginx
    -T` prints nothing, so follow the includes with `cat` the way nginx would."""
    rc, dump, _ = run("nginx -T")
    if rc == 0:
        return split_nginx_dump(dump)
    conf_dir = posixpath.dirname(nginx_conf)
    files: dict[str, str] = {}
    pending = [nginx_conf]
    while pending and len(files) < MAX_CONFIG_FILES:
        pattern = posixpath.join(conf_dir, pending.pop(0))
        if not _SAFE_GLOB.match(pattern):
            continue  # never hand odd characters from a config file to a shell
        script = f'for f in {pattern}; do [ -f "$f" ] && printf "# configuration file %s:\\n" "$f" && cat -- "$f" && echo; done'
        rc, dump, _ = run(script)
        for path, text in split_nginx_dump(dump).items():
            if path not in files:
                files[path] = text
                pending += [args[0] for name, args, _ in _walk(_parse(text)) if name == "include" and args]
    return files


def _walk(directives: list):
    for directive in directives:
        yield directive
        if directive[2] is not None:
            yield from _walk(directive[2])


def nginx_tls_files(files: dict[str, str], port: int, domain: str) -> tuple[str, str] | None:
    """(ssl_certificate, ssl_certificate_key) of the server block nginx uses for
    `domain` on `port`; None when there is none. `files`: {path: text}, the main
    configuration file first."""
    main_path = next(iter(files))
    directives = _expand(_parse(files[main_path]), files, posixpath.dirname(main_path), 0)
    for server in _servers(directives, {}):
        names = server["server_name"]
        if port in server["ports"] and (domain in names or _wildcard_match(domain, names)):
            if server.get("ssl_certificate") and server.get("ssl_certificate_key"):
                return server["ssl_certificate"], server["ssl_certificate_key"]
    return None


def split_nginx_dump(dump: str) -> dict[str, str]:
    files: dict[str, str] = {}
    current = None
    for line in dump.splitlines(keepends=True):
        match = re.match(r"^# configuration file (.+):\s*$", line)
        if match:
            current = match.group(1)
            files[current] = ""
        elif current is not None:
            files[current] += line
    return files


def _parse(text: str) -> list:
    """nginx syntax to [(name, args, children or None)]."""
    tokens = [t for t in _TOKEN.findall(text) if not t.startswith("#")]
    position = 0

    def block() -> list:
        nonlocal position
        directives, words = [], []
        while position < len(tokens):
            token = tokens[position]
            position += 1
            if token == ";":
                if words:
                    directives.append((words[0], words[1:], None))
                words = []
            elif token == "{":
                children = block()
                directives.append((words[0] if words else "", words[1:], children))
                words = []
            elif token == "}":
                return directives
            else:
                words.append(token.strip("\"'"))
        return directives

    return block()


def _expand(directives: list, files: dict[str, str], conf_dir: str, depth: int) -> list:
    """Replace `include` by the directives of the files it names (as dumped)."""
    expanded = []
    for name, args, children in directives:
        if name == "include" and args and depth < MAX_INCLUDE_DEPTH:
            pattern = posixpath.join(conf_dir, args[0])
            for path in sorted(p for p in files if fnmatch.fnmatchcase(p, pattern)):
                expanded += _expand(_parse(files[path]), files, conf_dir, depth + 1)
        elif children is not None:
            expanded.append((name, args, _expand(children, files, conf_dir, depth)))
        else:
            expanded.append((name, args, None))
    return expanded


def _servers(directives: list, inherited: dict) -> list[dict]:
    """Server blocks with their ports, names and certificate files (inherited from
    the http level when not set in the server)."""
    own = _certificate_settings(directives, inherited)
    servers = []
    for name, args, children in directives:
        if children is None:
            continue
        if name != "server":
            servers += _servers(children, own)
            continue
        server = {"ports": set(), "server_name": [], **_certificate_settings(children, own)}
        for child, child_args, _ in children:
            if child == "listen" and child_args:
                listen_port = child_args[0].rsplit(":", 1)[-1]
                server["ports"].add(int(listen_port) if listen_port.isdigit() else 80)
            elif child == "server_name":
                server["server_name"] += child_args
        servers.append(server)
    return servers


def _certificate_settings(directives: list, inherited: dict) -> dict:
    """ssl_certificate(_key) set at this level, else inherited; the first of each,
    as a server may list an RSA and an ECDSA pair."""
    found = dict(inherited)
    for name in ("ssl_certificate", "ssl_certificate_key"):
        values = [args[0] for directive, args, children in directives if directive == name and args and children is None]
        if values:
            found[name] = values[0]
    return found


def _wildcard_match(domain: str, names: list[str]) -> bool:
    return any(n.startswith("*.") and domain.split(".", 1)[-1] == n[2:] for n in names)

