"""The bundled field-sales/POS domain as the plug-in the server is given by default
(``FIELDSYNC_DOMAIN=server.domain.plugin:domain``)."""

from __future__ import annotations

from pathlib import Path

from starlette.routing import Route

from ..plugin import Domain
from . import documents
from .background.tasks import FieldSalesJobs
from .backoffice import WRITABLE
from .principals import DIRECTORY, ROLES, inactive_users, principal_for
from .registry import build_registry
from .tables import metadata

domain = Domain(
    "field-sales", build_registry, principal_for, ROLES, inactive_users, jobs=FieldSalesJobs(),
    migrations=str(Path(__file__).parent / "migrations"), metadata=metadata,
    writable=WRITABLE, directory=DIRECTORY,
    routes=(Route("/documents/{id}", documents.fetch, methods=["GET"]),),
)
