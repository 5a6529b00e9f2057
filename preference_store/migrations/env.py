"""Alembic environment of the preference store.

The store runs migrations itself on open (:func:`preference_store.db.migrate` hands over its
connection). From a shell, for a new revision after changing ``models.py``:

    cd preference_store && CHIMED_DATABASE_URL=sqlite:////tmp/x.db \
        ../.venv/bin/alembic revision --autogenerate -m "what changed"
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

from preference_store.models import Base

target_metadata = Base.metadata


def _configure_and_run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite has almost no ALTER TABLE: later migrations copy tables
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url") or os.environ.get("CHIMED_DATABASE_URL")
    if not url:
        from core.config import load_config

        url = load_config("paper").database_url
    with create_engine(url).connect() as connection:
        _configure_and_run(connection)


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_migrations()
