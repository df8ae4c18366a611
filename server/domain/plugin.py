"""The bundled field-sales/POS domain as the plug-in the server is given by default
(``FIELDSYNC_DOMAIN=server.domain.plugin:domain``)."""

from __future__ import annotations

from pathlib import Path

from ..plugin import Domain
from .principals import ROLES, inactive_users, principal_for
from .registry import build_registry
from .tables import metadata

domain = Domain("field-sales", build_registry, principal_for, ROLES, inactive_users, bundled_jobs=True,
                migrations=str(Path(__file__).parent / "migrations"), metadata=metadata)
