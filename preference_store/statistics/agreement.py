"""Agreement among annotators on the shared bank prompts: Krippendorff's alpha and percent agreement.

Only comparisons on a bank prompt count, and only where several annotators judged the same bank prompt
with the same contestants (the same set of checkpoints). Panels are shuffled per annotator, so every unit
is keyed by checkpoint, never by panel label:

    pairwise votes  unit (prompt, contestants)                        nominal: first better | second better | tie
    rankings        unit (prompt, contestants, checkpoint)            ordinal: its place (1 = best)
    1-5 scores      unit (prompt, contestants, checkpoint, criterion) ordinal: the score

("first" is the checkpoint whose id sorts first; both-bad counts as a tie, as in the ratings.) An annotator
who judged a unit twice counts with their last value. Alpha comes from the ``krippendorff`` package
(Krippendorff 2011, "Computing Krippendorff's alpha-reliability"); the percent agreement is the mean over
units of the share of annotator pairs giving the same value. Each annotator is also measured against the
others: the share of their value pairs with another annotator that agree, and alpha over the units they coded.

:func:`pair_agreement` says, for each DPO pair made on a bank prompt, how many of that prompt's annotators
who judged the same two checkpoints agree with the pair's direction, so an export can weight or drop pairs.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Iterable

import krippendorff
import numpy as np

from preference_store.records import Agreement, AnnotatorAgreement, KindAgreement
from preference_store.statistics.bradley_terry import JudgedComparison

KINDS = ("pairwise", "ranking", "scores")
LEVELS = {"pairwise": "nominal", "ranking": "ordinal", "scores": "ordinal"}
FIRST_BETTER, SECOND_BETTER, TIE = 1, 2, 0  # nominal values of a pairwise vote
# the values each kind can take (the ordinal metric weighs a difference by the values between)
DOMAINS = {"pairwise": [TIE, FIRST_BETTER, SECOND_BETTER], "ranking": [1, 2, 3, 4], "scores": [1, 2, 3, 4, 5]}

Unit = tuple  # (bank prompt id, sorted contestants[, checkpoint[, criterion]])
Values = dict[str, dict[Unit, dict[int, int]]]  # kind -> unit -> annotator -> value


def agreement_values(judged: Iterable[JudgedComparison]) -> Values:
    """kind -> unit -> annotator -> value, from the judgments on bank prompts, oldest first (the last one wins)."""
    values: Values = {kind: defaultdict(dict) for kind in KINDS}
    for j in judged:
        if j.bank_prompt_id is None or len(j.contestants) != len(j.panels):  # a checkpoint against itself: no unit
            continue
        base = (j.bank_prompt_id, tuple(sorted(j.contestants)))
        if j.kind == "pairwise":
            ((x, y, score),) = j.outcomes()
            if x.checkpoint_id > y.checkpoint_id:
                score = 1.0 - score
            values["pairwise"][base][j.annotator_id] = {1.0: FIRST_BETTER, 0.0: SECOND_BETTER}.get(score, TIE)
        elif j.kind == "ranking":
            for label, place in j.ranking.items():
                values["ranking"][base + (j.panels[label].checkpoint_id,)][j.annotator_id] = place
        for label, given in j.scores.items():
            for criterion, value in given.items():
                values["scores"][base + (j.panels[label].checkpoint_id, criterion)][j.annotator_id] = value
    return {kind: {u: v for u, v in units.items() if len(v) > 1} for kind, units in values.items()}


def krippendorff_alpha(units: list[dict[int, int]], level: str, domain: list[int]) -> float | None:
    """Alpha over ``units`` (annotator -> value each); None when it is undefined (fewer than two pairable
    values, or every value the same so that no disagreement could be expected)."""
    units = [u for u in units if len(u) > 1]
    if not units:
        return None
    annotators = sorted({a for u in units for a in u})
    row = {a: i for i, a in enumerate(annotators)}
    data = np.full((len(annotators), len(units)), np.nan)
    for col, unit in enumerate(units):
        for annotator, value in unit.items():
            data[row[annotator], col] = value
    if len(np.unique(data[~np.isnan(data)])) < 2:
        return None  # no variation: the expected disagreement is 0 and alpha is 0/0
    domain = sorted(set(domain) | set(np.unique(data[~np.isnan(data)]).astype(int).tolist()))
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        value = float(krippendorff.alpha(reliability_data=data, level_of_measurement=level, value_domain=domain))
    return None if np.isnan(value) else value


def percent_agreement(units: Iterable[dict[int, int]]) -> float | None:
    """Mean over units (two or more annotators) of the share of annotator pairs giving the same value."""
    shares = []
    for unit in units:
        votes = list(unit.values())
        n = len(votes)
        if n < 2:
            continue
        same = sum(votes.count(v) * (votes.count(v) - 1) for v in set(votes))
        shares.append(same / (n * (n - 1)))
    return float(np.mean(shares)) if shares else None


def fleiss_kappa(units: list[dict[int, int]], categories: Iterable[int]) -> float | None:
    """Fleiss' kappa (1971) with a varying number of raters per unit; None when chance agreement is 1."""
    units = [u for u in units if len(u) > 1]
    observed = percent_agreement(units)
    if observed is None:
        return None
    totals = defaultdict(int)
    for unit in units:
        for value in unit.values():
            totals[value] += 1
    all_votes = sum(totals.values())
    expected = sum((totals[c] / all_votes) ** 2 for c in categories)
    return None if expected >= 1.0 else (observed - expected) / (1.0 - expected)


def annotator_agreement(values: Values, names: dict[int, str]) -> list[AnnotatorAgreement]:
    """Each annotator against the others on the units they share (by annotator id)."""
    agreed: dict[int, int] = defaultdict(int)
    pairs: dict[int, int] = defaultdict(int)
    units: dict[int, int] = defaultdict(int)
    coded: dict[int, dict[str, list[dict[int, int]]]] = defaultdict(lambda: defaultdict(list))
    for kind, by_unit in values.items():
        for unit in by_unit.values():
            for annotator, value in unit.items():
                units[annotator] += 1
                coded[annotator][kind].append(unit)
                others = [v for a, v in unit.items() if a != annotator]
                pairs[annotator] += len(others)
                agreed[annotator] += sum(v == value for v in others)
    return [
        AnnotatorAgreement(
            annotator_id=a,
            name=names.get(a, str(a)),
            units=units[a],
            percent=agreed[a] / pairs[a] if pairs[a] else None,
            alpha={
                kind: krippendorff_alpha(coded[a][kind], LEVELS[kind], DOMAINS[kind]) if coded[a][kind] else None
                for kind in KINDS
            },
        )
        for a in sorted(units)
    ]


def measure_agreement(values: Values, names: dict[int, str] | None = None) -> Agreement:
    """Alpha and percent agreement per kind, per criterion and per annotator, from :func:`agreement_values`."""
    by_kind = {}
    for kind in KINDS:
        units = list(values[kind].values())
        by_kind[kind] = KindAgreement(
            kind=kind,
            level=LEVELS[kind],
            units=len(units),
            annotators=len({a for u in units for a in u}),
            alpha=krippendorff_alpha(units, LEVELS[kind], DOMAINS[kind]),
            percent=percent_agreement(units),
        )
    by_criterion: dict[str, list[dict[int, int]]] = defaultdict(list)
    for unit, unit_values in values["scores"].items():
        by_criterion[unit[-1]].append(unit_values)
    votes = list(values["pairwise"].values())
    return Agreement(
        comparisons=len(values["pairwise"]),  # a pairwise unit is one prompt with its two contestants
        items=len(votes),
        percent=by_kind["pairwise"].percent,
        fleiss_kappa=fleiss_kappa(votes, DOMAINS["pairwise"]),
        by_kind=by_kind,
        criteria_alpha={
            criterion: krippendorff_alpha(units, "ordinal", DOMAINS["scores"])
            for criterion, units in sorted(by_criterion.items())
        },
        annotators=annotator_agreement(values, names or {}),
    )


def pair_verdicts(judged: Iterable[JudgedComparison]) -> dict[tuple[str, frozenset[str]], dict[int, str | None]]:
    """(bank prompt, two checkpoints) -> annotator -> the checkpoint they preferred (None = tie), from votes and
    rankings on bank prompts, oldest first (an annotator's last verdict wins)."""
    verdicts: dict[tuple[str, frozenset[str]], dict[int, str | None]] = defaultdict(dict)
    for j in judged:
        if j.bank_prompt_id is None:
            continue
        for x, y, score in j.outcomes():
            if x.checkpoint_id == y.checkpoint_id:
                continue
            winner = x.checkpoint_id if score == 1.0 else y.checkpoint_id if score == 0.0 else None
            verdicts[(j.bank_prompt_id, frozenset((x.checkpoint_id, y.checkpoint_id)))][j.annotator_id] = winner
    return verdicts


def pair_agreement(
    pairs: Iterable[tuple[str, str, str | None, str]], judged: Iterable[JudgedComparison]
) -> dict[str, tuple[float | None, int]]:
    """pair id -> (share of annotators agreeing with it, how many annotators), for pairs on bank prompts.

    ``pairs``: (pair id, bank prompt id, chosen checkpoint or None for a correction, rejected checkpoint).
    The annotators counted are those who judged the same two checkpoints on that prompt (a vote, or a
    ranking placing both), the pair's own annotator included; the share is how many of them preferred the
    pair's chosen checkpoint (a tie agrees with neither direction). (None, 1) when only one annotator judged
    the two; a correction's pair is (None, 1), since nobody else judged that written answer.
    """
    verdicts = pair_verdicts(judged)
    result = {}
    for pair_id, prompt_id, chosen, rejected in pairs:
        if chosen is None or chosen == rejected:
            result[pair_id] = (None, 1)
            continue
        voters = verdicts.get((prompt_id, frozenset((chosen, rejected))), {})
        n = len(voters)
        if n < 2:
            result[pair_id] = (None, max(n, 1))
        else:
            result[pair_id] = (sum(w == chosen for w in voters.values()) / n, n)
    return result
