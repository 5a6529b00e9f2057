"""Judgments and the DPO pairs they make, and which training run consumed which pair.

Every annotator judges only the comparisons they recorded themselves (another annotator's prompts and
answers are theirs to see), once each: one live judgment per (annotator, comparison), a second one refused
unless it is an explicit revise, which keeps the earlier one as history (superseded) and lets only the newest
make pairs. At most ``store.daily_judgment_cap`` judgments and single-answer ratings a UTC day; judging a
comparison asked through the queue completes its assignment.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from preference_store.models import (
    AnnotatorRow,
    AnswerRatingRow,
    ComparisonRow,
    ConsumptionRow,
    CriterionScoreRow,
    JudgmentRow,
    PairRow,
    utcnow,
)
from preference_store.pairs import expand_judgment_to_pairs
from preference_store.records import PANEL_LABELS, JudgmentIn, JudgmentOut
from preference_store.repository.bank import check_not_resolved, complete_assignment
from preference_store.repository.guidelines import Guidelines
from preference_store.repository.sessions import new_id
from preference_store.validation import NotFoundError, PreferenceStoreError, check_judgment


def new_pair_id() -> str:
    # prefixed so collected pairs are told apart from the builder's objective pair ids in dpo.jsonl
    return f"clin-{uuid.uuid4().hex}"


class Judgments(Guidelines):
    """Storing a judgment with its scores and pairs (all or nothing), reading judgments back, and the
    consumption log training writes."""

    def submit_judgment(self, judgment: JudgmentIn) -> JudgmentOut:
        """Validate and store one judgment with its scores and derived pairs, in one transaction.

        A repeated ``client_id`` returns the stored judgment with ``duplicate=True`` and writes nothing
        (even past the daily cap). Refuses a comparison another annotator recorded, a second judgment of the
        same comparison by the same annotator (unless ``revise``: see :class:`~preference_store.records.JudgmentIn`)
        and a judgment beyond the annotator's daily cap. A comparison asked through the queue completes its assignment (a late
        one only while its prompt has a free place: see :func:`~preference_store.repository.bank.complete_assignment`).
        """
        client_id = judgment.client_id or new_id()
        guideline = self.guideline(judgment.guideline_version)
        # with store.redact_on_entry the clinician's own words are kept de-identified too (redacted before the
        # write transaction, which should not wait for it)
        correction, reason = self._as_kept(judgment.correction), self._as_kept(judgment.reason or None)

        def work(session: Session) -> JudgmentOut:
            stored = _by_client_id(session, client_id)
            if stored is not None:
                check_same_annotator(stored.annotator_id, judgment.annotator_id, client_id)
                return judgment_record(session, stored, duplicate=True)
            comparison = own_comparison(session, judgment.comparison_id, judgment.annotator_id, "judge")
            live = live_record(
                session,
                JudgmentRow,
                judgment.revise,
                lambda row: (
                    f"already judged; comparison {comparison.id} has your {row.kind} judgment {row.id} of "
                    f"{row.created:%Y-%m-%d %H:%M} UTC: one judgment per comparison"
                ),
                comparison_id=comparison.id,
                annotator_id=judgment.annotator_id,
            )
            check_daily_cap(session, judgment.annotator_id, self.settings.daily_judgment_cap)
            labels = [PANEL_LABELS[r.panel] for r in comparison.responses]
            kind = check_judgment(
                judgment,
                labels,
                [r.text for r in comparison.responses],
                self.settings.max_text_chars,
                guideline.criterion_keys,
            )
            by_label = dict(zip(labels, comparison.responses))
            created = utcnow()  # a pair is as old as its judgment
            row_id = supersede(session, live)
            row = JudgmentRow(
                id=row_id,
                client_id=client_id,
                comparison_id=comparison.id,
                annotator_id=judgment.annotator_id,
                kind=kind,
                choice=judgment.choice,
                ranking=dict(judgment.ranking) if judgment.ranking is not None else None,
                correction=correction,
                reason=reason,
                created=created,
                guideline_version=guideline.version,
                pairs=[
                    PairRow(
                        id=new_pair_id(),
                        comparison_id=comparison.id,
                        chosen_response_id=by_label[chosen].id if chosen else None,
                        rejected_response_id=by_label[rejected].id,
                        created=created,
                    )
                    for chosen, rejected in expand_judgment_to_pairs(kind, labels, judgment.choice, judgment.ranking)
                ],
                scores=[
                    CriterionScoreRow(response_id=by_label[label].id, criterion=criterion, value=value)
                    for label, given in judgment.scores.items()
                    for criterion, value in given.items()
                    if value is not None
                ],
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
            return judgment_record(session, row, duplicate=False)

        def stored_meanwhile(session: Session) -> JudgmentOut | None:
            stored = _by_client_id(session, client_id)
            if stored is None:
                return None
            check_same_annotator(stored.annotator_id, judgment.annotator_id, client_id)
            return judgment_record(session, stored, duplicate=True)

        return self._write_once(work, stored_meanwhile)

    def judgments_for(self, comparison_id: str) -> list[JudgmentOut]:
        """Every judgment of a comparison, oldest first, superseded ones (``superseded_by`` set) included."""
        with self._read() as session:
            rows = session.scalars(
                select(JudgmentRow).where(JudgmentRow.comparison_id == comparison_id).order_by(JudgmentRow.created)
            )
            return [judgment_record(session, row) for row in rows]

    def superseded_judgments(self) -> list[JudgmentOut]:
        """Every judgment kept as history, oldest first: replaced by a revise (``superseded_why`` "revised") or,
        for a second vote stored before one judgment per comparison was the rule, by the newer one when the
        store was migrated ("duplicate"). ``superseded_by`` names the judgment that counts instead."""
        with self._read() as session:
            rows = session.scalars(
                select(JudgmentRow)
                .where(JudgmentRow.superseded_by.is_not(None))
                .order_by(JudgmentRow.created, JudgmentRow.id)
            )
            return [judgment_record(session, row) for row in rows]

    def count_judgments(self, annotator_id: int | None = None) -> int:
        """All live judgments, or one annotator's (the app's running count); superseded ones are history."""
        query = select(func.count()).select_from(JudgmentRow).where(JudgmentRow.superseded_by.is_(None))
        if annotator_id is not None:
            query = query.where(JudgmentRow.annotator_id == annotator_id)
        with self._read() as session:
            return session.scalar(query)

    def mark_consumed(self, pair_ids: Iterable[str], run_id: str) -> int:
        """Record that ``run_id`` trained on these collected pairs; returns how many were new records.

        Ids that are not collected pairs of this store (e.g. the builder's objective pairs) are ignored.
        """
        wanted = set(pair_ids)

        def work(session: Session) -> int:
            known: set[str] = set()
            ids = list(wanted)
            for start in range(0, len(ids), 500):  # stay under SQLite's bound-parameter limit
                chunk = ids[start : start + 500]
                known |= set(session.scalars(select(PairRow.id).where(PairRow.id.in_(chunk))))
            done = set(session.scalars(select(ConsumptionRow.pair_id).where(ConsumptionRow.run_id == run_id)))
            new = sorted(known - done)
            session.add_all(ConsumptionRow(pair_id=pid, run_id=run_id) for pid in new)
            return len(new)

        return self._write(work)

    def consumed_pair_ids(self, run_id: str) -> list[str]:
        with self._read() as session:
            return sorted(session.scalars(select(ConsumptionRow.pair_id).where(ConsumptionRow.run_id == run_id)))


class AlreadyJudged(PreferenceStoreError):
    """A second judgment (or rating) of what the annotator has judged (rated) already, without revise."""


def live_record(session: Session, model, revise: bool, refusal: Callable, **key):
    """The live (not superseded) row of ``model`` (JudgmentRow or AnswerRatingRow) with these column values, or
    None; one there without ``revise`` is refused with :class:`AlreadyJudged` (``refusal(row)`` says why)."""
    live = session.scalar(select(model).filter_by(superseded_by=None, **key))
    if live is not None and not revise:
        raise AlreadyJudged(f"{refusal(live)} (to change it, send it again with revise)")
    return live


def supersede(session: Session, live) -> str:
    """The id of the new record, with ``live`` (if any) marked as revised by it first: the live index allows
    one live record, so the old one steps down before the new one is written."""
    row_id = new_id()
    if live is not None:
        live.superseded_by, live.superseded_why = row_id, "revised"
        session.flush()
    return row_id


def own_comparison(session: Session, comparison_id: str, annotator_id: int, what: str) -> ComparisonRow:
    """The comparison, if ``annotator_id`` exists and recorded it (an annotator judges and rates only their own) and
    the queue did not resolve it without a clinician (:func:`~preference_store.repository.bank.check_not_resolved`)."""
    comparison = session.get(ComparisonRow, comparison_id)
    if comparison is None:
        raise NotFoundError(f"no comparison {comparison_id!r}: {what} an answer set that was recorded")
    if session.get(AnnotatorRow, annotator_id) is None:
        raise NotFoundError(f"no annotator with id {annotator_id}: log in again")
    if comparison.annotator_id != annotator_id:
        raise PreferenceStoreError(
            f"comparison {comparison_id} was recorded by another annotator: you can {what} only your own comparisons"
        )
    check_not_resolved(session, comparison, what)
    return comparison


def check_same_annotator(stored_annotator_id: int, annotator_id: int, client_id: str) -> None:
    """A resubmitted client id returns the stored record only to the annotator who made it."""
    if stored_annotator_id != annotator_id:
        raise PreferenceStoreError(f"client_id {client_id!r} is another annotator's: send a fresh one")


def start_of_utc_day(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def check_daily_cap(session: Session, annotator_id: int, cap: int) -> None:
    """Refuse a new judgment or rating once the annotator has made ``cap`` of them today (UTC); 0 = no cap."""
    if cap <= 0:
        return
    since = start_of_utc_day(utcnow())
    made = sum(
        session.scalar(
            select(func.count()).select_from(model).where(model.annotator_id == annotator_id, model.created >= since)
        )
        for model in (JudgmentRow, AnswerRatingRow)
    )
    if made >= cap:
        tomorrow = since + timedelta(days=1)
        raise PreferenceStoreError(
            f"daily limit reached: {made} judgments and ratings today, the cap is {cap} "
            f"(store.daily_judgment_cap); you can go on after {tomorrow:%Y-%m-%d %H:%M} UTC"
        )


def _by_client_id(session: Session, client_id: str) -> JudgmentRow | None:
    return session.scalar(select(JudgmentRow).where(JudgmentRow.client_id == client_id))


def judgment_record(session: Session, row: JudgmentRow, duplicate: bool = False) -> JudgmentOut:
    """The record of a stored judgment, with its scores by panel label and its pairs' ids (sorted)."""
    label_of = {r.id: PANEL_LABELS[r.panel] for r in session.get(ComparisonRow, row.comparison_id).responses}
    scores: dict[str, dict[str, int]] = {}
    for s in row.scores:
        scores.setdefault(label_of[s.response_id], {})[s.criterion] = s.value
    return JudgmentOut(
        id=row.id,
        client_id=row.client_id,
        comparison_id=row.comparison_id,
        annotator_id=row.annotator_id,
        kind=row.kind,
        choice=row.choice,
        ranking=dict(row.ranking) if row.ranking is not None else None,
        correction=row.correction,
        reason=row.reason,
        scores=scores,
        created=row.created,
        pair_ids=tuple(sorted(p.id for p in row.pairs)),
        duplicate=duplicate,
        guideline_version=row.guideline_version,
        superseded_by=row.superseded_by,
        superseded_why=row.superseded_why,
    )
