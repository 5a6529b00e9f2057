"""Judgments/s with 32 concurrent writers on SQLite against PostgreSQL: the concurrency test's workload.

    .venv/bin/python benchmarks/bench_store_backends.py [--repeats 3]

The workload is tests/store/test_store_concurrency.py's, imported from it so the two cannot drift: 20 recorded
comparisons, then 32 writer threads x 50 judgments (three-answer rankings, every tenth resubmitted),
once with the writers sharing one store (the app's browser sessions) and once with a store each (as
separate processes or app replicas). SQLite is a file in a fresh temporary directory; PostgreSQL is a
throwaway server started here by tests/postgres_server.py (the tests' server, but with fsync and
synchronous commit ON, as a real deployment runs). Every figure is printed with what produced it; each
is the median of ``--repeats`` runs, each on a fresh database.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import StoreConfig  # noqa: E402
from preference_store.repository import PreferenceStore  # noqa: E402
from tests.postgres_server import PostgresServer  # noqa: E402
from tests.test_store_concurrency import PER_WRITER, WRITERS, prepare, run_writers  # noqa: E402


def one_run(url: str, shared: bool) -> float:
    """Judgments/s of the 32 writers on a new database at ``url`` (checked: exactly 1,600 stored)."""
    with PreferenceStore(url) as store:
        store.register_checkpoints("r1", ["base", "cpt", "sft", "dpo"])
        me, comparisons = prepare(store)
        stores = [store] if shared else [PreferenceStore(url, StoreConfig()) for _ in range(WRITERS)]
        try:
            started = time.perf_counter()
            errors = run_writers(stores, me, comparisons)
            elapsed = time.perf_counter() - started
        finally:
            if not shared:
                for s in stores:
                    s.close()
        assert errors == [], errors[:3]
        assert store.count_judgments() == WRITERS * PER_WRITER
    return WRITERS * PER_WRITER / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    server = PostgresServer.start(durable=True)
    tmp = tempfile.TemporaryDirectory()
    try:
        sqlite_urls = (f"sqlite:///{tmp.name}/p{i}.db" for i in range(10**6))
        backends = {"sqlite": lambda: next(sqlite_urls), "postgresql": server.create_database}
        print(
            f"{WRITERS} writers x {PER_WRITER} judgments ({WRITERS * PER_WRITER}), median of {args.repeats}; "
            f"{platform.processor() or platform.machine()}, Python {platform.python_version()}"
        )
        for backend, new_url in backends.items():
            for shared in (True, False):
                rates = []
                for _ in range(args.repeats):
                    url = new_url()
                    rates.append(one_run(url, shared))
                    if backend == "postgresql":
                        server.drop_database(url)
                how = "one shared store" if shared else "a store per writer"
                print(
                    f"{backend:10s} {how:20s} {statistics.median(rates):7.0f} judgments/s  "
                    f"(runs: {', '.join(f'{r:.0f}' for r in rates)})",
                    flush=True,
                )
    finally:
        tmp.cleanup()
        server.stop()


if __name__ == "__main__":
    main()
