"""Active sampling of contestant pairs for the leaderboard: which two of a round's 3-4 contestants a bank prompt
shows next (``study.allocation: adaptive``; the queue applies it, :mod:`preference_store.repository.bank`).

The order of two contestants is least certain where their Bradley-Terry strengths are closest relative to the
uncertainty of the difference. From the battles among the round's contestants so far the strengths s are fitted by
maximum likelihood (:func:`~preference_store.statistics.bradley_terry.fit_bradley_terry`, with its weak prior) and
their covariance is the inverse of the information matrix there (a Wald approximation: cheap enough to recompute
for every new prompt, unlike the leaderboard's bootstrap). A pair's *order uncertainty* is

    u(i, j) = Phi(-|s_i - s_j| / se(s_i - s_j)),

the approximate chance that the fitted order of the two is the wrong one: 1/2 when nothing separates them (no
battles yet, or an even record), near 0 once one clearly beats the other. The pair with the largest u is the one
whose next judgment is most likely to change the ranking (Chatbot Arena samples pairs to shrink its intervals
fastest for the same reason: Chiang et al. 2024, "Chatbot Arena: an open platform for evaluating LLMs by human
preference", section 5).

The floor: a share ``floor`` (``study.pair_floor``) of the prompts gets a pair drawn uniformly from all pairs, the
rest the least certain pair (equally among pairs tied for it). Every pair therefore keeps a probability of at least
``floor / pairs``: an order that looks settled is still checked now and then (the fit may be wrong, answers drift),
and no contestant drops out of the battles. With floor 1 the pairs are uniform.
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np

from preference_store.statistics.bradley_terry import PRIOR_PRECISION, Battle, fit_bradley_terry, win_matrix

Pair = tuple[str, str]  # two contestants, in the round's order


def order_uncertainty(battles: list[Battle], contestants: tuple[str, ...]) -> dict[Pair, float]:
    """Each pair of ``contestants`` (in their order) -> u, the chance its fitted order is wrong (module docstring),
    from ``battles`` among them (battles with any other checkpoint are left out)."""
    index = {c: i for i, c in enumerate(contestants)}
    battles = [b for b in battles if b.a in index and b.b in index and b.a != b.b]
    wins = win_matrix(battles, index)
    s = fit_bradley_terry(wins)
    p = 1.0 / (1.0 + np.exp(-(s[:, None] - s[None, :])))
    w = (wins + wins.T) * p * (1 - p)
    information = np.diag(w.sum(axis=1)) - w + PRIOR_PRECISION * np.eye(len(index))
    covariance = np.linalg.inv(information)
    out = {}
    for a, b in combinations(contestants, 2):
        i, j = index[a], index[b]
        se = math.sqrt(max(covariance[i, i] + covariance[j, j] - 2 * covariance[i, j], 1e-12))
        out[(a, b)] = 0.5 * math.erfc(abs(s[i] - s[j]) / se / math.sqrt(2))  # Phi(-|d| / se)
    return out


def pair_probabilities(uncertainty: dict[Pair, float], floor: float) -> dict[Pair, float]:
    """The chance of each pair being shown: ``floor`` spread evenly over all pairs, the rest over the least certain
    ones (those within 1e-9 of the largest u)."""
    if not 0 < floor <= 1:
        raise ValueError(f"floor={floor}: the share of uniformly drawn pairs must be above 0 and at most 1")
    if not uncertainty:
        raise ValueError("no pairs to choose from")
    top = max(uncertainty.values())
    least_certain = [pair for pair, u in uncertainty.items() if u >= top - 1e-9]
    return {
        pair: floor / len(uncertainty) + ((1 - floor) / len(least_certain) if pair in least_certain else 0.0)
        for pair in uncertainty
    }


def draw_pair(probabilities: dict[Pair, float], draw: float) -> Pair:
    """The pair a uniform number ``draw`` in [0, 1) falls on (pairs in the order given)."""
    total = 0.0
    for pair, p in probabilities.items():
        total += p
        if draw < total:
            return pair
    return next(reversed(probabilities))  # draw within rounding of 1
