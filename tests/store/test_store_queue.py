"""My queue: each bank prompt goes to k different annotators and never to the same one twice, progress
"n / m", an empty queue says None, assignments expire and go to someone else, a late judgment is stored
and not counted twice, 32 annotators at once over-assign nothing, and the daily cap."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import replace
from datetime import timedelta

import pytest
from argon2 import PasswordHasher
from sqlalchemy import update

from core.config import load_config
from preference_store.models import AssignmentRow, utcnow
from preference_store.records import ComparisonIn, JudgmentIn, RatingIn, ResponseIn
from preference_store.repository import PreferenceStore, accounts
from preference_store.validation import PreferenceStoreError

pytestmark = pytest.mark.both_backends  # the store tests run on SQLite and on PostgreSQL

ANSWERS = [
    ResponseIn("r1/sft", "建议低盐饮食，规律监测血压。"),
    ResponseIn("r1/dpo", "应限制钠盐，戒烟限酒，遵医嘱服药。"),
]


def open_store(url: str, **settings) -> PreferenceStore:
    """A store whose queue follows uniform allocation: k annotators per prompt whatever they said (what these tests
    are about; adaptive allocation has tests/store/test_store_allocation.py)."""
    cfg = load_config("tiny")
    store = PreferenceStore(url, replace(cfg.store, **settings), replace(cfg.study, allocation="uniform"))
    store.register_checkpoints("r1", ["sft", "dpo"])
    return store


@pytest.fixture
def make_store(store_url, chimed_home, monkeypatch):
    """``make_store(n_prompts, **store settings)``: a store with a bank of ``n_prompts`` prompts (and cheap
    password hashing: these tests make many accounts and are about queues, not logins)."""
    monkeypatch.setattr(accounts, "_hasher", PasswordHasher(time_cost=1, memory_cost=64, parallelism=1))
    stores = []

    def _make(n_prompts: int, **settings) -> PreferenceStore:
        store = open_store(store_url, **settings)
        stores.append(store)
        bank = chimed_home / "bank.jsonl"
        bank.write_text(
            "".join(f'{{"prompt": "第{i}题：头痛应该怎么办？"}}\n' for i in range(n_prompts)), encoding="utf-8"
        )
        assert store.import_bank(bank).imported == n_prompts
        return store

    yield _make
    for store in stores:
        store.close()


def ask(store, annotator_id, assignment):
    """Record the comparison of an assignment's prompt, as the arena does."""
    return store.record_comparison(
        ComparisonIn(
            annotator_id,
            assignment.bank_prompt.messages,
            list(ANSWERS),
            bank_prompt_id=assignment.bank_prompt.id,
            assignment_id=assignment.id,
        )
    )


def work_queue(store, annotator_id) -> list[str]:
    """Take and judge prompts until the queue is empty; the bank prompt ids judged."""
    judged = []
    while (assignment := store.next_assignment(annotator_id)) is not None:
        comparison = ask(store, annotator_id, assignment)
        store.submit_judgment(JudgmentIn(comparison.id, annotator_id, choice="A"))
        judged.append(assignment.bank_prompt.id)
    return judged


def expire_open_assignments(store, hours: float = 3) -> None:
    """Let time pass: every open assignment was given ``hours`` ago (beyond the 2 h timeout)."""
    with store._engine.begin() as conn:
        conn.execute(
            update(AssignmentRow)
            .where(AssignmentRow.status == "open")
            .values(assigned=utcnow() - timedelta(hours=hours))
        )


def done_per_prompt(store) -> Counter:
    return Counter(a.bank_prompt.id for a in store.assignments() if a.status == "done")


def test_each_prompt_goes_to_k_different_annotators_and_never_twice_to_one(make_store):
    store = make_store(4, annotators_per_prompt=2)
    annotators = [store.add_annotator(f"dr_{i}", "pw") for i in range(5)]
    judged = {a.id: work_queue(store, a.id) for a in annotators}
    # fewest assignments first: the first two annotators each get all four prompts, the rest nothing
    assert [len(judged[a.id]) for a in annotators] == [4, 4, 0, 0, 0]
    assert all(len(set(prompts)) == len(prompts) for prompts in judged.values())
    assert done_per_prompt(store) == {p.id: 2 for p in store.bank_prompts()}
    for prompt in store.bank_prompts():
        assert len({a.annotator_id for a in store.assignments(bank_prompt_id=prompt.id)}) == 2
    assert store.counts().assignments_done == 8


def test_progress_counts_done_of_what_is_left_and_an_empty_queue_says_none(make_store):
    store = make_store(3, annotators_per_prompt=2)
    me = store.add_annotator("dr_li", "pw")
    assert str(store.queue_progress(me.id)) == "0 / 3"
    first = store.next_assignment(me.id)
    assert store.next_assignment(me.id) == first  # my open assignment comes back until I judge it
    assert first.bank_prompt.prompt == "第0题：头痛应该怎么办？"  # oldest prompt first
    store.submit_judgment(JudgmentIn(ask(store, me.id, first).id, me.id, choice="B"))
    assert str(store.queue_progress(me.id)) == "1 / 3"
    assert store.next_assignment(me.id).bank_prompt.id != first.bank_prompt.id
    work_queue(store, me.id)
    assert store.next_assignment(me.id) is None
    assert str(store.queue_progress(me.id)) == "3 / 3"


def test_a_prompt_taken_by_k_annotators_leaves_the_others_queues(make_store):
    store = make_store(1, annotators_per_prompt=1)
    wang, li = store.add_annotator("dr_wang", "pw"), store.add_annotator("dr_li", "pw")
    assert store.next_assignment(wang.id) is not None  # open, not judged yet: the place is taken
    assert store.next_assignment(li.id) is None
    assert str(store.queue_progress(li.id)) == "0 / 0"


def test_an_expired_assignment_goes_to_someone_else_and_a_late_judgment_is_stored_not_counted_twice(make_store):
    store = make_store(1, annotators_per_prompt=1)
    wang, li = store.add_annotator("dr_wang", "pw"), store.add_annotator("dr_li", "pw")
    late = store.next_assignment(wang.id)
    late_comparison = ask(store, wang.id, late)
    expire_open_assignments(store)
    given = store.next_assignment(li.id)
    assert given is not None and given.bank_prompt.id == late.bank_prompt.id
    assert store.next_assignment(wang.id) is None  # never the same prompt twice, expired or not
    store.submit_judgment(JudgmentIn(ask(store, li.id, given).id, li.id, choice="A"))

    out = store.submit_judgment(JudgmentIn(late_comparison.id, wang.id, choice="B"))
    assert len(out.pair_ids) == 1 and store.count_judgments() == 2  # the late judgment is stored ...
    assert done_per_prompt(store) == {late.bank_prompt.id: 1}  # ... and the prompt still counts one
    assert {a.annotator_id: a.status for a in store.assignments()} == {wang.id: "expired", li.id: "done"}
    assert str(store.queue_progress(wang.id)) == "0 / 0"


def test_a_late_judgment_whose_place_is_still_free_completes_its_assignment(make_store):
    store = make_store(1, annotators_per_prompt=1)
    wang = store.add_annotator("dr_wang", "pw")
    assignment = store.next_assignment(wang.id)
    comparison = ask(store, wang.id, assignment)
    expire_open_assignments(store)
    assert store.next_assignment(wang.id) is None  # expires it; nobody else has taken the place
    assert store.assignments()[0].status == "expired"
    store.submit_judgment(JudgmentIn(comparison.id, wang.id, choice="A"))
    assert [a.status for a in store.assignments()] == ["done"]
    assert str(store.queue_progress(wang.id)) == "1 / 1"


def test_a_comparison_cannot_claim_another_annotators_assignment(make_store):
    store = make_store(1)
    wang, li = store.add_annotator("dr_wang", "pw"), store.add_annotator("dr_li", "pw")
    assignment = store.next_assignment(wang.id)
    with pytest.raises(PreferenceStoreError, match="belongs to another annotator"):
        ask(store, li.id, assignment)
    assert store.counts().comparisons == 0


@pytest.mark.parametrize("shared", [True, False], ids=["one shared store", "a store per annotator"])
def test_32_annotators_taking_assignments_at_once_over_assign_nothing(make_store, shared):
    k, prompts, workers = 3, 20, 32
    store = make_store(prompts, annotators_per_prompt=k)
    annotators = [store.add_annotator(f"dr_{i}", "pw") for i in range(workers)]
    # a store per annotator contends on SQLite's lock as separate processes do
    stores = [store] * workers if shared else [open_store(store.url, annotators_per_prompt=k) for _ in range(workers)]
    errors, judged = [], {}
    start = threading.Barrier(workers)

    def annotate(i):
        start.wait()
        try:
            judged[annotators[i].id] = work_queue(stores[i], annotators[i].id)
        except Exception as err:  # noqa: BLE001 - any error reaching an annotator fails the test
            errors.append(err)

    threads = [threading.Thread(target=annotate, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if not shared:
        for s in stores:
            s.close()
    assert errors == []
    assert done_per_prompt(store) == {p.id: k for p in store.bank_prompts()}  # no prompt over-assigned
    assert sum(len(p) for p in judged.values()) == k * prompts == store.count_judgments()  # nothing lost
    assert all(len(set(p)) == len(p) for p in judged.values())  # nobody twice on a prompt
    assert all(a.status == "done" for a in store.assignments())


def test_the_daily_cap_counts_judgments_and_ratings_and_lets_a_resubmit_through(make_store):
    store = make_store(3, daily_judgment_cap=2)
    me = store.add_annotator("dr_li", "pw")
    comparison = ask(store, me.id, store.next_assignment(me.id))
    first = JudgmentIn(comparison.id, me.id, client_id="first", choice="A")
    store.submit_judgment(first)
    store.submit_rating(RatingIn(comparison.id, me.id, "B", up=False))
    free_chat = store.record_comparison(
        ComparisonIn(me.id, [{"role": "user", "content": "感冒吃什么药？"}], list(ANSWERS))
    )
    with pytest.raises(PreferenceStoreError, match=r"daily limit reached: 2 judgments and ratings today, the cap is 2"):
        store.submit_judgment(JudgmentIn(free_chat.id, me.id, choice="B"))
    with pytest.raises(PreferenceStoreError, match="daily limit reached"):
        store.submit_rating(RatingIn(free_chat.id, me.id, "A", up=True))
    assert store.submit_judgment(first).duplicate  # the browser retrying a stored judgment is not refused
    assert (store.count_judgments(), store.counts().ratings) == (1, 1)
    other = store.add_annotator("dr_wang", "pw")  # the cap is per annotator
    theirs = store.record_comparison(
        ComparisonIn(other.id, [{"role": "user", "content": "咳嗽吃什么药？"}], list(ANSWERS))
    )
    store.submit_judgment(JudgmentIn(theirs.id, other.id, choice="A"))


def test_a_new_round_gives_every_annotator_the_bank_again_and_only_admins_start_it(make_store):
    store = make_store(3, annotators_per_prompt=2)
    admin = store.add_annotator("lead", "a-long-test-password", role="admin")
    first, second = (store.add_annotator(n, "a-long-test-password") for n in ("r1", "r2"))
    assert len(work_queue(store, first.id)) == 3 and len(work_queue(store, second.id)) == 3
    assert store.next_assignment(first.id) is None and str(store.queue_progress(first.id)) == "3 / 3"
    with pytest.raises(PreferenceStoreError, match="only admins"):
        store.start_queue_round(first.id)
    assert store.start_queue_round(admin.id) == 2 == store.queue_round()
    assert str(store.queue_progress(first.id)) == "0 / 3"
    again = work_queue(store, first.id)
    assert sorted(again) == sorted(p.id for p in store.bank_prompts())
    assert {a.round for a in store.assignments(annotator_id=first.id)} == {1, 2}
    assert Counter(a.bank_prompt.id for a in store.assignments() if a.round == 2 and a.status == "done") == Counter(
        {p.id: 1 for p in store.bank_prompts()}
    )
