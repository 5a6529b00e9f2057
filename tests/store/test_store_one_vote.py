"""One judgment per annotator and comparison (and one rating per answer), revisions kept as history with only
the newest making pairs, duplicates of older stores resolved by migration 0005, and judgments made with the
names shown kept out of the leaderboard and the export unless store.admit_unblinded."""

from __future__ import annotations

import json

import pytest
from alembic import command

from core.config import load_config
from preference_store.cli import report_superseded
from preference_store.db import alembic_config, make_engine
from preference_store.exports.pairs import export_pairs
from preference_store.records import ComparisonIn, JudgmentIn, RatingIn, ResponseIn
from preference_store.repository import PreferenceStore

pytestmark = pytest.mark.both_backends  # the store tests run on SQLite and on PostgreSQL

PROMPT = [{"role": "user", "content": "高血压患者饮食上要注意什么？"}]


def _comparison(store, annotator, blind=True, conversation_id=None):
    return store.record_comparison(
        ComparisonIn(
            annotator.id,
            PROMPT,
            [
                ResponseIn("r1/sft", "少吃盐，多运动。"),
                ResponseIn("r1/dpo", "低盐饮食，控制体重，限制饮酒，按时服药。"),
            ],
            blind=blind,
            conversation_id=conversation_id,
        )
    )


def _pairs(store) -> set[tuple[str, str]]:
    return {(p.chosen_checkpoint, p.rejected_checkpoint) for p in store.export_rows()}


def test_a_second_judgment_is_refused_and_a_revise_makes_the_only_pairs_that_count(pref_store):
    wang = pref_store.add_annotator("dr_wang", "pw-123456")
    made = _comparison(pref_store, wang)
    first = pref_store.submit_judgment(JudgmentIn(made.id, wang.id, client_id="vote-1", choice="A"))
    for client_id in (None, "vote-2"):  # a second vote, with or without a client id of its own
        with pytest.raises(Exception, match=r"^already judged; .*revise"):
            pref_store.submit_judgment(JudgmentIn(made.id, wang.id, client_id=client_id, choice="B"))
    with pytest.raises(Exception, match="already judged"):  # a better answer is a judgment too
        pref_store.submit_judgment(JudgmentIn(made.id, wang.id, correction="低盐低脂饮食。"))
    retry = pref_store.submit_judgment(JudgmentIn(made.id, wang.id, client_id="vote-1", choice="B"))
    assert retry.duplicate and retry.id == first.id and retry.choice == "A"  # the retry returns the first
    assert _pairs(pref_store) == {("r1/sft", "r1/dpo")}

    revised = pref_store.submit_judgment(JudgmentIn(made.id, wang.id, choice="B", reason="B 更完整", revise=True))
    history = pref_store.judgments_for(made.id)
    assert [(j.id, j.choice, j.superseded_by, j.superseded_why) for j in history] == [
        (first.id, "A", revised.id, "revised"),
        (revised.id, "B", None, None),
    ]
    assert _pairs(pref_store) == {("r1/dpo", "r1/sft")}  # only the newest judgment makes pairs
    assert {p.id for p in pref_store.recent_pairs()} == set(revised.pair_ids)
    assert pref_store.count_judgments(wang.id) == 1 and pref_store.counts().judgments == 1
    assert pref_store.counts().pairs == 1
    board = pref_store.leaderboard(rounds=0)
    assert board.judgments == 1 and board.battles["r1/dpo"]["r1/sft"] == 1
    assert board.win_rate["r1/dpo"]["r1/sft"] == 1.0
    assert [j.id for j in pref_store.superseded_judgments()] == [first.id]

    again = pref_store.submit_judgment(JudgmentIn(made.id, wang.id, choice="tie", revise=True))
    assert _pairs(pref_store) == set() and pref_store.count_judgments(wang.id) == 1  # a tie makes none
    assert [j.superseded_by for j in pref_store.judgments_for(made.id)] == [revised.id, again.id, None]


def test_one_rating_per_answer_and_a_revised_rating_leaves_the_export(pref_store):
    wang = pref_store.add_annotator("dr_wang", "pw-123456")
    made = _comparison(pref_store, wang)
    up = pref_store.submit_rating(RatingIn(made.id, wang.id, label="A", up=True, client_id="thumb-1"))
    with pytest.raises(Exception, match=r"^already rated; "):
        pref_store.submit_rating(RatingIn(made.id, wang.id, label="A", up=False))
    assert pref_store.submit_rating(RatingIn(made.id, wang.id, label="A", up=False, client_id="thumb-1")).duplicate
    pref_store.submit_rating(RatingIn(made.id, wang.id, label="B", up=True))  # the other answer: its own rating
    down = pref_store.submit_rating(RatingIn(made.id, wang.id, label="A", up=False, revise=True))
    assert {(r.label, r.up) for r in pref_store.ratings()} == {("A", False), ("B", True)}
    assert [(r.id, r.superseded_by) for r in pref_store.ratings(history=True) if r.label == "A"] == [
        (down.id, None),
        (up.id, down.id),
    ]
    assert {(r.rating_id, r.up) for r in pref_store.rating_export_rows() if r.answer.startswith("少吃盐")} == {
        (down.id, False)
    }


def test_judgments_made_with_the_names_shown_stay_out_of_the_leaderboard_and_the_export(pref_store, tmp_path):
    cfg = load_config("tiny")
    wang = pref_store.add_annotator("dr_wang", "pw-123456")
    blind = _comparison(pref_store, wang)
    pref_store.submit_judgment(JudgmentIn(blind.id, wang.id, choice="A"))  # sft over dpo, blind
    shown = _comparison(pref_store, wang, blind=False)  # an admin's blind=False
    pref_store.submit_judgment(JudgmentIn(shown.id, wang.id, choice="B"))  # dpo over sft, names known
    # the next turn of a conversation whose first comparison was judged: the names are known now
    follow_up = _comparison(pref_store, wang, conversation_id=blind.conversation_id)
    assert not follow_up.blind and pref_store.get_comparison(follow_up.id).blind is False
    pref_store.submit_judgment(JudgmentIn(follow_up.id, wang.id, choice="B"))

    board = pref_store.leaderboard(rounds=0)
    assert (board.judgments, board.unblinded_judgments, board.unblinded_admitted) == (1, 2, False)
    assert board.battles["r1/sft"]["r1/dpo"] == 1 and board.win_rate["r1/sft"]["r1/dpo"] == 1.0

    summary = export_pairs(cfg, out=tmp_path / "blind.jsonl", store=pref_store)
    written = [json.loads(line) for line in (tmp_path / "blind.jsonl").read_text(encoding="utf-8").splitlines()]
    assert summary.unblinded == 2 and [r["provenance"]["comparison_id"] for r in written] == [blind.id]
    assert written[0]["provenance"]["blind"] is True

    pref_store.settings.admit_unblinded = True  # the config key admits them, and says so
    cfg.store.admit_unblinded = True
    board = pref_store.leaderboard(rounds=0)
    assert (board.judgments, board.unblinded_judgments, board.unblinded_admitted) == (3, 2, True)
    summary = export_pairs(cfg, out=tmp_path / "admitted.jsonl", store=pref_store)
    admitted = [json.loads(line) for line in (tmp_path / "admitted.jsonl").read_text(encoding="utf-8").splitlines()]
    # the blind pair was exported before; the two unblinded ones join now (one is word for word the other)
    assert (summary.unblinded, summary.duplicates, len(admitted)) == (0, 1, 1)
    assert admitted[0]["provenance"]["comparison_id"] in {shown.id, follow_up.id}
    assert admitted[0]["provenance"]["blind"] is False


def test_migration_0005_keeps_the_latest_of_second_votes_and_the_command_lists_the_rest(
    empty_database_url, capsys, monkeypatch
):
    # a store as the previous release left it: dr_wang voted A, then B, on one comparison, and rated one answer
    # up, then down; dr_li voted once
    engine = make_engine(empty_database_url, 1000)
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0004")
    with engine.begin() as db:
        for statement in """
            INSERT INTO annotators (id, name, role, password_hash, created) VALUES (1, 'dr_wang', 'annotator', NULL, '2024-05-01 09:00:00'),
                                                                                (2, 'dr_li', 'annotator', NULL, '2024-05-01 09:00:00');
            INSERT INTO checkpoints (id, run_id, stage, registered) VALUES ('r1/sft', 'r1', 'sft', '2024-05-01 09:00:00'),
                                                                          ('r1/dpo', 'r1', 'dpo', '2024-05-01 09:00:00');
            INSERT INTO conversations (id, annotator_id, created) VALUES ('conv', 1, '2024-05-01 09:00:00'), ('conv2', 2, '2024-05-01 09:00:00');
            INSERT INTO comparisons (id, conversation_id, annotator_id, messages, blind, created)
                VALUES ('cmp', 'conv', 1, '[{"role": "user", "content": "头痛怎么办？"}]', TRUE, '2024-05-01 09:01:00'),
                       ('cmp2', 'conv2', 2, '[{"role": "user", "content": "发烧怎么办？"}]', TRUE, '2024-05-01 09:01:00');
            INSERT INTO responses (id, comparison_id, panel, checkpoint_id, text, decoding)
                VALUES ('ra', 'cmp', 0, 'r1/sft', '多休息。', '{}'), ('rb', 'cmp', 1, 'r1/dpo', '应就医。', '{}'),
                       ('rc', 'cmp2', 0, 'r1/sft', '多喝水。', '{}'), ('rd', 'cmp2', 1, 'r1/dpo', '测体温。', '{}');
            INSERT INTO judgments (id, client_id, comparison_id, annotator_id, kind, choice, created)
                VALUES ('j1', 'c1', 'cmp', 1, 'pairwise', 'A', '2024-05-01 09:02:00'),
                       ('j2', 'c2', 'cmp', 1, 'pairwise', 'B', '2024-05-01 09:03:00'),
                       ('j3', 'c3', 'cmp2', 2, 'pairwise', 'B', '2024-05-01 09:04:00');
            INSERT INTO pairs (id, judgment_id, comparison_id, chosen_response_id, rejected_response_id, created)
                VALUES ('clin-1', 'j1', 'cmp', 'ra', 'rb', '2024-05-01 09:02:00'),
                       ('clin-2', 'j2', 'cmp', 'rb', 'ra', '2024-05-01 09:03:00'),
                       ('clin-3', 'j3', 'cmp2', 'rd', 'rc', '2024-05-01 09:04:00');
            INSERT INTO answer_ratings (id, client_id, comparison_id, response_id, annotator_id, label, created)
                VALUES ('t1', 'u1', 'cmp', 'ra', 1, TRUE, '2024-05-01 09:05:00'),
                       ('t2', 'u2', 'cmp', 'ra', 1, FALSE, '2024-05-01 09:06:00');
        """.split(";")[:-1]:
            db.exec_driver_sql(statement)
    engine.dispose()

    with PreferenceStore(empty_database_url) as store:  # opening it upgrades it: the rule applies
        assert [(j.id, j.superseded_by, j.superseded_why) for j in store.judgments_for("cmp")] == [
            ("j1", "j2", "duplicate"),
            ("j2", None, None),
        ]  # nothing dropped, the latest counts
        assert {p.pair_id for p in store.export_rows()} == {"clin-2", "clin-3"}
        assert [(r.id, r.superseded_by) for r in store.ratings(history=True)] == [("t2", None), ("t1", "t2")]
        assert store.counts().judgments == 2
        with pytest.raises(Exception, match="already judged"):  # and holds from now on
            store.submit_judgment(JudgmentIn("cmp", 1, choice="A"))

    monkeypatch.setenv("CHIMED_DATABASE_URL", empty_database_url)
    assert report_superseded(load_config("tiny")) == 2
    out = capsys.readouterr().out
    assert "1 judgments and 1 single-answer ratings kept as history" in out and "2 duplicates resolved" in out
    assert "judgment j1 (duplicate) of comparison cmp by dr_wang: pairwise A" in out and "counts instead: j2" in out
    assert "rating t1 (duplicate) of answer A of comparison cmp by dr_wang: up" in out
