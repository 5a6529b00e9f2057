"""Checks on what comes into the store, with one-line messages that say what to fix.

Everything here runs before a transaction writes anything, so a refused judgment leaves no trace.
"""

from __future__ import annotations

import json

from core.errors import UserError
from core.registry import is_stage, stage_names
from preference_store.records import (
    CHOICES,
    MAX_CONTESTANTS,
    MIN_CONTESTANTS,
    PANEL_LABELS,
    ROLES,
    SCORE_RANGE,
    ComparisonIn,
    JudgmentIn,
    RatingIn,
)

MESSAGE_ROLES = ("system", "user", "assistant")


class PreferenceStoreError(UserError):
    """Something a caller sent the preference store that it refuses; nothing was written."""


class UnknownCheckpointError(PreferenceStoreError):
    """A checkpoint id that no completed training run registered."""


class NotFoundError(PreferenceStoreError):
    """An id (comparison, annotator) the store does not hold."""


def check_text(text, what: str, max_chars: int, allow_empty: bool = False) -> str:
    """``text`` if it is a string, not blank (unless allowed) and at most ``max_chars`` characters."""
    if not isinstance(text, str):
        raise PreferenceStoreError(f"{what} must be text, got {type(text).__name__}")
    if not allow_empty and not text.strip():
        raise PreferenceStoreError(f"{what} is empty: write some text")
    if len(text) > max_chars:
        raise PreferenceStoreError(
            f"{what} has {len(text)} characters, over the limit of {max_chars} (store.max_text_chars)"
        )
    return text


def check_annotator_fields(name: str, role: str, password: str | None) -> None:
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise PreferenceStoreError("annotator name must be 1-100 characters")
    if name != name.strip():
        raise PreferenceStoreError(f"annotator name {name!r} starts or ends with spaces")
    if role not in ROLES:
        raise PreferenceStoreError(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")
    if password is not None and not password:
        raise PreferenceStoreError(f"empty password for {name!r}: give one on stdin")


def checkpoint_id(run_id: str, stage: str) -> str:
    """``"<run_id>/<stage>"`` after checking both parts."""
    if not isinstance(run_id, str) or not run_id.strip() or "/" in run_id or len(run_id) > 200:
        raise PreferenceStoreError(f"run id {run_id!r} must be 1-200 characters without '/'")
    if not is_stage(stage):
        raise PreferenceStoreError(f"unknown stage {stage!r} of run {run_id}: stages are {', '.join(stage_names())}")
    return f"{run_id}/{stage}"


def is_json_object(value) -> bool:
    """Whether ``value`` is a dict the database's JSON columns can store."""
    try:
        return isinstance(value, dict) and isinstance(json.loads(json.dumps(value)), dict)
    except (TypeError, ValueError):
        return False


def check_comparison(comparison: ComparisonIn, max_chars: int) -> None:
    """The prompt conversation and the 2-4 answers (checkpoints are checked against the database later)."""
    messages = comparison.messages
    if not isinstance(messages, list) or not messages:
        raise PreferenceStoreError("the comparison has no messages: the conversation must end with the user's prompt")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise PreferenceStoreError(f"message {i} must be {{'role': ..., 'content': ...}}, got {message!r}")
        if message["role"] not in MESSAGE_ROLES:
            raise PreferenceStoreError(
                f"message {i} has role {message['role']!r}: use one of {', '.join(MESSAGE_ROLES)}"
            )
        check_text(
            message["content"],
            f"message {i} ({message['role']})",
            max_chars,
            allow_empty=message["role"] == "assistant",
        )
    if messages[-1]["role"] != "user":
        raise PreferenceStoreError("the last message of a comparison must be the user's prompt")

    n = len(comparison.responses)
    if not MIN_CONTESTANTS <= n <= MAX_CONTESTANTS:
        raise PreferenceStoreError(f"a comparison needs {MIN_CONTESTANTS}-{MAX_CONTESTANTS} answers, got {n}")
    for label, response in zip(PANEL_LABELS, comparison.responses):
        # an empty answer is a real model output; the clinician judges it like any other
        check_text(response.text, f"answer {label} ({response.checkpoint_id})", max_chars, allow_empty=True)
        if not isinstance(response.decoding, dict):
            raise PreferenceStoreError(f"answer {label}: decoding settings must be a dict")
        if response.serving is not None and not is_json_object(response.serving):
            raise PreferenceStoreError(
                f"answer {label}: how it was served must be None or a dict of JSON values "
                f"(e.g. {{'mode': 'exact'}}), got {response.serving!r}"
            )


def judgment_kind(judgment: JudgmentIn) -> str:
    """pairwise | ranking | correction, refusing a judgment that is none or several of them."""
    given = [
        kind
        for kind, value in (
            ("pairwise", judgment.choice),
            ("ranking", judgment.ranking),
            ("correction", judgment.correction),
        )
        if value is not None
    ]
    if len(given) != 1:
        raise PreferenceStoreError(
            "a judgment is exactly one of: a choice (A/B/tie/both_bad), a ranking, or a correction"
            + (f"; got {' and '.join(given)}" if given else "")
        )
    return given[0]


def check_judgment(
    judgment: JudgmentIn, labels: list[str], answers: list[str], max_chars: int, criteria: tuple[str, ...]
) -> str:
    """Check a judgment against its comparison's panel ``labels``, answer texts and the ``criteria`` keys of
    its guideline; returns its kind."""
    kind = judgment_kind(judgment)
    n = len(labels)
    if kind == "pairwise":
        if judgment.choice not in CHOICES:
            raise PreferenceStoreError(f"unknown choice {judgment.choice!r}: use one of {', '.join(CHOICES)}")
        if n != 2:
            raise PreferenceStoreError(
                f"a choice between A and B needs two answers; this comparison has {n}: rank them"
            )
    elif kind == "ranking":
        check_ranking(judgment.ranking, labels)
    else:
        text = check_text(judgment.correction, "the corrected answer", max_chars)
        for label, answer in zip(labels, answers):
            if text.strip() == answer.strip():
                raise PreferenceStoreError(
                    f"the corrected answer is identical to answer {label}: change it, or vote for {label} instead"
                )
    if judgment.reason is not None:
        check_text(judgment.reason, "the reason", max_chars, allow_empty=True)
    check_scores(judgment.scores, labels, criteria)
    if judgment.client_id is not None and (
        not isinstance(judgment.client_id, str) or not 1 <= len(judgment.client_id) <= 100
    ):
        raise PreferenceStoreError("client_id must be 1-100 characters")
    return kind


def check_rating(rating: RatingIn, labels: list[str], answers: list[str], max_chars: int) -> None:
    """A thumbs up or down on one of the comparison's panels; a correction is checked like a judgment's."""
    if rating.label not in labels:
        raise PreferenceStoreError(f"no answer {rating.label!r} to rate: this comparison has {', '.join(labels)}")
    if not isinstance(rating.up, bool):
        raise PreferenceStoreError(f"a rating is thumbs up (True) or down (False), got {rating.up!r}")
    if rating.correction is not None:
        text = check_text(rating.correction, "the corrected answer", max_chars)
        for label, answer in zip(labels, answers):
            if text.strip() == answer.strip():
                raise PreferenceStoreError(
                    f"the corrected answer is identical to answer {label}: change it, "
                    f"or rate {label} without a correction"
                )
    if rating.reason is not None:
        check_text(rating.reason, "the reason", max_chars, allow_empty=True)
    check_client_id(rating.client_id)


def check_client_id(client_id) -> None:
    if client_id is not None and (not isinstance(client_id, str) or not 1 <= len(client_id) <= 100):
        raise PreferenceStoreError("client_id must be 1-100 characters")


def check_scores(scores, labels: list[str], criteria: tuple[str, ...]) -> None:
    """{panel label: {criterion key: 1-5 or None}}: known panels, the guideline's criteria, whole numbers 1-5."""
    if not isinstance(scores, dict):
        raise PreferenceStoreError("scores map panel labels to {criterion: 1-5}, e.g. {'A': {'safety': 5}}")
    low, high = SCORE_RANGE
    for label, given in scores.items():
        if label not in labels:
            raise PreferenceStoreError(
                f"scores for panel {label!r}, which this comparison does not have ({', '.join(labels)})"
            )
        if not isinstance(given, dict):
            raise PreferenceStoreError(f"scores of answer {label} must map criteria to {low}-{high}, got {given!r}")
        for criterion, value in given.items():
            if criterion not in criteria:
                raise PreferenceStoreError(
                    f"unknown criterion {criterion!r} in the scores of answer {label}: "
                    f"the guideline's criteria are {', '.join(criteria)}"
                )
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high
            ):
                raise PreferenceStoreError(
                    f"{criterion} score of answer {label} must be an integer {low}-{high}, got {value!r}"
                )


def check_ranking(ranking, labels: list[str]) -> None:
    """Every panel ranked once, places exactly 1..n (no missing or repeated place)."""
    if not isinstance(ranking, dict):
        raise PreferenceStoreError("a ranking maps panel labels to places, e.g. {'A': 2, 'B': 1, 'C': 3}")
    unknown = sorted(set(ranking) - set(labels))
    if unknown:
        raise PreferenceStoreError(
            f"the ranking names panel {unknown[0]!r}, which this comparison does not have ({', '.join(labels)})"
        )
    missing = [label for label in labels if label not in ranking]
    if missing:
        raise PreferenceStoreError(f"the ranking leaves out answer {', '.join(missing)}: give every answer a place")
    places = list(ranking.values())
    if any(isinstance(p, bool) or not isinstance(p, int) for p in places):
        raise PreferenceStoreError(f"ranking places must be integers 1..{len(labels)}, got {places}")
    repeated = sorted({p for p in places if places.count(p) > 1})
    if repeated:
        raise PreferenceStoreError(
            f"ranking place {repeated[0]} is given twice: places must be 1..{len(labels)}, each once"
        )
    expected = set(range(1, len(labels) + 1))
    if set(places) != expected:
        missing_places = sorted(expected - set(places))
        raise PreferenceStoreError(
            f"ranking place {missing_places[0]} is missing: places must be 1..{len(labels)}, each once"
        )
