"""nginx configuration files that go live only once `nginx -t` accepts them.

files.template would overwrite the working file before anything checks the new
one. Here the new content is staged beside it, swapped in, tested, and swapped
back when nginx rejects it, so nginx never holds a broken configuration and the
run fails with nginx's own message.
"""

from __future__ import annotations

import hashlib
import shlex
import time
from io import StringIO

from pyinfra import host
from pyinfra.api import operation
from pyinfra.api.exceptions import OperationError
from pyinfra.facts.files import Link, Sha1File

from aisha_infra.deploy.facts.system import NginxVersion, wants_http2_directive
from aisha_infra.deploy.facts.tls import CertificateState
from aisha_infra.deploy.operations.uploads import show_diff, upload
from aisha_infra.deploy.rendering import certificate_snippet_context, render

_SWAP_AND_TEST = r"""
dest={dest}; new={new}; link={link}; target={dest}
backup="$dest.aisha-previous"
had_file=0; made_link=0
if [ -e "$dest" ]; then cp -p "$dest" "$backup"; had_file=1; fi
mv -f "$new" "$dest"
if [ -n "$link" ] && [ ! -L "$link" ]; then ln -sfn "$target" "$link"; made_link=1; fi
if ! output=$(nginx -t 2>&1); then
    if [ "$had_file" = 1 ]; then mv -f "$backup" "$dest"; else rm -f "$dest"; fi
    if [ "$made_link" = 1 ]; then rm -f "$link"; fi
    echo "nginx rejected the new $dest, so it was NOT installed: the previous configuration is back in place and nginx keeps serving it." >&2
    echo "nginx -t said:" >&2
    echo "$output" >&2
    exit 1
fi
rm -f "$backup"
"""


def swap_and_test_script(dest: str, staged: str, link: str | None) -> str:
    return _SWAP_AND_TEST.format(
        dest=shlex.quote(dest), new=shlex.quote(staged), link=shlex.quote(link or "")
    ).strip()


@operation()
def validated_config(template: str, dest: str, context: dict, enable_link: str | None = None):
    """
    Render a template to an nginx configuration file, live only if `nginx -t` passes.

    + template: template name under templates/
    + dest: file on the host
    + context: template variables
    + enable_link: symlink to `dest` to create as well (sites-enabled), tested together
    """
    content = render(template, context)
    wanted_sha = hashlib.sha1(content.encode()).hexdigest()
    link_ok = enable_link is None or (host.get_fact(Link, path=enable_link) or {}).get("link_target") == dest

    same_content = host.get_fact(Sha1File, path=dest) == wanted_sha
    if same_content and link_ok:
        host.noop(f"{dest} is up to date")
        return

    if not same_content:
        show_diff(dest, content)
    staged = f"{dest}.aisha-new"
    yield from upload(StringIO(content), staged, mode="0644", then=swap_and_test_script(dest, staged, enable_link))


@operation()
def site_config(template: str, dest: str, context: dict, enable_link: str | None = None):
    """
    validated_config for a site whose `http2_directive` follows the nginx on the host.

    + template, dest, context, enable_link: as validated_config

    Read when the operation runs: on a fresh host nginx is installed by then (while
    preparing, only the version apt would install is known).
    """
    version = host.get_fact(NginxVersion)
    if version is None and host.state.is_executing:
        raise OperationError("cannot tell nginx's version (`nginx -v`): is the nginx package installed?")
    yield from validated_config._inner(
        template=template,
        dest=dest,
        context={**context, "http2_directive": wants_http2_directive(version)},
        enable_link=enable_link,
    )


@operation()
def certificate_snippet(
    dest: str,
    selfsigned_cert: str,
    selfsigned_key: str,
    letsencrypt_live_dir: str | None = None,
    names: list[str] | tuple = (),
):
    """
    Point nginx at the Let's Encrypt certificate once one covering `names` exists,
    at the self-signed one until then (so nginx always has a certificate to start with).

    + dest: snippet file the site includes
    + selfsigned_cert, selfsigned_key: the fallback pair
    + letsencrypt_live_dir: /etc/letsencrypt/live/<domain>, or None in self-signed mode
    + names: DNS names the Let's Encrypt certificate must cover
    """
    cert, key, source = selfsigned_cert, selfsigned_key, "self-signed"
    if letsencrypt_live_dir:
        chain, privkey = f"{letsencrypt_live_dir}/fullchain.pem", f"{letsencrypt_live_dir}/privkey.pem"
        state = host.get_fact(CertificateState, cert=chain, key=privkey)
        if state and set(names) <= set(state["names"]) and state["key_matches"] and state["not_after"] > time.time():
            cert, key, source = chain, privkey, "Let's Encrypt"
    yield from validated_config._inner(
        template="nginx/aisha-webhook-certificate.conf.j2",
        dest=dest,
        context=certificate_snippet_context(cert, key, source),
    )


@operation()
def reloaded(service: str = "nginx.service"):
    """
    Reload nginx for a changed configuration or certificate, if it runs; a stopped one stays
    stopped (the operation that runs nginx starts it with the new files). Chain it with
    `_if=`: it reads nothing first (pyinfra's systemd.service asks the unit's state), so
    the facts after it are read once, after the reload (aisha_infra/deploy/prefetch.py).

    + service: the nginx unit
    """
    yield f"systemctl try-reload-or-restart {shlex.quote(service)}"
