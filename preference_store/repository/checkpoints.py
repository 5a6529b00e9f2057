"""The checkpoints that may be compared: ``<run_id>/<stage>`` of every completed training run."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from preference_store.models import CheckpointRow
from preference_store.records import Checkpoint
from preference_store.repository.sessions import StoreSessions
from preference_store.validation import checkpoint_id


class CheckpointRegistry(StoreSessions):
    """Registering a run's checkpoints (training does, when a run completes) and looking them up."""

    def register_checkpoints(self, run_id: str, stages: Iterable[str]) -> list[Checkpoint]:
        """Register ``<run_id>/<stage>`` for each stage (idempotent); training calls it when a run completes."""
        ids = {checkpoint_id(run_id, stage): stage for stage in stages}

        def work(session: Session) -> list[Checkpoint]:
            known = set(session.scalars(select(CheckpointRow.id).where(CheckpointRow.id.in_(ids))))
            session.add_all(CheckpointRow(id=cid, run_id=run_id, stage=stage)
                            for cid, stage in ids.items() if cid not in known)
            session.flush()
            rows = session.scalars(select(CheckpointRow).where(CheckpointRow.id.in_(ids)))
            return sorted((checkpoint_record(r) for r in rows), key=lambda c: list(ids).index(c.id))

        return self._write(work)

    def list_checkpoints(self, run_id: str | None = None) -> list[Checkpoint]:
        """Registered checkpoints (of one run, or all), newest registration first."""
        query = select(CheckpointRow).order_by(CheckpointRow.registered.desc(), CheckpointRow.id)
        if run_id is not None:
            query = query.where(CheckpointRow.run_id == run_id)
        with self._read() as session:
            return [checkpoint_record(r) for r in session.scalars(query)]

    def is_known_checkpoint(self, checkpoint_id: str) -> bool:
        with self._read() as session:
            return session.get(CheckpointRow, checkpoint_id) is not None


def checkpoint_record(row: CheckpointRow) -> Checkpoint:
    return Checkpoint(id=row.id, run_id=row.run_id, stage=row.stage, registered=row.registered)
