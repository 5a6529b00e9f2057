"""How each answer was served (exact, or a delta at N bits): stored with the answer, returned with it,
shown in the Data tab and written into the export's provenance; and a database from before this was
recorded upgrades with its rows intact."""

from __future__ import annotations

import json

import pytest
from alembic import command
from sqlalchemy import inspect

from app.tabs.data import recent_pairs_table, serving_label
from core.config import load_config
from preference_store.db import alembic_config, current_revision, head_revision, make_engine
from preference_store.exports.pairs import export_pairs
from preference_store.records import ComparisonIn, JudgmentIn, ResponseIn
from preference_store.repository import PreferenceStore
from preference_store.validation import PreferenceStoreError

pytestmark = pytest.mark.both_backends  # the store tests run on SQLite and on PostgreSQL

PROMPT = [{"role": "user", "content": "糖尿病患者可以吃水果吗？"}]
EXACT = {"mode": "exact", "device": "cpu", "dtype": "float32"}
DELTA = {"mode": "delta", "bits": 8, "device": "cpu", "dtype": "float32"}


def served_comparison(store, servings=(EXACT, DELTA)):
    me = store.demo_annotator()
    return store.record_comparison(
        ComparisonIn(
            me.id,
            PROMPT,
            [
                ResponseIn("r1/sft", "可以适量吃低糖水果，注意监测血糖。", serving=servings[0]),
                ResponseIn("r1/cpt", "不可以。", serving=servings[1]),
            ],
        )
    )


def test_each_answer_keeps_how_it_was_served(pref_store):
    cmp = served_comparison(pref_store)
    assert [r.serving for r in cmp.responses] == [EXACT, DELTA]
    assert [r.serving for r in pref_store.get_comparison(cmp.id).responses] == [EXACT, DELTA]
    unsaid = served_comparison(pref_store, servings=(None, None))  # callers that do not say stay welcome
    assert [r.serving for r in pref_store.get_comparison(unsaid.id).responses] == [None, None]


def test_a_serving_that_is_not_a_json_dict_is_refused_and_nothing_is_written(pref_store):
    with pytest.raises(PreferenceStoreError, match="how it was served"):
        served_comparison(pref_store, servings=(EXACT, "delta"))
    with pytest.raises(PreferenceStoreError, match="how it was served"):
        served_comparison(pref_store, servings=(EXACT, {"mode": "delta", "dtype": object()}))
    assert pref_store.counts().comparisons == 0


def test_recent_pairs_and_the_data_tab_show_how_both_answers_were_served(pref_store):
    cmp = served_comparison(pref_store)
    pref_store.submit_judgment(JudgmentIn(cmp.id, cmp.annotator_id, choice="A"))
    pair = pref_store.recent_pairs()[0]
    assert (pair.chosen_serving, pair.rejected_serving) == (EXACT, DELTA)
    assert recent_pairs_table(pref_store, 5)[0][-2:] == ["exact", "delta 8-bit"]
    assert serving_label(None) == "—" and serving_label({"mode": "delta", "bits": 4}) == "delta 4-bit"


def test_the_export_provenance_says_how_the_chosen_and_rejected_answers_were_served(pref_store, chimed_home, tmp_path):
    cmp = served_comparison(pref_store)
    pref_store.submit_judgment(JudgmentIn(cmp.id, cmp.annotator_id, choice="B"))
    again = served_comparison(
        pref_store
    )  # one judgment per comparison: the better answer on the same answers asked again
    pref_store.submit_judgment(
        JudgmentIn(again.id, again.annotator_id, correction="可以，选低升糖指数的水果，两餐之间少量吃。")
    )
    export_pairs(load_config("tiny"), out=tmp_path / "pairs.jsonl", store=pref_store)
    records = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text(encoding="utf-8").splitlines()]
    served = sorted(
        (r["provenance"]["chosen_serving"] or {}).get("mode", "correction")
        + ">"
        + r["provenance"]["rejected_serving"]["mode"]
        for r in records
    )
    assert served == ["correction>delta", "correction>exact", "delta>exact"]


def test_a_database_from_before_serving_was_recorded_upgrades_and_keeps_its_rows(empty_database_url):
    url = empty_database_url
    engine = make_engine(url, 1000)
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    with engine.begin() as db:  # what an older version of the store wrote
        for statement in """
            INSERT INTO annotators (id, name, role, password_hash, created)
                VALUES (1, 'dr_li', 'annotator', NULL, '2024-05-01 09:00:00');
            INSERT INTO checkpoints (id, run_id, stage, registered)
                VALUES ('r0/sft', 'r0', 'sft', '2024-05-01 08:00:00'), ('r0/dpo', 'r0', 'dpo', '2024-05-01 08:00:00');
            INSERT INTO conversations (id, annotator_id, created) VALUES ('conv', 1, '2024-05-01 09:00:00');
            INSERT INTO comparisons (id, conversation_id, annotator_id, messages, blind, created)
                VALUES ('cmp', 'conv', 1, '[{"role": "user", "content": "发热怎么办？"}]', TRUE, '2024-05-01 09:00:00');
            INSERT INTO responses (id, comparison_id, panel, checkpoint_id, text, decoding, seed, latency_s, n_tokens)
                VALUES ('ra', 'cmp', 0, 'r0/sft', '多喝水。', '{}', 1, 0.5, 3),
                       ('rb', 'cmp', 1, 'r0/dpo', '测体温，高热及时就医。', '{}', 1, 0.7, 9);
            INSERT INTO judgments (id, client_id, comparison_id, annotator_id, kind, choice, created)
                VALUES ('j', 'client', 'cmp', 1, 'pairwise', 'B', '2024-05-01 09:01:00');
            INSERT INTO pairs (id, judgment_id, comparison_id, chosen_response_id, rejected_response_id, created)
                VALUES ('clin-old', 'j', 'cmp', 'rb', 'ra', '2024-05-01 09:01:00');
        """.split(";")[:-1]:
            db.exec_driver_sql(statement)
    assert "serving" not in {c["name"] for c in inspect(engine).get_columns("responses")}

    with PreferenceStore(url) as store:
        cmp = store.get_comparison("cmp")
        assert [(r.checkpoint_id, r.text, r.serving) for r in cmp.responses] == [
            ("r0/sft", "多喝水。", None),
            ("r0/dpo", "测体温，高热及时就医。", None),
        ]
        assert store.judgments_for("cmp")[0].pair_ids == ("clin-old",)
        pair = store.recent_pairs()[0]
        assert (pair.id, pair.chosen_checkpoint, pair.chosen_serving) == ("clin-old", "r0/dpo", None)
        store.register_checkpoints("r1", ["sft", "cpt"])
        assert [r.serving for r in served_comparison(store).responses] == [EXACT, DELTA]
    assert current_revision(engine) == head_revision()

    with engine.begin() as conn:  # and back: the column goes, the rows stay
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0001")
    assert "serving" not in {c["name"] for c in inspect(engine).get_columns("responses")}
    with engine.connect() as db:
        assert db.exec_driver_sql("SELECT count(*) FROM responses").scalar() == 4
        assert db.exec_driver_sql("SELECT count(*) FROM pairs").scalar() == 1
    engine.dispose()
