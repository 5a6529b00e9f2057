"""Opening the preference database: the engine, SQLite settings, and migrations on start.

SQLite (the default, ``$CHIMED_HOME/preferences.db``) runs in WAL mode with foreign keys on and a busy
timeout from the config. Write transactions start with ``BEGIN IMMEDIATE`` so a writer takes the
write lock before it reads: in WAL mode a deferred transaction that reads, then writes after another
writer committed, fails at once with SQLITE_BUSY and no busy timeout can save it. Any other
SQLAlchemy URL works too; the SQLite settings are then left out. On PostgreSQL a write that a concurrent
transaction got in the way of (a serialization failure or a deadlock) is retried like a busy SQLite one,
and migrations take an advisory lock, so that several app replicas may start on one new database at once.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
IMMEDIATE = "chimed_begin_immediate"  # execution option: start the transaction with BEGIN IMMEDIATE
RETRIES = 60  # backing off from 5 ms to 0.5 s: about 27 s of retrying on top of the busy timeout
# PostgreSQL's SQLSTATEs for "try the transaction again": serialization failure, deadlock detected
PG_RETRY_STATES = {"40001", "40P01"}
MIGRATION_LOCK = 0x63686D64  # PostgreSQL advisory lock key ("chmd") held while migrating
_migrating = threading.Lock()  # alembic's context is global to the process: one migration at a time
T = TypeVar("T")


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(url: str, busy_timeout_ms: int) -> Engine:
    """An engine for ``url``; for a SQLite file, its folder is created and the pragmas set per connection."""
    parsed = make_url(url)
    # Chinese text stays readable in the database file
    json_kwargs = dict(json_serializer=lambda obj: json.dumps(obj, ensure_ascii=False))
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, **json_kwargs)

    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": busy_timeout_ms / 1000}, **json_kwargs)

    @event.listens_for(engine, "connect")
    def _set_pragmas(dbapi_connection, _record):
        # take transactions out of the driver's hands so BEGIN (IMMEDIATE) is ours to emit
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable in WAL mode up to a power cut
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(IMMEDIATE) else "BEGIN")

    return engine


def is_busy(err: OperationalError) -> bool:
    """Whether SQLite refused for a lock held elsewhere, or PostgreSQL for a concurrent transaction
    (worth retrying), not for a real fault."""
    if getattr(err.orig, "sqlstate", None) in PG_RETRY_STATES:
        return True
    return "locked" in str(err.orig) or "busy" in str(err.orig)


def retry_while_busy(attempt: Callable[[], T]) -> T:
    """Call ``attempt`` again while it fails with a busy or locked database.

    The busy timeout already waits for a lock; this covers what it cannot: a busy snapshot, a
    journal-mode switch or checkpoint in progress, a timeout under a long queue of writers.
    """
    delay = 0.005
    for tries_left in range(RETRIES, -1, -1):
        try:
            return attempt()
        except OperationalError as err:
            if not is_busy(err) or not tries_left:
                raise
        time.sleep(delay * random.uniform(0.5, 1.5))  # jitter, so retrying writers do not collide again
        delay = min(delay * 2, 0.5)
    raise AssertionError("unreachable")


def alembic_config(url: str | None = None) -> AlembicConfig:
    """Alembic's config for the migrations shipped in this package (no alembic.ini needed)."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def migrate(engine: Engine) -> None:
    """Upgrade the database to the newest schema; a no-op when it is there already.

    The upgrade runs in one write transaction that first takes the database's write lock (SQLite) or
    an advisory lock (PostgreSQL), so two processes opening a new database at once do not both create
    the tables: the second waits, then finds the schema at head.
    """
    if current_revision(engine) == head_revision():
        return
    cfg = alembic_config()
    with _migrating, engine.connect() as conn:
        conn.execution_options(**{IMMEDIATE: True})
        with conn.begin():
            if engine.dialect.name == "postgresql":  # released when the transaction ends
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
