"""RS256 tokens: the server verifies with a public key; tokens signed by anything else fail."""

from __future__ import annotations

import dataclasses

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from fieldsync_client import HttpSync, SyncHttpError
from server.app import create_app
from server.auth import TokenService

from .support import seed


def _pem_pair() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


async def test_rs256_tokens_verify_with_the_public_key(services):
    w = await seed(services)
    private, public = _pem_pair()
    settings = dataclasses.replace(services.settings, jwt_public_key=public, jwt_private_key=private)
    services.tokens = TokenService(settings)
    assert services.tokens.algorithm == "RS256"
    app = create_app(settings, services=services)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fs") as http:
        good = services.tokens.issue(user_id=w.sales1, tenant_id=1, role="salesperson")
        device = HttpSync(http, good, "rs-phone")
        await device.sync()
        assert set(device.replica.rows("customers")) == {1, 2, 3, 4}
        other_private, _ = _pem_pair()
        forged = jwt.encode({"sub": str(w.sales1), "tid": 1, "role": "salesperson", "exp": 2**31 - 1},
                            other_private, algorithm="RS256")
        for bad in (forged,):
            try:
                await HttpSync(http, bad, "rs-phone").pull_once()
            except SyncHttpError as error:
                assert (error.status, error.code) == (401, "AUTH_INVALID")
            else:
                raise AssertionError("a token signed with another key was accepted")
