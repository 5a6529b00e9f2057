"""What export-prefs and the Data tab read: the stored pairs with their texts, the export log and the
annotators' pseudonyms."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from preference_store.models import (
    AnswerRatingRow,
    AssignmentRow,
    BankPromptRow,
    ComparisonRow,
    ExportedPairRow,
    ExportRow,
    JudgmentRow,
    PairRow,
    ResponseRow,
    StoreMetaRow,
)
from preference_store.records import JUDGMENT_KINDS, AnnotatorCounts, PairOut
from preference_store.repository.sessions import StoreSessions


@dataclass(frozen=True)
class StoredPair:
    """One stored pair with everything export needs (:mod:`preference_store.exports.pairs`, and ``recent_pairs``)."""

    pair_id: str
    judgment_id: str
    comparison_id: str
    annotator_id: int
    kind: str  # the judgment's kind: pairwise | ranking | correction
    created: datetime  # when the judgment was made
    prompt: list[dict]
    chosen: str
    rejected: str
    chosen_checkpoint: str | None
    rejected_checkpoint: str
    chosen_serving: dict | None  # how each answer was served (None: a correction, or not recorded)
    rejected_serving: dict | None
    bank_split: str | None = None  # the split of the comparison's bank prompt; None = not a bank prompt
    blind: bool = True  # the comparison was judged without the names shown (see store.admit_unblinded)


class ExportSupport(StoreSessions):
    """The pairs in the order export writes them, the log of what earlier exports handled, and the
    pseudonyms that stand for annotators in exported files."""

    @cached_property
    def _pseudonym_salt(self) -> str:
        with self._read() as session:
            return session.get(StoreMetaRow, "pseudonym_salt").value

    def pseudonym(self, annotator_id: int) -> str:
        """A stable pseudonymous annotator id: a salted hash (the salt never leaves the database)."""
        digest = hashlib.sha256(f"{self._pseudonym_salt}:{annotator_id}".encode()).hexdigest()
        return f"annotator-{digest[:16]}"

    def export_rows(
        self,
        since: datetime | None = None,
        unexported_only: bool = False,
        newest_first: bool = False,
        limit: int | None = None,
        annotator_id: int | None = None,
    ) -> Iterator[StoredPair]:
        """Stored pairs of live judgments (a revised judgment's pairs are history) with their prompt, texts,
        checkpoints, serving, bank split and blindness, oldest first unless ``newest_first``.

        ``since`` keeps pairs of judgments made at or after that time; ``unexported_only`` leaves out
        pairs an earlier export wrote or dropped as duplicates; ``annotator_id`` keeps one annotator's.
        """
        chosen, rejected = aliased(ResponseRow), aliased(ResponseRow)
        query = (
            select(
                PairRow.id,
                PairRow.judgment_id,
                PairRow.comparison_id,
                JudgmentRow.annotator_id,
                JudgmentRow.kind,
                JudgmentRow.created,
                ComparisonRow.messages,
                chosen.text,
                JudgmentRow.correction,
                rejected.text,
                chosen.checkpoint_id,
                rejected.checkpoint_id,
                chosen.serving,
                rejected.serving,
                BankPromptRow.split,
                ComparisonRow.blind,
            )
            .join(JudgmentRow, JudgmentRow.id == PairRow.judgment_id)
            .join(ComparisonRow, ComparisonRow.id == PairRow.comparison_id)
            .outerjoin(BankPromptRow, BankPromptRow.id == ComparisonRow.bank_prompt_id)
            .join(rejected, rejected.id == PairRow.rejected_response_id)
            .outerjoin(chosen, chosen.id == PairRow.chosen_response_id)
            .where(JudgmentRow.superseded_by.is_(None))
            .order_by(*((PairRow.created.desc(), PairRow.id.desc()) if newest_first else (PairRow.created, PairRow.id)))
        )
        if since is not None:
            query = query.where(JudgmentRow.created >= since)
        if unexported_only:
            query = query.where(~select(ExportedPairRow.pair_id).where(ExportedPairRow.pair_id == PairRow.id).exists())
        if annotator_id is not None:
            query = query.where(JudgmentRow.annotator_id == annotator_id)
        if limit is not None:
            query = query.limit(limit)
        with self._read() as session:
            for (
                pid,
                jid,
                cid,
                aid,
                kind,
                created,
                messages,
                chosen_text,
                correction,
                rejected_text,
                *checkpoints_serving_and_split,
            ) in session.execute(query).yield_per(2000):
                yield StoredPair(
                    pid,
                    jid,
                    cid,
                    aid,
                    kind,
                    created,
                    messages,
                    chosen_text if chosen_text is not None else correction,
                    rejected_text,
                    *checkpoints_serving_and_split,
                )

    def tie_votes(self) -> Iterator[tuple[int, list[dict], tuple[str, ...], bool]]:
        """The live pairwise votes that made no pair (a tie, or both bad), oldest first: (annotator id, prompt
        messages, the texts of the answers judged, blind), so an export counts them among the votes on the
        same prompt and answers (:mod:`preference_store.exports.pairs`)."""
        query = (
            select(
                JudgmentRow.annotator_id,
                JudgmentRow.comparison_id,
                ComparisonRow.messages,
                ComparisonRow.blind,
                ResponseRow.text,
            )
            .join(ComparisonRow, ComparisonRow.id == JudgmentRow.comparison_id)
            .join(ResponseRow, ResponseRow.comparison_id == JudgmentRow.comparison_id)
            .where(
                JudgmentRow.superseded_by.is_(None),
                JudgmentRow.kind == "pairwise",
                JudgmentRow.choice.not_in(("A", "B")),
            )
            .order_by(JudgmentRow.created, JudgmentRow.id, ResponseRow.panel)
        )
        with self._read() as session:
            rows = session.execute(query).all()
        by_judgment: dict[tuple[int, str], tuple[list[dict], list[str], bool]] = {}
        for annotator_id, comparison_id, messages, blind, text in rows:
            by_judgment.setdefault((annotator_id, comparison_id), (messages, [], blind))[1].append(text)
        for (annotator_id, _), (messages, texts, blind) in by_judgment.items():
            yield annotator_id, messages, tuple(texts), blind

    def recent_pairs(self, limit: int = 20, annotator_id: int | None = None) -> list[PairOut]:
        """The newest preference pairs, newest first (for the app's Data tab): one annotator's own, or
        everyone's with ``annotator_id`` None (admins only: the caller decides who may see them)."""
        return [
            PairOut(
                id=r.pair_id,
                judgment_id=r.judgment_id,
                comparison_id=r.comparison_id,
                annotator_id=r.annotator_id,
                prompt=r.prompt,
                chosen=r.chosen,
                rejected=r.rejected,
                chosen_checkpoint=r.chosen_checkpoint,
                rejected_checkpoint=r.rejected_checkpoint,
                created=r.created,
                chosen_serving=r.chosen_serving,
                rejected_serving=r.rejected_serving,
            )
            for r in self.export_rows(newest_first=True, limit=limit, annotator_id=annotator_id)
        ]

    def annotator_counts(self, annotator_id: int) -> AnnotatorCounts:
        """One annotator's own comparisons, judgments (by kind), pairs, ratings and judged queue prompts."""
        with self._read() as session:

            def count(model, *where):
                return session.scalar(select(func.count()).select_from(model).where(*where))

            live = JudgmentRow.superseded_by.is_(None)
            by_kind = dict(
                session.execute(
                    select(JudgmentRow.kind, func.count())
                    .where(JudgmentRow.annotator_id == annotator_id, live)
                    .group_by(JudgmentRow.kind)
                ).all()
            )
            return AnnotatorCounts(
                comparisons=count(ComparisonRow, ComparisonRow.annotator_id == annotator_id),
                judgments=sum(by_kind.values()),
                judgments_by_kind={k: by_kind.get(k, 0) for k in JUDGMENT_KINDS},
                pairs=session.scalar(
                    select(func.count())
                    .select_from(PairRow)
                    .join(JudgmentRow, JudgmentRow.id == PairRow.judgment_id)
                    .where(JudgmentRow.annotator_id == annotator_id, live)
                ),
                ratings=count(
                    AnswerRatingRow,
                    AnswerRatingRow.annotator_id == annotator_id,
                    AnswerRatingRow.superseded_by.is_(None),
                ),
                assignments_done=count(
                    AssignmentRow, AssignmentRow.annotator_id == annotator_id, AssignmentRow.status == "done"
                ),
            )

    def handled_pairs(self) -> int:
        """Live pairs an earlier (marked) export wrote or left out as duplicates: what the next export skips."""
        with self._read() as session:
            return session.scalar(
                select(func.count())
                .select_from(PairRow)
                .join(JudgmentRow, JudgmentRow.id == PairRow.judgment_id)
                .where(
                    JudgmentRow.superseded_by.is_(None),
                    select(ExportedPairRow.pair_id).where(ExportedPairRow.pair_id == PairRow.id).exists(),
                )
            )

    def exported_content(self) -> dict[str, str]:
        """Content hash -> pair id of every pair written by an earlier export (for deduplication)."""
        with self._read() as session:
            return dict(
                session.execute(
                    select(ExportedPairRow.content_sha256, ExportedPairRow.pair_id).where(
                        ExportedPairRow.duplicate_of.is_(None)
                    )
                ).all()
            )

    def record_export(
        self,
        path: str,
        sha256: str,
        entries: list[tuple[str, str, str, str | None]],
        before_commit: Callable[[], None] | None = None,
    ) -> int:
        """Log one export: ``entries`` are (pair id, content hash, split, duplicate_of or None).

        ``before_commit`` runs inside the transaction after the rows are written (export moves its
        file into place there), so the log and the file appear together or not at all.
        """

        return self._write(
            lambda session: log_export(
                session,
                ExportRow(
                    path=path,
                    sha256=sha256,
                    n_pairs=sum(1 for e in entries if e[3] is None),
                    kind="pairs",
                    entries=[
                        ExportedPairRow(pair_id=pid, content_sha256=h, split=split, duplicate_of=dup)
                        for pid, h, split, dup in entries
                    ],
                ),
                before_commit,
            )
        )


def log_export(session: Session, row: ExportRow, before_commit: Callable[[], None] | None) -> int:
    """Add one export's log row (with its entries) and run ``before_commit`` in the same transaction."""
    session.add(row)
    session.flush()
    if before_commit is not None:
        before_commit()
    return row.id
