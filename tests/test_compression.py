"""Gzip honours Accept-Encoding's q-values (server/compression.py)."""

from __future__ import annotations

import pytest

from server.compression import accepts_gzip

from .support import seed, token


@pytest.mark.parametrize("header, accepted", [
    ("gzip", True), ("gzip, deflate, br", True), ("GZIP;Q=0.5", True), ("x-gzip", True),
    ("*", True), ("br;q=1, *;q=0.1", True), ("gzip;q=1, *;q=0", True),
    ("", False), ("identity", False), ("br", False), ("deflate, br;q=0.9", False),
    ("gzip;q=0", False), ("gzip;q=0, identity", False), ("gzip; q=0.000", False),
    ("*;q=0", False), ("gzip;q=0, *", False), ("gzip;q=oops", False), ("gzipped", False),
])
def test_accept_encoding_is_read_with_its_weights(header, accepted):
    assert accepts_gzip(header) is accepted


async def test_a_client_refusing_gzip_gets_identity(services, client):
    w = await seed(services)
    auth = {"Authorization": f"Bearer {token(services, w.sales1, 'salesperson')}"}
    sizes = {}
    for header in ("gzip", "gzip;q=0, identity", "identity", "br;q=1, gzip;q=0.2"):
        response = await client.get("/sync/schema", headers={**auth, "Accept-Encoding": header})
        assert response.status_code == 200
        sizes[header] = (response.headers.get("content-encoding"), len(response.content))
    assert len(response.content) > 1024, "big enough to be compressed"
    assert sizes["gzip"][0] == "gzip" and sizes["br;q=1, gzip;q=0.2"][0] == "gzip"
    assert sizes["gzip;q=0, identity"][0] is None and sizes["identity"][0] is None
