"""Alembic environment of the field-sales domain's chain (see server/migrations/__init__.py)."""

from server.migrations import run_environment

run_environment()
