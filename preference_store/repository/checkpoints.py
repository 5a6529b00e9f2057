"""The checkpoints that may be compared: ``<run_id>/<stage>`` of every completed training run, and
``endpoint:<name>`` of every endpoint contestant (a model served by an OpenAI-compatible engine).

An endpoint's record has its checkpoint id as ``run_id`` and ``"endpoint"`` as ``stage`` (never a training
stage); which model at which URL gave each answer is stored with the answer (its ``serving`` record).
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.config import ENDPOINT_NAME
from preference_store.models import CheckpointRow
from preference_store.records import Checkpoint
from preference_store.repository.sessions import StoreSessions
from preference_store.validation import PreferenceStoreError, checkpoint_id

ENDPOINT_PREFIX = "endpoint:"
ENDPOINT_STAGE = "endpoint"


def endpoint_checkpoint_id(name: str) -> str:
    """``"endpoint:<name>"`` after checking the name (as ``app.endpoints`` does)."""
    if not isinstance(name, str) or not ENDPOINT_NAME.match(name):
        raise PreferenceStoreError(f"endpoint name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    return ENDPOINT_PREFIX + name


class CheckpointRegistry(StoreSessions):
    """Registering a run's checkpoints (training does, when a run completes) and looking them up."""

    def register_checkpoints(self, run_id: str, stages: Iterable[str]) -> list[Checkpoint]:
        """Register ``<run_id>/<stage>`` for each stage (idempotent); training calls it when a run completes."""
        return self._register({checkpoint_id(run_id, stage): (run_id, stage) for stage in stages})

    def register_endpoints(self, names: Iterable[str]) -> list[Checkpoint]:
        """Register ``endpoint:<name>`` for each endpoint name (idempotent); the arena does when one is compared."""
        ids = [endpoint_checkpoint_id(name) for name in names]
        return self._register({cid: (cid, ENDPOINT_STAGE) for cid in ids})

    def _register(self, ids: dict[str, tuple[str, str]]) -> list[Checkpoint]:
        """checkpoint id -> (run_id, stage): the records, added where missing, in the order given."""

        def work(session: Session) -> list[Checkpoint]:
            known = set(session.scalars(select(CheckpointRow.id).where(CheckpointRow.id.in_(ids))))
            session.add_all(
                CheckpointRow(id=cid, run_id=run_id, stage=stage)
                for cid, (run_id, stage) in ids.items()
                if cid not in known
            )
            session.flush()
            rows = session.scalars(select(CheckpointRow).where(CheckpointRow.id.in_(ids)))
            return sorted((checkpoint_record(r) for r in rows), key=lambda c: list(ids).index(c.id))

        return self._write(work)

    def list_checkpoints(self, run_id: str | None = None, endpoints: bool = False) -> list[Checkpoint]:
        """Registered checkpoints of training runs (of one run, or all; with ``endpoints`` the endpoint
        contestants' too), newest registration first."""
        query = select(CheckpointRow).order_by(CheckpointRow.registered.desc(), CheckpointRow.id)
        if run_id is not None:
            query = query.where(CheckpointRow.run_id == run_id)
        if not endpoints:
            query = query.where(CheckpointRow.stage != ENDPOINT_STAGE)
        with self._read() as session:
            return [checkpoint_record(r) for r in session.scalars(query)]

    def is_known_checkpoint(self, checkpoint_id: str) -> bool:
        with self._read() as session:
            return session.get(CheckpointRow, checkpoint_id) is not None


def checkpoint_record(row: CheckpointRow) -> Checkpoint:
    return Checkpoint(id=row.id, run_id=row.run_id, stage=row.stage, registered=row.registered)
