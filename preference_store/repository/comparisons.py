"""Comparisons: one prompt (with the conversation so far) and the 2-4 answers shown for it.

A comparison is its annotator's: reading one back on an annotator's behalf (``annotator_id``) refuses
another annotator's, unless the reader is an admin. A comparison is recorded as blind only while nobody could
know the names: asked blind, in a conversation none of whose earlier comparisons was judged yet (a judgment
reveals the names, through the app or the API alike).
"""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from preference_store.models import (
    AnnotatorRow,
    CheckpointRow,
    ComparisonRow,
    ConversationRow,
    JudgmentRow,
    ResponseRow,
)
from preference_store.records import PANEL_LABELS, ComparisonIn, ComparisonOut, ResponseOut
from preference_store.repository.bank import check_queue_fields, check_queue_pair, resolve_identical
from preference_store.repository.sessions import StoreSessions, new_id
from preference_store.validation import NotFoundError, PreferenceStoreError, UnknownCheckpointError, check_comparison


class Comparisons(StoreSessions):
    """Recording what the clinician was shown, and reading it back by comparison or conversation."""

    def record_comparison(self, comparison: ComparisonIn) -> ComparisonOut:
        """Store one prompt and its 2-4 answers (panel order as shown); refuses unknown checkpoints.

        With ``conversation_id`` None a new conversation starts; its id is in the result. A prompt from the
        annotator's queue gives its ``assignment_id`` (and ``bank_prompt_id``): the assignment must be theirs.
        ``blind`` is kept only while no earlier comparison of the conversation was judged (the names are known then).
        With ``store.redact_on_entry`` the messages and answers are stored de-identified (a model may echo an
        identifier, or invent one). In a round with adaptive allocation, two alike answers of two contestants
        resolve the prompt as a tie without a clinician (``resolved`` says so; see
        :func:`~preference_store.repository.bank.resolve_identical`).
        """
        check_comparison(comparison, self.settings.max_text_chars)
        # what is kept, redacted (if it must be) before the write transaction, which should not wait for it
        messages = self._kept_messages(comparison.messages)
        texts = [self._as_kept(r.text) for r in comparison.responses]

        def work(session: Session) -> ComparisonOut:
            wanted = {r.checkpoint_id for r in comparison.responses}
            known = set(session.scalars(select(CheckpointRow.id).where(CheckpointRow.id.in_(wanted))))
            for label, r in zip(PANEL_LABELS, comparison.responses):
                if r.checkpoint_id not in known:
                    raise UnknownCheckpointError(
                        f"answer {label} comes from unknown checkpoint {r.checkpoint_id!r}: "
                        "only checkpoints of completed runs (<run_id>/<stage>) can be compared"
                    )
            if session.get(AnnotatorRow, comparison.annotator_id) is None:
                raise NotFoundError(f"no annotator with id {comparison.annotator_id}: log in again")
            bank_prompt_id = check_queue_fields(
                session, comparison.annotator_id, comparison.bank_prompt_id, comparison.assignment_id
            )
            check_queue_pair(session, comparison.assignment_id, [r.checkpoint_id for r in comparison.responses])
            if comparison.conversation_id is None:
                conversation = ConversationRow(id=new_id(), annotator_id=comparison.annotator_id)
            else:
                conversation = session.get(ConversationRow, comparison.conversation_id)
                if conversation is None:
                    raise NotFoundError(f"no conversation {comparison.conversation_id!r}: start a new conversation")
                if conversation.annotator_id != comparison.annotator_id:
                    raise PreferenceStoreError(
                        f"conversation {comparison.conversation_id} is another annotator's: start a new conversation"
                    )
            revealed = (
                comparison.conversation_id is not None
                and session.scalar(
                    select(JudgmentRow.id)
                    .join(ComparisonRow, ComparisonRow.id == JudgmentRow.comparison_id)
                    .where(ComparisonRow.conversation_id == conversation.id)
                    .limit(1)
                )
                is not None
            )
            row = ComparisonRow(
                id=new_id(),
                conversation=conversation,
                annotator_id=comparison.annotator_id,
                messages=messages,
                blind=comparison.blind and not revealed,
                bank_prompt_id=bank_prompt_id,
                assignment_id=comparison.assignment_id,
                responses=[
                    ResponseRow(
                        id=new_id(),
                        panel=panel,
                        checkpoint_id=r.checkpoint_id,
                        text=text,
                        decoding=dict(r.decoding),
                        seed=r.seed,
                        latency_s=r.latency_s,
                        n_tokens=r.n_tokens,
                        serving=dict(r.serving) if r.serving is not None else None,
                        leaks=list(r.leaks) if r.leaks is not None else None,
                        warnings=list(r.warnings) if r.warnings is not None else None,
                    )
                    for panel, (r, text) in enumerate(zip(comparison.responses, texts))
                ],
            )
            session.add(row)
            session.flush()  # sets the creation time the record shows
            resolved = resolve_identical(session, row, self.study.allocation)
            return replace(comparison_record(row), resolved=resolved)

        return self._write(work)

    def get_comparison(self, comparison_id: str, annotator_id: int | None = None) -> ComparisonOut:
        """One comparison; with ``annotator_id``, only if that annotator recorded it or is an admin."""
        with self._read() as session:
            row = session.get(ComparisonRow, comparison_id)
            if row is None:
                raise NotFoundError(f"no comparison {comparison_id!r}")
            _check_reader(session, row.annotator_id, annotator_id, f"comparison {comparison_id}")
            return comparison_record(row)

    def conversation(self, conversation_id: str, annotator_id: int | None = None) -> list[ComparisonOut]:
        """The comparisons of one conversation, oldest first; with ``annotator_id``, only the reader's own
        (or any, for an admin)."""
        with self._read() as session:
            rows = (
                session.scalars(
                    select(ComparisonRow)
                    .where(ComparisonRow.conversation_id == conversation_id)
                    .order_by(ComparisonRow.created)
                )
                .unique()
                .all()
            )  # responses are joined in
            if rows:
                _check_reader(session, rows[0].annotator_id, annotator_id, f"conversation {conversation_id}")
            return [comparison_record(row) for row in rows]

    def assignment_answered(self, assignment_id: str) -> int:
        """How many comparisons answered this queue assignment so far (a regenerate records another one)."""
        query = select(func.count()).select_from(ComparisonRow).where(ComparisonRow.assignment_id == assignment_id)
        with self._read() as session:
            return session.scalar(query) or 0

    def annotator_comparisons(self, annotator_id: int, limit: int | None = 20) -> list[ComparisonOut]:
        """One annotator's own comparisons, newest first (what the Data tab shows them)."""
        query = (
            select(ComparisonRow)
            .where(ComparisonRow.annotator_id == annotator_id)
            .order_by(ComparisonRow.created.desc(), ComparisonRow.id.desc())
        )
        if limit is not None:
            query = query.limit(limit)
        with self._read() as session:
            return [comparison_record(row) for row in session.scalars(query).unique()]


def _check_reader(session: Session, owner_id: int, reader_id: int | None, what: str) -> None:
    """``reader_id`` None = the store's own callers (command line, export); an annotator reads only their own."""
    if reader_id is None or reader_id == owner_id:
        return
    reader = session.get(AnnotatorRow, reader_id)
    if reader is None or reader.role != "admin":
        raise PreferenceStoreError(f"{what} was recorded by another annotator: you can see only your own")


def comparison_record(row: ComparisonRow) -> ComparisonOut:
    return ComparisonOut(
        id=row.id,
        conversation_id=row.conversation_id,
        annotator_id=row.annotator_id,
        messages=[dict(msg) for msg in row.messages],
        blind=row.blind,
        created=row.created,
        bank_prompt_id=row.bank_prompt_id,
        assignment_id=row.assignment_id,
        responses=tuple(
            ResponseOut(
                id=r.id,
                label=PANEL_LABELS[r.panel],
                panel=r.panel,
                checkpoint_id=r.checkpoint_id,
                text=r.text,
                decoding=dict(r.decoding),
                seed=r.seed,
                latency_s=r.latency_s,
                n_tokens=r.n_tokens,
                serving=dict(r.serving) if r.serving is not None else None,
                leaks=list(r.leaks) if r.leaks is not None else None,
                warnings=list(r.warnings) if r.warnings is not None else None,
            )
            for r in row.responses  # in panel order (the relationship's order_by)
        ),
    )
