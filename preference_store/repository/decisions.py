"""When a study round's question is decided, its queue stops: the store-side rule every app replica and the API follow.

A round asks a run-vs-run question when its contestants are exactly two checkpoints of one stage of two different
runs (``queue-round --contestants RUN1/dpo,RUN2/dpo``). With ``study.decisions: anytime`` the store reads the
verdict of that question (the newer run against the older one, on the round's split: what ``compare-runs --stage``
gives) each time a queue asks for a new prompt. Once it is better, worse or same within the margin, it is written
into the round's definition (``decided``, with the audit event ``queue.round_decided``) and the round's queues hand
out nothing more: every clinician minute after that would go to a question already answered. Open assignments stay
judgeable, and their judgments are stored and counted. The decision is anytime-valid, so stopping at it keeps its
error rate (:mod:`preference_store.statistics.sequential`). With ``study.decisions: fixed`` a round runs until the
admin closes it, as a preregistered study must.
"""

from __future__ import annotations

import json

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.config import StoreConfig, StudyConfig
from preference_store.models import AuditEventRow, CheckpointRow, JudgmentRow, StoreMetaRow, utcnow
from preference_store.records import QueueRound, RunComparison
from preference_store.repository.leaderboard import LIVE, load_judged
from preference_store.statistics.run_comparison import NOT_ENOUGH, compare_checkpoints
from preference_store.statistics.sequential import UNDECIDED

ROUND_KEY = "queue_round"  # as bank.py keeps the round definitions: store_meta "queue_round.N"


def round_question(session: Session, defined: QueueRound) -> tuple[str, str, str] | None:
    """(newer run, older run, stage) when the round's contestants are two runs' checkpoints of one stage (the
    newer: the one registered later), else None."""
    if len(defined.contestants) != 2:
        return None
    rows = [session.get(CheckpointRow, c) for c in defined.contestants]
    if any(r is None for r in rows):
        return None
    first, second = rows
    if first.stage != second.stage or first.run_id == second.run_id:
        return None
    newer, older = sorted(rows, key=lambda r: (r.registered, r.run_id), reverse=True)
    return newer.run_id, older.run_id, first.stage


def round_verdict(
    session: Session, defined: QueueRound, settings: StoreConfig, study: StudyConfig
) -> RunComparison | None:
    """The anytime verdict on the round's question now (None: the round asks none, or decisions are fixed)."""
    if study.decisions != "anytime" or not defined.is_open:
        return None
    question = round_question(session, defined)
    if question is None:
        return None
    new_run, old_run, stage = question
    return compare_checkpoints(
        load_judged(session, bank_only=True, admit_unblinded=settings.admit_unblinded),
        new_run,
        old_run,
        stage,
        split=None if defined.split == "all" else defined.split,
        exclude_leaked=settings.exclude_leaked_battles,
        decisions="anytime",
        alpha=study.alpha,
        margin=study.margin,
        per_prompt=settings.annotators_per_prompt,
        settle_on_agreement=(defined.allocation or study.allocation) == "adaptive",
    )


class RoundDecisions:
    """Reads and records the decision of the open round (called inside bank.py's queue transactions)."""

    def _round_decided(self, session: Session, defined: QueueRound, record: bool = True) -> bool:
        """Whether the open round's question is decided; ``record``: write a new decision into the round's
        definition and audit it (a write transaction). Recomputed only when the live judgments changed."""
        if defined.decided is not None:
            return True
        if self.study.decisions != "anytime" or not defined.is_open or len(defined.contestants) != 2:
            return False
        seen = session.execute(select(func.count(), func.max(JudgmentRow.created)).where(LIVE)).one()
        key = (self.url, defined.number, defined.contestants, defined.split, tuple(seen))
        cache = self.__dict__.setdefault("_undecided_at", set())
        if key in cache:
            return False
        result = round_verdict(session, defined, self.settings, self.study)
        if result is None or result.verdict in (UNDECIDED, NOT_ENOUGH):
            cache.clear()
            cache.add(key)
            return False
        if record:
            meta = session.get(StoreMetaRow, f"{ROUND_KEY}.{defined.number}")
            value = json.loads(meta.value)
            meta.value = json.dumps({**value, "decided": result.summary, "decided_at": utcnow().isoformat()})
            session.add(
                AuditEventRow(
                    time=utcnow(),
                    actor="store",
                    action="queue.round_decided",
                    target=str(defined.number),
                    detail={
                        "verdict": result.verdict,
                        "decided_after": result.decided_after,
                        "interval": list(result.decided_interval or ()),
                    },
                )
            )
        return True
