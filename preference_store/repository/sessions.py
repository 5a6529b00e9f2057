"""The database behind every part of the store: opening (and migrating) it, and its sessions.

Reads get a plain session; each write is one transaction that takes SQLite's write lock first
(``BEGIN IMMEDIATE``) and is retried as a whole while the database is busy, so no caller sees
"database is locked". Other databases run writes concurrently (PostgreSQL: READ COMMITTED), so a write
that checked a unique key was free ("no demo annotator yet: add it") may find another writer inserted it
meanwhile: it is run once more, and then sees that row.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable
from typing import Self, TypeVar

from alembic.util.exc import CommandError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from core.config import StoreConfig, StudyConfig
from preference_store.db import IMMEDIATE, is_sqlite, make_engine, migrate, retry_while_busy
from preference_store.deid.detect import deidentify
from preference_store.validation import PreferenceStoreError

T = TypeVar("T")
UNIQUE_VIOLATION = "23505"  # PostgreSQL's SQLSTATE


def new_id() -> str:
    return uuid.uuid4().hex


class StoreSessions:
    """A preference database at ``url`` (any SQLAlchemy URL), migrated to the newest schema on open.

    Safe to share between threads (each call opens its own session); several processes may open the
    same SQLite file. ``settings`` defaults to the config tree's ``StoreConfig()``, ``study`` (the study section:
    how run-vs-run questions are decided and how the queue allocates prompts, which the queue follows) to ``StudyConfig()``. Every part of
    :class:`~preference_store.repository.PreferenceStore` reads through ``_read`` and writes through
    ``_write``.
    """

    def __init__(self, url: str, settings: StoreConfig | None = None, study: StudyConfig | None = None) -> None:
        self.url = url
        self.settings = settings or StoreConfig()
        self.study = study or StudyConfig()  # the study's rules the queue applies (study.allocation)
        try:
            shown = make_url(url).render_as_string(hide_password=True)
        except SQLAlchemyError:
            raise PreferenceStoreError(
                f"preference database URL {url!r} is not a SQLAlchemy URL (e.g. sqlite:////path/preferences.db): "
                "fix CHIMED_DATABASE_URL or store.database_url"
            ) from None
        try:
            self._engine = make_engine(url, self.settings.busy_timeout_ms)
            retry_while_busy(lambda: migrate(self._engine))
        except (OSError, SQLAlchemyError) as err:
            raise PreferenceStoreError(
                f"cannot open the preference database {shown} ({err.__class__.__name__}: {str(err).splitlines()[0]}): "
                "check the path and permissions, or set CHIMED_DATABASE_URL / store.database_url"
            ) from err
        except CommandError as err:  # the database is at a revision this code does not know
            raise PreferenceStoreError(
                f"the preference database {shown} has a schema newer than this code ({err}): update ChiMed Arena"
            ) from err
        self._read = sessionmaker(self._engine, expire_on_commit=False)
        sqlite = is_sqlite(self._engine)
        self._write_sessions = sessionmaker(
            self._engine.execution_options(**{IMMEDIATE: True}) if sqlite else self._engine,
            expire_on_commit=False,
        )
        self._sqlite = sqlite
        # SQLite takes one writer at a time anyway: queueing this process's writers on a lock spares
        # them the busy-wait sleeps; other processes are handled by the busy timeout and retries.
        self._write_lock = threading.Lock() if sqlite else contextlib.nullcontext()

    def _as_kept(self, text: str | None) -> str | None:
        """``text`` as the store keeps it: de-identified when ``store.redact_on_entry`` is on (then no path,
        the app's, the API's or a script's, writes a raw identifier), else unchanged."""
        if text is None or not self.settings.redact_on_entry:
            return text
        return deidentify(text)

    def _kept_messages(self, messages: list[dict]) -> list[dict]:
        """Messages as the store keeps them (:meth:`_as_kept` on each content)."""
        return [dict(m) | {"content": self._as_kept(m["content"])} for m in messages]

    def close(self) -> None:
        """Release the database connections."""
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in one write transaction, retried as a whole while the database is busy."""

        def attempt() -> T:
            with self._write_lock, self._write_sessions() as session, session.begin():
                return work(session)

        try:
            return retry_while_busy(attempt)
        except IntegrityError as err:
            if self._sqlite or getattr(err.orig, "sqlstate", None) != UNIQUE_VIOLATION:
                raise
        # another transaction inserted the key between work's check and its insert: now work sees it
        return retry_while_busy(attempt)

    def _write_once(self, work: Callable[[Session], T], stored: Callable[[Session], T | None]) -> T:
        """``_write(work)`` for a record with a unique client id: when another process stored the same id
        between ``work``'s check and its insert, the record ``stored`` reads back instead."""
        try:
            return self._write(work)
        except IntegrityError:
            with self._read() as session:
                record = stored(session)
                if record is None:
                    raise
                return record
