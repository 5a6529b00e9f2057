"""A throwaway PostgreSQL server for the test session and the store benchmark.

    server = PostgresServer.start(tmp_root)   # initdb into a temp dir, pg_ctl start on a free localhost port
    url = server.create_database()            # postgresql+psycopg://postgres@127.0.0.1:PORT/chimed_N, empty
    copy = server.create_database(template=url)   # a copy of it (CREATE DATABASE ... TEMPLATE: fast)
    server.drop_database(url)
    server.stop()                             # stops the server and deletes its directory

The binaries (``initdb``, ``pg_ctl``) come from PATH or else the newest ``/usr/lib/postgresql/*/bin``;
:class:`PostgresUnavailable` says which are missing. PostgreSQL refuses to run as root, so as root the
server runs as the ``postgres`` OS user (Debian's ``postgresql`` package makes it) in a directory that user
owns. ``durable=False`` (the tests) turns fsync and synchronous commit off: a crash loses nothing the tests
need, and each commit skips a disk flush. Plain Python, no pytest: benchmarks import it too.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

BINARIES = ("initdb", "pg_ctl")
# enough for the concurrency tests (a store per writer, each with its own small pool) and two apps
MAX_CONNECTIONS = 400
FAST = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries on this machine, or no OS user to run them as."""


def find_bin_dir() -> Path:
    """The folder holding ``initdb`` and ``pg_ctl``: PATH first, else the newest /usr/lib/postgresql/*/bin."""
    on_path = [shutil.which(name) for name in BINARIES]
    if all(on_path):
        return Path(on_path[0]).resolve().parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    for folder in candidates:
        if all((Path(folder) / name).is_file() for name in BINARIES):
            return Path(folder)
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) are not on PATH nor in "
        "/usr/lib/postgresql/*/bin: install PostgreSQL (Debian: apt-get install postgresql)"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """A PostgreSQL server in its own directory on 127.0.0.1:``port``, user ``postgres``, trust auth."""

    def __init__(self, bin_dir: Path, root: Path, port: int, run_as: pwd.struct_passwd | None) -> None:
        self.bin_dir, self.root, self.port, self._run_as = bin_dir, root, port, run_as
        self._names = itertools.count(1)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    @classmethod
    def start(cls, parent: str | Path | None = None, durable: bool = False) -> PostgresServer:
        """initdb into a new directory under ``parent`` (the system temp dir by default) and start it."""
        bin_dir = find_bin_dir()
        run_as = None
        if os.geteuid() == 0:  # postgres will not run as root
            try:
                run_as = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable(
                    "running as root, PostgreSQL needs an OS user 'postgres' to run as "
                    "(Debian's postgresql package creates it; or: useradd --system postgres)"
                ) from None
        root = Path(tempfile.mkdtemp(prefix="chimed-pg-", dir=parent))
        if run_as:
            os.chown(root, run_as.pw_uid, run_as.pw_gid)
        server = cls(bin_dir, root, 0, run_as)
        try:
            server._run(
                "initdb",
                "-D",
                str(server.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            )
            options = [
                f"max_connections={MAX_CONNECTIONS}",
                "listen_addresses=127.0.0.1",
                f"unix_socket_directories={root}",
                *(() if durable else FAST),
            ]
            for attempt in range(3):  # another process may take the free port before the server binds it
                server.port = _free_port()
                flags = " ".join(f"-c {o}" for o in [f"port={server.port}", *options])
                try:
                    server._run(
                        "pg_ctl",
                        "-D",
                        str(server.data_dir),
                        "-l",
                        str(server.log_path),
                        "-w",
                        "-t",
                        "60",
                        "-o",
                        flags,
                        "start",
                    )
                    break
                except RuntimeError:
                    if attempt == 2:
                        raise
            return server
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise

    def _run(self, binary: str, *args: str) -> None:
        user = dict(user=self._run_as.pw_uid, group=self._run_as.pw_gid, extra_groups=[]) if self._run_as else {}
        done = subprocess.run(
            [str(self.bin_dir / binary), *args], cwd=self.root, capture_output=True, text=True, **user
        )
        if done.returncode:
            log = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
            raise RuntimeError(
                f"{binary} {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}{log}"
            )

    def admin(self, dbname: str = "postgres") -> psycopg.Connection:
        """An autocommit connection as the superuser (CREATE / DROP DATABASE cannot run in a transaction)."""
        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=dbname, autocommit=True)

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, template: str | None = None) -> str:
        """A new database, empty or a copy of the database at URL ``template`` (which must have no open
        connections); returns its SQLAlchemy URL."""
        name = f"chimed_{next(self._names)}"
        source = make_url(template).database if template else "template0"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop the database of ``url``, closing whatever connections are still open on it."""
        name = make_url(url).database
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Stop the server (open connections are cut) and delete its directory."""
        try:
            if (self.data_dir / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
