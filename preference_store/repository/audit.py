"""The study's audit log (``audit_events``, append-only) and the throttling of failed logins read from it.

Every event is one row: time, actor (an account name, "cli:USER" for the command line, "loop"), action,
target, client address and a small detail. :meth:`AuditLog.record_event` is the one way to append; there is
no way to change or delete a row (and the database's triggers refuse it).

Throttling reads the failures back from the log, so it holds across app replicas and restarts and needs no
table of its own. Three scopes, each with growing delays after a few failures and a temporary lock after more
(numbers in ``store.accounts``):

- (account, address): delays after ``free_failures``, a lock of ``lock_seconds`` after ``lock_failures``;
- the account from any address: the same delays and a short lock (``account_lock_seconds``) after
  ``account_lock_failures``, neither applied to an address the owner logged in from within
  ``trusted_address_days`` — so a guesser elsewhere cannot keep the owner out, and elsewhere only briefly;
- the address against any account (password spraying) and any bearer token: delays after
  ``address_free_failures``, a lock after ``address_lock_failures``.

A try that comes while a scope says wait is refused unchecked and does not count as a failure; a success or an
admin's unlock (``./launch.sh unlock NAME``) forgets the account's failures.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from preference_store.models import AuditEventRow, utcnow
from preference_store.repository.sessions import StoreSessions

LOGIN, LOGIN_FAILED, LOGIN_REFUSED = "login", "login.failed", "login.refused"
UNLOCKED, TOKEN_FAILED = "account.unlocked", "token.failed"
FIELD_CHARS = {"actor": 100, "action": 40, "target": 255, "address": 64}


@dataclass(frozen=True)
class AuditEvent:
    id: int
    time: datetime
    actor: str | None
    action: str
    target: str | None
    address: str | None
    detail: dict | None


@dataclass(frozen=True)
class Refusal:
    """Why a login or token try is refused unchecked, until when, and the line to show."""

    until: datetime
    locked: bool  # a lock (an admin can lift an account's), not only a wait
    message: str


def _clip(value: str | None, field: str) -> str | None:
    return None if value is None else str(value)[: FIELD_CHARS[field]]


def _delay_s(failures: int, free: int, policy) -> float:
    return 0.0 if failures < free else min(policy.login_delay_s * 2 ** (failures - free), policy.login_max_delay_s)


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%H:%M:%S UTC")


class AuditLog(StoreSessions):
    """Appending to the audit log, reading it (filtered), and the throttling decisions made from it."""

    def record_event(
        self,
        action: str,
        *,
        actor: str | None = None,
        target: str | None = None,
        address: str | None = None,
        detail: dict | None = None,
    ) -> None:
        """Append one event to the audit log (its own transaction)."""
        self._write(
            lambda session: self._add_event(session, action, actor=actor, target=target, address=address, detail=detail)
        )

    def record_export_event(self, actor: str | None, pairs, ratings, address: str | None = None) -> None:
        """One audit row for one export (``export-prefs``, the Data tab, the loop): what was written, how many
        records, and where (``pairs``/``ratings``: the export summaries)."""
        self.record_event(
            "export",
            actor=actor,
            address=address,
            target=str(pairs.path or ratings.path or ""),
            detail={
                "pairs": len(pairs.pair_ids),
                "pairs_file": str(pairs.path or "") or None,
                "ratings": len(ratings.rating_ids),
                "ratings_file": str(ratings.path or "") or None,
            },
        )

    @staticmethod
    def _add_event(
        session: Session,
        action: str,
        *,
        actor: str | None = None,
        target: str | None = None,
        address: str | None = None,
        detail: dict | None = None,
    ) -> None:
        """Append one event inside the caller's transaction (the change and its row commit together)."""
        session.add(
            AuditEventRow(
                time=utcnow(),
                actor=_clip(actor, "actor"),
                action=_clip(action, "action"),
                target=_clip(target, "target"),
                address=_clip(address, "address"),
                detail=detail,
            )
        )

    def audit_events(
        self,
        *,
        action: str | None = None,
        actor: str | None = None,
        target: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = 500,
    ) -> list[AuditEvent]:
        """Events, newest first; ``action`` matches a prefix ("login" finds login.failed too), ``actor`` and
        ``target`` exactly; ``limit`` None = all."""
        query = select(AuditEventRow).order_by(AuditEventRow.time.desc(), AuditEventRow.id.desc())
        if action:
            query = query.where(or_(AuditEventRow.action == action, AuditEventRow.action.startswith(action + ".")))
        if actor:
            query = query.where(AuditEventRow.actor == actor)
        if target:
            query = query.where(AuditEventRow.target == target)
        if since:
            query = query.where(AuditEventRow.time >= since)
        if until:
            query = query.where(AuditEventRow.time < until)
        if limit:
            query = query.limit(limit)
        with self._read() as session:
            return [
                AuditEvent(r.id, r.time, r.actor, r.action, r.target, r.address, r.detail)
                for r in session.scalars(query)
            ]

    # --- throttling -------------------------------------------------------------------------------

    def login_refusal(self, name: str, address: str | None, now: datetime | None = None) -> Refusal | None:
        """Whether a login to ``name`` from ``address`` must be refused unchecked now, and why."""
        policy = self.settings.accounts
        now = now or utcnow()
        with self._read() as session:
            reset = session.scalar(
                select(func.max(AuditEventRow.time)).where(
                    AuditEventRow.action.in_((LOGIN, UNLOCKED)), AuditEventRow.target == name
                )
            )
            trusted = (
                address is not None
                and session.scalar(
                    select(func.count())
                    .select_from(AuditEventRow)
                    .where(
                        AuditEventRow.action == LOGIN,
                        AuditEventRow.target == name,
                        AuditEventRow.address == address,
                        AuditEventRow.time >= now - timedelta(days=policy.trusted_address_days),
                    )
                )
                > 0
            )
            address_reset = address is not None and session.scalar(
                select(func.max(AuditEventRow.time)).where(
                    AuditEventRow.action == LOGIN, AuditEventRow.address == address
                )
            )

            def failures(window_s: float, *conditions, since=None) -> tuple[int, datetime | None]:
                start = max(t for t in (now - timedelta(seconds=window_s), since) if t)
                return session.execute(
                    select(func.count(), func.max(AuditEventRow.time)).where(
                        AuditEventRow.action == LOGIN_FAILED, AuditEventRow.time > start, *conditions
                    )
                ).one()

            pair = failures(
                policy.lock_seconds, AuditEventRow.target == name, AuditEventRow.address == address, since=reset
            )
            account = failures(policy.lock_seconds, AuditEventRow.target == name, since=reset)
            by_address = (
                failures(policy.lock_seconds, AuditEventRow.address == address, since=address_reset or None)
                if address
                else (0, None)
            )
        refusals = [
            self._scope_refusal(
                pair,
                policy.free_failures,
                policy.lock_failures,
                policy.lock_seconds,
                now,
                f"account {name!r} is locked from this address",
            )
        ]
        if not trusted:
            refusals.append(
                self._scope_refusal(
                    account,
                    policy.free_failures,
                    policy.account_lock_failures,
                    policy.account_lock_seconds,
                    now,
                    f"account {name!r} is locked",
                )
            )
        refusals.append(
            self._scope_refusal(
                by_address,
                policy.address_free_failures,
                policy.address_lock_failures,
                policy.lock_seconds,
                now,
                "logins from this address are locked",
            )
        )
        found = [r for r in refusals if r is not None]
        if not found:
            return None
        return max(found, key=lambda r: (r.locked, r.until))

    def token_refusal(self, address: str | None, now: datetime | None = None) -> Refusal | None:
        """Whether a bearer token from ``address`` must be refused unchecked now (too many invalid ones)."""
        if address is None:
            return None
        policy = self.settings.accounts
        now = now or utcnow()
        with self._read() as session:
            counted = session.execute(
                select(func.count(), func.max(AuditEventRow.time)).where(
                    AuditEventRow.action == TOKEN_FAILED,
                    AuditEventRow.address == address,
                    AuditEventRow.time > now - timedelta(seconds=policy.lock_seconds),
                )
            ).one()
        return self._scope_refusal(
            counted,
            policy.free_failures,
            policy.lock_failures,
            policy.lock_seconds,
            now,
            "API tokens from this address are locked",
            what="invalid API tokens",
        )

    def _scope_refusal(
        self,
        counted: tuple[int, datetime | None],
        free: int,
        lock: int,
        lock_seconds: float,
        now: datetime,
        locked_text: str,
        what: str = "failed logins",
    ) -> Refusal | None:
        """One scope's verdict from its failures (count, newest): locked, told to wait, or free."""
        n, last = counted
        if not n or last is None:
            return None
        if n >= lock:
            until = last + timedelta(seconds=lock_seconds)
            return (
                Refusal(
                    until,
                    True,
                    f"{locked_text} after {n} {what}, until {_when(until)}: wait, or ask an "
                    "admin to unlock it (./launch.sh unlock NAME)",
                )
                if now < until
                else None
            )
        wait = _delay_s(n, free, self.settings.accounts)
        until = last + timedelta(seconds=wait)
        if not wait or now >= until:
            return None
        return Refusal(
            until,
            False,
            f"{n} {what}: wait {max(1, round((until - now).total_seconds()))} s before "
            f"the next try (after {lock}, tries are refused for "
            f"{max(1, round(lock_seconds / 60))} min)",
        )
