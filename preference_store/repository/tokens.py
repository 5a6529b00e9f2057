"""Bearer tokens for the OpenAI-compatible server (``./launch.sh serve-token NAME``): each one an annotator
account's, made at random, shown once and kept only as its sha256 (a random 256-bit token needs no slow
password hash: nothing can be guessed from its digest, and checking one stays a single indexed read)."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from preference_store.models import AnnotatorRow, ApiTokenRow
from preference_store.records import Annotator
from preference_store.repository.accounts import _by_name, annotator_record
from preference_store.repository.audit import AuditLog
from preference_store.validation import PreferenceStoreError

TOKEN_PREFIX = "chimed-"  # says what a token is for when it turns up in a shell history or a config file


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class ApiTokens(AuditLog):
    """Tokens that let a program act as an annotator on the OpenAI-compatible server."""

    def create_api_token(self, name: str, actor: str | None = None) -> str:
        """A new token for the login account ``name`` (returned once; only its digest is stored). Audited."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)

        def work(session: Session) -> None:
            row = _by_name(session, name)
            if row is None or row.password_hash is None:
                raise PreferenceStoreError(
                    f"no annotator account {name!r}: create it first (./launch.sh add-annotator {name})"
                )
            session.add(ApiTokenRow(annotator_id=row.id, token_sha256=token_digest(token)))
            self._add_event(session, "token.issued", actor=actor, target=name)

        self._write(work)
        return token

    def revoke_api_tokens(self, name: str, actor: str | None = None) -> int:
        """Delete every token of the account ``name`` (checked at each request: refused from the next one on);
        returns how many there were. Audited."""

        def work(session: Session) -> int:
            row = _by_name(session, name)
            if row is None:
                raise PreferenceStoreError(f"no annotator account {name!r}")
            revoked = session.execute(delete(ApiTokenRow).where(ApiTokenRow.annotator_id == row.id)).rowcount
            self._add_event(session, "token.revoked", actor=actor, target=name, detail={"tokens": revoked})
            return revoked

        return self._write(work)

    def annotator_for_token(self, token: str) -> Annotator | None:
        """The annotator whose token this is, while their account can log in (not disabled); else None."""
        if not isinstance(token, str) or not token:
            return None
        with self._read() as session:
            row = session.scalar(
                select(AnnotatorRow)
                .join(ApiTokenRow, ApiTokenRow.annotator_id == AnnotatorRow.id)
                .where(ApiTokenRow.token_sha256 == token_digest(token))
            )
        if row is None or row.password_hash is None or row.disabled is not None:
            return None
        return annotator_record(row)
