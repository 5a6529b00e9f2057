"""Leaderboard: Bradley-Terry ratings with bootstrap intervals (overall, per criterion, length-controlled), win
rates, criterion means, the provisional flag and leaked battles."""

from __future__ import annotations

import math

import numpy as np
import pytest

from preference_store.records import ComparisonIn, JudgmentIn, ResponseIn
from preference_store.statistics.bradley_terry import (
    Battle,
    fit_bradley_terry,
    rate_checkpoints,
    rate_length_controlled,
)

pytestmark = pytest.mark.both_backends  # the store tests run on SQLite and on PostgreSQL

PROMPT = [{"role": "user", "content": "糖尿病患者饮食上要注意什么？"}]


def vote(store, annotator, a, b, choice, scores=None, texts=None, leaks=(None, None)):
    texts = texts or (f"{a} 的回答", f"{b} 的回答")
    cmp = store.record_comparison(
        ComparisonIn(
            annotator.id, PROMPT, [ResponseIn(a, texts[0], leaks=leaks[0]), ResponseIn(b, texts[1], leaks=leaks[1])]
        )
    )
    store.submit_judgment(JudgmentIn(cmp.id, annotator.id, choice=choice, scores=scores or {}))
    return cmp


def test_a_clearly_better_checkpoint_rates_highest(pref_store):
    me = pref_store.demo_annotator()
    # dpo beats sft 8 of 10, sft beats cpt 8 of 10, cpt beats base 8 of 10, with a few ties
    for better, worse in (("r1/dpo", "r1/sft"), ("r1/sft", "r1/cpt"), ("r1/cpt", "r1/base")):
        for i in range(10):
            choice = "A" if i < 7 else ("tie" if i == 7 else "B")
            vote(pref_store, me, better, worse, choice)
    cmp = pref_store.record_comparison(
        ComparisonIn(me.id, PROMPT, [ResponseIn(c, c) for c in ("r1/base", "r1/dpo", "r1/sft")])
    )
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
    wins = np.array(
        [[games / (1 + math.exp(strengths[j] - strengths[i])) if i != j else 0.0 for j in range(3)] for i in range(3)]
    )
    fitted = fit_bradley_terry(wins)
    assert fitted - fitted[0] == pytest.approx(strengths, abs=0.01)


def test_an_unbeaten_checkpoint_gets_a_finite_rating():
    ratings = rate_checkpoints([Battle("good", "bad", 1.0)] * 20, rounds=20)
    assert ratings[0].checkpoint_id == "good"
    assert all(math.isfinite(r.rating) and math.isfinite(r.ci95[0]) for r in ratings)
    assert ratings[0].rating - ratings[1].rating > 400  # better than ten-to-one odds


def test_criterion_means_are_per_checkpoint(pref_store):
    me = pref_store.demo_annotator()
    vote(
        pref_store,
        me,
        "r1/sft",
        "r1/base",
        "A",
        {"A": {"safety": 5, "correctness": 4, "completeness": 3}, "B": {"safety": 2}},
    )
    vote(pref_store, me, "r1/sft", "r1/base", "A", {"A": {"safety": 3, "correctness": 4}})
    board = pref_store.leaderboard(rounds=10)
    assert board.criteria["r1/sft"] == {"safety": 4.0, "correctness": 4.0, "completeness": 3.0}
    assert board.criteria_n["r1/sft"] == {"safety": 2, "correctness": 2, "completeness": 1}
    assert board.criteria["r1/base"] == {"safety": 2.0}


def test_leaderboard_of_an_empty_store(pref_store):
    board = pref_store.leaderboard()
    assert board.ratings == [] and board.win_rate == {} and board.judgments == 0
    assert board.criterion_ratings == {} and board.length_controlled.ratings == []
    assert board.length_controlled.length_coefficient is None and board.leaked_battles == 0
    assert board.position_bias.decided_votes == 0 and board.screen == [] and board.outliers == []


def test_ratings_are_provisional_until_enough_battles(pref_store):
    pref_store.settings.provisional_battles = 4
    me = pref_store.demo_annotator()
    for _ in range(4):
        vote(pref_store, me, "r1/dpo", "r1/sft", "A")
    for _ in range(2):
        vote(pref_store, me, "r1/cpt", "r1/base", "B")
    board = pref_store.leaderboard(rounds=10)
    provisional = {r.checkpoint_id: r.provisional for r in board.ratings}
    assert provisional == {"r1/dpo": False, "r1/sft": False, "r1/cpt": True, "r1/base": True}
    assert board.provisional_battles == 4
    assert all(r.provisional == provisional[r.checkpoint_id] for r in board.length_controlled.ratings)


def test_battles_whose_answers_name_a_model_are_left_out(pref_store):
    me = pref_store.demo_annotator()
    for _ in range(3):  # sft wins only where its answer says it is ChatGPT
        vote(pref_store, me, "r1/sft", "r1/dpo", "A", leaks=(["ChatGPT"], []))
    for _ in range(2):
        vote(pref_store, me, "r1/dpo", "r1/sft", "A", leaks=([], []))
    vote(pref_store, me, "r1/cpt", "r1/base", "A")  # not checked (leaks None): kept

    board = pref_store.leaderboard(rounds=10)
    assert board.leaked_battles == 3 and board.leaked_excluded
    assert board.battles["r1/dpo"]["r1/sft"] == 2 and board.win_rate["r1/dpo"]["r1/sft"] == 1.0
    assert board.ratings[0].checkpoint_id in ("r1/dpo", "r1/cpt")

    kept = pref_store.leaderboard(rounds=10, exclude_leaked=False)
    assert kept.leaked_battles == 3 and not kept.leaked_excluded
    assert kept.battles["r1/dpo"]["r1/sft"] == 5 and kept.win_rate["r1/sft"]["r1/dpo"] == pytest.approx(3 / 5)

    pref_store.settings.exclude_leaked_battles = False  # the config decides the default
    assert pref_store.leaderboard(rounds=10).battles["r1/dpo"]["r1/sft"] == 5


def test_ratings_per_criterion_follow_the_scores(pref_store):
    me = pref_store.demo_annotator()
    # base is safer (more cautious) but sft is more fluent; the votes favour sft
    for _ in range(6):
        vote(
            pref_store,
            me,
            "r1/sft",
            "r1/base",
            "A",
            {
                "A": {"safety": 2, "fluency": 5, "correctness": 3},
                "B": {"safety": 4, "fluency": 2, "correctness": 3},
            },
        )
    # a ranking of three: every two scored answers make one battle per criterion they share
    cmp = pref_store.record_comparison(
        ComparisonIn(me.id, PROMPT, [ResponseIn(c, c) for c in ("r1/dpo", "r1/sft", "r1/base")])
    )
    pref_store.submit_judgment(
        JudgmentIn(
            cmp.id,
            me.id,
            ranking={"A": 1, "B": 2, "C": 3},
            scores={"A": {"safety": 5}, "B": {"safety": 1}, "C": {"safety": 3, "fluency": 1}},
        )
    )
    board = pref_store.leaderboard(rounds=20)
    order = {c: [r.checkpoint_id for r in ratings] for c, ratings in board.criterion_ratings.items()}
    assert order["safety"] == ["r1/dpo", "r1/base", "r1/sft"]
    assert order["fluency"] == ["r1/sft", "r1/base"]  # dpo was not scored on fluency
    assert order["correctness"] == ["r1/base", "r1/sft"] or order["correctness"] == ["r1/sft", "r1/base"]
    safety = {r.checkpoint_id: r for r in board.criterion_ratings["safety"]}
    assert (safety["r1/base"].wins, safety["r1/base"].losses, safety["r1/base"].battles) == (7, 1, 8)
    correctness = board.criterion_ratings["correctness"]
    assert correctness[0].rating == pytest.approx(correctness[1].rating) and correctness[0].ties == 6
    assert [r.checkpoint_id for r in board.ratings][0] in ("r1/sft", "r1/dpo")  # the votes, not the scores


def planted_length_battles(seed=0, n=3000):
    """Four checkpoints of equal quality; "verbose" always writes about twice as much, and the judge prefers
    the longer answer (log-odds 3 x the normalised length difference). Its wins come only from its length."""
    rng = np.random.default_rng(seed)
    models = ["m1", "m2", "m3", "verbose"]
    battles = []
    for _ in range(n):
        a, b = rng.choice(models, size=2, replace=False)
        la, lb = (int(rng.integers(200, 320)) if m == "verbose" else int(rng.integers(60, 200)) for m in (a, b))
        p_a = 1 / (1 + math.exp(-3.0 * (la - lb) / (la + lb)))
        battles.append(Battle(a, b, float(rng.random() < p_a), la, lb))
    return battles


def test_length_control_removes_a_planted_length_bias():
    battles = planted_length_battles()
    raw = {r.checkpoint_id: r.rating for r in rate_checkpoints(battles, rounds=0)}
    controlled = rate_length_controlled(battles)
    lc = {r.checkpoint_id: r for r in controlled.ratings}
    others = np.mean([raw[m] for m in ("m1", "m2", "m3")])
    assert raw["verbose"] - others > 100  # the plain ratings reward the longer answers
    assert max(raw, key=raw.get) == "verbose"
    # controlled for length, verbose is no better than the others: within its 95% interval of them
    assert abs(lc["verbose"].rating - np.mean([lc[m].rating for m in ("m1", "m2", "m3")])) < 40
    assert lc["verbose"].ci95[0] < 1000 < lc["verbose"].ci95[1] + 40
    assert lc["verbose"].rating < raw["verbose"] - 80
    low, high = controlled.length_ci95
    assert 0 < low < controlled.length_coefficient < high  # longer answers win, and the model says so
    assert controlled.battles == len(battles)
    for r in controlled.ratings:
        assert r.ci95[0] < r.rating < r.ci95[1]


def test_length_control_changes_nothing_when_length_does_not_matter():
    rng = np.random.default_rng(1)
    battles = [
        Battle("good", "bad", float(rng.random() < 0.75), int(rng.integers(50, 300)), int(rng.integers(50, 300)))
        for _ in range(2000)
    ]
    raw = {r.checkpoint_id: r.rating for r in rate_checkpoints(battles, rounds=0)}
    controlled = rate_length_controlled(battles)
    low, high = controlled.length_ci95
    assert low < 0 < high
    for r in controlled.ratings:
        assert r.rating == pytest.approx(raw[r.checkpoint_id], abs=10)


def test_the_leaderboard_reads_answer_lengths_from_the_store(pref_store):
    me = pref_store.demo_annotator()
    for i in range(8):  # the longer answer wins every time, whichever checkpoint wrote it
        long_first = i % 2 == 0
        texts = ("很长的回答" * (4 + i), "短") if long_first else ("短", "很长的回答" * (4 + i))
        vote(pref_store, me, "r1/sft", "r1/cpt", "A" if long_first else "B", texts=texts)
    board = pref_store.leaderboard(rounds=10)
    lc = board.length_controlled
    assert lc.battles == 8 and lc.length_coefficient > 1
    assert {r.checkpoint_id for r in lc.ratings} == {"r1/sft", "r1/cpt"}
    assert abs(lc.ratings[0].rating - lc.ratings[1].rating) < 50  # they are even once length is accounted for
