"""The Data tab's privacy and roles, on a store filled through its API (no model pool): an annotator
sees only their own pairs and counts, an admin sees everyone's de-identified, and only admins import
a prompt bank or export."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import gradio as gr
import pytest

from app.arena import ArenaSession
from app.tabs.data import (
    ANNOTATOR_COLUMN,
    build_data_tab,
    data_view,
    export_for_admin,
    export_new,
    import_bank_for_admin,
    session_view,
    start_round_for_admin,
)
from core.config import load_config
from core.errors import UserError
from preference_store.records import ComparisonIn, JudgmentIn, RatingIn, ResponseIn

FIXTURES = Path(__file__).parents[1] / "fixtures" / "app"
ALICE_PROMPT = "高血压患者饮食上要注意什么？"
# an identifier typed into a prompt (what de-identification is for), not a patient record
BOB_PROMPT = "联系人张三，电话13800000000：头痛三天应该挂什么科？"


@pytest.fixture
def cfg(chimed_home):
    return load_config("tiny")


@pytest.fixture
def people(pref_store):
    store = pref_store
    alice = store.add_annotator("alice", "pw-alice-123", role="annotator")
    bob = store.add_annotator("bob", "pw-bob-12345", role="annotator")
    admin = store.add_annotator("dr_admin", "pw-admin-123", role="admin")
    return alice, bob, admin


def _judge(store, annotator, prompt: str, choice: str = "A"):
    cmp = store.record_comparison(
        ComparisonIn(
            annotator.id,
            [{"role": "user", "content": prompt}],
            [ResponseIn("r1/sft", "应低盐饮食，规律监测血压。"), ResponseIn("r1/dpo", "注意休息，必要时就医。")],
        )
    )
    store.submit_judgment(JudgmentIn(cmp.id, annotator.id, choice=choice))
    return cmp


def _prompts(view) -> set[str]:
    return {row[1] for row in view[1]["value"]}


def test_an_annotator_sees_only_their_own_pairs_and_counts(pref_store, people, cfg):
    alice, bob, _ = people
    _judge(pref_store, alice, ALICE_PROMPT)
    mine = _judge(pref_store, alice, "糖尿病有哪些常见症状？", "B")
    _judge(pref_store, bob, BOB_PROMPT)
    pref_store.submit_rating(RatingIn(mine.id, alice.id, label="A", up=True))

    counts, pairs = data_view(cfg, pref_store, alice)
    assert _prompts([counts, pairs]) == {ALICE_PROMPT, "糖尿病有哪些常见症状？"}
    assert ANNOTATOR_COLUMN not in pairs["headers"]
    assert "my comparisons" in counts and "| 2 | 2 (pairwise 2, ranking 0, correction 0) | 2 | 1 |" in counts
    assert "bob" not in counts and "头痛" not in str(pairs)

    counts, pairs = data_view(cfg, pref_store, bob)
    assert _prompts([counts, pairs]) == {BOB_PROMPT}  # his own text, as he wrote it
    assert "| 1 | 1 (pairwise 1, ranking 0, correction 0) | 1 | 0 |" in counts

    # what the tab shows her session: her comparisons with her verdicts (by checkpoint) and her rating
    pending = pref_store.record_comparison(
        ComparisonIn(
            alice.id,
            [{"role": "user", "content": "失眠怎么办？"}],
            [ResponseIn("r1/cpt", "规律作息。"), ResponseIn("r1/base", "少喝咖啡。")],
        )
    )
    pref_store.submit_rating(RatingIn(pending.id, alice.id, label="B", up=False))
    *_, judgments = session_view(cfg, pref_store, ArenaSession(annotator=alice))
    assert [row[1:] for row in judgments["value"]] == [
        ["失眠怎么办？", "自由提问 free question", "👎 一个回答 an answer"],  # not judged: the names stay hidden
        ["糖尿病有哪些常见症状？", "自由提问 free question", "r1/dpo 更好 better; 👍 r1/sft"],
        [ALICE_PROMPT, "自由提问 free question", "r1/sft 更好 better"],
    ]

    # a session that is not logged in sees nothing
    counts, pairs, judgments = session_view(cfg, pref_store, ArenaSession())
    assert "log in" in counts and pairs["value"] == [] and judgments["value"] == []


def test_an_admin_sees_everyone_de_identified_with_the_annotator(pref_store, people, cfg):
    alice, bob, admin = people
    _judge(pref_store, alice, ALICE_PROMPT)
    _judge(pref_store, bob, BOB_PROMPT)
    counts, pairs = data_view(cfg, pref_store, admin)
    rows = pairs["value"]
    assert pairs["headers"][6] == ANNOTATOR_COLUMN
    assert {row[6] for row in rows} == {"alice", "bob"}
    shown = " ".join(row[1] for row in rows)
    assert ALICE_PROMPT in shown and "[NAME]" in shown and "[PHONE]" in shown
    assert "张三" not in str(rows) and "13800000000" not in str(rows)
    assert re.search(r"\| 3 \| 4 \| 2 \| 2 \| 2 \(pairwise 2", counts)  # store-wide: 3 accounts, 2 comparisons
    assert "single-answer ratings" in counts and "bank prompts" in counts


def test_an_admin_imports_a_bank_from_the_tab_with_errors_and_duplicates_reported(pref_store, people, cfg, tmp_path):
    *_, admin = people
    upload = tmp_path / "upload" / "bank_with_errors.jsonl"  # Gradio keeps the uploaded file's name
    upload.parent.mkdir()
    shutil.copyfile(FIXTURES / "bank_with_errors.jsonl", upload)
    message = import_bank_for_admin(pref_store, ArenaSession(annotator=admin), str(upload))
    assert "imported 3, duplicates 1, errors 1" in message
    lines = message.split("  \n")
    assert len(lines) == 2 and lines[1].startswith("- bank_with_errors.jsonl:3:")
    assert len(pref_store.bank_prompts()) == 3
    counts, _ = data_view(cfg, pref_store, admin)
    assert "| 0 | 3 | 0 |" in counts  # ratings, bank prompts, assignments done

    # the same file again: everything is a duplicate; a csv with a named bank
    again = import_bank_for_admin(pref_store, ArenaSession(annotator=admin), str(upload))
    assert "imported 0, duplicates 4" in again
    assert "imported 2, duplicates 0, errors 0" in import_bank_for_admin(
        pref_store, ArenaSession(annotator=admin), str(FIXTURES / "bank_two.csv"), bank="骨与血液"
    )
    assert {p.bank for p in pref_store.bank_prompts()} >= {"骨与血液"}
    with pytest.raises(UserError, match="choose a bank file"):
        import_bank_for_admin(pref_store, ArenaSession(annotator=admin), None)


def test_annotators_cannot_import_or_export_and_do_not_see_the_controls(pref_store, people, cfg):
    alice, *_ = people
    for who in (ArenaSession(annotator=alice), ArenaSession()):
        with pytest.raises(UserError, match="only admins"):
            import_bank_for_admin(pref_store, who, str(FIXTURES / "bank_e2e.jsonl"))
        with pytest.raises(UserError, match="only admins"):
            export_for_admin(cfg, pref_store, who)
        with pytest.raises(UserError, match="only admins"):
            start_round_for_admin(cfg, pref_store, who)
    assert pref_store.bank_prompts() == [] and pref_store.queue_round() == 1

    with gr.Blocks() as demo:
        session = gr.State(ArenaSession(annotator=alice))
        with gr.Tab("数据 Data") as tab:
            admin_group = build_data_tab(cfg, pref_store, session, tab)
    assert admin_group.visible is False  # app.main shows it at page load for admins only
    inside = {b.elem_id for b in demo.blocks.values() if _inside(b, admin_group)}
    assert {"bank-file", "import-bank", "export"} <= inside


def _inside(block, group) -> bool:
    parent = block.parent
    while parent is not None:
        if parent is group:
            return True
        parent = parent.parent
    return False


def test_the_export_button_exports_pairs_and_single_answer_ratings(pref_store, people, cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the download copies go there
    alice, _, admin = people
    cmp = _judge(pref_store, alice, ALICE_PROMPT)
    pref_store.submit_rating(RatingIn(cmp.id, alice.id, label="B", up=False, correction="应低盐低脂饮食，控制体重。"))
    message, pairs_file, ratings_file = export_new(cfg, pref_store, ArenaSession(annotator=admin))
    assert "exported 1 pairs" in message and "rating" in message
    assert len(Path(pairs_file).read_text(encoding="utf-8").splitlines()) == 1
    assert len(Path(ratings_file).read_text(encoding="utf-8").splitlines()) >= 1
    assert list(cfg.collected_ratings_dir.glob("*.jsonl"))
    assert export_for_admin(cfg, pref_store, ArenaSession(annotator=admin))[0].startswith("没有新的偏好对")


def test_an_admin_starts_a_new_queue_round_and_the_bank_is_in_every_queue_again(pref_store, people, cfg):
    alice, _, admin = people
    import_bank_for_admin(pref_store, ArenaSession(annotator=admin), str(FIXTURES / "bank_e2e.jsonl"))
    taken = pref_store.next_assignment(alice.id)
    made = pref_store.record_comparison(
        ComparisonIn(
            alice.id,
            taken.bank_prompt.messages,
            [ResponseIn("r1/sft", "多喝水，注意休息。"), ResponseIn("r1/dpo", "应及时就医，明确病因。")],
            assignment_id=taken.id,
        )
    )
    pref_store.submit_judgment(JudgmentIn(made.id, alice.id, choice="B"))
    assert pref_store.next_assignment(alice.id) is None
    message = start_round_for_admin(cfg, pref_store, ArenaSession(annotator=admin))
    assert "queue round 2 started" in message and "1 bank prompts" in message
    again = pref_store.next_assignment(alice.id)
    assert again.bank_prompt.id == taken.bank_prompt.id and again.round == 2
