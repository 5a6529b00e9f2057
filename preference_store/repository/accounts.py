"""Annotator accounts: login accounts with argon2-hashed passwords, and the local demo annotator."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from preference_store.models import AnnotatorRow
from preference_store.records import Annotator
from preference_store.repository.sessions import StoreSessions
from preference_store.validation import PreferenceStoreError, check_annotator_fields

DEMO_ANNOTATOR = "demo"
_hasher = PasswordHasher()


class Accounts(StoreSessions):
    """Who judges: creating accounts, logging in, and the demo annotator of a store without accounts."""

    def add_annotator(self, name: str, password: str, role: str = "annotator") -> Annotator:
        """Create a login account (password hashed with argon2); refuses a taken name or an empty password."""
        check_annotator_fields(name, role, password if password is not None else "")
        password_hash = _hasher.hash(password)

        def work(session: Session) -> Annotator:
            if _by_name(session, name) is not None:
                raise PreferenceStoreError(f"annotator {name!r} exists already: choose another name")
            row = AnnotatorRow(name=name, role=role, password_hash=password_hash)
            session.add(row)
            session.flush()  # the id comes from the database
            return annotator_record(row)

        return self._write(work)

    def authenticate(self, name: str, password: str) -> Annotator | None:
        """The annotator if ``name``/``password`` match a login account, else None."""
        with self._read() as session:
            row = _by_name(session, name)
        if row is None or row.password_hash is None or not password:
            return None
        try:
            _hasher.verify(row.password_hash, password)
        except (VerificationError, InvalidHashError):
            return None
        return annotator_record(row)

    def annotator_by_name(self, name: str) -> Annotator | None:
        with self._read() as session:
            row = _by_name(session, name)
        return annotator_record(row) if row is not None else None

    def has_login_accounts(self) -> bool:
        """Whether any account with a password exists (if not, the app runs as the demo annotator)."""
        with self._read() as session:
            return session.scalar(
                select(func.count()).select_from(AnnotatorRow).where(AnnotatorRow.password_hash.is_not(None))
            ) > 0

    def demo_annotator(self) -> Annotator:
        """The local "demo" annotator (created on first use, no password, cannot log in)."""

        def work(session: Session) -> Annotator:
            row = _by_name(session, DEMO_ANNOTATOR)
            if row is None:
                row = AnnotatorRow(name=DEMO_ANNOTATOR, role="annotator", password_hash=None)
                session.add(row)
                session.flush()  # the id comes from the database
            return annotator_record(row)

        return self._write(work)

    def list_annotators(self) -> list[Annotator]:
        with self._read() as session:
            return [annotator_record(r) for r in session.scalars(select(AnnotatorRow).order_by(AnnotatorRow.id))]


def _by_name(session: Session, name: str) -> AnnotatorRow | None:
    return session.scalar(select(AnnotatorRow).where(AnnotatorRow.name == name))


def annotator_record(row: AnnotatorRow) -> Annotator:
    return Annotator(id=row.id, name=row.name, role=row.role, created=row.created,
                     can_login=row.password_hash is not None)
