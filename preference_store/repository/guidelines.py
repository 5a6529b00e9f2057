"""The guideline (rubric) versions: the one in force, publishing a new one, who has read which."""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from preference_store.models import AnnotatorRow, GuidelineRow
from preference_store.records import Criterion, Guideline
from preference_store.repository.sessions import StoreSessions
from preference_store.rubric import check_criteria
from preference_store.validation import NotFoundError, PreferenceStoreError, check_text

GUIDELINE_MAX_CHARS = 20000


class Guidelines(StoreSessions):
    """Versioned guidelines; version 1 is the built-in default (written by migration 0003)."""

    def guideline(self, version: int | None = None) -> Guideline:
        """The guideline in force (the newest version), or a given version."""
        with self._read() as session:
            row = _newest(session) if version is None else session.get(GuidelineRow, version)
            if row is None:
                raise NotFoundError(f"no guideline version {version}")
            return guideline_record(row)

    def publish_guideline(self, text: str, criteria, author_id: int) -> Guideline:
        """A new version (admins only): the text and its 1-5 criteria in priority order."""
        text = check_text(text, "the guideline text", GUIDELINE_MAX_CHARS)
        checked = check_criteria(criteria)

        def work(session: Session) -> Guideline:
            author = session.get(AnnotatorRow, author_id)
            if author is None or author.role != "admin":
                raise PreferenceStoreError("only admins can change the guideline")
            version = (session.scalar(select(func.max(GuidelineRow.version))) or 0) + 1
            row = GuidelineRow(
                version=version,
                text=text,
                author_id=author_id,
                criteria=[{"key": c.key, "name": c.name, "description": c.description} for c in checked],
            )
            session.add(row)
            session.flush()
            return guideline_record(row)

        return self._write(work)

    def guideline_seen(self, annotator_id: int) -> int | None:
        """The newest guideline version this annotator has acknowledged (None = never)."""
        with self._read() as session:
            row = session.get(AnnotatorRow, annotator_id)
            if row is None:
                raise NotFoundError(f"no annotator with id {annotator_id}: log in again")
            return row.guideline_seen

    def mark_guideline_seen(self, annotator_id: int, version: int) -> None:
        self._write(
            lambda session: session.execute(
                update(AnnotatorRow).where(AnnotatorRow.id == annotator_id).values(guideline_seen=version)
            )
        )


def _newest(session: Session) -> GuidelineRow | None:
    return session.scalar(select(GuidelineRow).order_by(GuidelineRow.version.desc()).limit(1))


def guideline_record(row: GuidelineRow) -> Guideline:
    return Guideline(
        version=row.version,
        text=row.text,
        author_id=row.author_id,
        created=row.created,
        criteria=tuple(Criterion(c["key"], c["name"], c.get("description", "")) for c in row.criteria),
    )
