"""Alembic migrations of the hwctl database (run them with `hwctl db upgrade`)."""
