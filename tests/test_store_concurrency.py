"""Concurrent writers: 32 writers x 50 judgments store exactly 1,600 judgments, and no caller sees
a locked-database error, whether the writers share one store (the app's browser sessions) or each
open their own (several processes on one SQLite file)."""

from __future__ import annotations

import threading

import pytest

from preference_store.records import ComparisonIn, JudgmentIn, ResponseIn
from preference_store.repository import PreferenceStore
from training.config import StoreConfig

WRITERS, PER_WRITER = 32, 50


def prepare(store, n=20):
    me = store.demo_annotator()
    comparisons = []
    for i in range(n):
        cmp = store.record_comparison(ComparisonIn(
            me.id, [{"role": "user", "content": f"第{i}例：流感和普通感冒有什么区别？"}],
            [ResponseIn("r1/sft", "流感症状更重，常有高热和全身酸痛。"), ResponseIn("r1/dpo", "流感由流感病毒引起，全身症状明显。"),
             ResponseIn("r1/base", "不知道。")]))
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
                store.submit_judgment(JudgmentIn(cmp.id, me.id, client_id=f"w{w}-{k}",
                                                 ranking={"A": 1 + k % 3, "B": 1 + (k + 1) % 3, "C": 1 + (k + 2) % 3}))
                if k % 10 == 0:
                    store.submit_judgment(JudgmentIn(cmp.id, me.id, client_id=f"w{w}-{k}", ranking={"A": 1, "B": 2, "C": 3}))
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


@pytest.mark.parametrize("busy_timeout_ms", [30000, 1])
def test_32_writers_with_their_own_connections_store_exactly_1600_judgments(chimed_home, pref_store, busy_timeout_ms):
    # one store per writer contends on SQLite's lock like separate processes; with a 1 ms busy
    # timeout the lock errors come back from SQLite and only the store's retries absorb them
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
