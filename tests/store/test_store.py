"""Preference store: recording comparisons and judgments, validation, pair expansion, idempotency,
annotators, checkpoints and the consumption log (the app and training rely on all of it)."""

from __future__ import annotations

import io
import sqlite3

import psycopg
import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from chimed import main as cli_main
from core.config import StoreConfig
from core.errors import UserError
from preference_store.pairs import expand_ranking_to_pairs
from preference_store.records import ComparisonIn, JudgmentIn, ResponseIn
from preference_store.repository import PreferenceStore, judgments
from preference_store.validation import PreferenceStoreError, UnknownCheckpointError

pytestmark = pytest.mark.both_backends  # the store tests run on SQLite and on PostgreSQL

PROMPT = [{"role": "user", "content": "高血压患者日常生活中应注意什么？"}]
ANSWERS = {
    "r1/base": "不知道。",
    "r1/cpt": "注意饮食。",
    "r1/sft": "低盐饮食、规律运动、戒烟限酒，并按医嘱服药、定期监测血压。",
    "r1/dpo": "应低盐饮食、控制体重、规律运动、戒烟限酒，遵医嘱长期服药并定期监测血压。",
}


def compare(store, checkpoints=("r1/sft", "r1/dpo"), annotator=None, messages=PROMPT, **kwargs):
    annotator = annotator or store.demo_annotator()
    responses = [
        ResponseIn(c, ANSWERS[c], {"temperature": 0.7, "top_p": 0.9}, seed=1, latency_s=0.5, n_tokens=12)
        for c in checkpoints
    ]
    return store.record_comparison(ComparisonIn(annotator.id, list(messages), responses, **kwargs))


def pairs_by_checkpoint(store):
    return sorted((p.chosen_checkpoint, p.rejected_checkpoint) for p in store.recent_pairs(limit=100))


def counts(store):
    c = store.counts()
    return c.comparisons, c.judgments, c.pairs


# --- comparisons ---------------------------------------------------------------------------------


def test_comparison_keeps_panel_order_answers_and_decoding(pref_store):
    cmp = compare(pref_store, ("r1/dpo", "r1/base", "r1/sft"), blind=True)
    again = pref_store.get_comparison(cmp.id)
    assert again == cmp
    assert [r.label for r in again.responses] == ["A", "B", "C"]
    assert again.reveal == {"A": "r1/dpo", "B": "r1/base", "C": "r1/sft"}
    assert again.response("B").text == ANSWERS["r1/base"]
    assert again.responses[0].decoding == {"temperature": 0.7, "top_p": 0.9}
    assert (again.responses[0].seed, again.responses[0].latency_s, again.responses[0].n_tokens) == (1, 0.5, 12)
    assert again.messages == PROMPT and again.blind


def test_multi_turn_conversation_keeps_its_comparisons_in_order(pref_store):
    first = compare(pref_store)
    follow_up = PROMPT + [
        {"role": "assistant", "content": ANSWERS["r1/sft"]},
        {"role": "user", "content": "需要每天测血压吗？"},
    ]
    second = compare(pref_store, messages=follow_up, conversation_id=first.conversation_id)
    assert [c.id for c in pref_store.conversation(first.conversation_id)] == [first.id, second.id]
    with pytest.raises(PreferenceStoreError, match="no conversation"):
        compare(pref_store, conversation_id="not-a-conversation")


def test_unknown_checkpoint_is_refused_and_nothing_is_written(pref_store):
    me = pref_store.demo_annotator()
    with pytest.raises(UnknownCheckpointError, match="answer B comes from unknown checkpoint 'r2/dpo'"):
        pref_store.record_comparison(
            ComparisonIn(me.id, PROMPT, [ResponseIn("r1/sft", "a"), ResponseIn("r2/dpo", "b")])
        )
    assert counts(pref_store) == (0, 0, 0)
    assert pref_store.counts().conversations == 0


@pytest.mark.parametrize(
    "messages, answers, match",
    [
        ([{"role": "user", "content": "   "}], ["a", "b"], "empty"),
        ([], ["a", "b"], "no messages"),
        ([{"role": "user", "content": "问题"}, {"role": "assistant", "content": "回答"}], ["a", "b"], "last message"),
        ([{"role": "doctor", "content": "问题"}], ["a", "b"], "role"),
        ([{"role": "user", "content": "问题"}], ["a"], "2-4 answers"),
        ([{"role": "user", "content": "问题"}], ["a"] * 5, "2-4 answers"),
        ([{"role": "user", "content": "问" * 101}], ["a", "b"], "over the limit of 100"),
        ([{"role": "user", "content": "问题"}], ["a", "答" * 101], "answer B .* over the limit"),
    ],
)
def test_bad_comparisons_are_refused_with_a_clear_message(store_url, messages, answers, match):
    store = PreferenceStore(store_url, StoreConfig(max_text_chars=100))
    store.register_checkpoints("r1", ["sft", "dpo"])
    me = store.demo_annotator()
    responses = [ResponseIn("r1/sft" if i % 2 == 0 else "r1/dpo", t) for i, t in enumerate(answers)]
    with pytest.raises(UserError, match=match):
        store.record_comparison(ComparisonIn(me.id, messages, responses))
    assert counts(store) == (0, 0, 0)


# --- judgments and their pairs -------------------------------------------------------------------


@pytest.mark.parametrize(
    "choice, expected",
    [
        ("A", [("r1/sft", "r1/dpo")]),
        ("B", [("r1/dpo", "r1/sft")]),
        ("tie", []),
        ("both_bad", []),
    ],
)
def test_pairwise_vote_makes_one_pair_and_tie_or_both_bad_none(pref_store, choice, expected):
    cmp = compare(pref_store)
    out = pref_store.submit_judgment(JudgmentIn(cmp.id, cmp.annotator_id, client_id="c1", choice=choice))
    assert out.kind == "pairwise" and out.choice == choice and not out.duplicate
    assert len(out.pair_ids) == len(expected)
    assert pairs_by_checkpoint(pref_store) == expected
    assert pref_store.count_judgments() == 1  # a tie is stored even though it makes no pair


def test_ranking_of_four_expands_into_six_ordered_pairs(pref_store):
    cmp = compare(pref_store, ("r1/base", "r1/cpt", "r1/sft", "r1/dpo"))
    out = pref_store.submit_judgment(JudgmentIn(cmp.id, cmp.annotator_id, ranking={"A": 4, "B": 3, "C": 2, "D": 1}))
    assert len(out.pair_ids) == 6
    order = ["r1/dpo", "r1/sft", "r1/cpt", "r1/base"]  # best first
    assert pairs_by_checkpoint(pref_store) == sorted((order[i], order[j]) for i in range(4) for j in range(i + 1, 4))
    for pair in pref_store.recent_pairs():
        assert pair.prompt == PROMPT
        assert pair.chosen == ANSWERS[pair.chosen_checkpoint] and pair.rejected == ANSWERS[pair.rejected_checkpoint]


@pytest.mark.parametrize("n", [2, 3, 4])
def test_a_ranking_of_n_gives_n_choose_2_pairs_better_over_worse(n):
    ranking = {label: place for label, place in zip("ABCD", [3, 1, 4, 2][:n] if n == 4 else range(n, 0, -1))}
    pairs = expand_ranking_to_pairs(ranking)
    assert len(pairs) == n * (n - 1) // 2
    assert all(ranking[better] < ranking[worse] for better, worse in pairs)
    assert len(set(pairs)) == len(pairs)


def test_correction_is_chosen_over_every_model_answer(pref_store):
    cmp = compare(pref_store, ("r1/base", "r1/cpt", "r1/sft"))
    better = "高血压患者应低盐低脂饮食、控制体重、规律运动、戒烟限酒，遵医嘱服药，定期监测血压。"
    out = pref_store.submit_judgment(JudgmentIn(cmp.id, cmp.annotator_id, correction=better, reason="更全面"))
    assert out.kind == "correction" and out.reason == "更全面" and len(out.pair_ids) == 3
    pairs = pref_store.recent_pairs()
    assert {p.chosen for p in pairs} == {better}
    assert {p.chosen_checkpoint for p in pairs} == {None}
    assert {p.rejected_checkpoint for p in pairs} == {"r1/base", "r1/cpt", "r1/sft"}


def test_resubmitting_the_same_client_id_stores_one_judgment(pref_store):
    cmp = compare(pref_store, ("r1/base", "r1/cpt", "r1/sft"))
    judgment = JudgmentIn(
        cmp.id,
        cmp.annotator_id,
        client_id="browser-42",
        ranking={"A": 3, "B": 2, "C": 1},
        scores={"C": {"safety": 5, "correctness": 4, "completeness": 4}},
    )
    first = pref_store.submit_judgment(judgment)
    second = pref_store.submit_judgment(judgment)
    assert second.duplicate and not first.duplicate
    assert second.id == first.id and second.pair_ids == first.pair_ids
    assert second.scores == first.scores == {"C": {"safety": 5, "correctness": 4, "completeness": 4}}
    assert counts(pref_store) == (1, 1, 3)
    assert pref_store.judgments_for(cmp.id)[0].id == first.id


@pytest.mark.parametrize(
    "fields, match",
    [
        (dict(), "exactly one of"),
        (dict(choice="A", correction="另一个回答"), "exactly one of.*pairwise and correction"),
        (dict(choice="C"), "unknown choice"),
        (dict(ranking={"A": 1, "B": 2}), "leaves out answer C"),
        (dict(ranking={"A": 1, "B": 1, "C": 2}), "place 1 is given twice"),
        (dict(ranking={"A": 1, "B": 2, "C": 4}), "place 3 is missing"),
        (dict(ranking={"A": 1, "B": 2, "C": 3, "D": 4}), "panel 'D'"),
        (dict(ranking={"A": "1", "B": 2, "C": 3}), "integers"),
        (dict(correction="  "), "empty"),
        (dict(correction="答" * 8001), "over the limit of 8000"),
        (dict(correction=ANSWERS["r1/sft"]), "identical to answer C"),
        (dict(correction=f"  {ANSWERS['r1/cpt']}\n"), "identical to answer B"),
        (dict(ranking={"A": 1, "B": 2, "C": 3}, scores={"A": {"safety": 6}}), "safety score of answer A"),
        (dict(ranking={"A": 1, "B": 2, "C": 3}, scores={"A": {"correctness": 0}}), "correctness score"),
        (dict(ranking={"A": 1, "B": 2, "C": 3}, scores={"E": {"safety": 3}}), "panel 'E'"),
    ],
)
def test_bad_judgments_are_refused_and_leave_nothing_behind(pref_store, fields, match):
    cmp = compare(pref_store, ("r1/base", "r1/cpt", "r1/sft"))
    with pytest.raises(PreferenceStoreError, match=match):
        pref_store.submit_judgment(JudgmentIn(cmp.id, cmp.annotator_id, **fields))
    assert counts(pref_store) == (1, 0, 0)


def test_a_choice_between_a_and_b_needs_exactly_two_answers(pref_store):
    cmp = compare(pref_store, ("r1/base", "r1/cpt", "r1/sft"))
    with pytest.raises(PreferenceStoreError, match="rank them"):
        pref_store.submit_judgment(JudgmentIn(cmp.id, cmp.annotator_id, choice="A"))


def test_judgment_of_an_unknown_comparison_is_refused(pref_store):
    me = pref_store.demo_annotator()
    with pytest.raises(PreferenceStoreError, match="no comparison"):
        pref_store.submit_judgment(JudgmentIn("nope", me.id, choice="A"))


def test_a_failure_half_way_through_a_judgment_writes_none_of_it(pref_store, monkeypatch):
    cmp = compare(pref_store, ("r1/base", "r1/cpt", "r1/sft"))
    # every pair gets the same id, so the second pair's insert fails after the judgment row was written
    monkeypatch.setattr(judgments, "new_pair_id", lambda: "clin-same")
    with pytest.raises(
        IntegrityError,
        match=r"UNIQUE constraint failed: pairs\.id|"
        r'duplicate key value violates unique constraint "pairs_pkey"',
    ):
        pref_store.submit_judgment(
            JudgmentIn(cmp.id, cmp.annotator_id, ranking={"A": 1, "B": 2, "C": 3}, scores={"A": {"safety": 5}})
        )
    assert counts(pref_store) == (1, 0, 0)
    assert pref_store.leaderboard(rounds=0).criteria == {}


def test_a_locked_database_is_retried_and_not_reported(pref_store, store_backend, monkeypatch):
    cmp = compare(pref_store)
    calls = []
    real = judgments.expand_judgment_to_pairs
    # what each backend says when a concurrent writer got in the way
    busy = (
        sqlite3.OperationalError("database is locked")
        if store_backend == "sqlite"
        else psycopg.errors.SerializationFailure("could not serialize access due to read/write dependencies")
    )

    def locked_twice(*args, **kwargs):
        calls.append(1)
        if len(calls) <= 2:
            raise OperationalError("INSERT ...", {}, busy)
        return real(*args, **kwargs)

    monkeypatch.setattr(judgments, "expand_judgment_to_pairs", locked_twice)
    out = pref_store.submit_judgment(JudgmentIn(cmp.id, cmp.annotator_id, choice="B"))
    assert len(calls) == 3 and len(out.pair_ids) == 1
    assert counts(pref_store) == (1, 1, 1)


# --- annotators ----------------------------------------------------------------------------------


def test_annotator_login_with_argon2_hashed_password(pref_store):
    assert not pref_store.has_login_accounts()
    demo = pref_store.demo_annotator()
    assert demo.name == "demo" and not demo.can_login and pref_store.demo_annotator() == demo
    assert not pref_store.has_login_accounts()

    admin = pref_store.add_annotator("dr_wang", "correct horse", role="admin")
    assert admin.is_admin and admin.can_login and pref_store.has_login_accounts()
    assert pref_store.authenticate("dr_wang", "correct horse") == admin
    assert pref_store.authenticate("dr_wang", "wrong") is None
    assert pref_store.authenticate("demo", "") is None
    assert pref_store.authenticate("nobody", "x") is None
    with pref_store._engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT password_hash FROM annotators WHERE name = 'dr_wang'").scalar_one()
    assert stored.startswith("$argon2") and "correct horse" not in stored
    assert [a.name for a in pref_store.list_annotators()] == ["demo", "dr_wang"]


@pytest.mark.parametrize(
    "name, password, role, match",
    [
        ("dr_li", "", "annotator", "empty password"),
        ("dr_li", "pw", "superuser", "unknown role"),
        ("", "pw", "annotator", "1-100 characters"),
        (" dr_li", "pw", "annotator", "spaces"),
    ],
)
def test_bad_annotator_accounts_are_refused(pref_store, name, password, role, match):
    with pytest.raises(PreferenceStoreError, match=match):
        pref_store.add_annotator(name, password, role=role)
    assert pref_store.list_annotators() == []


def test_annotator_names_are_unique(pref_store):
    pref_store.add_annotator("dr_li", "pw")
    with pytest.raises(PreferenceStoreError, match="exists already"):
        pref_store.add_annotator("dr_li", "other")


def test_add_annotator_command_reads_the_password_from_stdin(store_url, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret pass\n"))
    assert cli_main(["add-annotator", "dr_zhao", "--role", "admin", "--profile", "tiny"]) == 0
    assert "added admin 'dr_zhao'" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("again\n"))
    assert cli_main(["add-annotator", "dr_zhao", "--profile", "tiny"]) == 2
    assert "error: annotator 'dr_zhao' exists already" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert cli_main(["add-annotator", "dr_sun", "--profile", "tiny"]) == 2
    assert "empty password" in capsys.readouterr().err

    with PreferenceStore(store_url) as store:
        user = store.authenticate("dr_zhao", "s3cret pass")
        assert user is not None and user.is_admin
        assert [a.name for a in store.list_annotators()] == ["dr_zhao"]


# --- checkpoints and consumption -------------------------------------------------------------------


def test_register_checkpoints_is_idempotent_and_checks_its_input(pref_store):
    again = pref_store.register_checkpoints("r1", ["base", "cpt", "sft", "dpo"])
    assert [c.id for c in again] == ["r1/base", "r1/cpt", "r1/sft", "r1/dpo"]
    pref_store.register_checkpoints("r2", ["dpo"])
    assert {c.id for c in pref_store.list_checkpoints()} == {"r1/base", "r1/cpt", "r1/sft", "r1/dpo", "r2/dpo"}
    assert [c.stage for c in pref_store.list_checkpoints("r2")] == ["dpo"]
    assert pref_store.is_known_checkpoint("r2/dpo") and not pref_store.is_known_checkpoint("r2/sft")
    with pytest.raises(PreferenceStoreError, match="unknown stage"):
        pref_store.register_checkpoints("r3", ["rlhf"])
    with pytest.raises(PreferenceStoreError, match="without '/'"):
        pref_store.register_checkpoints("a/b", ["dpo"])


def test_mark_consumed_records_which_run_trained_on_which_pairs(pref_store):
    cmp = compare(pref_store, ("r1/base", "r1/cpt", "r1/sft"))
    out = pref_store.submit_judgment(JudgmentIn(cmp.id, cmp.annotator_id, ranking={"A": 3, "B": 2, "C": 1}))
    # objective pair ids of the builder sit in the same dpo.jsonl: they are not the store's to log
    assert pref_store.mark_consumed(list(out.pair_ids[:2]) + ["obj-123"], "r2") == 2
    assert pref_store.mark_consumed(out.pair_ids, "r2") == 1
    assert pref_store.mark_consumed(out.pair_ids, "r3") == 3
    assert pref_store.consumed_pair_ids("r2") == sorted(out.pair_ids)
    assert pref_store.counts().consumed_pairs == 3
