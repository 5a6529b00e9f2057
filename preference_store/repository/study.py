"""The study's raw records and progress, read only: every judgment, single-answer rating and per-criterion score
with its comparison's context (what ``export-judgments`` writes), and each annotator's progress through the
current queue round (what ``study status`` and ``/study_status`` show).

Unlike the leaderboard, these read superseded records too (marked): a PI analysing the study wants to see
who changed their mind, and the unblinded comparisons (flagged) as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from preference_store.models import (
    AnswerRatingRow,
    AssignmentRow,
    BankPromptRow,
    ComparisonRow,
    CriterionScoreRow,
    JudgmentRow,
    ResponseRow,
)
from preference_store.records import PANEL_LABELS
from preference_store.repository.sessions import StoreSessions

RECORDS = ("judgment", "rating", "score")  # what one row of the study's table is


@dataclass(frozen=True)
class StudyRecord:
    """One judgment, rating or per-criterion score with the context of its comparison."""

    record: str  # judgment | rating | score
    id: str  # the judgment's id (a score's too: it belongs to one judgment) or the rating's
    annotator_id: int
    comparison_id: str
    messages: list[dict]  # the conversation so far, the prompt last (as stored: not de-identified)
    contestants: tuple[str, ...]  # checkpoint ids in panel order (A first)
    blind: bool
    bank_prompt_id: str | None
    bank_split: str | None
    round: int | None  # the queue round of the comparison's assignment; None outside the queue
    compared_at: datetime  # when the answers were recorded
    judged_at: datetime  # when the judgment (rating) was made
    guideline_version: int | None
    superseded_by: str | None  # None = live: the one that counts
    superseded_why: str | None  # revised | duplicate
    kind: str  # the judgment's kind (pairwise | ranking | correction); "rating"; "score"
    choice: str | None = None  # a pairwise judgment's A | B | tie | both_bad
    ranking: dict[str, int] | None = None  # a ranking's {label: place}
    label: str | None = None  # the rated or scored answer's panel label
    up: bool | None = None  # a rating's thumbs up (True) or down
    criterion: str | None = None
    score: int | None = None  # 1-5
    correction: str | None = None  # as stored: not de-identified
    reason: str | None = None


@dataclass(frozen=True)
class AnnotatorProgress:
    """One account's part in the study: its queue in the current round and what it has recorded."""

    annotator_id: int
    name: str
    role: str
    disabled: bool
    done: int  # bank prompts judged through the queue in the current round
    total: int  # of those they can get (see QueueProgress)
    judgments: int  # live judgments, any prompt, any round
    ratings: int  # live single-answer ratings
    comparisons: int

    @property
    def finished(self) -> bool:
        """Nothing left in their queue this round (and they had something to do)."""
        return self.total > 0 and self.done >= self.total


class StudyRecords(StoreSessions):
    """The study's table of records and each annotator's progress."""

    def study_records(self) -> list[StudyRecord]:
        """Every judgment (its scores right after it) and every rating, live and superseded, oldest first."""
        with self._read() as session:
            contexts = {}
            query = (
                select(
                    ComparisonRow.id,
                    ComparisonRow.messages,
                    ComparisonRow.blind,
                    ComparisonRow.created,
                    ComparisonRow.bank_prompt_id,
                    BankPromptRow.split,
                    AssignmentRow.round,
                )
                .outerjoin(BankPromptRow, BankPromptRow.id == ComparisonRow.bank_prompt_id)
                .outerjoin(AssignmentRow, AssignmentRow.id == ComparisonRow.assignment_id)
                .where(
                    ComparisonRow.id.in_(select(JudgmentRow.comparison_id))
                    | ComparisonRow.id.in_(select(AnswerRatingRow.comparison_id))
                )
            )
            for cid, messages, blind, created, bank_prompt_id, split, round_ in session.execute(query):
                contexts[cid] = dict(
                    comparison_id=cid,
                    messages=messages,
                    blind=blind,
                    compared_at=created,
                    bank_prompt_id=bank_prompt_id,
                    bank_split=split,
                    round=round_,
                )
            panels: dict[str, dict[int, str]] = {}  # comparison -> panel -> checkpoint id
            label_of: dict[str, str] = {}  # response id -> its panel label
            for cid, rid, panel, checkpoint in session.execute(
                select(ResponseRow.comparison_id, ResponseRow.id, ResponseRow.panel, ResponseRow.checkpoint_id).where(
                    ResponseRow.comparison_id.in_(list(contexts))
                )
            ):
                panels.setdefault(cid, {})[panel] = checkpoint
                label_of[rid] = PANEL_LABELS[panel]
            for cid, by_panel in panels.items():
                contexts[cid]["contestants"] = tuple(by_panel[p] for p in sorted(by_panel))
            scores: dict[str, list[tuple[str, str, int]]] = {}  # judgment -> (label, criterion, value)
            for jid, rid, criterion, value in session.execute(
                select(
                    CriterionScoreRow.judgment_id,
                    CriterionScoreRow.response_id,
                    CriterionScoreRow.criterion,
                    CriterionScoreRow.value,
                )
            ):
                scores.setdefault(jid, []).append((label_of[rid], criterion, value))
            out: list[tuple[tuple, StudyRecord]] = []
            for j in session.scalars(select(JudgmentRow)):
                common = dict(
                    id=j.id,
                    annotator_id=j.annotator_id,
                    judged_at=j.created,
                    guideline_version=j.guideline_version,
                    superseded_by=j.superseded_by,
                    superseded_why=j.superseded_why,
                    **contexts[j.comparison_id],
                )
                out.append(
                    (
                        (j.created, j.id, 0),
                        StudyRecord(
                            record="judgment",
                            kind=j.kind,
                            choice=j.choice,
                            ranking=dict(j.ranking) if j.ranking else None,
                            correction=j.correction,
                            reason=j.reason,
                            **common,
                        ),
                    )
                )
                for label, criterion, value in sorted(scores.get(j.id, [])):
                    out.append(
                        (
                            (j.created, j.id, 1),
                            StudyRecord(
                                record="score", kind="score", label=label, criterion=criterion, score=value, **common
                            ),
                        )
                    )
            for r in session.scalars(select(AnswerRatingRow)):
                out.append(
                    (
                        (r.created, r.id, 0),
                        StudyRecord(
                            record="rating",
                            kind="rating",
                            id=r.id,
                            annotator_id=r.annotator_id,
                            judged_at=r.created,
                            guideline_version=r.guideline_version,
                            superseded_by=r.superseded_by,
                            superseded_why=r.superseded_why,
                            label=label_of[r.response_id],
                            up=r.label,
                            correction=r.correction,
                            reason=r.reason,
                            **contexts[r.comparison_id],
                        ),
                    )
                )
        out.sort(key=lambda keyed: keyed[0])  # stable: a judgment's scores keep their order after it
        return [record for _, record in out]

    def study_progress(self) -> list[AnnotatorProgress]:
        """Every account (by id) with its queue progress in the current round and its live records."""
        progress = []
        for annotator in self.list_annotators():
            queue = self.queue_progress(annotator.id)
            counts = self.annotator_counts(annotator.id)
            progress.append(
                AnnotatorProgress(
                    annotator_id=annotator.id,
                    name=annotator.name,
                    role=annotator.role,
                    disabled=annotator.disabled,
                    done=queue.done,
                    total=queue.total,
                    judgments=counts.judgments,
                    ratings=counts.ratings,
                    comparisons=counts.comparisons,
                )
            )
        return progress
