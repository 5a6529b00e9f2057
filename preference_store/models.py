"""Every table of the preference store, as SQLAlchemy 2.0 typed declarative models.

These classes stay inside ``preference_store``; the repository turns rows into the plain records of
:mod:`preference_store.records` (hence the ``...Row`` names: ``AnnotatorRow`` is a row, ``records.Annotator``
the record callers see). Relationships exist where a parent and its children are written together
(a comparison and its answers, a judgment and its scores and pairs, an export and its entries), so the
unit of work orders the inserts. Migration 0003 added the annotation study: the guideline versions, the
prompt bank and its assignments, per-criterion scores, single-answer ratings and identity-leak flags; 0004 the
API tokens of the OpenAI-compatible server; 0005 one live judgment per annotator and comparison (and one live
rating per annotator and answer), earlier ones kept as history, marked superseded; 0006 the audit log and disabled accounts; 0007 the arena's contraindication warnings on answers. Any change here needs a migration in ``migrations/versions/``
(``tests/store/test_store_migrations.py`` fails when the two disagree).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Stored as naive UTC (sorts and compares as text in SQLite), returned timezone-aware UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


class StoreMetaRow(Base):
    """Store-wide values, such as the salt of the pseudonymous annotator ids in exports."""

    __tablename__ = "store_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class AnnotatorRow(Base):
    __tablename__ = "annotators"
    __table_args__ = (CheckConstraint("role IN ('annotator', 'admin')", name="ck_annotators_role"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str | None] = mapped_column(String(255))  # argon2; None = cannot log in
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    guideline_seen: Mapped[int | None] = mapped_column(Integer)  # newest guideline version they acknowledged
    # migration 0006: a disabled account cannot log in, and its sessions and tokens stop at the next request
    disabled: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # sessions begun before the password last changed end at their next request
    password_changed: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # the password fails the policy (too short, common); None = not checked yet (set before 0006: checked at
    # the next login, when the password is known); admins see the flagged accounts in the Data tab
    password_weak: Mapped[bool | None] = mapped_column(Boolean)


class AuditEventRow(Base):
    """One event of the study's audit log (migration 0006): who (``actor``, an account name, "cli:USER" or
    "loop") did what (``action``, e.g. "login.failed") to what (``target``), from where (``address``).
    Rows are only ever inserted: the repository has no update or delete, and database triggers refuse both."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str | None] = mapped_column(String(100), index=True)
    action: Mapped[str] = mapped_column(String(40), index=True)
    target: Mapped[str | None] = mapped_column(String(255), index=True)
    address: Mapped[str | None] = mapped_column(String(64), index=True)
    detail: Mapped[dict | None] = mapped_column(JSON)  # e.g. {"rows": 12, "what": "pairs"} for an export


class ApiTokenRow(Base):
    """A bearer token for ``./launch.sh serve`` (the OpenAI-compatible server), one annotator's: only its
    sha256 is kept (migration 0004); the token itself is shown once, when it is made."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CheckpointRow(Base):
    __tablename__ = "checkpoints"
    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # "<run_id>/<stage>"
    run_id: Mapped[str] = mapped_column(String(200), index=True)
    stage: Mapped[str] = mapped_column(String(16))
    registered: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ConversationRow(Base):
    __tablename__ = "conversations"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), index=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ComparisonRow(Base):
    """One prompt with the conversation so far, shown to 2-4 contestants."""

    __tablename__ = "comparisons"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id"), index=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"))
    messages: Mapped[list] = mapped_column(JSON)
    blind: Mapped[bool] = mapped_column(Boolean)
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    # set when the prompt came from the bank through the annotator's queue (migration 0003; ids of
    # bank_prompts and assignments, without a foreign-key constraint, as for judgments.guideline_version)
    bank_prompt_id: Mapped[str | None] = mapped_column(String(32), index=True)
    assignment_id: Mapped[str | None] = mapped_column(String(32), index=True)

    conversation: Mapped[ConversationRow] = relationship()
    responses: Mapped[list[ResponseRow]] = relationship(order_by="ResponseRow.panel", lazy="joined")


class ResponseRow(Base):
    """One contestant's answer, in the panel it was shown in (0 = A)."""

    __tablename__ = "responses"
    __table_args__ = (UniqueConstraint("comparison_id", "panel", name="uq_responses_panel"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    comparison_id: Mapped[str] = mapped_column(ForeignKey("comparisons.id"), index=True)
    panel: Mapped[int] = mapped_column(Integer)
    checkpoint_id: Mapped[str] = mapped_column(ForeignKey("checkpoints.id"), index=True)
    text: Mapped[str] = mapped_column(Text)
    decoding: Mapped[dict] = mapped_column(JSON)
    seed: Mapped[int | None] = mapped_column(Integer)
    latency_s: Mapped[float | None] = mapped_column(Float)
    n_tokens: Mapped[int | None] = mapped_column(Integer)
    # how the answer was served, e.g. {"mode": "exact"} or {"mode": "delta", "bits": 8, "device": "cpu",
    # "dtype": "float32"}; None for answers stored before this was recorded (migration 0002)
    serving: Mapped[dict | None] = mapped_column(JSON)
    # names of models, companies or checkpoints the answer gives away (checked at generation time);
    # [] = checked and clean, None = stored before this was checked (migration 0003)
    leaks: Mapped[list | None] = mapped_column(JSON)
    # the arena's contraindication warnings, each citing the CMeKG entry; [] = checked and none, None = stored
    # before they were checked (migration 0007_warnings)
    warnings: Mapped[list | None] = mapped_column(JSON)


def live_only(*columns: str, name: str) -> Index:
    """A unique index over ``columns`` among the rows not superseded (``superseded_by`` NULL): at most one live
    judgment (or rating) per annotator and comparison (or answer), however many earlier ones are kept as history.
    A partial index, which SQLite and PostgreSQL both have (migration 0005)."""
    live = text("superseded_by IS NULL")
    return Index(name, *columns, unique=True, sqlite_where=live, postgresql_where=live)


class JudgmentRow(Base):
    __tablename__ = "judgments"
    __table_args__ = (
        CheckConstraint("kind IN ('pairwise', 'ranking', 'correction')", name="ck_judgments_kind"),
        live_only("comparison_id", "annotator_id", name="uq_judgments_live"),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(100), unique=True)  # makes a resubmit idempotent
    comparison_id: Mapped[str] = mapped_column(ForeignKey("comparisons.id"), index=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    choice: Mapped[str | None] = mapped_column(String(16))  # A | B | tie | both_bad
    ranking: Mapped[dict | None] = mapped_column(JSON)  # panel label -> place (1 = best)
    correction: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    # the guideline (rubric) version in force when it was made; None for judgments stored before (migration 0003).
    # Columns added to existing tables carry no foreign-key constraint (SQLite cannot add one in place);
    # the repository only writes ids it has just read.
    guideline_version: Mapped[int | None] = mapped_column(Integer)
    # the judgment that replaced this one (migration 0005); None = live, the one that counts and makes pairs.
    # superseded_why: "revised" (the annotator's explicit revise) or "duplicate" (an earlier second vote, resolved
    # by keeping the latest when the store was migrated)
    superseded_by: Mapped[str | None] = mapped_column(String(32))
    superseded_why: Mapped[str | None] = mapped_column(String(16))

    scores: Mapped[list[CriterionScoreRow]] = relationship(order_by="CriterionScoreRow.id")
    pairs: Mapped[list[PairRow]] = relationship(order_by="PairRow.id")


class CriterionScoreRow(Base):
    """A 1-5 rating of one answer on one criterion of the guideline in force (5 = best), within one judgment."""

    __tablename__ = "criterion_scores"
    __table_args__ = (
        UniqueConstraint("judgment_id", "response_id", "criterion", name="uq_criterion_scores_answer"),
        CheckConstraint("value BETWEEN 1 AND 5", name="ck_criterion_scores_value"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    judgment_id: Mapped[str] = mapped_column(ForeignKey("judgments.id"), index=True)
    response_id: Mapped[str] = mapped_column(ForeignKey("responses.id"), index=True)
    criterion: Mapped[str] = mapped_column(String(32))  # a key of the guideline's criteria
    value: Mapped[int] = mapped_column(Integer)


class PairRow(Base):
    """A DPO pair derived from a judgment; ``chosen_response_id`` None = the clinician's correction."""

    __tablename__ = "pairs"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    judgment_id: Mapped[str] = mapped_column(ForeignKey("judgments.id"), index=True)
    comparison_id: Mapped[str] = mapped_column(ForeignKey("comparisons.id"), index=True)
    chosen_response_id: Mapped[str | None] = mapped_column(ForeignKey("responses.id"))
    rejected_response_id: Mapped[str] = mapped_column(ForeignKey("responses.id"))
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class ExportRow(Base):
    """One file written by export-prefs."""

    __tablename__ = "exports"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    n_pairs: Mapped[int] = mapped_column(Integer)  # records written (pairs, or ratings for a ratings export)
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(16), default="pairs", server_default="pairs")  # pairs | ratings

    entries: Mapped[list[ExportedPairRow]] = relationship()
    rating_entries: Mapped[list[ExportedRatingRow]] = relationship()


class ExportedPairRow(Base):
    """A pair an export handled: written to its file, or left out as a duplicate of ``duplicate_of`` (itself:
    its chosen and rejected answers are the same text)."""

    __tablename__ = "exported_pairs"
    export_id: Mapped[int] = mapped_column(ForeignKey("exports.id"), primary_key=True)
    pair_id: Mapped[str] = mapped_column(ForeignKey("pairs.id"), primary_key=True, index=True)
    content_sha256: Mapped[str] = mapped_column(String(64), index=True)
    split: Mapped[str] = mapped_column(String(8))  # train | heldout
    duplicate_of: Mapped[str | None] = mapped_column(String(40))


class ConsumptionRow(Base):
    """Which training run trained on which collected pair."""

    __tablename__ = "consumptions"
    pair_id: Mapped[str] = mapped_column(ForeignKey("pairs.id"), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(200), primary_key=True, index=True)
    consumed: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class GuidelineRow(Base):
    """One version of the annotation guideline (rubric): its text and its 1-5 criteria, in priority order."""

    __tablename__ = "guidelines"
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    text: Mapped[str] = mapped_column(Text)  # markdown shown to annotators
    criteria: Mapped[list] = mapped_column(JSON)  # [{"key": str, "name": str, "description": str}, ...]
    author_id: Mapped[int | None] = mapped_column(ForeignKey("annotators.id"))  # None = the built-in default
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class BankPromptRow(Base):
    """A clinical prompt of the shared bank, judged by several annotators through their queues."""

    __tablename__ = "bank_prompts"
    __table_args__ = (CheckConstraint("split IN ('train', 'heldout')", name="ck_bank_prompts_split"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    bank: Mapped[str] = mapped_column(String(100), index=True)  # the bank's name (the file's stem by default)
    messages: Mapped[list] = mapped_column(JSON)  # the conversation so far, the prompt last (a user message)
    tags: Mapped[list] = mapped_column(JSON)
    split: Mapped[str] = mapped_column(String(8))  # which export split its pairs go to
    content_sha256: Mapped[str] = mapped_column(String(64), unique=True)  # of the messages: one prompt once
    source: Mapped[str] = mapped_column(Text)  # FILE:LINE it was imported from
    imported_by: Mapped[int | None] = mapped_column(ForeignKey("annotators.id"))
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class AssignmentRow(Base):
    """A bank prompt given to one annotator in one queue round; never twice to the same annotator in a round."""

    __tablename__ = "assignments"
    __table_args__ = (
        UniqueConstraint("bank_prompt_id", "annotator_id", "round", name="uq_assignments_annotator"),
        CheckConstraint("status IN ('open', 'done', 'expired')", name="ck_assignments_status"),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    bank_prompt_id: Mapped[str] = mapped_column(ForeignKey("bank_prompts.id"), index=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), index=True)
    # the queue round it belongs to: an admin starts a new round (e.g. to judge a new run on the same
    # prompts), and within one round nobody gets a prompt twice
    round: Mapped[int] = mapped_column(Integer, default=1)
    # open: being worked on; done: judged; expired: not judged in time, its place given to someone else
    status: Mapped[str] = mapped_column(String(16), index=True)
    assigned: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    completed: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AnswerRatingRow(Base):
    """A thumbs up or down on one answer (instead of comparing), with an optional correction and reason."""

    __tablename__ = "answer_ratings"
    __table_args__ = (live_only("response_id", "annotator_id", name="uq_answer_ratings_live"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(100), unique=True)  # makes a resubmit idempotent
    comparison_id: Mapped[str] = mapped_column(ForeignKey("comparisons.id"), index=True)
    response_id: Mapped[str] = mapped_column(ForeignKey("responses.id"), index=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), index=True)
    label: Mapped[bool] = mapped_column(Boolean)  # True = thumbs up (desirable)
    correction: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    guideline_version: Mapped[int | None] = mapped_column(ForeignKey("guidelines.version"))
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    # as for judgments (migration 0005): the rating that replaced this one, None = live; "revised" | "duplicate"
    superseded_by: Mapped[str | None] = mapped_column(String(32))
    superseded_why: Mapped[str | None] = mapped_column(String(16))


class ExportedRatingRow(Base):
    """A single-answer rating an export of ratings wrote (the unpaired KTO format)."""

    __tablename__ = "exported_ratings"
    export_id: Mapped[int] = mapped_column(ForeignKey("exports.id"), primary_key=True)
    rating_id: Mapped[str] = mapped_column(ForeignKey("answer_ratings.id"), primary_key=True, index=True)
    split: Mapped[str] = mapped_column(String(8))  # train | heldout
