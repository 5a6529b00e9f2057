"""Active sampling of contestant pairs (``study.allocation: adaptive`` in a round of 3-4 contestants): the pair whose
order is least certain is shown more often, every pair keeps at least ``study.pair_floor / pairs`` of the prompts,
a prompt keeps its pair for its later annotators, and a comparison on the assignment must show that pair."""

from __future__ import annotations

from dataclasses import replace
from itertools import combinations

import numpy as np
import pytest
from argon2 import PasswordHasher

from core.config import load_config
from preference_store.records import ComparisonIn, JudgmentIn, RatingIn, ResponseIn
from preference_store.repository import PreferenceStore, accounts
from preference_store.statistics.active import draw_pair, order_uncertainty, pair_probabilities
from preference_store.statistics.bradley_terry import Battle
from preference_store.validation import PreferenceStoreError

FOUR = ("r1/base", "r1/sft", "r1/dpo", "r1/kto")
PAIRS = list(combinations(FOUR, 2))


def settled_battles() -> list[Battle]:
    """base loses clearly to everyone, dpo beats everyone else clearly; sft against kto: an even record."""
    battles = []
    for winner, loser in (("r1/dpo", "r1/base"), ("r1/dpo", "r1/sft"), ("r1/dpo", "r1/kto")):
        battles += [Battle(winner, loser, 1.0)] * 9 + [Battle(winner, loser, 0.0)]
    for winner in ("r1/sft", "r1/kto"):
        battles += [Battle(winner, "r1/base", 1.0)] * 9 + [Battle(winner, "r1/base", 0.0)]
    battles += [Battle("r1/sft", "r1/kto", 1.0), Battle("r1/sft", "r1/kto", 0.0)]
    return battles


def test_order_uncertainty_is_highest_for_the_pair_nothing_separates():
    u = order_uncertainty(settled_battles(), FOUR)
    assert max(u, key=u.get) == ("r1/sft", "r1/kto")
    assert u[("r1/sft", "r1/kto")] > 0.4
    assert u[("r1/base", "r1/dpo")] < 0.05
    assert set(order_uncertainty([], FOUR).values()) == {0.5}  # no battles: every order a coin flip


def test_every_pair_keeps_the_floor_and_the_uncertain_pair_gets_the_rest():
    u = order_uncertainty(settled_battles(), FOUR)
    probabilities = pair_probabilities(u, 0.2)
    assert sum(probabilities.values()) == pytest.approx(1.0)
    assert all(p >= 0.2 / 6 - 1e-12 for p in probabilities.values())
    assert probabilities[("r1/sft", "r1/kto")] == pytest.approx(0.8 + 0.2 / 6)
    shown = [draw_pair(probabilities, d) for d in np.linspace(0, 1, 3000, endpoint=False)]
    assert {pair: shown.count(pair) for pair in PAIRS} == {
        pair: pytest.approx(3000 * p, abs=1) for pair, p in probabilities.items()
    }
    assert pair_probabilities(u, 1.0) == {pair: pytest.approx(1 / 6) for pair in PAIRS}  # floor 1: uniform
    with pytest.raises(ValueError):
        pair_probabilities(u, 0.0)


@pytest.fixture
def make_store(store_url, chimed_home, monkeypatch):
    """``make_store(n_prompts)``: a round of the four contestants with adaptive allocation, k = 2, pair floor 0.5, a
    bank of ``n_prompts``; the battles of :func:`settled_battles` recorded as free comparisons (not bank prompts)
    judged by ``dr_x``."""
    monkeypatch.setattr(accounts, "_hasher", PasswordHasher(time_cost=1, memory_cost=64, parallelism=1))
    stores = []
    yield lambda n_prompts: stores.append(_make(store_url, chimed_home, n_prompts)) or stores[-1]
    for store in stores:
        store.close()


def _make(store_url, chimed_home, n_prompts):
    cfg = load_config("tiny")
    store = PreferenceStore(
        store_url,
        replace(cfg.store, annotators_per_prompt=2),
        replace(cfg.study, allocation="adaptive", pair_floor=0.5),
    )
    store.register_checkpoints("r1", ["base", "sft", "dpo", "kto"])
    judge = store.add_annotator("dr_x", "pw")
    for battle in settled_battles():
        out = store.record_comparison(
            ComparisonIn(
                judge.id,
                [{"role": "user", "content": "高血压患者饮食应注意什么？"}],
                [ResponseIn(battle.a, "限盐。"), ResponseIn(battle.b, "多吃咸菜。")],
            )
        )
        store.submit_judgment(JudgmentIn(out.id, judge.id, choice="A" if battle.score_a == 1.0 else "B"))
    bank = chimed_home / "bank.jsonl"
    bank.write_text("".join(f'{{"prompt": "第{i}题：头痛怎么办？"}}\n' for i in range(n_prompts)), encoding="utf-8")
    store.import_bank(bank)
    store.start_queue_round(None, list(FOUR))
    return store


def take_and_rate(store, annotator_id):
    """The annotator's next queue prompt, answered by the pair the queue chose and rated (a rating completes the
    assignment and adds no battle, so every prompt is chosen on the same battles); the assignment."""
    assignment = store.next_assignment(annotator_id)
    if assignment is None:
        return None
    comparison = store.record_comparison(
        ComparisonIn(
            annotator_id,
            assignment.bank_prompt.messages,
            [ResponseIn(c, f"{c} 的回答") for c in assignment.contestants],
            bank_prompt_id=assignment.bank_prompt.id,
            assignment_id=assignment.id,
        )
    )
    store.submit_rating(RatingIn(comparison.id, annotator_id, label="A", up=True))
    return assignment


def test_the_queue_shows_the_least_certain_pair_most_and_every_pair_some(make_store):
    """120 prompts, pair floor 0.5: each of the five settled pairs is drawn with chance 0.5 / 6 (missing one of them
    in 120 draws has chance 0.917^120 < 3e-5), the uncertain one with 0.5 + 0.5 / 6."""
    store = make_store(120)
    a = store.add_annotator("dr_a", "pw")
    shown = []
    while (assignment := take_and_rate(store, a.id)) is not None:
        assert len(assignment.contestants) == 2 and set(assignment.contestants) <= set(FOUR)
        shown.append(tuple(sorted(assignment.contestants, key=FOUR.index)))
    assert len(shown) == 120
    counts = {pair: shown.count(pair) for pair in PAIRS}
    assert all(n > 0 for n in counts.values()), counts  # the floor: every pair is shown
    uncertain = counts.pop(("r1/sft", "r1/kto"))
    assert uncertain > 2 * max(counts.values()), (uncertain, counts)


def test_a_prompt_keeps_its_pair_and_refuses_another(make_store):
    store = make_store(1)
    a, b = store.add_annotator("dr_a", "pw"), store.add_annotator("dr_b", "pw")
    first = store.next_assignment(a.id)
    assert store.next_assignment(a.id).contestants == first.contestants  # their open one, the same pair
    other = [c for c in FOUR if c not in first.contestants]
    with pytest.raises(PreferenceStoreError, match="answer it with exactly these two"):
        store.record_comparison(
            ComparisonIn(
                a.id,
                first.bank_prompt.messages,
                [ResponseIn(c, "回答") for c in other],
                bank_prompt_id=first.bank_prompt.id,
                assignment_id=first.id,
            )
        )
    take_and_rate(store, a.id)
    second = store.next_assignment(b.id)  # the bank's one prompt, its second annotator
    assert second.bank_prompt.id == first.bank_prompt.id
    assert second.contestants == first.contestants


def test_uniform_allocation_shows_every_contestant(store_url, chimed_home):
    cfg = load_config("tiny")
    with PreferenceStore(store_url, cfg.store, replace(cfg.study, allocation="uniform")) as store:
        store.register_checkpoints("r1", ["base", "sft", "dpo"])
        (chimed_home / "bank.jsonl").write_text('{"prompt": "头痛怎么办？"}\n', encoding="utf-8")
        store.import_bank(chimed_home / "bank.jsonl")
        store.start_queue_round(None, ["r1/base", "r1/sft", "r1/dpo"])
        assert store.next_assignment(store.add_annotator("dr_a", "pw").id).contestants == ()
