"""Vote integrity: the outlier screen lists a planted random voter and not the consistent annotators; the
position bias of panel A is measured with its interval."""

from __future__ import annotations

import numpy as np
import pytest

from preference_store.models import BankPromptRow
from preference_store.records import ComparisonIn, JudgmentIn, ResponseIn
from preference_store.statistics.integrity import binomial_cdf, wilson_interval

pytestmark = pytest.mark.both_backends  # the store tests run on SQLite and on PostgreSQL


def add_bank_prompt(store, text, split="train"):
    """A bank prompt written straight into the store (the import itself is tested in test_store_bank.py)."""
    row = BankPromptRow(
        id=f"bp{abs(hash(text)) % 10**12}",
        bank="test",
        messages=[{"role": "user", "content": text}],
        tags=[],
        split=split,
        content_sha256=f"{abs(hash(text)):064d}"[:64],
        source="test:1",
    )
    store._write(lambda s: s.add(row))
    return row.id, row.messages


def judge(store, annotator, prompt, checkpoints, **judgment):
    bank_id, messages = prompt
    cmp = store.record_comparison(
        ComparisonIn(annotator.id, messages, [ResponseIn(c, f"{c} 答") for c in checkpoints], bank_prompt_id=bank_id)
    )
    return store.submit_judgment(JudgmentIn(cmp.id, annotator.id, **judgment))


def test_binomial_tail_and_wilson_interval_by_hand():
    assert binomial_cdf(2, 10, 0.5) == pytest.approx((1 + 10 + 45) / 1024)
    assert binomial_cdf(10, 10, 0.3) == 1.0 and binomial_cdf(0, 3, 0.5) == pytest.approx(1 / 8)
    # Wilson, 8 of 10 at z = 1.96: centre (0.8 + 0.19208) / 1.38416, half 1.96 * sqrt(0.016 + 0.009604) / 1.38416
    low, high = wilson_interval(8, 10)
    assert (low, high) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0


def test_the_screen_lists_a_planted_random_voter_and_not_the_consistent_annotators(pref_store):
    pref_store.settings.outlier_p_value = 0.01
    consistent = [pref_store.add_annotator(f"clinician{i}", "a-long-password") for i in range(4)]
    random_voter = pref_store.add_annotator("clicker", "a-long-password")
    rng = np.random.default_rng(7)
    for p in range(24):
        prompt = add_bank_prompt(pref_store, f"临床问题 {p}")
        better, worse = ("r1/dpo", "r1/sft") if p % 3 else ("r1/sft", "r1/dpo")  # the truth varies by prompt
        for i, annotator in enumerate(consistent):
            panels = [better, worse] if (p + i) % 2 else [worse, better]  # shuffled panels
            says_better = (p + 3 * i) % 12 != 0  # each errs on about one prompt in twelve
            choice = "A" if (panels[0] == better) == says_better else "B"
            judge(pref_store, annotator, prompt, panels, choice=choice)
        judge(pref_store, random_voter, prompt, [better, worse], choice=str(rng.choice(["A", "B", "tie"])))

    board = pref_store.leaderboard(rounds=0)
    assert [s.name for s in board.outliers] == ["clicker"]
    screen = {s.name: s for s in board.screen}
    assert set(screen) == {"clinician0", "clinician1", "clinician2", "clinician3", "clicker"}
    clicker = screen["clicker"]
    assert (
        clicker.units == 24
        and clicker.rate < 0.6
        and clicker.p_value < 0.01 < min(screen[f"clinician{i}"].p_value for i in range(4))
    )
    assert all(screen[f"clinician{i}"].rate > 0.85 and not screen[f"clinician{i}"].outlier for i in range(4))
    assert clicker.expected > 0.85  # the others agree with their consensus that often
    # the agreement report says the same, per annotator
    per = {a.name: a for a in board.agreement.annotators}
    assert per["clicker"].percent < min(per[f"clinician{i}"].percent for i in range(4))

    pref_store.settings.outlier_p_value = 1e-12  # a stricter screen lists nobody
    assert pref_store.leaderboard(rounds=0).outliers == []


def test_nobody_is_screened_without_shared_prompts(pref_store):
    me = pref_store.demo_annotator()
    judge(pref_store, me, add_bank_prompt(pref_store, "只有一人评过"), ["r1/dpo", "r1/sft"], choice="A")
    assert pref_store.leaderboard(rounds=0).screen == []


def test_position_bias_when_panel_a_always_wins(pref_store):
    me = pref_store.demo_annotator()
    prompt = add_bank_prompt(pref_store, "头痛怎么办？")
    for i in range(20):
        panels = ["r1/dpo", "r1/sft"] if i % 2 else ["r1/sft", "r1/dpo"]
        judge(pref_store, me, prompt, panels, choice="A")
    judge(pref_store, me, prompt, ["r1/dpo", "r1/sft"], choice="tie")  # not decided: not counted
    bias = pref_store.leaderboard(rounds=0).position_bias
    assert (bias.decided_votes, bias.a_wins, bias.a_share) == (20, 20, 1.0)
    assert bias.a_ci95[0] > 0.8 and bias.a_ci95[1] == 1.0  # far from the 0.5 of no bias


def test_position_bias_when_balanced_and_in_rankings(pref_store):
    me = pref_store.demo_annotator()
    prompt = add_bank_prompt(pref_store, "腰痛怎么办？")
    for i in range(20):
        judge(pref_store, me, prompt, ["r1/dpo", "r1/sft"], choice="A" if i % 2 else "B")
    three = ["r1/dpo", "r1/sft", "r1/base"]
    for ranking in (
        {"A": 1, "B": 2, "C": 3},
        {"A": 1, "B": 3, "C": 2},
        {"A": 2, "B": 1, "C": 3},
        {"A": 3, "B": 2, "C": 1},
    ):
        judge(pref_store, me, prompt, three, ranking=ranking)
    bias = pref_store.leaderboard(rounds=0).position_bias
    assert (bias.decided_votes, bias.a_share) == (20, 0.5)
    assert bias.a_ci95[0] < 0.5 < bias.a_ci95[1]
    assert bias.rankings == 4
    assert bias.first_place == {"A": 0.5, "B": 0.25, "C": 0.25}
    assert bias.first_place_expected == pytest.approx({"A": 1 / 3, "B": 1 / 3, "C": 1 / 3})
