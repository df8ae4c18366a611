"""The domain a server serves, handed to it as one object (``FIELDSYNC_DOMAIN``).

The generic server takes from a :class:`Domain` what it needs to sync someone's tables:
the registry (synced tables, datasets with their roles and scopes, mutations), how a
token's claims become a :class:`sync.schema.Principal` (claims alone, or a lookup in the
company's own users table), and which users are switched off. The bundled field-sales/POS
domain (``server.domain.plugin:domain``) is one such object; a company's own is another, e.g.
``FIELDSYNC_DOMAIN=acme_sync.domain:domain``.

It also carries the domain's migrations (its own tables, if fieldsync is to create them),
its background tasks (a :class:`jobs.runner.JobPlugin`), the tables its back office
writes with their checks, its directory of users and tenants, and endpoints of its own.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from starlette.routing import BaseRoute

from jobs.runner import JobPlugin
from sync.changes import ChangeSet
from sync.errors import AuthError, ErrorCode
from sync.schema import SINGLE_TENANT, Principal, Registry
from sync.storage import Database

#: Builds the registry; handed where mutations enqueue background jobs (or None).
RegistryFactory = Callable[[Any], Registry]
PrincipalResolver = Callable[[Database, dict], Awaitable[Principal]]
#: Of these user ids of a tenant, those switched off (sessions of theirs are closed).
InactiveUsers = Callable[[Database, int, list[int]], Awaitable[set[int]]]


async def _nobody_inactive(db: Database, tenant_id: int, user_ids: list[int]) -> set[int]:
    return set()


@dataclass(frozen=True)
class Writable:
    """A table the back office writes (``POST /admin/{name}``, ``fieldsync import``)."""

    table: sa.Table
    columns: tuple[str, ...]  # those a batch may set; the tenant column is the caller's
    key: str = "id"
    #: A rule of the domain's over one row: the refusal's text, or None.
    check: Callable[[dict[str, Any]], str | None] | None = None
    #: A write may change who sees what (a user's branch or role): live sessions re-read
    #: their principal, and a switched-off user's close.
    rescope: bool = False
    #: The domain writes the batch itself, in its transaction, instead of the generic
    #: upsert: a change with consequences (an order shipped takes its stock). Called with
    #: the change set, the checked rows and how to name row i in a refusal; refuses with
    #: ``sync.errors.BadRequest``. Such a table's rows are not deleted through the office.
    write: Callable[[ChangeSet, list[dict[str, Any]], Callable[[int], str]], Awaitable[None]] | None = None


@dataclass(frozen=True)
class User:
    name: str | None
    role: str | None
    active: bool


@dataclass(frozen=True)
class Directory:
    """The company's people and tenants, as the admin endpoints show and check them. A
    claims-only domain has none: any user id is taken at its word, tenants by number."""

    users: Callable[[Database, int, list[int]], Awaitable[dict[int, User]]]
    tenant: Callable[[Database, str], Awaitable[int | None]]  # a slug (`fieldsync devices --tenant`)
    #: ``(tenant slug, username)`` -> ``(user id, tenant id, role)``, for `fieldsync token`.
    login: Callable[[Database, str, str], Awaitable[tuple[int, int, str] | None]] | None = None


@dataclass(frozen=True)
class Domain:
    name: str
    registry: RegistryFactory
    principal: PrincipalResolver
    roles: tuple[str, ...]
    inactive_users: InactiveUsers = _nobody_inactive
    #: Its background tasks, registered beside fieldsync's own (compaction, hot pages, sweep).
    jobs: JobPlugin | None = None
    #: An Alembic script directory creating the domain's own tables (None: the tables are
    #: the company's, made by someone else), and their metadata for autogenerate.
    migrations: str | None = None
    metadata: sa.MetaData | None = None
    writable: Mapping[str, Writable] = field(default_factory=dict)
    directory: Directory | None = None
    #: Endpoints of its own, beside the generic ones (the bundled domain: its PDF files).
    routes: tuple[BaseRoute, ...] = ()


def claims_only(roles: tuple[str, ...]) -> PrincipalResolver:
    """A resolver that trusts the token alone: ``sub`` is the user, ``role`` one of
    ``roles``, ``tid`` the tenant (a single-company install: tenant 1). For a company whose
    identity provider already says everything a scope needs."""
    async def resolve(db: Database, claims: dict) -> Principal:
        if claims.get("role") not in roles:
            raise AuthError(ErrorCode.AUTH_INVALID, f"the token's role is not one of {', '.join(roles)}")
        attrs = {k: v for k, v in claims.items() if k not in ("sub", "tid", "role", "exp", "iat", "nbf", "did")}
        return Principal(tenant_id=int(claims.get("tid", SINGLE_TENANT)), user_id=int(claims["sub"]),
                         role=claims["role"], attrs=attrs)

    return resolve


def load(spec: str) -> Domain:
    """``package.module:attribute`` → the Domain there.

    Raises:
        ValueError: the spec does not name a Domain.
    """
    module_name, _, attribute = spec.partition(":")
    try:
        found = getattr(importlib.import_module(module_name), attribute or "domain")
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"FIELDSYNC_DOMAIN={spec!r}: {exc}") from None
    if not isinstance(found, Domain):
        raise ValueError(f"FIELDSYNC_DOMAIN={spec!r} names a {type(found).__name__}, not a server.plugin.Domain")
    return found
