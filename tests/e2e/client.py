"""HTTPS to a lab host by address with SNI/Host = domain (no DNS), verification on."""

from __future__ import annotations

import json
import ssl

import urllib3


def pool(address: str, domain: str, port: int, ca_bundle: str | None, maxsize: int = 1,
         timeout: float = 10, server_hostname: str | None = None) -> urllib3.HTTPSConnectionPool:
    context = ssl.create_default_context(cafile=ca_bundle)
    return urllib3.HTTPSConnectionPool(
        address, port, ssl_context=context, server_hostname=server_hostname or domain,
        assert_hostname=server_hostname or domain, retries=False, maxsize=maxsize,
        timeout=urllib3.Timeout(connect=timeout, read=timeout),
    )


def request(connection_pool, method: str, path: str, domain: str, port: int, body: bytes | None = None,
            content_type: str = "application/json", headers: dict | None = None):
    all_headers = {"Host": f"{domain}:{port}", **(headers or {})}
    if body is not None:
        all_headers["Content-Type"] = content_type
    return connection_pool.urlopen(method, path, body=body, headers=all_headers, redirect=False)


def post_json(address: str, domain: str, port: int, path: str, payload: dict, ca_bundle: str | None):
    with pool(address, domain, port, ca_bundle) as connection_pool:
        return request(connection_pool, "POST", path, domain, port, json.dumps(payload).encode())


def fal_event(request_id: str) -> dict:
    return {"request_id": request_id, "gateway_request_id": request_id, "status": "OK",
            "payload": {"images": [{"url": "https://example.invalid/a.png"}]}, "error": None}
