"""Each annotator's reliability on the pairwise verdicts, by Dawid and Skene's EM, and the weight of a pair.

Dawid & Skene (1979), "Maximum likelihood estimation of observer error-rates using the EM algorithm",
Applied Statistics 28(1):20-28. Every unit is one bank prompt with two checkpoints; its true class is one of
first better | second better | tie ("first" is the checkpoint whose id sorts first), and every annotator has a
3x3 confusion matrix: the probability of saying l when the truth is k. EM alternates the posterior of each
unit's class given the votes (E) and the class shares and confusion matrices given those posteriors (M),
starting from the vote shares. A small additive prior (``SMOOTHING`` pseudo-votes spread over each row, more
on the diagonal) keeps a matrix defined for an annotator with few overlap units.

An annotator's *reliability* is the probability that their verdict is the true one: sum_k share_k x
confusion_kk. The model is identified by the overlap (units with two or more annotators), which is what the
queue's k annotators per prompt give; units with one annotator add nothing to the estimates but still get
a posterior from that annotator's matrix.

A pair's *weight* is the posterior probability that its direction (its chosen checkpoint better) is the true
class of its unit: near 1 where reliable annotators agree, near 1/2 or lower where they split or where only
an unreliable annotator voted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from preference_store.statistics.agreement import FIRST_BETTER, SECOND_BETTER, TIE, pair_verdicts
from preference_store.statistics.bradley_terry import JudgedComparison

CLASSES = (FIRST_BETTER, SECOND_BETTER, TIE)
SMOOTHING = 1.0  # pseudo-votes per confusion row: half on the diagonal, the rest spread over the other labels
MAX_ITERATIONS = 200
TOLERANCE = 1e-6

Unit = tuple[str, str, str]  # (bank prompt, first checkpoint, second checkpoint)


@dataclass(frozen=True)
class DawidSkene:
    """The fit: each annotator's confusion matrix (rows: truth in :data:`CLASSES` order, columns: their verdict),
    the class shares, each unit's posterior over the classes, and the iterations EM took."""

    confusion: dict[int, np.ndarray]
    shares: np.ndarray
    posteriors: dict[Unit, np.ndarray]
    iterations: int

    def reliability(self, annotator_id: int) -> float:
        """The probability that this annotator's verdict is the true class."""
        return float(self.shares @ np.diag(self.confusion[annotator_id]))


def verdict_units(judged: Iterable[JudgedComparison]) -> dict[Unit, dict[int, int]]:
    """unit -> annotator -> class (:data:`CLASSES`), from votes and rankings on bank prompts (an annotator's last
    verdict wins)."""
    units: dict[Unit, dict[int, int]] = {}
    for (prompt, pair), by_annotator in pair_verdicts(judged).items():
        first, second = sorted(pair)
        units[(prompt, first, second)] = {
            a: FIRST_BETTER if w == first else SECOND_BETTER if w == second else TIE for a, w in by_annotator.items()
        }
    return units


def dawid_skene(units: dict[Unit, dict[int, int]]) -> DawidSkene | None:
    """Fit Dawid-Skene on ``units`` (unit -> annotator -> class); None when no unit has two annotators (nothing
    identifies the annotators' error rates)."""
    if not any(len(votes) > 1 for votes in units.values()):
        return None
    keys = list(units)
    annotators = sorted({a for votes in units.values() for a in votes})
    col = {a: j for j, a in enumerate(annotators)}
    index = {c: i for i, c in enumerate(CLASSES)}
    n_classes = len(CLASSES)
    # labels[u, a] = class index or -1 (not voted)
    labels = np.full((len(keys), len(annotators)), -1)
    for u, key in enumerate(keys):
        for a, value in units[key].items():
            labels[u, col[a]] = index[value]
    onehot = np.zeros((len(keys), len(annotators), n_classes))
    voted = labels >= 0
    onehot[voted, labels[voted]] = 1.0
    # start: each unit's vote shares
    posterior = onehot.sum(axis=1) + 1e-3
    posterior /= posterior.sum(axis=1, keepdims=True)
    prior = np.full((n_classes, n_classes), SMOOTHING / 2 / (n_classes - 1))
    np.fill_diagonal(prior, SMOOTHING / 2)
    iterations, change = 0, 1.0
    while iterations < MAX_ITERATIONS and change >= TOLERANCE:
        iterations += 1
        # M: class shares and confusion[a, truth, verdict]
        shares = posterior.mean(axis=0)
        confusion = np.einsum("uk,ual->akl", posterior, onehot) + prior
        confusion /= confusion.sum(axis=2, keepdims=True)
        # E: posterior of each unit's class given its votes
        log_post = np.log(shares)[None, :] + np.einsum("ual,akl->uk", onehot, np.log(confusion))
        log_post -= log_post.max(axis=1, keepdims=True)
        new = np.exp(log_post)
        new /= new.sum(axis=1, keepdims=True)
        change = float(np.abs(new - posterior).max())
        posterior = new
    return DawidSkene(
        confusion={a: confusion[col[a]] for a in annotators},
        shares=posterior.mean(axis=0),
        posteriors={key: posterior[u] for u, key in enumerate(keys)},
        iterations=iterations,
    )


def annotator_reliability(judged: Iterable[JudgedComparison]) -> tuple[DawidSkene | None, dict[int, int]]:
    """The Dawid-Skene fit on the pairwise verdicts on bank prompts, and each annotator's number of overlap units
    (units they share with another annotator)."""
    units = verdict_units(judged)
    overlap: dict[int, int] = {}
    for votes in units.values():
        if len(votes) > 1:
            for a in votes:
                overlap[a] = overlap.get(a, 0) + 1
    return dawid_skene(units), overlap


def pair_weights(
    pairs: Iterable[tuple[str, str, str | None, str]], judged: Iterable[JudgedComparison]
) -> dict[str, float | None]:
    """pair id -> the posterior probability that its direction is right (its weight), for pairs on bank prompts.

    ``pairs``: (pair id, bank prompt id, chosen checkpoint or None for a correction, rejected checkpoint), as
    :func:`~preference_store.statistics.agreement.pair_agreement` takes them. None for a correction, a pair of a
    checkpoint against itself, or where no annotator overlaps another (no fit)."""
    units = verdict_units(judged)
    fit = dawid_skene(units)
    result: dict[str, float | None] = {}
    for pair_id, prompt_id, chosen, rejected in pairs:
        if fit is None or chosen is None or chosen == rejected:
            result[pair_id] = None
            continue
        first, second = sorted((chosen, rejected))
        posterior = fit.posteriors.get((prompt_id, first, second))
        if posterior is None:
            result[pair_id] = None
            continue
        direction = FIRST_BETTER if chosen == first else SECOND_BETTER
        result[pair_id] = round(float(posterior[CLASSES.index(direction)]), 6)
    return result
