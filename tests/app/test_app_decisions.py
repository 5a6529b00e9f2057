"""A decided study as the Leaderboard tab's run-vs-run line and the API's /compare_runs figures show it (issue 33)."""

from __future__ import annotations

from app.tabs.leaderboard import compare_runs_line
from preference_store.study_figures import format_status, run_comparison_figures, status_figures
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
