"""Leaderboard: Bradley-Terry ratings with bootstrap intervals, win rates, criterion means, agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest

from preference_store.ratings import (
    Battle,
    fit_bradley_terry,
    inter_annotator_agreement,
    rate_checkpoints,
)
from preference_store.records import ComparisonIn, JudgmentIn, ResponseIn

PROMPT = [{"role": "user", "content": "糖尿病患者饮食上要注意什么？"}]


def vote(store, annotator, a, b, choice, scores=None):
    cmp = store.record_comparison(ComparisonIn(annotator.id, PROMPT, [ResponseIn(a, f"{a} 的回答"), ResponseIn(b, f"{b} 的回答")]))
    store.submit_judgment(JudgmentIn(cmp.id, annotator.id, choice=choice, scores=scores or {}))
    return cmp


def test_a_clearly_better_checkpoint_rates_highest(pref_store):
    me = pref_store.demo_annotator()
    # dpo beats sft 8 of 10, sft beats cpt 8 of 10, cpt beats base 8 of 10, with a few ties
    for better, worse in (("r1/dpo", "r1/sft"), ("r1/sft", "r1/cpt"), ("r1/cpt", "r1/base")):
        for i in range(10):
            choice = "A" if i < 7 else ("tie" if i == 7 else "B")
            vote(pref_store, me, better, worse, choice)
    cmp = pref_store.record_comparison(ComparisonIn(me.id, PROMPT, [ResponseIn(c, c) for c in ("r1/base", "r1/dpo", "r1/sft")]))
    pref_store.submit_judgment(JudgmentIn(cmp.id, me.id, ranking={"A": 3, "B": 1, "C": 2}))

    board = pref_store.leaderboard(rounds=200)
    assert [r.checkpoint_id for r in board.ratings] == ["r1/dpo", "r1/sft", "r1/cpt", "r1/base"]
    top, bottom = board.ratings[0], board.ratings[-1]
    assert top.ci95[0] > bottom.ci95[1]  # clearly separated
    for r in board.ratings:
        assert r.ci95[0] <= r.rating <= r.ci95[1]
    assert abs(np.mean([r.rating for r in board.ratings]) - 1000) < 1e-6
    dpo = board.ratings[0]
    assert (dpo.battles, dpo.wins, dpo.ties, dpo.losses) == (12, 9, 1, 2)  # 10 votes + 2 from the ranking
    assert board.win_rate["r1/dpo"]["r1/sft"] == pytest.approx((7 + 0.5 + 1) / 11)
    assert board.win_rate["r1/sft"]["r1/dpo"] == pytest.approx(1 - (7 + 0.5 + 1) / 11)
    assert board.battles["r1/dpo"]["r1/base"] == 1 and "r1/cpt" not in board.win_rate["r1/dpo"]
    assert board.judgments == 31


def test_ties_count_half_so_equal_records_rate_equal():
    battles = [Battle("x", "y", 1.0), Battle("x", "y", 0.0), Battle("x", "y", 0.5), Battle("y", "x", 0.5)]
    ratings = rate_checkpoints(battles, rounds=50)
    assert ratings[0].rating == pytest.approx(1000) == ratings[1].rating
    assert (ratings[0].wins, ratings[0].losses, ratings[0].ties) == (1, 1, 2)


def test_fit_recovers_known_strengths():
    strengths = np.array([0.0, 1.0, 2.0])
    games = 10_000
    wins = np.array([[games / (1 + math.exp(strengths[j] - strengths[i])) if i != j else 0.0
                      for j in range(3)] for i in range(3)])
    fitted = fit_bradley_terry(wins)
    assert fitted - fitted[0] == pytest.approx(strengths, abs=0.01)


def test_an_unbeaten_checkpoint_gets_a_finite_rating():
    ratings = rate_checkpoints([Battle("good", "bad", 1.0)] * 20, rounds=20)
    assert ratings[0].checkpoint_id == "good"
    assert all(math.isfinite(r.rating) and math.isfinite(r.ci95[0]) for r in ratings)
    assert ratings[0].rating - ratings[1].rating > 400  # better than ten-to-one odds


def test_criterion_means_are_per_checkpoint(pref_store):
    me = pref_store.demo_annotator()
    vote(pref_store, me, "r1/sft", "r1/base", "A", {"A": {"safety": 5, "correctness": 4, "completeness": 3}, "B": {"safety": 2}})
    vote(pref_store, me, "r1/sft", "r1/base", "A", {"A": {"safety": 3, "correctness": 4}})
    board = pref_store.leaderboard(rounds=10)
    assert board.criteria["r1/sft"] == {"safety": 4.0, "correctness": 4.0, "completeness": 3.0}
    assert board.criteria_n["r1/sft"] == {"safety": 2, "correctness": 2, "completeness": 1}
    assert board.criteria["r1/base"] == {"safety": 2.0}


def test_agreement_on_comparisons_judged_by_several_annotators(pref_store):
    wang, li, zhao = (pref_store.add_annotator(n, "pw") for n in ("wang", "li", "zhao"))
    agreed = vote(pref_store, wang, "r1/dpo", "r1/sft", "A")
    pref_store.submit_judgment(JudgmentIn(agreed.id, li.id, choice="A"))
    disputed = vote(pref_store, wang, "r1/dpo", "r1/base", "A")
    pref_store.submit_judgment(JudgmentIn(disputed.id, li.id, choice="B"))
    vote(pref_store, zhao, "r1/cpt", "r1/base", "A")  # judged once: not part of agreement
    agreement = pref_store.leaderboard(rounds=10).agreement
    assert (agreement.comparisons, agreement.items) == (2, 2)
    assert agreement.percent == pytest.approx(0.5)
    # verdicts: A, A, A, B -> expected chance agreement 0.75^2 + 0.25^2 = 0.625
    assert agreement.fleiss_kappa == pytest.approx((0.5 - 0.625) / (1 - 0.625))


def test_agreement_is_empty_without_shared_comparisons():
    agreement = inter_annotator_agreement([("c1|a|b", "1", 1), ("c2|a|b", "2", -1)])
    assert (agreement.items, agreement.percent, agreement.fleiss_kappa) == (0, None, None)
    perfect = inter_annotator_agreement([("c1|a|b", "1", 1), ("c1|a|b", "2", 1), ("c2|a|b", "1", 0), ("c2|a|b", "2", 0)])
    assert perfect.percent == 1.0 and perfect.fleiss_kappa == pytest.approx(1.0)


def test_leaderboard_of_an_empty_store(pref_store):
    board = pref_store.leaderboard()
    assert board.ratings == [] and board.win_rate == {} and board.judgments == 0
