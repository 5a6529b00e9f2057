"""Vote integrity: the outlier screen of annotators and the position bias of the panels.

Outlier screen. On every shared unit of the bank prompts (a pairwise vote's checkpoint pair, or one
checkpoint's place in a ranking; see :mod:`preference_store.statistics.agreement`) the others' consensus is the one
most common value among the other annotators (a unit where they split evenly has none). An annotator's
agreement with that leave-one-out consensus is compared, one-sided, with the rate at which the other
annotators agree with theirs: P(X <= agreed) for X ~ Binomial(units, rate). The rate is smoothed,
(agreed + 1) / (units + 2) over the others, so that one disagreement among otherwise unanimous annotators
is not "impossible". Annotators below ``store.outlier_p_value`` are listed for admins, not excluded.

Position bias. Without it, panel A wins half of the decided pairwise votes (A or B); the share comes
with a Wilson 95% interval. For rankings: how often each panel position is placed first, beside the share
expected without bias (1 / number of panels).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable

from preference_store.records import AnnotatorScreen, PositionBias
from preference_store.statistics.agreement import Values
from preference_store.statistics.bradley_terry import JudgedComparison

# verdicts between answers; the 1-5 scores are left out, since annotators using the scale more strictly or more
# leniently than the others is no sign of votes that cannot be trusted
SCREENED_KINDS = ("pairwise", "ranking")
Z95 = 1.959963984540054


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (exact for any n the store holds)."""
    if k >= n or p <= 0.0:
        return 1.0
    if k < 0:
        return 0.0
    if p >= 1.0:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
        for i in range(k + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def consensus_agreement(values: Values) -> tuple[dict[int, int], dict[int, int]]:
    """(units with a leave-one-out consensus, units agreeing with it) per annotator."""
    units: dict[int, int] = defaultdict(int)
    agreed: dict[int, int] = defaultdict(int)
    for kind in SCREENED_KINDS:
        for unit in values.get(kind, {}).values():
            for annotator, value in unit.items():
                counts = Counter(v for a, v in unit.items() if a != annotator).most_common(2)
                if not counts or (len(counts) == 2 and counts[0][1] == counts[1][1]):
                    continue  # the others split evenly: no consensus to agree with
                units[annotator] += 1
                agreed[annotator] += counts[0][0] == value
    return dict(units), dict(agreed)


def screen_annotators(values: Values, names: dict[int, str], p_value: float) -> list[AnnotatorScreen]:
    """Every annotator with a consensus to compare against, by id; ``outlier`` marks those the screen lists."""
    units, agreed = consensus_agreement(values)
    all_units, all_agreed = sum(units.values()), sum(agreed.values())
    screen = []
    for annotator in sorted(units):
        n, k = units[annotator], agreed.get(annotator, 0)
        others_n, others_k = all_units - n, all_agreed - k
        if others_n == 0:
            screen.append(
                AnnotatorScreen(annotator, names.get(annotator, str(annotator)), n, k, k / n, None, None, False)
            )
            continue
        expected = (others_k + 1) / (others_n + 2)
        p = binomial_cdf(k, n, expected)
        screen.append(
            AnnotatorScreen(
                annotator_id=annotator,
                name=names.get(annotator, str(annotator)),
                units=n,
                agreed=k,
                rate=k / n,
                expected=expected,
                p_value=p,
                outlier=p < p_value,
            )
        )
    return screen


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (sensible at 0 and n, unlike the Wald interval)."""
    share = successes / n
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def position_bias(judged: Iterable[JudgedComparison]) -> PositionBias:
    """How often panel A wins the decided votes, and how often each panel is placed first in rankings."""
    decided = a_wins = rankings = 0
    shown: dict[str, int] = defaultdict(int)
    first: dict[str, int] = defaultdict(int)
    expected: dict[str, float] = defaultdict(float)
    for j in judged:
        if j.kind == "pairwise" and j.choice in ("A", "B"):
            decided += 1
            a_wins += j.choice == "A"
        elif j.kind == "ranking":
            rankings += 1
            for label, place in j.ranking.items():
                shown[label] += 1
                first[label] += place == 1
                expected[label] += 1 / len(j.ranking)
    return PositionBias(
        decided_votes=decided,
        a_wins=a_wins,
        a_share=a_wins / decided if decided else None,
        a_ci95=wilson_interval(a_wins, decided) if decided else None,
        rankings=rankings,
        first_place={label: first[label] / n for label, n in sorted(shown.items())},
        first_place_expected={label: expected[label] / n for label, n in sorted(shown.items())},
    )
