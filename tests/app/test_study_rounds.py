"""Study rounds the admin defines (issue 30): `queue-round --contestants ... --split ... --blind` fixes what
every annotator's queue prompt is answered by, /queue_next and the browser take no other contestants, a
closed round hands out nothing, and while a round is open annotators see only their own progress in the
Leaderboard tab."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import gradio as gr
import pytest

from app.arena import Arena, ArenaSession
from app.main import build_app
from app.tabs.leaderboard import interim_withheld, tab_view
from chimed import main
from core.config import load_config
from preference_store.records import ComparisonIn, JudgmentIn, ResponseIn
from preference_store.repository import PreferenceStore
from preference_store.validation import PreferenceStoreError

PROMPTS = [
    {"prompt": "糖尿病有哪些常见症状？", "split": "heldout"},
    {"prompt": "高血压饮食注意什么？", "split": "train"},
    {"prompt": "头痛三天怎么办？", "split": "heldout"},
]


def _bank(path) -> str:
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in PROMPTS), encoding="utf-8")
    return str(path)


@pytest.fixture
def round_store(store_url, tmp_path):
    store = PreferenceStore(store_url, replace(load_config("tiny").store, annotators_per_prompt=2))
    store.register_checkpoints("r1", ["sft", "dpo"])
    store.register_checkpoints("r2", ["sft", "dpo"])
    assert store.import_bank(_bank(tmp_path / "bank.jsonl")).imported == 3
    yield store
    store.close()


@pytest.mark.both_backends
def test_a_round_keeps_its_definition_and_hands_out_only_its_split(round_store):
    store = round_store
    me = store.add_annotator("dr_wang", "pw-123456")
    assert store.queue_round_definition().contestants == () and not store.queue_round_definition().is_open
    number = store.start_queue_round(None, ["r2/dpo", "r1/dpo"], split="heldout", blind=True)
    defined = store.queue_round_definition()
    assert (defined.number, defined.contestants, defined.split, defined.blind, defined.is_open) == (
        number,
        ("r2/dpo", "r1/dpo"),
        "heldout",
        True,
        True,
    )
    assert str(store.queue_progress(me.id)) == "0 / 2"  # the two held-out prompts, not the train one
    first = store.next_assignment(me.id)
    assert first.bank_prompt.split == "heldout" and first.round == number


@pytest.mark.both_backends
def test_a_round_refuses_bad_definitions_and_a_closed_one_hands_out_nothing(round_store):
    store = round_store
    me = store.add_annotator("dr_li", "pw-123456")
    with pytest.raises(PreferenceStoreError, match="unknown contestant r9/dpo"):
        store.start_queue_round(None, ["r1/dpo", "r9/dpo"])
    with pytest.raises(PreferenceStoreError, match="2-4 different contestants"):
        store.start_queue_round(None, ["r1/dpo", "r1/dpo"])
    with pytest.raises(PreferenceStoreError, match="only admins"):
        store.start_queue_round(me.id, ["r1/dpo", "r2/dpo"])
    assert store.queue_round() == 1  # nothing refused moved the round on
    with pytest.raises(PreferenceStoreError, match="not open"):
        store.close_queue_round(None)

    first = store.start_queue_round(None, ["r1/dpo", "r2/dpo"], split="train")
    second = store.start_queue_round(None, ["r1/sft", "r2/sft"])  # the new round closes the one before
    assert second == first + 1 and store.queue_round_definition().split == "all"
    closed = store.close_queue_round(None)
    assert closed.number == second and not closed.is_open
    assert store.next_assignment(me.id) is None and str(store.queue_progress(me.id)) == "0 / 0"


# --- the arena, the API and the command line, on the tiny run ---------------------------------------


@pytest.fixture
def cfg(app_home):
    return load_config("tiny", ["store.annotators_per_prompt=2"])


@pytest.fixture
def store(cfg, tmp_path):
    with PreferenceStore.from_config(cfg) as store:
        assert store.import_bank(_bank(tmp_path / "bank.jsonl")).imported == 3
        yield store


def _api(demo, name):
    (fn,) = [f.fn for f in demo.fns.values() if f.api_name == name]
    return fn


def test_queue_round_command_records_and_says_the_rounds_allocation(cfg, store, app_home, capsys):
    run_id = app_home[1]
    contestants = f"{run_id}/dpo,{run_id}/sft"
    uniform = ["store.annotators_per_prompt=3", "study.allocation=uniform"]
    assert main(["queue-round", "--profile", "tiny", *uniform, "--contestants", contestants]) == 0
    assert "(3 annotators per prompt)" in capsys.readouterr().out
    assert store.queue_round_definition().allocation == "uniform"
    default = ["store.annotators_per_prompt=3"]  # adaptive by default
    assert main(["queue-round", "--profile", "tiny", *default, "--contestants", contestants]) == 0
    out = capsys.readouterr().out
    assert (
        "queue round 3 started" in out
        and (
            "(adaptive allocation: 2 annotators per prompt, up to 3 only where they disagree, two identical answers "
            "resolved as ties)"
        )
        in out
    )
    assert store.queue_round_definition().allocation == "adaptive"
    assert store.audit_events(action="queue.round")[0].detail["allocation"] == "adaptive"


def test_queue_round_command_fixes_the_contestants_of_every_queue_prompt(cfg, store, make_pool, app_home, capsys):
    run_id = app_home[1]
    sft, dpo = f"{run_id}/sft", f"{run_id}/dpo"
    assert main(["queue-round", "--profile", "tiny", "--contestants", f"{dpo},nope/dpo"]) == 2
    assert "unknown checkpoint 'nope/dpo'" in capsys.readouterr().err
    assert (
        main(["queue-round", "--profile", "tiny", "--contestants", f"{dpo},{sft}", "--split", "heldout", "--blind"])
        == 0
    )
    out = capsys.readouterr().out
    assert "queue round 2 started" in out and "2 heldout bank prompts" in out and f"{dpo}, {sft}" in out

    demo = build_app(cfg, store=store, pool=make_pool(cfg))
    queue_next = _api(demo, "queue_next")
    wang, admin = SimpleNamespace(username="dr_wang"), SimpleNamespace(username="pi")
    store.add_annotator("dr_wang", "pw-123456")
    store.add_annotator("pi", "pw-123456", role="admin")
    with pytest.raises(gr.Error, match="contestants the admin chose"):
        queue_next([f"{run_id}/base", dpo], True, request=wang)
    with pytest.raises(gr.Error, match="blind for everyone"):  # not even an admin unblinds a blind round
        queue_next(None, True, False, request=admin)
    assert store.assignments() == []  # a refused call takes no prompt

    item = queue_next(None, True, request=wang)  # no checkpoints: answered by the round's
    stored = store.get_comparison(item["comparison_id"])
    assert {r.checkpoint_id for r in stored.responses} == {sft, dpo} and stored.blind
    assert item["split"] == "heldout" and item["progress"] == "0 / 2"

    # the browser's queue: whatever this page selected, the round's contestants answer
    arena = Arena(cfg, store, make_pool(cfg))
    page = ArenaSession(annotator=store.add_annotator("dr_li", "pw-123456"), notice_accepted=True)
    assignment = arena.take_assignment(page, None, blind=True)
    assert assignment.bank_prompt.split == "heldout"
    assert {p.checkpoint_id for p in page.panels} == {sft, dpo}

    assert main(["queue-round", "--profile", "tiny", "--close"]) == 0
    assert "queue round 2 closed" in capsys.readouterr().out
    assert queue_next(None, True, request=SimpleNamespace(username="pi"))["assignment_id"] is None


def test_annotators_see_only_their_progress_while_a_round_is_open(cfg, store, app_home):
    run_id = app_home[1]
    annotator = store.add_annotator("dr_zhao", "pw-123456")
    admin = store.add_annotator("pi", "pw-123456", role="admin")
    assert interim_withheld(store, annotator, "admins") is None  # round 1, never defined: nothing withheld

    store.register_checkpoints(run_id, ["sft", "dpo"])
    store.start_queue_round(None, [f"{run_id}/sft", f"{run_id}/dpo"])
    view = tab_view(store, annotator, False, "admins")
    assert "Study round 2 is open" in view[0] and "0 / 3" in view[0]
    assert all(getattr(c, "get", lambda k: None)("value") in ([], "", None) for c in view[1:5])
    assert "Study round" not in tab_view(store, admin, False, "admins")[0]  # admins see everything
    assert "Study round" not in tab_view(store, annotator, False, "everyone")[0]

    store.close_queue_round(None)
    assert interim_withheld(store, annotator, "admins") is None
    assert "Study round" not in tab_view(store, annotator, False, "admins")[0]


def test_an_adaptive_round_of_three_answers_each_queue_prompt_with_the_stores_pair(cfg, store, make_pool, app_home):
    """Active sampling lives in the store: /queue_next answers with the two contestants the queue chose."""
    run_id = app_home[1]
    three = [f"{run_id}/{stage}" for stage in ("base", "sft", "dpo")]
    store.register_checkpoints(run_id, ["base", "sft", "dpo"])
    store.start_queue_round(None, three)  # adaptive allocation: the default
    demo = build_app(cfg, store=store, pool=make_pool(cfg))
    wang = store.add_annotator("dr_wang", "pw-123456")
    item = _api(demo, "queue_next")(None, True, request=SimpleNamespace(username="dr_wang"))
    pair = store.next_assignment(wang.id).contestants  # their open assignment, as the queue chose it
    assert len(pair) == 2 and set(pair) <= set(three)
    assert {r.checkpoint_id for r in store.get_comparison(item["comparison_id"]).responses} == set(pair)


def test_agreement_gives_each_annotators_reliability_to_admins_only(cfg, store, make_pool, app_home):
    run_id = app_home[1]
    store.register_checkpoints(run_id, ["sft", "dpo"])
    pair = [f"{run_id}/sft", f"{run_id}/dpo"]
    store.add_annotator("pi", "pw-123456", role="admin")
    for name in ("dr_wang", "dr_li"):  # each judges all three bank prompts: three overlap units
        annotator = store.add_annotator(name, "pw-123456")
        while (assignment := store.next_assignment(annotator.id)) is not None:
            out = store.record_comparison(
                ComparisonIn(
                    annotator.id,
                    assignment.bank_prompt.messages,
                    [ResponseIn(c, f"{c} 的回答") for c in pair],
                    bank_prompt_id=assignment.bank_prompt.id,
                    assignment_id=assignment.id,
                )
            )
            store.submit_judgment(JudgmentIn(out.id, annotator.id, choice="B"))
    agreement = _api(build_app(cfg, store=store, pool=make_pool(cfg)), "agreement")
    shown = agreement(False, request=SimpleNamespace(username="pi"))["reliability"]
    assert {r["name"] for r in shown} == {"dr_wang", "dr_li"} and all(r["overlap_units"] == 3 for r in shown)
    assert agreement(False, request=SimpleNamespace(username="dr_wang"))["reliability"] == []
