"""Leaderboard statistics: Bradley-Terry ratings with bootstrap intervals, win rates, criterion means.

The ratings follow Chatbot Arena: each model-vs-model outcome is a battle, a tie (or both-bad) is
half a win for each side, the Bradley-Terry strengths are fitted by maximum likelihood and shown on
the Elo scale (1000 = average, +400 = ten-to-one odds), and the 95% interval comes from refitting on
battles resampled with replacement. Beside the overall ratings: one per criterion of the guideline
(battles from the 1-5 scores given within one judgment), and a length-controlled one (Chatbot Arena's
style control: the normalised length difference of the two answers as a covariate of the logistic
model, so a checkpoint that wins only by writing more loses that advantage).

:class:`JudgedComparison` is the one shape the statistics read (ratings, agreement, integrity, run
comparison): a judgment with the panels it judged, keyed by checkpoint through the panel labels.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from preference_store.pairs import battle_outcomes
from preference_store.records import CheckpointRating, LengthControlledRatings

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
    length_a: int | None = None  # answer lengths in characters (for the length-controlled ratings)
    length_b: int | None = None


@dataclass(frozen=True)
class Panel:
    """One answer of a judged comparison."""

    response_id: str
    checkpoint_id: str
    length: int  # characters
    leaked: bool  # the answer names a model, company or checkpoint (ResponseOut.leaks not empty)


@dataclass(frozen=True)
class JudgedComparison:
    """One judgment with the answers it judged: what every leaderboard statistic is computed from."""

    judgment_id: str
    comparison_id: str
    annotator_id: int
    kind: str  # pairwise | ranking | correction
    choice: str | None
    ranking: dict[str, int] | None
    panels: dict[str, Panel]  # panel label -> answer
    scores: dict[str, dict[str, int]] = field(default_factory=dict)  # panel label -> criterion -> 1-5
    bank_prompt_id: str | None = None
    split: str | None = None  # the bank prompt's split (train | heldout)

    @property
    def contestants(self) -> frozenset[str]:
        return frozenset(p.checkpoint_id for p in self.panels.values())

    def outcomes(self) -> list[tuple[Panel, Panel, float]]:
        """Model-vs-model outcomes (answer x, answer y, score of x) of a vote or ranking; none for a correction."""
        return [
            (self.panels[x], self.panels[y], score)
            for x, y, score in battle_outcomes(self.kind, sorted(self.panels), self.choice, self.ranking)
        ]


def judged_battles(judged: Iterable[JudgedComparison], exclude_leaked: bool) -> tuple[list[Battle], int]:
    """(battles, how many had an answer naming a model); those are left out when ``exclude_leaked``."""
    battles, leaked = [], 0
    for j in judged:
        for x, y, score in j.outcomes():
            if x.leaked or y.leaked:
                leaked += 1
                if exclude_leaked:
                    continue
            battles.append(Battle(x.checkpoint_id, y.checkpoint_id, score, x.length, y.length))
    return battles, leaked


def criterion_battles(judged: Iterable[JudgedComparison], exclude_leaked: bool) -> dict[str, list[Battle]]:
    """criterion -> battles between every two answers scored on it within one judgment (higher wins, equal ties)."""
    battles: dict[str, list[Battle]] = defaultdict(list)
    for j in judged:
        labels = sorted(j.scores)
        for i, x in enumerate(labels):
            for y in labels[i + 1 :]:
                px, py = j.panels[x], j.panels[y]
                if exclude_leaked and (px.leaked or py.leaked):
                    continue
                for criterion in sorted(set(j.scores[x]) & set(j.scores[y])):
                    vx, vy = j.scores[x][criterion], j.scores[y][criterion]
                    score = 1.0 if vx > vy else 0.0 if vx < vy else 0.5
                    battles[criterion].append(Battle(px.checkpoint_id, py.checkpoint_id, score, px.length, py.length))
    return dict(battles)


def fit_bradley_terry(wins: np.ndarray, iterations: int = 100) -> np.ndarray:
    """Centered log-strengths maximizing sum_ij wins[i, j] * log sigmoid(s_i - s_j) (damped Newton)."""
    n = wins.shape[0]
    games = wins + wins.T
    s = np.zeros(n)

    def objective(s):
        d = s[:, None] - s[None, :]
        return float((wins * -np.logaddexp(0.0, -d)).sum() - 0.5 * PRIOR_PRECISION * (s @ s))

    def newton_step(s):
        p = 1.0 / (1.0 + np.exp(-(s[:, None] - s[None, :])))
        grad = (wins - games * p).sum(axis=1) - PRIOR_PRECISION * s
        w = games * p * (1 - p)
        hessian = w - np.diag(w.sum(axis=1)) - PRIOR_PRECISION * np.eye(n)
        return -np.linalg.solve(hessian, grad)

    s = maximise_concave(objective, newton_step, s, iterations)
    return s - s.mean()


def maximise_concave(objective, newton_step, x: np.ndarray, iterations: int) -> np.ndarray:
    """Damped Newton ascent of a concave ``objective`` from ``x``: each step ``newton_step(x)`` is halved
    until the objective does not drop; stops when a step or the gain becomes negligible."""
    current = objective(x)
    for _ in range(iterations):
        step = newton_step(x)
        t = 1.0
        while t > 1e-6:  # backtrack until the (concave) likelihood does not drop
            candidate = x + t * step
            value = objective(candidate)
            if value >= current - 1e-12:
                break
            t /= 2
        x, previous, current = candidate, current, value
        if np.abs(t * step).max() < 1e-9 or abs(current - previous) < 1e-12:
            break
    return x


def win_matrix(battles: list[Battle], index: dict[str, int]) -> np.ndarray:
    """wins[i, j]: how often i beat j, ties counting half for each."""
    wins = np.zeros((len(index), len(index)))
    for battle in battles:
        i, j = index[battle.a], index[battle.b]
        wins[i, j] += battle.score_a
        wins[j, i] += 1.0 - battle.score_a
    return wins


def rate_checkpoints(
    battles: list[Battle], rounds: int, seed: int = 0, provisional_battles: int = 0
) -> list[CheckpointRating]:
    """Bradley-Terry ratings with 95% bootstrap intervals, best first; a checkpoint with fewer than
    ``provisional_battles`` battles is marked provisional."""
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
    n = len(models)
    # each battle kind adds its count x score to wins[i, j] and count x (1 - score) to wins[j, i]
    cells = np.array([i * n + j for i, j, _ in keys] + [j * n + i for i, j, _ in keys])
    shares = np.array([score for _, _, score in keys] + [1.0 - score for _, _, score in keys])
    rng = np.random.default_rng(seed)
    samples = np.empty((rounds, n))
    for r, counts in enumerate(rng.multinomial(len(battles), probs, size=rounds)):
        wins = np.bincount(cells, weights=np.concatenate([counts, counts]) * shares, minlength=n * n).reshape(n, n)
        samples[r] = fit_bradley_terry(wins)
    low, high = np.percentile(samples, [2.5, 97.5], axis=0) if rounds else (point, point)
    return _ratings(battles, index, point, low, high, provisional_battles)


def _ratings(
    battles: list[Battle],
    index: dict[str, int],
    point: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    provisional_battles: int,
) -> list[CheckpointRating]:
    """Rating records (Elo scale) with each checkpoint's battle tally, best first."""
    tally = {m: [0, 0, 0, 0] for m in index}  # battles, wins, losses, ties
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
            battles=tally[m][0],
            wins=tally[m][1],
            losses=tally[m][2],
            ties=tally[m][3],
            provisional=tally[m][0] < provisional_battles,
        )
        for m, i in index.items()
    ]
    return sorted(ratings, key=lambda r: -r.rating)


def normalised_length_difference(battles: list[Battle]) -> np.ndarray:
    """(len_a - len_b) / (len_a + len_b) per battle (0 when both are empty or unknown), as Chatbot Arena's style
    control does, divided by its standard deviation over the battles (left as is when it does not vary)."""
    diff = np.array(
        [((b.length_a or 0) - (b.length_b or 0)) / max((b.length_a or 0) + (b.length_b or 0), 1) for b in battles],
        dtype=float,
    )
    std = diff.std()
    return diff / std if std > 0 else diff


def fit_logistic_bradley_terry(
    battles: list[Battle], index: dict[str, int], covariate: np.ndarray, iterations: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """(parameters, covariance): strengths of ``index``'s checkpoints then the covariate's coefficient,
    maximising sum_k y_k log p_k + (1 - y_k) log(1 - p_k), logit p_k = s_a - s_b + beta * x_k (a tie is
    y = 1/2), with the weak prior of :func:`fit_bradley_terry` on every parameter (damped Newton).
    The covariance is the inverse of the information matrix at the optimum (for Wald intervals)."""
    n, k = len(index), len(battles)
    design = np.zeros((k, n + 1))
    rows = np.arange(k)
    design[rows, [index[b.a] for b in battles]] += 1.0
    design[rows, [index[b.b] for b in battles]] -= 1.0
    design[:, n] = covariate
    y = np.array([b.score_a for b in battles], dtype=float)
    precision = np.full(n + 1, PRIOR_PRECISION)  # on the coefficient too: finite even if the longer answer always won

    def objective(theta):
        z = design @ theta
        return float(
            (y * -np.logaddexp(0.0, -z) + (1 - y) * -np.logaddexp(0.0, z)).sum()
            - 0.5 * (precision * theta * theta).sum()
        )

    def information(theta):
        p = 1.0 / (1.0 + np.exp(-(design @ theta)))
        return (design * (p * (1 - p))[:, None]).T @ design + np.diag(precision), p

    def newton_step(theta):
        info, p = information(theta)
        return np.linalg.solve(info, design.T @ (y - p) - precision * theta)

    theta = maximise_concave(objective, newton_step, np.zeros(n + 1), iterations)
    return theta, np.linalg.inv(information(theta)[0])


def rate_length_controlled(battles: list[Battle], provisional_battles: int = 0) -> LengthControlledRatings:
    """Bradley-Terry ratings controlled for answer length, best first, with 95% Wald intervals.

    Wald intervals (from the fit's information matrix) rather than a bootstrap: refitting the regression a
    thousand times is too slow for a tab that recomputes whenever it is opened.
    """
    battles = [b for b in battles if b.a != b.b]
    if not battles:
        return LengthControlledRatings(ratings=[], length_coefficient=None, length_ci95=None, battles=0)
    models = sorted({b.a for b in battles} | {b.b for b in battles})
    index = {m: i for i, m in enumerate(models)}
    covariate = normalised_length_difference(battles)
    varies = bool(np.any(covariate != 0))
    theta, covariance = fit_logistic_bradley_terry(battles, index, covariate)
    n = len(models)
    strengths = theta[:n] - theta[:n].mean()
    centering = np.eye(n) - 1.0 / n
    se = np.sqrt(np.clip(np.diag(centering @ covariance[:n, :n] @ centering), 0.0, None))
    ratings = _ratings(battles, index, strengths, strengths - 1.96 * se, strengths + 1.96 * se, provisional_battles)
    if not varies:  # every battle between answers of the same length: nothing to control for
        return LengthControlledRatings(ratings=ratings, length_coefficient=None, length_ci95=None, battles=len(battles))
    beta, beta_se = float(theta[n]), float(math.sqrt(max(covariance[n, n], 0.0)))
    return LengthControlledRatings(
        ratings=ratings,
        length_coefficient=beta,
        length_ci95=(beta - 1.96 * beta_se, beta + 1.96 * beta_se),
        battles=len(battles),
    )


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


def criterion_means(
    scores: Iterable[tuple[str, str, int]],
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, int]]]:
    """(checkpoint, criterion, score) -> (mean per checkpoint and criterion, count)."""
    total: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    count: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for checkpoint, criterion, value in scores:
        total[checkpoint][criterion] += value
        count[checkpoint][criterion] += 1
    means = {c: {k: total[c][k] / n for k, n in row.items()} for c, row in count.items()}
    return means, {c: dict(row) for c, row in count.items()}
