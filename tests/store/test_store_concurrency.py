"""Concurrent writers: 32 writers x 50 judgments store exactly 1,600 judgments, and no caller sees
a locked-database error, whether the writers share one store (the app's browser sessions) or each
open their own (several processes on one SQLite file)."""

from __future__ import annotations

import threading

import pytest

from core.config import StoreConfig
from preference_store.records import ComparisonIn, JudgmentIn, ResponseIn
from preference_store.repository import PreferenceStore

pytestmark = pytest.mark.both_backends  # the store tests run on SQLite and on PostgreSQL

WRITERS, PER_WRITER = 32, 50


def prepare(store, n=WRITERS * PER_WRITER):  # a comparison per judgment: one judgment per comparison
    me = store.demo_annotator()
    comparisons = []
    for i in range(n):
        cmp = store.record_comparison(
            ComparisonIn(
                me.id,
                [{"role": "user", "content": f"第{i}例：流感和普通感冒有什么区别？"}],
                [
                    ResponseIn("r1/sft", "流感症状更重，常有高热和全身酸痛。"),
                    ResponseIn("r1/dpo", "流感由流感病毒引起，全身症状明显。"),
                    ResponseIn("r1/base", "不知道。"),
                ],
            )
        )
        comparisons.append(cmp)
    return me, comparisons


def run_writers(stores, me, comparisons):
    errors = []
    start = threading.Barrier(WRITERS)

    def write(w):
        store = stores[w % len(stores)]
        start.wait()
        for k in range(PER_WRITER):
            cmp = comparisons[(w * PER_WRITER + k) % len(comparisons)]
            try:
                # alternate votes and rankings; each writer's second submit of a client id is a resubmit
                store.submit_judgment(
                    JudgmentIn(
                        cmp.id,
                        me.id,
                        client_id=f"w{w}-{k}",
                        ranking={"A": 1 + k % 3, "B": 1 + (k + 1) % 3, "C": 1 + (k + 2) % 3},
                    )
                )
                if k % 10 == 0:
                    store.submit_judgment(
                        JudgmentIn(cmp.id, me.id, client_id=f"w{w}-{k}", ranking={"A": 1, "B": 2, "C": 3})
                    )
            except Exception as err:  # noqa: BLE001 - any error reaching a caller fails the test
                errors.append(err)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_32_writers_sharing_one_store_store_exactly_1600_judgments(pref_store):
    me, comparisons = prepare(pref_store)
    errors = run_writers([pref_store], me, comparisons)
    assert errors == []
    counts = pref_store.counts()
    assert counts.judgments == WRITERS * PER_WRITER
    assert counts.pairs == 3 * WRITERS * PER_WRITER


def run_writers_on_own_stores(pref_store, busy_timeout_ms: int) -> None:
    me, comparisons = prepare(pref_store)
    stores = [PreferenceStore(pref_store.url, StoreConfig(busy_timeout_ms=busy_timeout_ms)) for _ in range(WRITERS)]
    try:
        errors = run_writers(stores, me, comparisons)
    finally:
        for s in stores:
            s.close()
    assert errors == []
    assert pref_store.count_judgments() == WRITERS * PER_WRITER
    assert pref_store.counts().pairs == 3 * WRITERS * PER_WRITER


def test_32_writers_with_their_own_connections_store_exactly_1600_judgments(pref_store):
    # one store per writer contends for the database like separate processes (SQLite's file lock,
    # PostgreSQL's row locks)
    run_writers_on_own_stores(pref_store, busy_timeout_ms=30000)


@pytest.mark.sqlite_only
def test_with_a_1_ms_busy_timeout_the_lock_errors_are_retried_away(pref_store):
    # SQLite gives the lock errors back at once and only the store's retries absorb them
    run_writers_on_own_stores(pref_store, busy_timeout_ms=1)


def test_stores_opening_a_new_database_at_once_agree_on_its_annotator_and_checkpoints(empty_database_url):
    # as app replicas starting together: each opens (and migrates) the database, registers the run and
    # takes the demo annotator at the same moment; nobody sees an error and nothing is made twice
    workers, stores, errors, seen = 8, [], [], []
    start = threading.Barrier(workers)

    def replica():
        try:
            store = PreferenceStore(empty_database_url)
            stores.append(store)
            start.wait()
            checkpoints = store.register_checkpoints("r1", ["base", "cpt", "sft", "dpo"])
            seen.append((store.demo_annotator().id, tuple(c.id for c in checkpoints)))
        except Exception as err:  # noqa: BLE001 - any error reaching a replica fails the test
            errors.append(err)
            start.abort()

    threads = [threading.Thread(target=replica) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert len(set(seen)) == 1 and len(seen) == workers
        assert [a.name for a in stores[0].list_annotators()] == ["demo"]
        assert len(stores[0].list_checkpoints()) == 4
    finally:
        for store in stores:
            store.close()
