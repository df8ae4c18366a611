"""Alembic environment of fieldsync's own chain (see server/migrations/__init__.py)."""

from server.migrations import run_environment

run_environment()
