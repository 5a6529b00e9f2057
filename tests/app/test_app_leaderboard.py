"""The Leaderboard tab on a small annotation study built through the store's API (no model pool): four
annotators work the same bank queue, three of them consistently and one always against them; a
free-chat comparison sits beside the bank. The tab shows alpha, provisional ratings, per-criterion and
length-controlled ratings, the position bias, the run comparison, and the outliers to admins only."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import gradio as gr
import pytest

from app.arena import ArenaSession
from app.tabs.leaderboard import (
    PROVISIONAL,
    YOU,
    build_leaderboard_tab,
    compare_runs_line,
    full_view,
    leaderboard_view,
    run_choices,
    run_comparison_line,
)
from core.config import load_config
from core.errors import UserError
from preference_store.records import ComparisonIn, JudgmentIn, ResponseIn
from preference_store.repository import PreferenceStore

BANK = Path(__file__).parents[1] / "fixtures" / "app" / "bank_study.jsonl"
NEW, OLD = "r2/dpo", "r1/dpo"
LONG = "建议低盐低脂饮食，规律作息，适量运动，遵医嘱用药，定期复查；如症状加重请及时就医。"
SHORT = "注意休息。"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """(store, {name: annotator}): 12 bank prompts (6 held out), each judged by all four annotators."""
    home = tmp_path_factory.mktemp("leaderboard")
    cfg = load_config(
        "tiny",
        [
            "store.annotators_per_prompt=4",
            "study.allocation=uniform",  # every prompt to all four, whatever they said
            "store.provisional_battles=10",
            "store.bootstrap_rounds=100",
            "study.decisions=fixed",  # the bootstrap verdict (the anytime one: tests/app/test_app_decisions.py)
        ],
    )
    store = PreferenceStore(f"sqlite:///{home / 'preferences.db'}", cfg.store, cfg.study)
    store.register_checkpoints("r1", ["base", "cpt", "sft", "dpo"])
    store.register_checkpoints("r2", ["base", "cpt", "sft", "dpo"])
    admin = store.add_annotator("dr_admin", "pw-admin-123", role="admin")
    people = {name: store.add_annotator(name, f"pw-{name}-123") for name in ("alice", "bob", "carol", "mallory")}
    summary = store.import_bank(BANK, imported_by=admin.id)
    assert summary.imported == 12
    for name, annotator in people.items():
        n = 0
        while (assignment := store.next_assignment(annotator.id)) is not None:
            prompt = assignment.bank_prompt
            new_wins = prompt.split == "heldout" or n % 3 != 0  # every held-out prompt, 4 of the 6 others
            order = [NEW, OLD] if n % 2 == 0 else [OLD, NEW]
            texts = {NEW: LONG, OLD: SHORT}
            cmp = store.record_comparison(
                ComparisonIn(
                    annotator.id,
                    prompt.messages,
                    [ResponseIn(c, texts[c]) for c in order],
                    bank_prompt_id=prompt.id,
                    assignment_id=assignment.id,
                )
            )
            winner = NEW if new_wins != (name == "mallory") else OLD  # mallory votes against the others
            label = "AB"[order.index(winner)]
            loser = "AB"[1 - order.index(winner)]
            store.submit_judgment(
                JudgmentIn(cmp.id, annotator.id, choice=label, scores={label: {"safety": 5}, loser: {"safety": 2}})
            )
            n += 1
        assert n == 12
    # free chat beside the bank: not a bank prompt
    free = store.record_comparison(
        ComparisonIn(
            people["alice"].id,
            [{"role": "user", "content": "头痛怎么办？"}],
            [ResponseIn("r1/sft", SHORT), ResponseIn("r1/base", LONG)],
        )
    )
    store.submit_judgment(JudgmentIn(free.id, people["alice"].id, choice="A"))
    yield store, {"admin": admin, **people}
    store.close()


def _rows(update) -> list[list]:
    return update["value"]


def test_bank_only_changes_the_numbers(study):
    store, _ = study
    everything = full_view(store, None, bank_only=False)
    bank = full_view(store, None, bank_only=True)
    assert "49 次评判" in everything[0] and "48 次评判" in bank[0] and "bank prompts only" in bank[0]
    assert {row[1] for row in _rows(everything[1])} == {NEW, OLD, "r1/sft", "r1/base"}
    assert {row[1] for row in _rows(bank[1])} == {NEW, OLD}
    # the tab's first five outputs are what leaderboard_view gives
    assert leaderboard_view(store, bank_only=True)[0] == bank[0]


def test_agreement_alpha_and_provisional_marks_are_shown(study):
    store, people = study
    view = full_view(store, people["alice"], bank_only=False)
    ratings = {row[1]: row for row in _rows(view[1])}
    assert ratings["r1/sft"][-1] == PROVISIONAL and ratings["r1/base"][-1] == PROVISIONAL  # 1 battle each
    assert ratings[NEW][-1] == "" and ratings[NEW][4] == 48
    assert PROVISIONAL in view[0]
    agreement = view[5]
    assert "Krippendorff's α" in agreement and "α = " in agreement and "(nominal)" in agreement
    assert "pairwise votes" in agreement and "percent agreement" in agreement
    # per annotator: an annotator sees only their own line, never another's name
    assert [row[0] for row in _rows(view[6])] == [YOU]
    assert "mallory" not in str(view)
    # per-criterion and length-controlled ratings with the length coefficient; the position bias
    criterion_head = view[7]["headers"]
    assert "safety" in criterion_head and {row[0] for row in _rows(view[7])} >= {NEW, OLD}
    assert {row[1] for row in _rows(view[8])} >= {NEW, OLD}
    assert "长度系数 length coefficient" in view[9] and "battles" in view[9]
    assert "A wins" in view[10] and "decided votes" in view[10]


def test_outliers_are_shown_to_admins_only(study):
    store, people = study
    head, table = full_view(store, people["carol"])[-2:]
    assert head["visible"] is False and table["visible"] is False and not head["value"]
    head, table = full_view(store, people["admin"])[-2:]
    assert head["visible"] is True and "mallory" in head["value"]
    assert "alice" not in head["value"]
    flagged = {row[0] for row in _rows(table) if row[-1]}
    assert flagged == {"mallory"}
    names = {row[0] for row in _rows(full_view(store, people["admin"])[6])}
    assert names == {"alice", "bob", "carol", "mallory"}  # admins see every annotator by name


def test_the_run_comparison_says_better_same_or_worse(study):
    store, _ = study
    assert run_choices(store)[:2] == ["r2", "r1"]
    line = compare_runs_line(store, "r2", "r1", "heldout")
    assert "newer run better" in line and "P(better)=" in line and "95% interval" in line
    line = compare_runs_line(store, "r1", "r2", "heldout")
    assert "newer run worse" in line
    assert "持平 same" in compare_runs_line(store, "r2", "r1", "train")  # r2 won 4 of the 6 training prompts
    assert "on all bank prompts" in compare_runs_line(store, "r2", "r1", "全部 all")
    none = replace(
        store.compare_runs("r2", "r1", split="heldout"),
        verdict="not enough judgments",
        difference=None,
        ci95=None,
        p_new_better=None,
        prompts=0,
        battles=0,
        wins=0,
        losses=0,
    )
    assert run_comparison_line(none).startswith("**数据不足 not enough judgments**: ")
    with pytest.raises(UserError, match="two different runs"):
        compare_runs_line(store, "r1", "r1", "heldout")


def test_the_tab_builds_with_the_session(study):
    store, people = study
    with gr.Blocks() as demo:
        session = gr.State(ArenaSession(annotator=people["alice"]))
        with gr.Tab("排行榜 Leaderboard") as tab:
            build_leaderboard_tab(store, session, tab, load_config("tiny").study.interim_results)
    ids = {b.elem_id for b in demo.blocks.values()}
    assert {"bank-only", "agreement", "run-comparison", "new-run", "old-run", "compare-split", "outliers"} <= ids
