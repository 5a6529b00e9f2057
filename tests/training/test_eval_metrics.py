"""Metric functions against values computed by hand on short Chinese strings (characters are the tokens)."""

from __future__ import annotations

import math

import pytest

from training.evaluation.metrics import accuracy, bleu, distinct_n, generation_metrics, rouge, wilson_interval
from training.evaluation.preference import implicit_reward_accuracy, likelihood_accuracy


def test_bleu1_is_clipped_unigram_precision_times_brevity_penalty():
    # 5 hypothesis characters, all in the 11-character reference (the space is not a token): p1 = 1,
    # BP = exp(1 - 11/5)
    assert bleu(["糖尿病 多饮"], ["糖尿病的症状是多饮多尿"], 1) == pytest.approx(math.exp(1 - 11 / 5))
    # 多 three times against twice in the reference: clipped to 2 of 3; BP = exp(1 - 4/3)
    assert bleu(["多多多"], ["多饮多尿"], 1) == pytest.approx(2 / 3 * math.exp(1 - 4 / 3))


def test_bleu2_is_the_geometric_mean_of_unigram_and_bigram_precision():
    # unigrams 多 饮 少 尿: 3 of 4 match; bigrams 多饮 饮少 少尿: 1 of 3; same length, BP = 1
    assert bleu(["多饮少尿"], ["多饮多尿"], 2) == pytest.approx(math.sqrt(3 / 4 * 1 / 3))
    assert bleu(["多饮多尿"], ["多饮多尿"], 4) == pytest.approx(1.0)


def test_bleu_is_a_corpus_score():
    # counts add up over answers before the precision is taken: 5 of 5 and 0 of 2 -> 5/7, no length penalty
    assert bleu(["多饮多尿口", "发热"], ["多饮多尿口", "咳嗽"], 1) == pytest.approx(5 / 7)


def test_rouge_on_characters():
    # 多饮少尿 vs 多饮多尿: 3 shared characters, P = R = 3/4; LCS 多饮尿 = 3; bigrams: only 多饮 of 3
    one = rouge(["多饮少尿"], ["多饮多尿"])
    assert one["rouge1"] == pytest.approx(0.75)
    assert one["rougeL"] == pytest.approx(0.75)
    assert one["rouge2"] == pytest.approx(1 / 3)
    # 尿多饮 vs 多饮多尿: unigrams P = 3/3, R = 3/4 -> F = 6/7; LCS 多饮 = 2, P = 2/3, R = 2/4 -> F = 4/7
    two = rouge(["尿 多饮"], ["多饮多尿"])
    assert two["rouge1"] == pytest.approx(6 / 7)
    assert two["rougeL"] == pytest.approx(4 / 7)
    both = rouge(["多饮少尿", "尿多饮"], ["多饮多尿", "多饮多尿"])  # the mean over answers
    assert both["rouge1"] == pytest.approx((0.75 + 6 / 7) / 2)


def test_rouge_does_not_drop_chinese_like_the_default_tokenizer():
    assert rouge(["发热"], ["发热"])["rouge1"] == pytest.approx(1.0)
    assert rouge(["发热"], ["咳嗽"])["rouge1"] == 0.0


def test_distinct2_counts_unique_character_bigrams_over_all_answers():
    # 多饮多饮 -> 多饮 饮多 多饮; 多饮 -> 多饮: 2 distinct of 4
    assert distinct_n(["多饮多饮", "多饮"], 2) == pytest.approx(0.5)
    assert distinct_n(["发", ""], 2) == 0.0


def test_generation_metrics_reports_every_key():
    metrics = generation_metrics(["多饮多尿"], ["多饮多尿"])
    assert set(metrics) == {"bleu1", "bleu2", "bleu4", "rouge1", "rouge2", "rougeL", "distinct2"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())


def test_wilson_interval_by_hand():
    # 25/100: centre (0.25 + z^2/200) / (1 + z^2/100), half-width z*sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/100)
    lo, hi = wilson_interval(25, 100)
    assert lo == pytest.approx(0.1755, abs=1e-4) and hi == pytest.approx(0.3430, abs=1e-4)
    lo, hi = wilson_interval(0, 10)  # no success: the interval still has width
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_accuracy_with_ci():
    result = accuracy([True, False, False, False] * 25)
    assert result["acc"] == 0.25 and result["n"] == 100
    assert result["ci95"] == pytest.approx(list(wilson_interval(25, 100)))
    assert accuracy([])["acc"] is None


def test_preference_accuracies_by_hand():
    policy = [
        {"chosen": -10.0, "chosen_tokens": 5, "rejected": -4.0, "rejected_tokens": 1},
        {"chosen": -6.0, "chosen_tokens": 3, "rejected": -9.0, "rejected_tokens": 3},
    ]
    # per token: pair 1 chosen -2 < rejected -4? no: -2 > -4 -> right; pair 2: -2 > -3 -> right
    assert likelihood_accuracy(policy) == 1.0
    reference = [
        {"chosen": -12.0, "chosen_tokens": 5, "rejected": -3.0, "rejected_tokens": 1},
        {"chosen": -5.0, "chosen_tokens": 3, "rejected": -10.0, "rejected_tokens": 3},
    ]
    # log-ratios: pair 1 chosen +2 > rejected -1 -> right; pair 2 chosen -1 < rejected +1 -> wrong
    assert implicit_reward_accuracy(policy, reference) == 0.5
    assert implicit_reward_accuracy(reference, reference) == 0.0  # ties are not "chosen above rejected"
