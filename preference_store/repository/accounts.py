"""Annotator accounts: login accounts with argon2-hashed passwords, and the local demo annotator; logging in
(throttled, audited), disabling and enabling, and password changes under the policy of
:mod:`preference_store.passwords`."""

from __future__ import annotations

from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from preference_store.models import AnnotatorRow, utcnow
from preference_store.passwords import password_problem
from preference_store.records import Annotator
from preference_store.repository.audit import LOGIN, LOGIN_FAILED, LOGIN_REFUSED, UNLOCKED, AuditLog
from preference_store.validation import PreferenceStoreError, check_annotator_fields

DEMO_ANNOTATOR = "demo"
_hasher = PasswordHasher()


@dataclass(frozen=True)
class LoginResult:
    """A login's outcome: the annotator, or None with ``message`` set when the try was throttled or now is
    (the line to show; None for a plain wrong name or password)."""

    annotator: Annotator | None
    message: str | None = None


class Accounts(AuditLog):
    """Who judges: creating accounts, logging in, and the demo annotator of a store without accounts."""

    def add_annotator(
        self,
        name: str,
        password: str,
        role: str = "annotator",
        *,
        enforce_policy: bool = False,
        actor: str | None = None,
    ) -> Annotator:
        """Create a login account (password hashed with argon2); refuses a taken name or an empty password.

        With ``enforce_policy`` (``./launch.sh add-annotator``) a password that fails the policy is refused;
        without (scripts, tests) it is kept but the account is flagged weak for the admins. Audited."""
        check_annotator_fields(name, role, password if password is not None else "")
        if self.annotator_by_name(name) is not None:  # said first: no password would make the name free
            raise PreferenceStoreError(f"annotator {name!r} exists already: choose another name")
        problem = password_problem(password, name, self.settings.accounts)
        if problem and enforce_policy:
            raise PreferenceStoreError(f"password for {name!r} refused: {problem}")
        password_hash = _hasher.hash(password)

        def work(session: Session) -> Annotator:
            if _by_name(session, name) is not None:
                raise PreferenceStoreError(f"annotator {name!r} exists already: choose another name")
            row = AnnotatorRow(name=name, role=role, password_hash=password_hash, password_weak=problem is not None)
            session.add(row)
            session.flush()  # the id comes from the database
            self._add_event(session, "account.created", actor=actor, target=name, detail={"role": role})
            return annotator_record(row)

        return self._write(work)

    def authenticate(self, name: str, password: str) -> Annotator | None:
        """The annotator if ``name``/``password`` match an enabled login account, else None (no side effects:
        :meth:`log_in` is the throttled, audited login)."""
        with self._read() as session:
            row = _by_name(session, name)
        if row is None or row.password_hash is None or row.disabled is not None or not password:
            return None
        try:
            _hasher.verify(row.password_hash, password)
        except (VerificationError, InvalidHashError):
            return None
        return annotator_record(row)

    def log_in(self, name: str, password: str, address: str | None = None) -> LoginResult:
        """A login from ``address``: refused unchecked while throttled (:meth:`login_refusal`), else checked;
        every try is one audit row (login, login.failed or login.refused). A success checks the password against
        the policy, flagging an account kept from before the policy."""
        refusal = self.login_refusal(name, address)
        if refusal is not None:
            self.record_event(
                LOGIN_REFUSED,
                actor=name,
                target=name,
                address=address,
                detail={"until": refusal.until.isoformat(timespec="seconds"), "locked": refusal.locked},
            )
            return LoginResult(None, refusal.message)
        annotator = self.authenticate(name, password)
        if annotator is None:
            self.record_event(LOGIN_FAILED, actor=name, target=name, address=address)
            now = self.login_refusal(name, address)
            return LoginResult(None, now.message if now else None)
        weak = password_problem(password, name, self.settings.accounts) is not None

        def work(session: Session) -> Annotator:
            row = _by_name(session, name)
            row.password_weak = weak
            self._add_event(session, LOGIN, actor=name, target=name, address=address)
            return annotator_record(row)

        return LoginResult(self._write(work))

    def unlock(self, name: str, actor: str | None = None) -> None:
        """Forget the failed logins of ``name`` (every address): it may log in again at once. Audited."""
        self._account_change(name, UNLOCKED, actor, lambda row: None)

    def set_disabled(self, name: str, disabled: bool, actor: str | None = None) -> Annotator:
        """Disable (or enable again) the account ``name``: a disabled one cannot log in, and its browser
        sessions and API tokens are refused from their next request. Audited."""

        def change(row: AnnotatorRow) -> None:
            row.disabled = (row.disabled or utcnow()) if disabled else None

        return self._account_change(name, "account.disabled" if disabled else "account.enabled", actor, change)

    def set_password(self, name: str, password: str, actor: str | None = None) -> Annotator:
        """Give ``name`` a new password (``./launch.sh passwd NAME``), refused unless it meets the policy; the
        account's other sessions end at their next request. Audited."""
        problem = password_problem(password or "", name, self.settings.accounts)
        if problem:
            raise PreferenceStoreError(f"password for {name!r} refused: {problem}")
        password_hash = _hasher.hash(password)

        def change(row: AnnotatorRow) -> None:
            if row.password_hash is None:
                raise PreferenceStoreError(f"{name!r} is not a login account")
            row.password_hash, row.password_weak, row.password_changed = password_hash, False, utcnow()

        return self._account_change(name, "account.password_changed", actor, change)

    def change_password(self, name: str, old: str, new: str, address: str | None = None) -> Annotator:
        """An annotator changes their own password (the app's form): the old one must be right."""
        if self.authenticate(name, old) is None:
            self.record_event(LOGIN_FAILED, actor=name, target=name, address=address, detail={"form": "password"})
            raise PreferenceStoreError("the current password is not right: nothing changed")
        return self.set_password(name, new, actor=name)

    def _account_change(self, name: str, action: str, actor: str | None, change) -> Annotator:
        def work(session: Session) -> Annotator:
            row = _by_name(session, name)
            if row is None:
                raise PreferenceStoreError(f"no annotator account {name!r} (./launch.sh add-annotator {name})")
            change(row)
            self._add_event(session, action, actor=actor, target=name)
            return annotator_record(row)

        return self._write(work)

    def session_allowed(self, name: str, started) -> str | None:
        """Why a browser session of ``name`` begun at ``started`` must end now (one line), or None."""
        with self._read() as session:
            row = _by_name(session, name)
        if row is None or row.password_hash is None:
            return "account removed"
        if row.disabled is not None:
            return "account disabled"
        if row.password_changed is not None and row.password_changed > started:
            return "password changed"
        return None

    def annotator_by_name(self, name: str) -> Annotator | None:
        with self._read() as session:
            row = _by_name(session, name)
        return annotator_record(row) if row is not None else None

    def has_login_accounts(self) -> bool:
        """Whether any account with a password exists (if not, the app runs as the demo annotator)."""
        with self._read() as session:
            return (
                session.scalar(
                    select(func.count()).select_from(AnnotatorRow).where(AnnotatorRow.password_hash.is_not(None))
                )
                > 0
            )

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
    return Annotator(
        id=row.id,
        name=row.name,
        role=row.role,
        created=row.created,
        can_login=row.password_hash is not None and row.disabled is None,
        disabled=row.disabled is not None,
        password_weak=row.password_weak,
    )
