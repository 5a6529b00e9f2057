"""How a judgment becomes DPO pairs: (chosen panel, rejected panel), ``None`` = the clinician's correction.

A ranking of n answers gives its n(n-1)/2 ordered pairs; a correction is chosen over every model
answer; a pairwise vote gives one pair; a tie or "both bad" gives none (it still counts in the ratings).
"""

from __future__ import annotations

from itertools import combinations

Pair = tuple[str | None, str]  # (chosen label or None for the correction, rejected label)


def expand_choice_to_pairs(choice: str) -> list[Pair]:
    return {"A": [("A", "B")], "B": [("B", "A")]}.get(choice, [])


def expand_ranking_to_pairs(ranking: dict[str, int]) -> list[Pair]:
    """Every better-placed answer over every worse-placed one (place 1 = best)."""
    ordered = sorted(ranking, key=ranking.__getitem__)
    return list(combinations(ordered, 2))


def expand_correction_to_pairs(labels: list[str]) -> list[Pair]:
    return [(None, label) for label in labels]


def expand_judgment_to_pairs(
    kind: str, labels: list[str], choice: str | None = None, ranking: dict[str, int] | None = None
) -> list[Pair]:
    if kind == "pairwise":
        return expand_choice_to_pairs(choice)
    if kind == "ranking":
        return expand_ranking_to_pairs(ranking)
    return expand_correction_to_pairs(labels)


def battle_outcomes(
    kind: str, labels: list[str], choice: str | None = None, ranking: dict[str, int] | None = None
) -> list[tuple[str, str, float]]:
    """Model-vs-model outcomes for the ratings: (label x, label y, score of x), 1 win, 0.5 tie, 0 loss.

    Both-bad counts as a tie, as in Chatbot Arena; a correction says nothing about the models
    against each other.
    """
    if kind == "pairwise":
        return [("A", "B", {"A": 1.0, "B": 0.0}.get(choice, 0.5))]
    if kind == "ranking":
        return [(x, y, 1.0) for x, y in expand_ranking_to_pairs(ranking)]
    return []
