"""A decided study as the Leaderboard tab's run-vs-run line and pairwise decisions and the API's /compare_runs and
/leaderboard figures show it; the annotators' reliability in the tab for admins only (issue 33)."""

from __future__ import annotations

from app.tabs.leaderboard import compare_runs_line, full_view, pairwise_table
from preference_store.study_figures import (
    format_leaderboard,
    format_status,
    leaderboard_figures,
    run_comparison_figures,
    status_figures,
)
from tests.store.test_sequential import decided_study  # noqa: F401 - the fixture


def test_the_tab_and_the_api_say_decided_after_n_judgments(decided_study):  # noqa: F811
    store, _, made = decided_study
    line = compare_runs_line(store, "new", "old", "heldout")
    assert line.startswith("**更好 newer run better**") and f"decided after {made} judgments" in line
    assert "anytime interval" in line and "P(better)" not in line
    figures = run_comparison_figures(store.compare_runs("new", "old", split="heldout"))  # what /compare_runs returns
    assert figures["verdict"] == "better" and figures["decided_after"] == made
    assert figures["decisions"] == "anytime" and figures["interval"][0] > 0.5
    status = status_figures(store)  # /study_status and study status
    assert status["decided"].startswith("better:")
    assert "decided, the queue hands out nothing more: better:" in format_status(status)


def test_the_leaderboard_decides_each_pair_as_compare_runs_does(decided_study):  # noqa: F811
    """The leaderboard's pairwise comparison of the two checkpoints is the anytime-valid decision compare-runs
    reached, in the tab, in /leaderboard's figures and in ``study leaderboard``."""
    store, _, made = decided_study
    board = store.leaderboard(rounds=50)
    [pair] = board.pairwise
    assert (pair.first, pair.second, pair.verdict, pair.decided_after) == ("new/dpo", "old/dpo", "better", made)
    assert pair.decided_interval[0] > 0.5 and f"decided after {made} judgments" in pair.summary
    figures = leaderboard_figures(board, 50)  # what /leaderboard returns
    assert figures["pairwise"][0]["verdict"] == "better" and figures["pairwise"][0]["decided_after"] == made
    assert f"better: new/dpo against old/dpo, decided after {made} judgments" in format_leaderboard(figures)
    [row] = pairwise_table(board)
    assert row[:3] == ["new/dpo", "old/dpo", "更好 higher-rated better"] and row[3].startswith(f"{made} judgments")


def test_reliability_is_shown_to_admins_only(decided_study):  # noqa: F811
    store, annotators, _ = decided_study
    admin = store.add_annotator("admin_zhou", "a-long-password", role="admin")
    head, table = full_view(store, admin)[12:14]
    assert head["visible"] and "Dawid & Skene" in head["value"]
    assert table["visible"] and {row[0] for row in table["value"]} == {"wang", "li", "zhang"}
    for annotator in (annotators[0], None):  # an annotator, and nobody logged in
        head, table = full_view(store, annotator)[12:14]
        assert not head["visible"] and head["value"] == "" and not table["visible"] and table["value"] == []
