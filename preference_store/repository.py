"""The preference store's API: the one way the app, the CLI and training read and write judgments.

    store = PreferenceStore.from_config(cfg)          # or PreferenceStore(url); migrates on open
    store.register_checkpoints(run_id, ["base", "cpt", "sft", "dpo"])
    me = store.demo_annotator()                        # or store.authenticate(name, password)
    cmp = store.record_comparison(ComparisonIn(me.id, messages, [ResponseIn("run/sft", "..."), ...]))
    out = store.submit_judgment(JudgmentIn(cmp.id, me.id, client_id=uuid, choice="A"))
    board = store.leaderboard()

Records in and out are the plain dataclasses of :mod:`preference_store.records`. Every write is one
transaction (a judgment, its scores and its pairs together, or nothing), and writes retry on a busy
SQLite database so no caller sees "database is locked". Errors the user can cause raise
:class:`~preference_store.validation.PreferenceStoreError` (a ``UserError``).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from alembic.util.exc import CommandError
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, aliased, sessionmaker

from preference_store import models as m
from preference_store.db import IMMEDIATE, is_sqlite, make_engine, migrate, retry_while_busy
from preference_store.pairs import battle_outcomes, expand_judgment_to_pairs
from preference_store.ratings import (
    Battle,
    criterion_means,
    inter_annotator_agreement,
    rate_checkpoints,
    win_rates,
)
from preference_store.records import (
    CRITERIA,
    JUDGMENT_KINDS,
    PANEL_LABELS,
    Annotator,
    Checkpoint,
    ComparisonIn,
    ComparisonOut,
    JudgmentIn,
    JudgmentOut,
    Leaderboard,
    PairOut,
    ResponseOut,
    Scores,
    StoreCounts,
)
from preference_store.validation import (
    NotFoundError,
    PreferenceStoreError,
    UnknownCheckpointError,
    check_annotator_fields,
    check_comparison,
    check_judgment,
    checkpoint_id,
)
from training.config import Config, StoreConfig

T = TypeVar("T")
DEMO_ANNOTATOR = "demo"
_hasher = PasswordHasher()


def new_id() -> str:
    return uuid.uuid4().hex


def new_pair_id() -> str:
    # prefixed so collected pairs are told apart from the builder's objective pair ids in dpo.jsonl
    return f"clin-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class ExportRow:
    """One stored pair with everything export needs (used by :mod:`preference_store.export`)."""

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


class PreferenceStore:
    """A preference database at ``url`` (any SQLAlchemy URL), migrated to the newest schema on open.

    Safe to share between threads (each call opens its own session); several processes may open the
    same SQLite file. ``settings`` defaults to the config tree's ``StoreConfig()``.
    """

    def __init__(self, url: str, settings: StoreConfig | None = None) -> None:
        self.url = url
        self.settings = settings or StoreConfig()
        try:
            shown = make_url(url).render_as_string(hide_password=True)
        except SQLAlchemyError:
            raise PreferenceStoreError(
                f"preference database URL {url!r} is not a SQLAlchemy URL (e.g. sqlite:////path/preferences.db): "
                "fix CHIMED_DATABASE_URL or store.database_url"
            ) from None
        try:
            self._engine = make_engine(url, self.settings.busy_timeout_ms)
            retry_while_busy(lambda: migrate(self._engine))
        except (OSError, SQLAlchemyError) as err:
            raise PreferenceStoreError(
                f"cannot open the preference database {shown} ({err.__class__.__name__}: {str(err).splitlines()[0]}): "
                "check the path and permissions, or set CHIMED_DATABASE_URL / store.database_url"
            ) from err
        except CommandError as err:  # the database is at a revision this code does not know
            raise PreferenceStoreError(
                f"the preference database {shown} has a schema newer than this code ({err}): update ChiMed Arena"
            ) from err
        self._read = sessionmaker(self._engine, expire_on_commit=False)
        sqlite = is_sqlite(self._engine)
        self._write_sessions = sessionmaker(
            self._engine.execution_options(**{IMMEDIATE: True}) if sqlite else self._engine,
            expire_on_commit=False,
        )
        # SQLite takes one writer at a time anyway: queueing this process's writers on a lock spares
        # them the busy-wait sleeps; other processes are handled by the busy timeout and retries.
        self._write_lock = threading.Lock() if sqlite else contextlib.nullcontext()
        with self._read() as session:
            self._salt = session.get(m.StoreMeta, "pseudonym_salt").value

    @classmethod
    def from_config(cls, cfg: Config) -> PreferenceStore:
        """The store at ``cfg.database_url`` (CHIMED_DATABASE_URL wins) with ``cfg.store`` settings."""
        return cls(cfg.database_url, cfg.store)

    def close(self) -> None:
        """Release the database connections."""
        self._engine.dispose()

    def __enter__(self) -> PreferenceStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in one write transaction, retried as a whole while the database is busy."""

        def attempt() -> T:
            with self._write_lock, self._write_sessions() as session, session.begin():
                return work(session)

        return retry_while_busy(attempt)

    # --- annotators ----------------------------------------------------------------------------
    def add_annotator(self, name: str, password: str, role: str = "annotator") -> Annotator:
        """Create a login account (password hashed with argon2); refuses a taken name or an empty password."""
        check_annotator_fields(name, role, password if password is not None else "")
        password_hash = _hasher.hash(password)

        def work(session: Session) -> Annotator:
            if session.scalar(select(m.Annotator).where(m.Annotator.name == name)) is not None:
                raise PreferenceStoreError(f"annotator {name!r} exists already: choose another name")
            row = m.Annotator(name=name, role=role, password_hash=password_hash)
            session.add(row)
            session.flush()
            return _annotator(row)

        return self._write(work)

    def authenticate(self, name: str, password: str) -> Annotator | None:
        """The annotator if ``name``/``password`` match a login account, else None."""
        with self._read() as session:
            row = session.scalar(select(m.Annotator).where(m.Annotator.name == name))
        if row is None or row.password_hash is None or not password:
            return None
        try:
            _hasher.verify(row.password_hash, password)
        except (VerificationError, InvalidHashError):
            return None
        return _annotator(row)

    def annotator_by_name(self, name: str) -> Annotator | None:
        with self._read() as session:
            row = session.scalar(select(m.Annotator).where(m.Annotator.name == name))
        return _annotator(row) if row is not None else None

    def has_login_accounts(self) -> bool:
        """Whether any account with a password exists (if not, the app runs as the demo annotator)."""
        with self._read() as session:
            return session.scalar(
                select(func.count()).select_from(m.Annotator).where(m.Annotator.password_hash.is_not(None))
            ) > 0

    def demo_annotator(self) -> Annotator:
        """The local "demo" annotator (created on first use, no password, cannot log in)."""

        def work(session: Session) -> Annotator:
            row = session.scalar(select(m.Annotator).where(m.Annotator.name == DEMO_ANNOTATOR))
            if row is None:
                row = m.Annotator(name=DEMO_ANNOTATOR, role="annotator", password_hash=None)
                session.add(row)
                session.flush()
            return _annotator(row)

        return self._write(work)

    def list_annotators(self) -> list[Annotator]:
        with self._read() as session:
            return [_annotator(r) for r in session.scalars(select(m.Annotator).order_by(m.Annotator.id))]

    # --- checkpoints ---------------------------------------------------------------------------
    def register_checkpoints(self, run_id: str, stages: Iterable[str]) -> list[Checkpoint]:
        """Register ``<run_id>/<stage>`` for each stage (idempotent); training calls it when a run completes."""
        ids = {checkpoint_id(run_id, stage): stage for stage in stages}

        def work(session: Session) -> list[Checkpoint]:
            known = set(session.scalars(select(m.Checkpoint.id).where(m.Checkpoint.id.in_(ids))))
            session.add_all(m.Checkpoint(id=cid, run_id=run_id, stage=stage)
                            for cid, stage in ids.items() if cid not in known)
            session.flush()
            rows = session.scalars(select(m.Checkpoint).where(m.Checkpoint.id.in_(ids)))
            return sorted((_checkpoint(r) for r in rows), key=lambda c: list(ids).index(c.id))

        return self._write(work)

    def list_checkpoints(self, run_id: str | None = None) -> list[Checkpoint]:
        """Registered checkpoints (of one run, or all), newest registration first."""
        query = select(m.Checkpoint).order_by(m.Checkpoint.registered.desc(), m.Checkpoint.id)
        if run_id is not None:
            query = query.where(m.Checkpoint.run_id == run_id)
        with self._read() as session:
            return [_checkpoint(r) for r in session.scalars(query)]

    def is_known_checkpoint(self, checkpoint_id: str) -> bool:
        with self._read() as session:
            return session.get(m.Checkpoint, checkpoint_id) is not None

    # --- conversations and comparisons -----------------------------------------------------------
    def record_comparison(self, comparison: ComparisonIn) -> ComparisonOut:
        """Store one prompt and its 2-4 answers (panel order as shown); refuses unknown checkpoints.

        With ``conversation_id`` None a new conversation starts; its id is in the result.
        """
        check_comparison(comparison, self.settings.max_text_chars)

        def work(session: Session) -> ComparisonOut:
            wanted = {r.checkpoint_id for r in comparison.responses}
            known = set(session.scalars(select(m.Checkpoint.id).where(m.Checkpoint.id.in_(wanted))))
            for label, r in zip(PANEL_LABELS, comparison.responses):
                if r.checkpoint_id not in known:
                    raise UnknownCheckpointError(
                        f"answer {label} comes from unknown checkpoint {r.checkpoint_id!r}: "
                        "only checkpoints of completed runs (<run_id>/<stage>) can be compared"
                    )
            if session.get(m.Annotator, comparison.annotator_id) is None:
                raise NotFoundError(f"no annotator with id {comparison.annotator_id}: log in again")
            conversation_id = comparison.conversation_id
            if conversation_id is None:
                conversation_id = new_id()
                session.add(m.Conversation(id=conversation_id, annotator_id=comparison.annotator_id))
                session.flush()  # rows without ORM relationships are flushed parent first (foreign keys are on)
            elif session.get(m.Conversation, conversation_id) is None:
                raise NotFoundError(f"no conversation {conversation_id!r}: start a new conversation")
            row = m.Comparison(id=new_id(), conversation_id=conversation_id,
                               annotator_id=comparison.annotator_id,
                               messages=[dict(msg) for msg in comparison.messages], blind=comparison.blind)
            session.add(row)
            responses = [
                m.Response(id=new_id(), comparison_id=row.id, panel=panel, checkpoint_id=r.checkpoint_id,
                           text=r.text, decoding=dict(r.decoding), seed=r.seed, latency_s=r.latency_s,
                           n_tokens=r.n_tokens)
                for panel, r in enumerate(comparison.responses)
            ]
            session.flush()
            session.add_all(responses)
            session.flush()
            return _comparison(row, responses)

        return self._write(work)

    def get_comparison(self, comparison_id: str) -> ComparisonOut:
        with self._read() as session:
            row = session.get(m.Comparison, comparison_id)
            if row is None:
                raise NotFoundError(f"no comparison {comparison_id!r}")
            return _comparison(row, _responses_of(session, comparison_id))

    def conversation(self, conversation_id: str) -> list[ComparisonOut]:
        """The comparisons of one conversation, oldest first."""
        with self._read() as session:
            rows = session.scalars(select(m.Comparison).where(m.Comparison.conversation_id == conversation_id)
                                   .order_by(m.Comparison.created))
            return [_comparison(row, _responses_of(session, row.id)) for row in rows]

    # --- judgments and pairs -------------------------------------------------------------------
    def submit_judgment(self, judgment: JudgmentIn) -> JudgmentOut:
        """Validate and store one judgment with its scores and derived pairs, in one transaction.

        A repeated ``client_id`` returns the stored judgment with ``duplicate=True`` and writes nothing.
        """
        client_id = judgment.client_id or new_id()

        def work(session: Session) -> JudgmentOut:
            stored = session.scalar(select(m.Judgment).where(m.Judgment.client_id == client_id))
            if stored is not None:
                return _judgment(session, stored, duplicate=True)
            comparison = session.get(m.Comparison, judgment.comparison_id)
            if comparison is None:
                raise NotFoundError(f"no comparison {judgment.comparison_id!r}: judge an answer set that was recorded")
            if session.get(m.Annotator, judgment.annotator_id) is None:
                raise NotFoundError(f"no annotator with id {judgment.annotator_id}: log in again")
            responses = _responses_of(session, comparison.id)
            labels = [PANEL_LABELS[r.panel] for r in responses]
            kind = check_judgment(judgment, labels, [r.text for r in responses], self.settings.max_text_chars)
            by_label = dict(zip(labels, responses))
            row = m.Judgment(id=new_id(), client_id=client_id, comparison_id=comparison.id,
                             annotator_id=judgment.annotator_id, kind=kind, choice=judgment.choice,
                             ranking=dict(judgment.ranking) if judgment.ranking is not None else None,
                             correction=judgment.correction, reason=judgment.reason or None)
            session.add(row)
            session.flush()
            pairs = [
                m.Pair(id=new_pair_id(), judgment_id=row.id, comparison_id=comparison.id,
                       chosen_response_id=by_label[chosen].id if chosen else None,
                       rejected_response_id=by_label[rejected].id, created=row.created)
                for chosen, rejected in expand_judgment_to_pairs(kind, labels, judgment.choice, judgment.ranking)
            ]
            scores = [
                m.Score(judgment_id=row.id, response_id=by_label[label].id,
                        **{c: getattr(s, c) for c in CRITERIA})
                for label, s in judgment.scores.items()
                if any(getattr(s, c) is not None for c in CRITERIA)
            ]
            session.add_all(pairs + scores)
            session.flush()
            return _judgment_out(row, {label: judgment.scores[label] for label in judgment.scores
                                       if any(getattr(judgment.scores[label], c) is not None for c in CRITERIA)},
                                 tuple(sorted(p.id for p in pairs)), duplicate=False)

        try:
            return self._write(work)
        except IntegrityError:
            # another process stored the same client_id between our check and our insert
            with self._read() as session:
                stored = session.scalar(select(m.Judgment).where(m.Judgment.client_id == client_id))
                if stored is None:
                    raise
                return _judgment(session, stored, duplicate=True)

    def judgments_for(self, comparison_id: str) -> list[JudgmentOut]:
        with self._read() as session:
            rows = session.scalars(select(m.Judgment).where(m.Judgment.comparison_id == comparison_id)
                                   .order_by(m.Judgment.created))
            return [_judgment(session, row) for row in rows]

    def count_judgments(self, annotator_id: int | None = None) -> int:
        """All judgments, or one annotator's (the app's running count)."""
        query = select(func.count()).select_from(m.Judgment)
        if annotator_id is not None:
            query = query.where(m.Judgment.annotator_id == annotator_id)
        with self._read() as session:
            return session.scalar(query)

    def recent_pairs(self, limit: int = 20) -> list[PairOut]:
        """The newest preference pairs, newest first (for the app's Data tab)."""
        return [
            PairOut(id=r.pair_id, judgment_id=r.judgment_id, comparison_id=r.comparison_id,
                    annotator_id=r.annotator_id, prompt=r.prompt, chosen=r.chosen, rejected=r.rejected,
                    chosen_checkpoint=r.chosen_checkpoint, rejected_checkpoint=r.rejected_checkpoint,
                    created=r.created)
            for r in self.export_rows(newest_first=True, limit=limit)
        ]

    def mark_consumed(self, pair_ids: Iterable[str], run_id: str) -> int:
        """Record that ``run_id`` trained on these collected pairs; returns how many were new records.

        Ids that are not collected pairs of this store (e.g. the builder's objective pairs) are ignored.
        """
        wanted = set(pair_ids)

        def work(session: Session) -> int:
            known: set[str] = set()
            ids = list(wanted)
            for start in range(0, len(ids), 500):  # stay under SQLite's bound-parameter limit
                chunk = ids[start:start + 500]
                known |= set(session.scalars(select(m.Pair.id).where(m.Pair.id.in_(chunk))))
            done = set(session.scalars(select(m.Consumption.pair_id).where(m.Consumption.run_id == run_id)))
            new = sorted(known - done)
            session.add_all(m.Consumption(pair_id=pid, run_id=run_id) for pid in new)
            return len(new)

        return self._write(work)

    def consumed_pair_ids(self, run_id: str) -> list[str]:
        with self._read() as session:
            return sorted(session.scalars(select(m.Consumption.pair_id).where(m.Consumption.run_id == run_id)))

    # --- summaries -----------------------------------------------------------------------------
    def counts(self) -> StoreCounts:
        with self._read() as session:
            def count(model, *where):
                return session.scalar(select(func.count()).select_from(model).where(*where))

            by_kind = dict(session.execute(select(m.Judgment.kind, func.count()).group_by(m.Judgment.kind)).all())
            return StoreCounts(
                annotators=count(m.Annotator),
                checkpoints=count(m.Checkpoint),
                conversations=count(m.Conversation),
                comparisons=count(m.Comparison),
                judgments=sum(by_kind.values()),
                judgments_by_kind={k: by_kind.get(k, 0) for k in JUDGMENT_KINDS},
                pairs=count(m.Pair),
                exported_pairs=session.scalar(select(func.count(func.distinct(m.ExportedPair.pair_id)))
                                              .where(m.ExportedPair.duplicate_of.is_(None))),
                consumed_pairs=session.scalar(select(func.count(func.distinct(m.Consumption.pair_id)))),
            )

    def leaderboard(self, rounds: int | None = None, seed: int = 0) -> Leaderboard:
        """Bradley-Terry ratings with 95% bootstrap intervals (``rounds`` default store.bootstrap_rounds),
        win-rate matrix, per-criterion means and inter-annotator agreement."""
        rounds = self.settings.bootstrap_rounds if rounds is None else rounds
        with self._read() as session:
            judged = session.execute(
                select(m.Judgment.comparison_id, m.Judgment.annotator_id, m.Judgment.kind,
                       m.Judgment.choice, m.Judgment.ranking)
                .where(m.Judgment.kind != "correction").order_by(m.Judgment.created)
            ).all()
            panels: dict[str, dict[str, tuple[str, str]]] = {}  # comparison -> label -> (response, checkpoint)
            for cid, panel, rid, ckpt in session.execute(
                select(m.Response.comparison_id, m.Response.panel, m.Response.id, m.Response.checkpoint_id)
                .join(m.Judgment, m.Judgment.comparison_id == m.Response.comparison_id).distinct()
            ):
                panels.setdefault(cid, {})[PANEL_LABELS[panel]] = (rid, ckpt)
            scored = session.execute(
                select(m.Response.checkpoint_id, *(getattr(m.Score, c) for c in CRITERIA))
                .join(m.Response, m.Response.id == m.Score.response_id)
            ).all()
            n_judgments = session.scalar(select(func.count()).select_from(m.Judgment))

        battles, verdicts = [], []
        for cid, annotator_id, kind, choice, ranking in judged:
            panel = panels[cid]
            for x, y, score in battle_outcomes(kind, sorted(panel), choice, ranking):
                (rx, cx), (ry, cy) = panel[x], panel[y]
                battles.append(Battle(cx, cy, score))
                first, second, verdict = (rx, ry, score) if rx < ry else (ry, rx, 1.0 - score)
                verdicts.append((f"{cid}|{first}|{second}", str(annotator_id),
                                 {1.0: 1, 0.0: -1}.get(verdict, 0)))
        rates, met = win_rates(battles)
        means, n_scores = criterion_means(
            (ckpt, c, value) for ckpt, *values in scored for c, value in zip(CRITERIA, values) if value is not None
        )
        return Leaderboard(
            ratings=rate_checkpoints(battles, rounds, seed), win_rate=rates, battles=met,
            criteria=means, criteria_n=n_scores, agreement=inter_annotator_agreement(verdicts),
            judgments=n_judgments,
        )

    # --- for export (preference_store.export) ----------------------------------------------------
    def pseudonym(self, annotator_id: int) -> str:
        """A stable pseudonymous annotator id: a salted hash (the salt never leaves the database)."""
        digest = hashlib.sha256(f"{self._salt}:{annotator_id}".encode()).hexdigest()
        return f"annotator-{digest[:16]}"

    def export_rows(self, since: datetime | None = None, unexported_only: bool = False,
                    newest_first: bool = False, limit: int | None = None) -> Iterator[ExportRow]:
        """Stored pairs with their prompt, texts and checkpoints, oldest first unless ``newest_first``.

        ``since`` keeps pairs of judgments made at or after that time; ``unexported_only`` leaves out
        pairs an earlier export wrote or dropped as duplicates.
        """
        chosen, rejected = aliased(m.Response), aliased(m.Response)
        query = (
            select(m.Pair.id, m.Pair.judgment_id, m.Pair.comparison_id, m.Judgment.annotator_id,
                   m.Judgment.kind, m.Judgment.created, m.Comparison.messages, chosen.text, m.Judgment.correction,
                   rejected.text, chosen.checkpoint_id, rejected.checkpoint_id)
            .join(m.Judgment, m.Judgment.id == m.Pair.judgment_id)
            .join(m.Comparison, m.Comparison.id == m.Pair.comparison_id)
            .join(rejected, rejected.id == m.Pair.rejected_response_id)
            .outerjoin(chosen, chosen.id == m.Pair.chosen_response_id)
            .order_by(*((m.Pair.created.desc(), m.Pair.id.desc()) if newest_first else (m.Pair.created, m.Pair.id)))
        )
        if since is not None:
            query = query.where(m.Judgment.created >= since)
        if unexported_only:
            query = query.where(~select(m.ExportedPair.pair_id).where(m.ExportedPair.pair_id == m.Pair.id).exists())
        if limit is not None:
            query = query.limit(limit)
        with self._read() as session:
            for (pid, jid, cid, aid, kind, created, messages, chosen_text, correction, rejected_text,
                 chosen_ckpt, rejected_ckpt) in session.execute(query).yield_per(2000):
                yield ExportRow(pid, jid, cid, aid, kind, created, messages,
                                chosen_text if chosen_text is not None else correction, rejected_text,
                                chosen_ckpt, rejected_ckpt)

    def exported_content(self) -> dict[str, str]:
        """Content hash -> pair id of every pair written by an earlier export (for deduplication)."""
        with self._read() as session:
            return dict(session.execute(select(m.ExportedPair.content_sha256, m.ExportedPair.pair_id)
                                        .where(m.ExportedPair.duplicate_of.is_(None))).all())

    def record_export(self, path: str, sha256: str, entries: list[tuple[str, str, str, str | None]],
                      before_commit: Callable[[], None] | None = None) -> int:
        """Log one export: ``entries`` are (pair id, content hash, split, duplicate_of or None).

        ``before_commit`` runs inside the transaction after the rows are written (export moves its
        file into place there), so the log and the file appear together or not at all.
        """

        def work(session: Session) -> int:
            row = m.Export(path=path, sha256=sha256, n_pairs=sum(1 for e in entries if e[3] is None))
            session.add(row)
            session.flush()
            session.execute(
                m.ExportedPair.__table__.insert(),
                [dict(export_id=row.id, pair_id=pid, content_sha256=h, split=split, duplicate_of=dup)
                 for pid, h, split, dup in entries],
            )
            if before_commit is not None:
                before_commit()
            return row.id

        return self._write(work)


# --- rows -> records ---------------------------------------------------------------------------


def _annotator(row: m.Annotator) -> Annotator:
    return Annotator(id=row.id, name=row.name, role=row.role, created=row.created,
                     can_login=row.password_hash is not None)


def _checkpoint(row: m.Checkpoint) -> Checkpoint:
    return Checkpoint(id=row.id, run_id=row.run_id, stage=row.stage, registered=row.registered)


def _responses_of(session: Session, comparison_id: str) -> list[m.Response]:
    return list(session.scalars(select(m.Response).where(m.Response.comparison_id == comparison_id)
                                .order_by(m.Response.panel)))


def _comparison(row: m.Comparison, responses: list[m.Response]) -> ComparisonOut:
    return ComparisonOut(
        id=row.id, conversation_id=row.conversation_id, annotator_id=row.annotator_id,
        messages=[dict(msg) for msg in row.messages], blind=row.blind, created=row.created,
        responses=tuple(
            ResponseOut(id=r.id, label=PANEL_LABELS[r.panel], panel=r.panel, checkpoint_id=r.checkpoint_id,
                        text=r.text, decoding=dict(r.decoding), seed=r.seed, latency_s=r.latency_s,
                        n_tokens=r.n_tokens)
            for r in sorted(responses, key=lambda r: r.panel)
        ),
    )


def _judgment_out(row: m.Judgment, scores: dict[str, Scores], pair_ids: tuple[str, ...],
                  duplicate: bool) -> JudgmentOut:
    return JudgmentOut(id=row.id, client_id=row.client_id, comparison_id=row.comparison_id,
                       annotator_id=row.annotator_id, kind=row.kind, choice=row.choice,
                       ranking=dict(row.ranking) if row.ranking is not None else None,
                       correction=row.correction, reason=row.reason, scores=scores, created=row.created,
                       pair_ids=pair_ids, duplicate=duplicate)


def _judgment(session: Session, row: m.Judgment, duplicate: bool = False) -> JudgmentOut:
    label_of = {r.id: PANEL_LABELS[r.panel] for r in _responses_of(session, row.comparison_id)}
    scores = {
        label_of[s.response_id]: Scores(**{c: getattr(s, c) for c in CRITERIA})
        for s in session.scalars(select(m.Score).where(m.Score.judgment_id == row.id))
    }
    pair_ids = tuple(session.scalars(select(m.Pair.id).where(m.Pair.judgment_id == row.id).order_by(m.Pair.id)))
    return _judgment_out(row, scores, pair_ids, duplicate)
