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

One module per concern, each a part of :class:`PreferenceStore` over the same sessions:

    sessions.py     opening and migrating the database; read sessions, retried write transactions
    accounts.py     annotators: login accounts (argon2), authentication, the demo annotator
    checkpoints.py  the checkpoints of completed runs that may be compared
    comparisons.py  a prompt and the answers shown for it, and how each was served
    guidelines.py   the guideline (rubric) versions and who has acknowledged which
    bank.py         the shared prompt bank and each annotator's queue (k annotators per prompt)
    judgments.py    judgments with their scores and DPO pairs; which run consumed which pair;
                    who may judge what (one's own comparisons) and the daily cap
    ratings.py      single-answer ratings (thumbs up / down, optional correction) and their export log
    leaderboard.py  the leaderboard and the store's counts (read only)
    exports.py      the stored pairs export and the Data tab read, the export log, pseudonyms
    study.py        every judgment, rating and score as rows (export-judgments); each annotator's progress
    tokens.py       bearer tokens of the OpenAI-compatible server (sha256 only), each an annotator's
    audit.py        the append-only audit log (record_event, audit_events) and login/token throttling
"""

from __future__ import annotations

from dataclasses import replace

from core.config import Config
from preference_store.records import StoreCounts
from preference_store.repository.accounts import DEMO_ANNOTATOR, Accounts
from preference_store.repository.bank import BankQueue
from preference_store.repository.checkpoints import CheckpointRegistry
from preference_store.repository.comparisons import Comparisons
from preference_store.repository.exports import ExportSupport, StoredPair
from preference_store.repository.guidelines import Guidelines
from preference_store.repository.judgments import Judgments
from preference_store.repository.leaderboard import LeaderboardQueries
from preference_store.repository.ratings import AnswerRatings, StoredRating
from preference_store.repository.study import AnnotatorProgress, StudyRecord, StudyRecords
from preference_store.repository.tokens import ApiTokens

__all__ = ["DEMO_ANNOTATOR", "AnnotatorProgress", "PreferenceStore", "StoredPair", "StoredRating", "StudyRecord"]


class PreferenceStore(
    Accounts,
    CheckpointRegistry,
    Comparisons,
    BankQueue,
    Judgments,
    AnswerRatings,
    Guidelines,
    LeaderboardQueries,
    ExportSupport,
    StudyRecords,
    ApiTokens,
):
    """A preference database at ``url`` (any SQLAlchemy URL), migrated to the newest schema on open.

    Safe to share between threads (each call opens its own session); several processes may open the
    same SQLite file. ``settings`` defaults to the config tree's ``StoreConfig()``. A context manager
    (``with PreferenceStore(url) as store:``) that closes its connections on exit.
    """

    @classmethod
    def from_config(cls, cfg: Config) -> PreferenceStore:
        """The store at ``cfg.database_url`` (CHIMED_DATABASE_URL wins) with ``cfg.store`` settings and the
        ``cfg.study`` rules its queue applies."""
        return cls(cfg.database_url, cfg.store, cfg.study)

    def counts(self) -> StoreCounts:
        """What the store holds: the leaderboard's counts and the annotation study's (ratings, bank, queue)."""
        return replace(LeaderboardQueries.counts(self), **self._study_counts())
