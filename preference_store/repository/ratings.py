"""Single-answer ratings: a thumbs up or down on one answer of a comparison (instead of comparing), with
an optional better answer and reason; what their export reads and logs.

The same rules as a judgment: an annotator rates only the comparisons they recorded, within the daily
cap, each answer once (one live rating per annotator and answer; a second one is refused unless it is an
explicit revise, which keeps the earlier one as history), a repeated ``client_id`` stores nothing, and rating
a queue comparison completes its assignment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from preference_store.models import (
    AnswerRatingRow,
    BankPromptRow,
    ComparisonRow,
    ExportedRatingRow,
    ExportRow,
    ResponseRow,
    utcnow,
)
from preference_store.records import PANEL_LABELS, RatingIn, RatingOut
from preference_store.repository.bank import complete_assignment
from preference_store.repository.exports import log_export
from preference_store.repository.guidelines import Guidelines
from preference_store.repository.judgments import (
    check_daily_cap,
    check_same_annotator,
    live_record,
    own_comparison,
    supersede,
)
from preference_store.repository.sessions import new_id
from preference_store.validation import check_rating


@dataclass(frozen=True)
class StoredRating:
    """One stored rating with everything its export needs (:mod:`preference_store.exports.ratings`)."""

    rating_id: str
    comparison_id: str
    annotator_id: int
    prompt: list[dict]
    answer: str
    up: bool
    correction: str | None
    checkpoint_id: str
    serving: dict | None
    guideline_version: int | None
    bank_split: str | None  # the split of the comparison's bank prompt; None = not a bank prompt
    created: datetime


class AnswerRatings(Guidelines):
    """Storing and reading single-answer ratings, and the log of their exports."""

    def submit_rating(self, rating: RatingIn) -> RatingOut:
        """Validate and store one rating in one transaction; a repeated ``client_id`` returns the stored one
        with ``duplicate=True`` and writes nothing. ``label`` is the panel rated ("A".."D"). A second rating of
        the same answer by the same annotator is refused unless ``revise`` (the earlier one is kept, superseded)."""
        client_id = rating.client_id or new_id()
        guideline = self.guideline(rating.guideline_version)
        # kept de-identified with store.redact_on_entry (redacted before the write transaction)
        correction, reason = self._as_kept(rating.correction or None), self._as_kept(rating.reason or None)

        def work(session: Session) -> RatingOut:
            stored = _by_client_id(session, client_id)
            if stored is not None:
                check_same_annotator(stored.annotator_id, rating.annotator_id, client_id)
                return rating_record(session, stored, duplicate=True)
            comparison = own_comparison(session, rating.comparison_id, rating.annotator_id, "rate")
            labels = [PANEL_LABELS[r.panel] for r in comparison.responses]
            check_rating(rating, labels, [r.text for r in comparison.responses], self.settings.max_text_chars)
            response_id = dict(zip(labels, comparison.responses))[rating.label].id
            live = live_record(
                session,
                AnswerRatingRow,
                rating.revise,
                lambda row: (
                    f"already rated; answer {rating.label} of comparison {comparison.id} has your rating {row.id} "
                    f"({'up' if row.label else 'down'}): one rating per answer"
                ),
                response_id=response_id,
                annotator_id=rating.annotator_id,
            )
            check_daily_cap(session, rating.annotator_id, self.settings.daily_judgment_cap)
            created = utcnow()
            row_id = supersede(session, live)
            row = AnswerRatingRow(
                id=row_id,
                client_id=client_id,
                comparison_id=comparison.id,
                response_id=response_id,
                annotator_id=rating.annotator_id,
                label=rating.up,
                correction=correction,
                reason=reason,
                guideline_version=guideline.version,
                created=created,
            )
            session.add(row)
            complete_assignment(
                session,
                comparison,
                created,
                self.settings.annotators_per_prompt,
                self.settings.assignment_timeout_minutes,
            )
            session.flush()
            return rating_record(session, row, duplicate=False)

        def stored_meanwhile(session: Session) -> RatingOut | None:
            stored = _by_client_id(session, client_id)
            if stored is None:
                return None
            check_same_annotator(stored.annotator_id, rating.annotator_id, client_id)
            return rating_record(session, stored, duplicate=True)

        return self._write_once(work, stored_meanwhile)

    def ratings(
        self,
        annotator_id: int | None = None,
        comparison_id: str | None = None,
        limit: int | None = None,
        history: bool = False,
    ) -> list[RatingOut]:
        """Live single-answer ratings (one annotator's, one comparison's, or all), newest first; ``history``
        includes the superseded ones."""
        query = select(AnswerRatingRow).order_by(AnswerRatingRow.created.desc(), AnswerRatingRow.id.desc())
        if annotator_id is not None:
            query = query.where(AnswerRatingRow.annotator_id == annotator_id)
        if comparison_id is not None:
            query = query.where(AnswerRatingRow.comparison_id == comparison_id)
        if not history:
            query = query.where(AnswerRatingRow.superseded_by.is_(None))
        if limit is not None:
            query = query.limit(limit)
        with self._read() as session:
            return [rating_record(session, row) for row in session.scalars(query)]

    def rating_export_rows(
        self, since: datetime | None = None, unexported_only: bool = False
    ) -> Iterator[StoredRating]:
        """Stored ratings with their prompt, answer, checkpoint and bank split, oldest first; ``unexported_only``
        leaves out ratings an earlier export wrote."""
        query = (
            select(
                AnswerRatingRow.id,
                AnswerRatingRow.comparison_id,
                AnswerRatingRow.annotator_id,
                ComparisonRow.messages,
                ResponseRow.text,
                AnswerRatingRow.label,
                AnswerRatingRow.correction,
                ResponseRow.checkpoint_id,
                ResponseRow.serving,
                AnswerRatingRow.guideline_version,
                BankPromptRow.split,
                AnswerRatingRow.created,
            )
            .join(ComparisonRow, ComparisonRow.id == AnswerRatingRow.comparison_id)
            .join(ResponseRow, ResponseRow.id == AnswerRatingRow.response_id)
            .outerjoin(BankPromptRow, BankPromptRow.id == ComparisonRow.bank_prompt_id)
            .where(AnswerRatingRow.superseded_by.is_(None))  # a revised rating is history, not data
            .order_by(AnswerRatingRow.created, AnswerRatingRow.id)
        )
        if since is not None:
            query = query.where(AnswerRatingRow.created >= since)
        if unexported_only:
            query = query.where(
                ~select(ExportedRatingRow.rating_id).where(ExportedRatingRow.rating_id == AnswerRatingRow.id).exists()
            )
        with self._read() as session:
            for row in session.execute(query).yield_per(2000):
                yield StoredRating(*row)

    def record_ratings_export(
        self,
        path: str,
        sha256: str,
        entries: list[tuple[str, str]],
        n_records: int,
        before_commit: Callable[[], None] | None = None,
    ) -> int:
        """Log one export of ratings (kind "ratings"): ``entries`` are (rating id, split). ``before_commit``
        runs inside the transaction (the export moves its file into place there)."""

        return self._write(
            lambda session: log_export(
                session,
                ExportRow(
                    path=path,
                    sha256=sha256,
                    n_pairs=n_records,
                    kind="ratings",
                    rating_entries=[ExportedRatingRow(rating_id=rid, split=split) for rid, split in entries],
                ),
                before_commit,
            )
        )


def _by_client_id(session: Session, client_id: str) -> AnswerRatingRow | None:
    return session.scalar(select(AnswerRatingRow).where(AnswerRatingRow.client_id == client_id))


def rating_record(session: Session, row: AnswerRatingRow, duplicate: bool = False) -> RatingOut:
    response = session.get(ResponseRow, row.response_id)
    return RatingOut(
        id=row.id,
        client_id=row.client_id,
        comparison_id=row.comparison_id,
        annotator_id=row.annotator_id,
        label=PANEL_LABELS[response.panel],
        checkpoint_id=response.checkpoint_id,
        up=row.label,
        correction=row.correction,
        reason=row.reason,
        guideline_version=row.guideline_version,
        created=row.created,
        duplicate=duplicate,
        superseded_by=row.superseded_by,
        superseded_why=row.superseded_why,
    )
