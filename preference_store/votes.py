"""The votes of several annotators on the same prompt and the same two answers, aggregated into what an export
writes (``store.aggregate``):

    majority   one pair, in the direction that more than half of the votes took (a tie counts as a vote);
               a split or tied group gives none, and the minority's pairs are left out as outvoted
    unanimous  one pair only when every vote took its direction
    all        every annotator's pair, both directions of a disagreement included

A vote is keyed by its texts, not by panel or checkpoint: the same prompt (the whole conversation) and the same
two answers, whoever wrote them and in whichever panels they were shown. An annotator who voted on the same
prompt and answers more than once (in a regenerated comparison) counts once, with their latest vote.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

KEEP, OUTVOTED, SPLIT = "keep", "outvoted", "split"


def prompt_key(messages: list[dict]) -> str:
    """The prompt of a vote, as canonical json."""
    return json.dumps(messages, ensure_ascii=False, sort_keys=True)


@dataclass(frozen=True)
class Votes:
    """The votes on one direction of a pair of answers: for it, against it (the other direction), ties."""

    for_: int
    against: int
    ties: int

    @property
    def total(self) -> int:
        return self.for_ + self.against + self.ties

    def as_dict(self) -> dict[str, int]:
        """The form the export writes in a pair's provenance."""
        return {"for": self.for_, "against": self.against, "ties": self.ties}

    def verdict(self, aggregate: str) -> str:
        """KEEP (write this direction), OUTVOTED (the other direction has the majority) or SPLIT (no direction
        has what ``aggregate`` asks for)."""
        if aggregate == "all":
            return KEEP
        if aggregate == "unanimous":
            return KEEP if self.for_ == self.total else SPLIT
        if 2 * self.for_ > self.total:
            return KEEP
        return OUTVOTED if 2 * self.against > self.total else SPLIT


class VoteTally:
    """Every live vote, grouped by prompt and pair of answers: group -> annotator -> the preferred text (None: a tie)."""

    def __init__(self) -> None:
        self._groups: dict[tuple[str, frozenset[str]], dict[int, str | None]] = defaultdict(dict)

    def add_pair(self, annotator_id: int, messages: list[dict], chosen: str, rejected: str) -> None:
        """One annotator preferred ``chosen`` over ``rejected`` (a later vote replaces an earlier one)."""
        self._groups[(prompt_key(messages), frozenset((chosen, rejected)))][annotator_id] = chosen

    def add_tie(self, annotator_id: int, messages: list[dict], texts: Iterable[str]) -> None:
        """One annotator preferred neither of two answers (a tie or both bad)."""
        answers = frozenset(texts)
        if len(answers) == 2:  # two answers alike make no pair to vote on
            self._groups[(prompt_key(messages), answers)][annotator_id] = None

    def votes(self, messages: list[dict], chosen: str, rejected: str) -> Votes:
        """The votes for ``chosen`` over ``rejected`` on this prompt, against it, and ties."""
        voters = self._groups.get((prompt_key(messages), frozenset((chosen, rejected))), {}).values()
        return Votes(
            sum(v == chosen for v in voters), sum(v == rejected for v in voters), sum(v is None for v in voters)
        )
