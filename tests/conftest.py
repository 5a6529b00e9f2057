"""Shared fixtures: every test gets its own CHIMED_HOME; the tiny data and the tiny run are built once
per session (they are real builds and real training runs, just small)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres_server import PostgresServer, PostgresUnavailable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def chimed_home(tmp_path, monkeypatch) -> Path:
    """A fresh, empty work directory for this test."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("CHIMED_HOME", str(home))
    monkeypatch.delenv("CHIMED_DATABASE_URL", raising=False)
    return home


@pytest.fixture(scope="session")
def tiny_data_home(tmp_path_factory) -> Path:
    """A work directory holding the tiny ChiMed build (read-only for tests; copy it to change it)."""
    from core.config import load_config
    from training.data.build import build_chimed

    home = tmp_path_factory.mktemp("tiny_data")
    old = os.environ.get("CHIMED_HOME")
    os.environ["CHIMED_HOME"] = str(home)
    try:
        build_chimed(load_config("tiny"), strict=False)
    finally:
        _restore("CHIMED_HOME", old)
    return home


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_data_home) -> tuple[Path, str]:
    """(home, run_id) of one complete tiny train-all, shared by the tests that only read it."""
    from chimed import train_and_register as train_all  # train-all as the command line runs it: registered too
    from core.config import load_config

    home = tmp_path_factory.mktemp("tiny_run")
    shutil.copytree(tiny_data_home / "data", home / "data")
    old = os.environ.get("CHIMED_HOME")
    os.environ["CHIMED_HOME"] = str(home)
    try:
        run_id = train_all(load_config("tiny"))
    finally:
        _restore("CHIMED_HOME", old)
    return home, run_id


@pytest.fixture
def make_pool():
    """``make_pool(cfg, **options)``: a model pool whose worker processes stop when the test ends."""
    from app.serving.pool import ModelPool

    pools = []

    def _make(cfg, **options):
        pools.append(ModelPool(cfg, **options))
        return pools[-1]

    yield _make
    for pool in pools:
        pool.close()


@pytest.fixture
def use_home(monkeypatch):
    """Point CHIMED_HOME at a given directory for the rest of the test: ``use_home(path)``."""

    def _use(path: Path) -> Path:
        monkeypatch.setenv("CHIMED_HOME", str(path))
        monkeypatch.delenv("CHIMED_DATABASE_URL", raising=False)
        return path

    return _use


def _restore(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


# --- preference store (issue 5) ------------------------------------------------------------------


# the store on SQLite and on PostgreSQL (issue 21): tests marked both_backends run on each


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "both_backends: the test's store (the store_url / pref_store fixtures) "
        "runs on SQLite and on the session's PostgreSQL server",
    )
    config.addinivalue_line("markers", "sqlite_only: a test of SQLite itself in a both_backends module")


def pytest_generate_tests(metafunc):
    """Tests marked ``both_backends`` that use ``store_backend`` (through ``store_url`` or ``pref_store``)
    run once per backend; every other test keeps the default SQLite store."""
    node = metafunc.definition
    if (
        "store_backend" in metafunc.fixturenames
        and node.get_closest_marker("both_backends")
        and not node.get_closest_marker("sqlite_only")
    ):
        metafunc.parametrize("store_backend", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def store_backend(request) -> str:
    """ "sqlite" or "postgresql": the backend of this test's preference store."""
    return getattr(request, "param", "sqlite")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the session (tests/postgres_server.py), started on first use. Without its
    binaries the PostgreSQL tests skip, unless CHIMED_REQUIRE_POSTGRES=1 (CI), where they fail."""
    try:
        server = PostgresServer.start()
    except PostgresUnavailable as err:
        if os.environ.get("CHIMED_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"CHIMED_REQUIRE_POSTGRES=1 and {err}", pytrace=False)
        pytest.skip(f"no PostgreSQL for the PostgreSQL store tests: {err}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_template(postgres_server) -> str:
    """A database at the newest schema that ``store_url`` copies: migrating is the slow part of a new store."""
    from preference_store.repository import PreferenceStore

    url = postgres_server.create_database()
    PreferenceStore(url).close()
    return url


@pytest.fixture
def empty_database_url(store_backend, tmp_path, request) -> Iterator[str]:
    """A database with no tables yet: a new SQLite file, or a new database on the PostgreSQL server."""
    if store_backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'new' / 'p.db'}"
        return
    server = request.getfixturevalue("postgres_server")
    url = server.create_database()
    yield url
    server.drop_database(url)


@pytest.fixture
def store_url(store_backend, chimed_home, request, monkeypatch) -> Iterator[str]:
    """The URL of this test's new preference database, where ``PreferenceStore.from_config`` and the
    command line find it: $CHIMED_HOME/preferences.db on SQLite; on PostgreSQL a fresh database already
    at the newest schema, set as CHIMED_DATABASE_URL."""
    from core.config import load_config

    if store_backend == "sqlite":
        yield load_config("tiny").database_url
        return
    server = request.getfixturevalue("postgres_server")
    url = server.create_database(template=request.getfixturevalue("postgres_template"))
    monkeypatch.setenv("CHIMED_DATABASE_URL", url)
    yield url
    server.drop_database(url)  # also closes what a test left open


@pytest.fixture
def pref_store(store_url):
    """A fresh preference store at ``store_url`` (tiny profile), with run "r1" registered."""
    from core.config import load_config
    from preference_store.repository import PreferenceStore

    store = PreferenceStore.from_config(load_config("tiny"))
    store.register_checkpoints("r1", ["base", "cpt", "sft", "dpo"])
    yield store
    store.close()


# --- arena app (issue 6) -------------------------------------------------------------------------


@pytest.fixture
def app_home(tiny_run, tmp_path, use_home) -> tuple[Path, str]:
    """(home, run_id): a private copy of the tiny run's work directory, set as CHIMED_HOME, so a test
    may write judgments or break a checkpoint without touching the shared run."""
    source, run_id = tiny_run
    home = tmp_path / "app_home"
    shutil.copytree(source, home, symlinks=True)
    return use_home(home), run_id


@pytest.fixture
def start_app(tmp_path):
    """Start the real app, ``python -m chimed app --profile tiny``, on a free localhost port for a work
    directory: ``url = start_app(home)``, or ``start_app(home, database_url=url)`` for a store elsewhere. It is
    stopped when the test ends; its output is in ``tmp_path/app-N.log`` and in the failure message when it
    does not come up."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    started: list[tuple[subprocess.Popen, object]] = []

    def _start(home: Path, timeout_s: float = 180, database_url: str | None = None) -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = dict(os.environ, CHIMED_HOME=str(home))
        env.pop("CHIMED_DATABASE_URL", None)
        if database_url:  # else the home's preferences.db
            env["CHIMED_DATABASE_URL"] = database_url
        log_path = tmp_path / f"app-{len(started)}.log"
        log = log_path.open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "chimed", "app", "--profile", "tiny", "--port", str(port)],
            cwd=Path(__file__).resolve().parents[1],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        started.append((proc, log))
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the app exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=2)
                return url
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"the app did not answer at {url} within {timeout_s} s:\n{log_path.read_text()[-3000:]}"
                    )
                time.sleep(0.5)

    yield _start
    for proc, log in started:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def cfg(app_home):
    """The tiny profile, with CHIMED_HOME a private copy of the tiny run (:func:`app_home`)."""
    from core.config import load_config

    return load_config("tiny")


@pytest.fixture
def store(cfg):
    """The preference store of ``cfg``'s home, closed when the test ends."""
    from preference_store.repository import PreferenceStore

    with PreferenceStore.from_config(cfg) as store:
        yield store
