"""``./launch.sh study status | leaderboard | agreement [--json]`` on a small study filled through the store's API:
three annotators work a bank of 6 prompts (two of them agree, one votes against them), one is halfway. The figures
are the Leaderboard tab's: the test reads both and compares them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.tabs.leaderboard import annotator_agreement_table, full_view, ratings_table
from chimed import main as cli_main
from core.config import load_config
from preference_store.records import ComparisonIn, JudgmentIn, ResponseIn
from preference_store.repository import PreferenceStore

pytestmark = pytest.mark.both_backends

BANK = Path(__file__).parents[1] / "fixtures" / "app" / "bank_study.jsonl"  # 12 prompts, 6 held out
NEW, OLD = "r1/dpo", "r1/sft"
# uniform allocation: every prompt to k annotators whatever they said, so the progress figures below are fixed
SETTINGS = [
    "store.annotators_per_prompt=3",
    "store.bootstrap_rounds=50",
    "store.provisional_battles=5",
    "study.allocation=uniform",
]


def fill_study(store: PreferenceStore, prompts: int = 6) -> dict:
    """Accounts and judgments through the store's API: alice and bob judge ``prompts`` bank prompts for NEW
    (scoring safety), mallory for OLD, carol half of them; returns {name: annotator}."""
    admin = store.add_annotator("dr_admin", "pw-admin-123", role="admin")
    people = {n: store.add_annotator(n, f"pw-{n}-123") for n in ("alice", "bob", "carol", "mallory")}
    store.import_bank(BANK, imported_by=admin.id)
    for name, annotator in people.items():
        for n in range(prompts // 2 if name == "carol" else prompts):
            assignment = store.next_assignment(annotator.id)
            order = [NEW, OLD] if n % 2 == 0 else [OLD, NEW]
            cmp = store.record_comparison(
                ComparisonIn(
                    annotator.id,
                    assignment.bank_prompt.messages,
                    [ResponseIn(c, f"{c} 的回答 {n}") for c in order],
                    bank_prompt_id=assignment.bank_prompt.id,
                    assignment_id=assignment.id,
                )
            )
            winner = OLD if name == "mallory" else NEW
            label, loser = "AB"[order.index(winner)], "AB"[1 - order.index(winner)]
            store.submit_judgment(
                JudgmentIn(cmp.id, annotator.id, choice=label, scores={label: {"safety": 5}, loser: {"safety": 2}})
            )
    return {"admin": admin, **people}


@pytest.fixture
def study(store_url):
    """(store, {name: annotator}) at the URL the command line opens."""
    cfg = load_config("tiny", SETTINGS)
    store = PreferenceStore(store_url, cfg.store, cfg.study)
    store.register_checkpoints("r1", ["base", "cpt", "sft", "dpo"])
    people = fill_study(store)
    yield store, people
    store.close()


def run(capsys, *argv: str) -> tuple[int, str]:
    code = cli_main(["study", *argv, "--profile", "tiny", *SETTINGS])
    return code, capsys.readouterr().out


def test_status_says_who_has_finished_what(study, capsys):
    code, out = run(capsys, "status")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert out.splitlines()[0] == "queue round 1, 12 bank prompts"
    assert lines["carol"].split()[2:5] == ["3", "/", "12"] and lines["carol"].endswith("in progress")
    assert lines["alice"].split()[2:6] == ["6", "/", "12", "6"]
    assert lines["dr_admin"].endswith("not started")

    code, out = run(capsys, "status", "--json")
    figures = json.loads(out)
    by_name = {a["name"]: a for a in figures["annotators"]}
    assert code == 0 and figures["round"] == 1 and figures["bank_prompts"] == 12
    assert (by_name["carol"]["done"], by_name["carol"]["judgments"], by_name["carol"]["finished"]) == (3, 3, False)
    assert by_name["mallory"]["role"] == "annotator" and by_name["dr_admin"]["role"] == "admin"


def test_leaderboard_has_the_tab_s_ratings_and_intervals(study, capsys):
    store, people = study
    code, out = run(capsys, "leaderboard", "--json")
    figures = json.loads(out)
    tab = ratings_table(store.leaderboard())  # the rows the tab shows (the same store call)
    assert code == 0 and figures["judgments"] == 21 and figures["bootstrap_rounds"] == 50
    assert [
        [
            r["checkpoint_id"],
            round(r["rating"], 1),
            f"{r['ci95'][0]:.0f} – {r['ci95'][1]:.0f}",
            r["battles"],
            r["wins"],
            r["losses"],
        ]
        for r in figures["ratings"]
    ] == [row[1:7] for row in tab]
    assert figures["ratings"][0]["checkpoint_id"] == NEW and figures["ratings"][0]["wins"] == 15
    assert [r["checkpoint_id"] for r in figures["criterion_ratings"]["safety"]] == [NEW, OLD]

    code, text = run(capsys, "leaderboard")
    assert code == 0 and "21 judgments (all comparisons)" in text and "50 bootstrap resamples" in text
    top = next(line for line in text.splitlines() if line.split()[:2] == ["1", NEW])
    assert f"{tab[0][2]:.1f}" in top and tab[0][3] in top


def test_agreement_has_alpha_per_annotator_outliers_and_position_bias(study, capsys):
    store, people = study
    code, out = run(capsys, "agreement", "--json")
    figures = json.loads(out)
    board = store.leaderboard()
    assert code == 0
    assert figures["by_kind"]["pairwise"]["alpha"] == pytest.approx(board.agreement.alpha)
    judges: dict[str, set[int]] = {}
    for a in store.assignments():
        judges.setdefault(a.bank_prompt.id, set()).add(a.annotator_id)
    assert figures["by_kind"]["pairwise"]["units"] == sum(len(who) > 1 for who in judges.values())
    # each annotator's line as the tab shows it to an admin
    tab = annotator_agreement_table(board.agreement, people["admin"])
    assert [[a["name"], a["units"]] for a in figures["annotators"]] == [row[:2] for row in tab]
    assert {a["name"] for a in figures["annotators"]} == {"alice", "bob", "carol", "mallory"}
    assert figures["position_bias"]["decided_votes"] == 21
    assert figures["outliers"] == [s.name for s in board.outliers]

    code, text = run(capsys, "agreement")
    assert code == 0 and text.splitlines()[0].split() == ["kind", "alpha", "level", "percent", "units", "annotators"]
    assert f"{board.agreement.alpha:.2f}" in text.splitlines()[1]
    assert "position bias: panel A wins" in text and "of 21 decided votes" in text
    mallory = next(line for line in text.splitlines() if line.startswith("mallory") and "%" in line)
    assert mallory.split()[1] == str(next(a["units"] for a in figures["annotators"] if a["name"] == "mallory"))


def test_the_tab_shows_the_same_alpha(study, capsys):
    store, people = study
    view = full_view(store, people["admin"])  # agreement markdown is the 6th component
    _, out = run(capsys, "agreement", "--json")
    alpha = json.loads(out)["by_kind"]["pairwise"]["alpha"]
    assert f"α = {alpha:.2f}" in view[5]
