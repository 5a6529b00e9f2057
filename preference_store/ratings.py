"""Leaderboard statistics: Bradley-Terry ratings with bootstrap intervals, win rates, agreement.

The ratings follow Chatbot Arena: each model-vs-model outcome is a battle, a tie (or both-bad) is
half a win for each side, the Bradley-Terry strengths are fitted by maximum likelihood and shown on
the Elo scale (1000 = average, +400 = ten-to-one odds), and the 95% interval comes from refitting on
battles resampled with replacement.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from preference_store.records import Agreement, CheckpointRating

ELO_SCALE = 400 / math.log(10)
ELO_BASE = 1000.0
# A weak Gaussian prior on the strengths keeps an unbeaten (or never-winning) model finite instead
# of drifting to infinity; it moves ratings with more than a handful of battles negligibly.
PRIOR_PRECISION = 0.01


@dataclass(frozen=True)
class Battle:
    a: str  # checkpoint id
    b: str
    score_a: float  # 1 = a won, 0.5 = tie, 0 = b won


def fit_bradley_terry(wins: np.ndarray, iterations: int = 100) -> np.ndarray:
    """Centered log-strengths maximizing sum_ij wins[i, j] * log sigmoid(s_i - s_j) (damped Newton)."""
    n = wins.shape[0]
    games = wins + wins.T
    s = np.zeros(n)

    def objective(s):
        d = s[:, None] - s[None, :]
        return float((wins * -np.logaddexp(0.0, -d)).sum() - 0.5 * PRIOR_PRECISION * (s @ s))

    current = objective(s)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(s[:, None] - s[None, :])))
        grad = (wins - games * p).sum(axis=1) - PRIOR_PRECISION * s
        w = games * p * (1 - p)
        hessian = w - np.diag(w.sum(axis=1)) - PRIOR_PRECISION * np.eye(n)
        step = np.linalg.solve(hessian, grad)
        t = 1.0
        while t > 1e-6:  # backtrack until the (concave) likelihood does not drop
            candidate = s - t * step
            value = objective(candidate)
            if value >= current - 1e-12:
                break
            t /= 2
        s, previous, current = candidate, current, value
        if np.abs(t * step).max() < 1e-9 or abs(current - previous) < 1e-12:
            break
    return s - s.mean()


def win_matrix(battles: list[Battle], index: dict[str, int]) -> np.ndarray:
    """wins[i, j]: how often i beat j, ties counting half for each."""
    wins = np.zeros((len(index), len(index)))
    for battle in battles:
        i, j = index[battle.a], index[battle.b]
        wins[i, j] += battle.score_a
        wins[j, i] += 1.0 - battle.score_a
    return wins


def rate_checkpoints(battles: list[Battle], rounds: int, seed: int = 0) -> list[CheckpointRating]:
    """Bradley-Terry ratings with 95% bootstrap intervals, best first."""
    battles = [b for b in battles if b.a != b.b]
    if not battles:
        return []
    models = sorted({b.a for b in battles} | {b.b for b in battles})
    index = {m: i for i, m in enumerate(models)}
    point = fit_bradley_terry(win_matrix(battles, index))

    # resampling N battles with replacement = multinomial counts over the distinct battle kinds
    kinds: dict[tuple[int, int, float], int] = defaultdict(int)
    for b in battles:
        kinds[(index[b.a], index[b.b], b.score_a)] += 1
    keys = list(kinds)
    probs = np.array([kinds[k] for k in keys], dtype=float) / len(battles)
    rng = np.random.default_rng(seed)
    samples = np.empty((rounds, len(models)))
    for r, counts in enumerate(rng.multinomial(len(battles), probs, size=rounds)):
        wins = np.zeros((len(models), len(models)))
        for (i, j, score), c in zip(keys, counts):
            wins[i, j] += c * score
            wins[j, i] += c * (1.0 - score)
        samples[r] = fit_bradley_terry(wins)
    low, high = np.percentile(samples, [2.5, 97.5], axis=0) if rounds else (point, point)

    tally = {m: [0, 0, 0, 0] for m in models}  # battles, wins, losses, ties
    for b in battles:
        for m, score in ((b.a, b.score_a), (b.b, 1.0 - b.score_a)):
            t = tally[m]
            t[0] += 1
            t[1 if score == 1.0 else 2 if score == 0.0 else 3] += 1
    ratings = [
        CheckpointRating(
            checkpoint_id=m,
            rating=float(ELO_BASE + ELO_SCALE * point[i]),
            ci95=(float(ELO_BASE + ELO_SCALE * low[i]), float(ELO_BASE + ELO_SCALE * high[i])),
            battles=tally[m][0], wins=tally[m][1], losses=tally[m][2], ties=tally[m][3],
        )
        for m, i in index.items()
    ]
    return sorted(ratings, key=lambda r: -r.rating)


def win_rates(battles: list[Battle]) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, int]]]:
    """(share of row's battles against column that row won, ties half; battle counts), pairs that met only."""
    score: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    count: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for b in battles:
        if b.a == b.b:
            continue
        for x, y, s in ((b.a, b.b, b.score_a), (b.b, b.a, 1.0 - b.score_a)):
            score[x][y] += s
            count[x][y] += 1
    rates = {x: {y: score[x][y] / n for y, n in row.items()} for x, row in count.items()}
    return rates, {x: dict(row) for x, row in count.items()}


def inter_annotator_agreement(verdicts: Iterable[tuple[str, str, int]]) -> Agreement:
    """Agreement on items judged by more than one annotator.

    ``verdicts``: (item key, annotator, verdict) with verdict 1 (first answer better), -1 (second
    better) or 0 (tie / both bad); an item is one answer pair of one comparison. An annotator who
    judged an item twice counts with the last verdict given. ``percent`` is the mean over items of
    the share of annotator pairs that agree; ``fleiss_kappa`` corrects it for chance (Fleiss 1971,
    with a varying number of raters per item).
    """
    by_item: dict[str, dict[str, int]] = defaultdict(dict)
    for item, annotator, verdict in verdicts:
        by_item[item][annotator] = verdict
    shared = {item: list(v.values()) for item, v in by_item.items() if len(v) > 1}
    comparisons = len({item.split("|", 1)[0] for item in shared})
    if not shared:
        return Agreement(comparisons=0, items=0, percent=None, fleiss_kappa=None)

    categories = (-1, 0, 1)
    per_item_agreement, totals = [], defaultdict(int)
    for votes in shared.values():
        n = len(votes)
        counts = [votes.count(c) for c in categories]
        per_item_agreement.append((sum(c * c for c in counts) - n) / (n * (n - 1)))
        for c, k in zip(categories, counts):
            totals[c] += k
    observed = float(np.mean(per_item_agreement))
    all_votes = sum(totals.values())
    expected = sum((totals[c] / all_votes) ** 2 for c in categories)
    kappa = None if expected >= 1.0 else (observed - expected) / (1.0 - expected)
    return Agreement(comparisons=comparisons, items=len(shared), percent=observed, fleiss_kappa=kappa)


def criterion_means(scores: Iterable[tuple[str, str, int]]) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, int]]]:
    """(checkpoint, criterion, score) -> (mean per checkpoint and criterion, count)."""
    total: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    count: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for checkpoint, criterion, value in scores:
        total[checkpoint][criterion] += value
        count[checkpoint][criterion] += 1
    means = {c: {k: total[c][k] / n for k, n in row.items()} for c, row in count.items()}
    return means, {c: dict(row) for c, row in count.items()}
