"""Dawid-Skene recovers planted annotator reliabilities on synthetic overlap judgments, and a pair's weight is
high where reliable annotators agree and low where an unreliable one is outvoted."""

from __future__ import annotations

import numpy as np

from preference_store.statistics.agreement import FIRST_BETTER, SECOND_BETTER, TIE
from preference_store.statistics.reliability import CLASSES, dawid_skene


def planted(n_units: int, accuracy: dict[int, float], per_unit: int, seed: int):
    """Units with a true class (first better 45%, second 45%, tie 10%) voted on by ``per_unit`` annotators drawn
    at random; an annotator says the truth with their accuracy, else one of the other two classes at random."""
    rng = np.random.default_rng(seed)
    annotators = sorted(accuracy)
    truth, units = {}, {}
    for u in range(n_units):
        key = (f"p{u}", "a/x", "b/y")
        truth[key] = CLASSES[rng.choice(3, p=[0.45, 0.45, 0.10])]
        units[key] = {}
        for a in rng.choice(annotators, size=per_unit, replace=False):
            right = rng.random() < accuracy[int(a)]
            others = [c for c in CLASSES if c != truth[key]]
            units[key][int(a)] = truth[key] if right else others[rng.integers(2)]
    return units, truth


def test_dawid_skene_recovers_planted_reliabilities():
    accuracy = {1: 0.95, 2: 0.9, 3: 0.85, 4: 0.8, 5: 0.6, 6: 0.4}  # 6: a careless annotator (chance is 1/3)
    units, truth = planted(600, accuracy, per_unit=3, seed=7)
    fit = dawid_skene(units)
    for annotator, planted_accuracy in accuracy.items():
        assert abs(fit.reliability(annotator) - planted_accuracy) < 0.07, (annotator, fit.reliability(annotator))
    ranked = sorted(accuracy, key=fit.reliability, reverse=True)
    assert set(ranked[:4]) == {1, 2, 3, 4}
    assert ranked[-1] == 6
    # the posteriors recover the true classes better than a majority vote does
    right = sum(CLASSES[int(np.argmax(fit.posteriors[k]))] == truth[k] for k in units)
    majority = sum(max(CLASSES, key=list(units[k].values()).count) == truth[k] for k in units)
    assert right >= majority and right / len(units) > 0.9


def test_no_overlap_no_fit():
    assert dawid_skene({("p", "a", "b"): {1: FIRST_BETTER}, ("q", "a", "b"): {2: TIE}}) is None


def test_a_reliable_majority_outweighs_a_careless_dissenter():
    units, _ = planted(400, {1: 0.95, 2: 0.95, 3: 0.35}, per_unit=3, seed=3)
    units[("x", "a/x", "b/y")] = {1: FIRST_BETTER, 2: FIRST_BETTER, 3: SECOND_BETTER}
    units[("y", "a/x", "b/y")] = {1: FIRST_BETTER, 2: SECOND_BETTER, 3: SECOND_BETTER}
    fit = dawid_skene(units)
    agreed, split = fit.posteriors[("x", "a/x", "b/y")], fit.posteriors[("y", "a/x", "b/y")]
    assert agreed[CLASSES.index(FIRST_BETTER)] > 0.95
    assert 0.2 < split[CLASSES.index(FIRST_BETTER)] < 0.8  # two reliable annotators split: uncertain
