"""Adaptive allocation (``study.allocation: adaptive``): a second annotator always, a third only where the first
two disagree; two alike answers of a two-contestant round resolved as a tie without a clinician, recorded as a
resolution and never as a vote; uniform allocation unchanged (k annotators whatever they said)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from argon2 import PasswordHasher

from core.config import load_config
from preference_store.records import ComparisonIn, JudgmentIn, RatingIn, ResponseIn
from preference_store.repository import PreferenceStore, accounts
from preference_store.repository.bank import ResolvedWithoutClinician

pytestmark = pytest.mark.both_backends

ANSWERS = [
    ResponseIn("r1/sft", "建议低盐饮食，规律监测血压。"),
    ResponseIn("r1/dpo", "应限制钠盐，戒烟限酒，遵医嘱服药。"),
]


@pytest.fixture
def make_store(store_url, chimed_home, monkeypatch):
    """``make_store(n_prompts, allocation)``: k = 3, a bank of ``n_prompts``, a round of r1/sft vs r1/dpo."""
    monkeypatch.setattr(accounts, "_hasher", PasswordHasher(time_cost=1, memory_cost=64, parallelism=1))
    stores = []

    def _make(n_prompts: int, allocation: str) -> PreferenceStore:
        cfg = load_config("tiny")
        store = PreferenceStore(
            store_url, replace(cfg.store, annotators_per_prompt=3), replace(cfg.study, allocation=allocation)
        )
        stores.append(store)
        store.register_checkpoints("r1", ["sft", "dpo"])
        bank = chimed_home / "bank.jsonl"
        bank.write_text("".join(f'{{"prompt": "第{i}题：头痛怎么办？"}}\n' for i in range(n_prompts)), encoding="utf-8")
        store.import_bank(bank)
        store.start_queue_round(None, ["r1/sft", "r1/dpo"])
        return store

    yield _make
    for store in stores:
        store.close()


def judge_next(store, annotator_id, choice: str, answers=ANSWERS):
    """Take the annotator's next prompt, record its comparison as the arena does, and judge it (unless the queue
    resolved it); the assignment and the comparison (None, None when the queue is empty)."""
    assignment = store.next_assignment(annotator_id)
    if assignment is None:
        return None, None
    comparison = store.record_comparison(
        ComparisonIn(
            annotator_id,
            assignment.bank_prompt.messages,
            list(answers),
            bank_prompt_id=assignment.bank_prompt.id,
            assignment_id=assignment.id,
        )
    )
    if comparison.resolved is None:
        store.submit_judgment(JudgmentIn(comparison.id, annotator_id, choice=choice))
    return assignment, comparison


def test_the_round_records_its_allocation(make_store):
    store = make_store(1, "adaptive")
    assert store.queue_round_definition().allocation == "adaptive"
    store.start_queue_round(None, ["r1/sft", "r1/dpo"], allocation="uniform")
    assert store.queue_round_definition().allocation == "uniform"


def test_a_third_annotator_only_where_the_first_two_disagree(make_store):
    store = make_store(2, "adaptive")
    a, b, c = (store.add_annotator(name, "pw") for name in ("dr_a", "dr_b", "dr_c"))
    first, _ = judge_next(store, a.id, "A")  # prompt 0
    second, _ = judge_next(store, a.id, "A")  # prompt 1
    assert (first.bank_prompt.id, second.bank_prompt.id) == tuple(p.id for p in store.bank_prompts())
    # b agrees with a on prompt 0 and disagrees on prompt 1 (panels are in the same order here)
    b_first, _ = judge_next(store, b.id, "A")
    b_second, _ = judge_next(store, b.id, "B")
    assert [b_first.bank_prompt.id, b_second.bank_prompt.id] == [first.bank_prompt.id, second.bank_prompt.id]
    # c is given only the prompt on which they disagree, then nothing
    third, _ = judge_next(store, c.id, "A")
    assert third.bank_prompt.id == second.bank_prompt.id
    assert store.next_assignment(c.id) is None
    assert store.queue_progress(c.id).total == 1
    done = [x.bank_prompt.id for x in store.assignments() if x.status == "done"]
    assert done.count(first.bank_prompt.id) == 2 and done.count(second.bank_prompt.id) == 3


def test_no_third_annotator_while_the_second_is_still_judging(make_store):
    store = make_store(1, "adaptive")
    a, b, c = (store.add_annotator(name, "pw") for name in ("dr_a", "dr_b", "dr_c"))
    judge_next(store, a.id, "A")
    assert store.next_assignment(b.id) is not None  # open: not judged yet
    assert store.next_assignment(c.id) is None  # the two may still agree


def test_a_tie_against_a_preference_is_a_disagreement(make_store):
    store = make_store(1, "adaptive")
    a, b, c = (store.add_annotator(name, "pw") for name in ("dr_a", "dr_b", "dr_c"))
    judge_next(store, a.id, "A")
    judge_next(store, b.id, "tie")
    assert store.next_assignment(c.id) is not None


def test_uniform_gives_every_prompt_k_annotators(make_store):
    store = make_store(1, "uniform")
    a, b, c = (store.add_annotator(name, "pw") for name in ("dr_a", "dr_b", "dr_c"))
    judge_next(store, a.id, "A")
    judge_next(store, b.id, "A")
    assert store.next_assignment(c.id) is not None  # agreement or not


def test_alike_answers_are_resolved_as_a_tie_without_a_clinician(make_store):
    store = make_store(2, "adaptive")
    a, b = store.add_annotator("dr_a", "pw"), store.add_annotator("dr_b", "pw")
    alike = [
        ResponseIn("r1/sft", "建议低盐饮食，\n规律监测血压。 "),
        ResponseIn("r1/dpo", "建议低盐饮食， 规律监测血压。"),
    ]
    assignment, comparison = judge_next(store, a.id, "A", alike)
    assert comparison.resolved is not None and "same text" in comparison.resolved
    (tie,) = store.resolved_ties()
    assert (tie.bank_prompt_id, tie.comparison_id) == (assignment.bank_prompt.id, comparison.id)
    assert store.counts().judgments == 0  # no vote was recorded for anyone
    assert [x.status for x in store.assignments(bank_prompt_id=assignment.bank_prompt.id)] == ["done"]
    # nobody judges or rates it: there is nothing to judge, and the assignment is done already
    for submit in (
        lambda: store.submit_judgment(JudgmentIn(comparison.id, a.id, choice="A")),
        lambda: store.submit_rating(RatingIn(comparison.id, a.id, label="A", up=True)),
    ):
        with pytest.raises(ResolvedWithoutClinician, match="resolved as a tie without a clinician"):
            submit()
    assert store.counts().judgments == 0 and store.ratings() == []
    # the resolved prompt goes to nobody else; the other prompt does
    other = store.next_assignment(b.id)
    assert other.bank_prompt.id != assignment.bank_prompt.id
    assert store.queue_progress(b.id).total == 1


def test_alike_answers_are_judged_as_usual_under_uniform(make_store):
    store = make_store(1, "uniform")
    a = store.add_annotator("dr_a", "pw")
    alike = [ResponseIn("r1/sft", "多喝水。"), ResponseIn("r1/dpo", "多喝水。")]
    _, comparison = judge_next(store, a.id, "tie", alike)
    assert comparison.resolved is None and store.resolved_ties() == []
