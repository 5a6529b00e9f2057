"""Decisions that may be read after every judgment: an anytime-valid confidence sequence for a win rate.

The question: does the new checkpoint win more than half of its battles with the old one? The unit is the bank
*prompt*, not the single vote: the votes of one prompt share its difficulty and are not independent of each other
(the bootstrap of :mod:`~preference_store.statistics.run_comparison` resamples prompts for the same reason). A
prompt enters the sequence when its first ``per_prompt`` battles of the two are in (``store.annotators_per_prompt``,
the k annotators the queue gives it), with the new checkpoint's mean score over them (won 1, tied 0.5, lost 0), a
number in [0, 1]; later battles on it are counted as judgments but do not change its value, so the sequence read
after any judgment is a prefix of the one read later. Prompts are handed out in an order fixed before any
judgment (the bank's), so these values are independent; the sequence covers their mean, the win rate.

The confidence sequence is the betting confidence sequence of Waudby-Smith and Ramdas (2023, JRSS-B, "Estimating
means of bounded random variables by betting", section 5) with their aGRAPA bets: for each candidate win rate m, a
bettor who starts with wealth 1 stakes on each prompt's value being above or below m, sized by the mean and variance
of the prompts before it (predictable, truncated at c / m and c / (1 - m)); m is rejected once the wealth reaches
1 / alpha. Under the true m the wealth is a nonnegative martingale, so by Ville's inequality that happens with
probability at most alpha at any time, however often one looks (Howard et al. 2021 for such time-uniform bounds).
The set is evaluated on a grid of :data:`GRID` + 1 candidate rates, its ends rounded outwards by one step, and
intersected over time (the running intersection is valid too, and never widens).

The verdict at level alpha (``study.alpha``) with margin (``study.margin``), read after every prompt:

- better: the lower bound is above 0.5; worse: the upper bound is below 0.5;
- same: the whole interval lies within 0.5 ± margin (a difference smaller than the margin is not one that matters);
- undecided otherwise.

The first verdict reached is the decision (better and worse take precedence over same when reached together);
the chance that it is wrong (better or worse while the true rate is 0.5, or a side the truth is not on) is at most
alpha. A fixed-sample test read the same way (naive peeking) has no such bound: ``benchmarks/bench_study.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

GRID = 1000  # candidate win rates 0, 1/GRID, ..., 1: bounds are exact to 1/GRID (rounded outwards)
TRUNCATION = 0.5  # c: a bet never stakes more than c / m (c / (1 - m)) of the wealth (Waudby-Smith & Ramdas's 1/2)
BETTER, WORSE, SAME, UNDECIDED = "better", "worse", "same", "undecided"
VERDICTS = (BETTER, WORSE, SAME, UNDECIDED)


@dataclass(frozen=True)
class SequentialDecision:
    """The anytime-valid verdict on a sequence of prompt values (see the module docstring).

    ``interval``: the confidence sequence for the win rate now (level 1 - alpha); ``decided_after``: the judgments
    counted when the verdict was first reached (None: undecided), ``decided_units`` the prompts then, and
    ``decided_interval`` the interval then."""

    verdict: str  # better | worse | same | undecided
    win_rate: float | None  # the mean of the prompts' values (None: no prompt yet)
    interval: tuple[float, float]
    units: int  # prompts in the sequence
    judgments: int  # battles of the two counted, on complete prompts or not
    alpha: float
    margin: float
    decided_after: int | None = None
    decided_units: int | None = None
    decided_interval: tuple[float, float] | None = None

    @property
    def decided(self) -> bool:
        return self.verdict != UNDECIDED


def confidence_sequence(values, alpha: float, grid: int = GRID) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper): the running-intersection confidence sequence for the mean of ``values`` (each in [0, 1]),
    at level 1 - ``alpha``, after each of them; ``lower[t]``, ``upper[t]`` hold after the first t + 1."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or (x.size and (x.min() < 0 or x.max() > 1)):
        raise ValueError("confidence_sequence takes a sequence of numbers in [0, 1]")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha}: choose a level between 0 and 1 (e.g. 0.05)")
    n = x.size
    if n == 0:
        return np.zeros(0), np.zeros(0)
    t = np.arange(1, n + 1, dtype=float)
    # predictable plug-ins: the mean and variance estimates from the values before t (priors 1/2 and 1/4)
    mean = (0.5 + np.cumsum(x)) / (t + 1)
    variance = (0.25 + np.cumsum((x - mean) ** 2)) / (t + 1)
    mean_before = np.concatenate(([0.5], mean[:-1]))[:, None]
    variance_before = np.concatenate(([0.25], variance[:-1]))[:, None]
    m = np.linspace(0.0, 1.0, grid + 1)[None, :]
    gap = mean_before - m
    bet = gap / (variance_before + gap**2)  # aGRAPA: the growth-rate optimal bet were the estimates true
    with np.errstate(divide="ignore"):
        bet = np.clip(bet, -TRUNCATION / (1 - m), TRUNCATION / m)
    wealth = np.cumsum(np.log1p(bet * (x[:, None] - m)), axis=0)
    inside = wealth < math.log(1 / alpha)  # Ville: under m the wealth ever reaches 1/alpha w.p. at most alpha
    m = m[0]
    step = 1.0 / grid
    any_inside = inside.any(axis=1)
    first = np.argmax(inside, axis=1)
    last = grid - np.argmax(inside[:, ::-1], axis=1)
    lower = np.where(any_inside, np.maximum(m[first] - step, 0.0), 0.0)  # an empty set: no information
    upper = np.where(any_inside, np.minimum(m[last] + step, 1.0), 1.0)
    return np.maximum.accumulate(lower), np.minimum.accumulate(upper)


def verdict_of(lower: float, upper: float, margin: float) -> str:
    """The verdict an interval for the win rate gives (see the module docstring)."""
    if lower > 0.5:
        return BETTER
    if upper < 0.5:
        return WORSE
    if lower >= 0.5 - margin and upper <= 0.5 + margin:
        return SAME
    return UNDECIDED


def decide(values, judgments_at, judgments: int, alpha: float, margin: float, grid: int = GRID) -> SequentialDecision:
    """The decision on the prompt ``values`` in the order they were completed; ``judgments_at[i]``: the battles
    counted when value i came in (for "decided after N judgments"), ``judgments``: those counted now."""
    if not 0 <= margin < 0.5:
        raise ValueError(f"margin={margin}: choose a difference in win rate from 0 to below 0.5 (e.g. 0.05)")
    lower, upper = confidence_sequence(values, alpha, grid)
    common = dict(units=len(lower), judgments=judgments, alpha=alpha, margin=margin)
    if not len(lower):
        return SequentialDecision(verdict=UNDECIDED, win_rate=None, interval=(0.0, 1.0), **common)
    now = (float(lower[-1]), float(upper[-1]))
    win_rate = float(np.mean(values))
    reached = [verdict_of(lo, hi, margin) for lo, hi in zip(lower, upper, strict=True)]
    first = next((i for i, v in enumerate(reached) if v != UNDECIDED), None)
    if first is None:
        return SequentialDecision(verdict=UNDECIDED, win_rate=win_rate, interval=now, **common)
    return SequentialDecision(
        verdict=reached[first],
        win_rate=win_rate,
        interval=now,
        decided_after=int(judgments_at[first]),
        decided_units=first + 1,
        decided_interval=(float(lower[first]), float(upper[first])),
        **common,
    )


def prompt_units(battles, per_prompt: int, settle_on_agreement: bool = False) -> tuple[list[float], list[int], int]:
    """(values, judgments_at, judgments) from ``battles``: (bank prompt, the new checkpoint's score 1 / 0.5 / 0)
    in time order. A prompt's value is its mean over its first ``per_prompt`` battles, entered when the last of
    them comes in. ``settle_on_agreement`` (``study.allocation: adaptive``, where a prompt whose first two
    judgments agree gets no third): such a prompt is entered at its second battle, with their common score."""
    if per_prompt < 1:
        raise ValueError(f"per_prompt={per_prompt}: a prompt needs at least one battle")
    seen: dict[str, list[float]] = {}
    values: list[float] = []
    at: list[int] = []
    n = 0
    for prompt, score in battles:
        n += 1
        scores = seen.setdefault(prompt, [])
        if len(scores) >= per_prompt:
            continue
        scores.append(score)
        settled = settle_on_agreement and len(scores) == 2 < per_prompt and scores[0] == scores[1]
        if len(scores) == per_prompt or settled:
            values.append(sum(scores) / len(scores))
            at.append(n)
            seen[prompt] = scores + [score] * per_prompt  # complete: later battles do not enter it again
    return values, at, n


def describe(decision: SequentialDecision) -> str:
    """ "decided after N judgments ..." or "undecided after N judgments ..." with the interval, in one phrase."""
    level = f"{1 - decision.alpha:.0%}"
    now = f"{decision.interval[0]:.2f} to {decision.interval[1]:.2f}"
    if decision.decided:
        low, high = decision.decided_interval
        return (
            f"decided after {decision.decided_after} judgments ({decision.decided_units} prompts; win rate "
            f"{level} anytime interval then {low:.2f} to {high:.2f}, now {now} after {decision.judgments})"
        )
    return (
        f"undecided after {decision.judgments} judgments ({decision.units} complete prompts; win rate "
        f"{level} anytime interval {now}; same needs it within {0.5 - decision.margin:.2f} to "
        f"{0.5 + decision.margin:.2f})"
    )
