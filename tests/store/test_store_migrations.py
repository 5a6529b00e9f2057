"""The schema: migrations from an empty database to head, models equal to the migrated schema,
SQLite settings, and opening the same new database from several places at once."""

from __future__ import annotations

import sqlite3
import threading

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.exc import IntegrityError

from core.config import load_config
from preference_store.db import alembic_config, current_revision, head_revision, make_engine, migrate
from preference_store.models import Base
from preference_store.repository import PreferenceStore
from preference_store.validation import PreferenceStoreError

pytestmark = pytest.mark.both_backends  # the store tests run on SQLite and on PostgreSQL

TABLES = {
    "store_meta",
    "annotators",
    "checkpoints",
    "conversations",
    "comparisons",
    "responses",
    "judgments",
    "criterion_scores",
    "pairs",
    "exports",
    "exported_pairs",
    "consumptions",
    "guidelines",
    "bank_prompts",
    "assignments",
    "answer_ratings",
    "exported_ratings",
    "api_tokens",
    "audit_events",
    "alembic_version",
}


def test_empty_database_migrates_to_head_and_matches_the_models(empty_database_url):
    engine = make_engine(empty_database_url, 1000)
    assert current_revision(engine) is None
    migrate(engine)
    assert current_revision(engine) == head_revision()
    assert set(inspect(engine).get_table_names()) == TABLES
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []  # a model change without a migration fails here
    engine.dispose()


def test_downgrade_to_empty_and_back(empty_database_url):
    engine = make_engine(empty_database_url, 1000)
    migrate(engine)
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    migrate(engine)
    assert set(inspect(engine).get_table_names()) == TABLES
    engine.dispose()


@pytest.mark.sqlite_only
def test_sqlite_runs_in_wal_mode_with_foreign_keys(pref_store, chimed_home):
    assert (chimed_home / "preferences.db").exists()
    with pref_store._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == load_config("tiny").store.busy_timeout_ms


def test_reopening_keeps_the_data_and_the_database_url_comes_from_the_environment(chimed_home, monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("CHIMED_DATABASE_URL", url)
    with PreferenceStore.from_config(load_config("tiny")) as store:
        store.register_checkpoints("r1", ["sft"])
        salt = store.pseudonym(1)
    assert (tmp_path / "elsewhere.db").exists() and not (chimed_home / "preferences.db").exists()
    with PreferenceStore(url) as store:
        assert [c.id for c in store.list_checkpoints()] == ["r1/sft"]
        assert store.pseudonym(1) == salt  # pseudonyms stay stable across sessions
    rows = sqlite3.connect(tmp_path / "elsewhere.db").execute("SELECT version_num FROM alembic_version").fetchall()
    assert rows == [(head_revision(),)]


def test_several_openers_of_a_new_database_do_not_collide(empty_database_url):
    errors, stores = [], []

    def open_store():
        try:
            stores.append(PreferenceStore(empty_database_url))
        except Exception as err:  # noqa: BLE001 - the assertion shows it
            errors.append(err)

    threads = [threading.Thread(target=open_store) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(stores) == 6
    stores[0].register_checkpoints("r1", ["dpo"])
    assert all(s.is_known_checkpoint("r1/dpo") for s in stores)
    assert len({s.pseudonym(7) for s in stores}) == 1  # one salt, made by the one migration that ran
    for s in stores:
        s.close()


def test_foreign_keys_are_enforced(pref_store):
    with pytest.raises(IntegrityError):
        with pref_store._engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO conversations (id, annotator_id, created) VALUES ('c', 999, '2024-01-01')"
            )
    assert pref_store.counts().conversations == 0


def test_a_database_from_a_newer_version_gives_a_clear_error(empty_database_url):
    PreferenceStore(empty_database_url).close()
    engine = make_engine(empty_database_url, 1000)
    with engine.begin() as db:  # as a later release, with a migration this code does not have, leaves it
        db.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    engine.dispose()
    with pytest.raises(
        PreferenceStoreError,
        match=r"^the preference database .* has a schema newer than this code "
        r"\(.*'9999'.*\): update ChiMed Arena$",
    ) as err:
        PreferenceStore(empty_database_url)
    assert "\n" not in str(err.value)


def test_a_bad_path_or_url_gives_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(PreferenceStoreError, match="cannot open the preference database"):
        PreferenceStore(f"sqlite:///{tmp_path / 'file' / 'p.db'}")
    with pytest.raises(PreferenceStoreError, match="not a SQLAlchemy URL"):
        PreferenceStore("preferences.db")


def test_upgrading_a_0002_database_copies_its_scores_onto_the_guideline_criteria(empty_database_url):
    # a store as the previous release left it: one judgment with fixed-column scores, one export
    url = empty_database_url
    engine = make_engine(url, 1000)
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
    with engine.begin() as db:
        for statement in """
            INSERT INTO annotators (id, name, role, password_hash, created) VALUES (1, 'dr_wang', 'annotator', NULL, '2024-05-01 09:00:00');
            INSERT INTO checkpoints (id, run_id, stage, registered) VALUES ('r1/sft', 'r1', 'sft', '2024-05-01 09:00:00'),
                                                                          ('r1/dpo', 'r1', 'dpo', '2024-05-01 09:00:00');
            INSERT INTO conversations (id, annotator_id, created) VALUES ('conv', 1, '2024-05-01 09:00:00');
            INSERT INTO comparisons (id, conversation_id, annotator_id, messages, blind, created)
                VALUES ('cmp', 'conv', 1, '[{"role": "user", "content": "头痛怎么办？"}]', TRUE, '2024-05-01 09:01:00');
            INSERT INTO responses (id, comparison_id, panel, checkpoint_id, text, decoding, serving)
                VALUES ('ra', 'cmp', 0, 'r1/sft', '多休息。', '{}', NULL), ('rb', 'cmp', 1, 'r1/dpo', '应就医。', '{}', '{"mode": "exact"}');
            INSERT INTO judgments (id, client_id, comparison_id, annotator_id, kind, choice, created)
                VALUES ('j1', 'c1', 'cmp', 1, 'pairwise', 'B', '2024-05-01 09:02:00');
            INSERT INTO scores (judgment_id, response_id, safety, correctness, completeness)
                VALUES ('j1', 'ra', 4, NULL, 2), ('j1', 'rb', 5, 5, NULL);
            INSERT INTO pairs (id, judgment_id, comparison_id, chosen_response_id, rejected_response_id, created)
                VALUES ('clin-1', 'j1', 'cmp', 'rb', 'ra', '2024-05-01 09:02:00');
            INSERT INTO exports (id, path, sha256, n_pairs, created) VALUES (1, '/tmp/p.jsonl', 'abc', 1, '2024-05-02 09:00:00');
        """.split(";")[:-1]:
            db.exec_driver_sql(statement)

    with PreferenceStore(url) as store:  # opening it upgrades it to head
        assert current_revision(store._engine) == head_revision()
        [judgment] = store.judgments_for("cmp")
        assert judgment.scores == {"A": {"safety": 4, "completeness": 2}, "B": {"safety": 5, "correctness": 5}}
        assert judgment.guideline_version is None  # made before guidelines were versioned
        assert [r.leaks for r in store.get_comparison("cmp").responses] == [None, None]  # never checked
        assert store.get_comparison("cmp").bank_prompt_id is None
        board = store.leaderboard(rounds=0)
        assert board.criteria["r1/dpo"] == {"safety": 5.0, "correctness": 5.0}
    with engine.connect() as db:
        assert db.exec_driver_sql("SELECT kind FROM exports").all() == [("pairs",)]
        assert db.exec_driver_sql("SELECT count(*) FROM criterion_scores").scalar() == 4  # the NULLs are not copied
    assert "scores" not in inspect(engine).get_table_names()
    engine.dispose()
