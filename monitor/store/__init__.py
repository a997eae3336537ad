"""Persistence: SQLAlchemy 2 Core schema, engine set-up, Alembic migrations and repositories."""
