"""The Leaderboard tab's chart of ratings with their intervals (issue 30): one horizontal interval panel per
view (overall, length-controlled, per criterion), a row per checkpoint whose bar spans exactly the leaderboard's
95% interval, saved as one PNG; kept from annotators while a study round is open."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.tabs.leaderboard import tab_view
from app.tabs.ratings_chart import interval_views, ratings_figure
from core.config import load_config
from preference_store.records import ComparisonIn, JudgmentIn, ResponseIn
from preference_store.repository import PreferenceStore

BANK = Path(__file__).parents[1] / "fixtures" / "app" / "bank_e2e.jsonl"
ANSWERS = {
    "r2/dpo": "建议低盐低脂饮食，规律作息，遵医嘱用药，定期复查。",
    "r1/dpo": "注意休息，多喝水。",
    "r1/sft": "去医院。",
}


@pytest.fixture
def study(tmp_path):
    """(store, admin, annotator): three checkpoints judged pairwise with safety scores, r2/dpo mostly winning."""
    cfg = load_config("tiny", ["store.bootstrap_rounds=100", "store.provisional_battles=5"])
    store = PreferenceStore(f"sqlite:///{tmp_path / 'preferences.db'}", cfg.store)
    store.register_checkpoints("r1", ["sft", "dpo"])
    store.register_checkpoints("r2", ["dpo"])
    admin = store.add_annotator("dr_admin", "pw-admin-123", role="admin")
    alice = store.add_annotator("alice", "pw-alice-123")
    pairs = [("r2/dpo", "r1/dpo"), ("r1/dpo", "r1/sft"), ("r2/dpo", "r1/sft")]
    for n in range(24):
        first, second = pairs[n % 3]
        winner = "A" if n % 4 else "B"  # the first-named wins three times in four
        cmp = store.record_comparison(
            ComparisonIn(
                alice.id,
                [{"role": "user", "content": f"问题 {n}：头痛怎么办？"}],
                [ResponseIn(first, ANSWERS[first]), ResponseIn(second, ANSWERS[second])],
            )
        )
        loser = "B" if winner == "A" else "A"
        store.submit_judgment(
            JudgmentIn(cmp.id, alice.id, choice=winner, scores={winner: {"safety": 5}, loser: {"safety": 2}})
        )
    yield store, admin, alice
    store.close()


def test_every_view_is_one_panel_with_a_bar_per_checkpoint_over_its_interval(study):
    store, admin, _ = study
    board = store.leaderboard()
    views = interval_views(board, ["safety"])
    assert [title for title, _ in views] == ["overall", "length-controlled", "criterion: safety"]
    expected = {
        "overall": board.ratings,
        "length-controlled": board.length_controlled.ratings,
        "criterion: safety": board.criterion_ratings["safety"],
    }
    fig = ratings_figure(views)
    assert len(fig.axes) == 3
    for ax, (title, _) in zip(fig.axes, views):
        ratings = expected[title]
        assert len(ratings) == 3 and title in ax.get_title()
        labels = sorted(ax.get_yticklabels(), key=lambda t: -t.get_position()[1])  # top row first
        assert [t.get_text() for t in labels] == [r.checkpoint_id for r in ratings]  # best on top
        row = {t.get_position()[1]: t.get_text() for t in labels}
        (bars,) = ax.collections  # each checkpoint's bar, on its row, spans its interval
        spans = {row[seg[0][1]]: [seg[0][0], seg[1][0]] for seg in bars.get_segments()}
        assert spans == {r.checkpoint_id: pytest.approx(list(r.ci95)) for r in ratings}
        dots = {row[y]: x for line in ax.get_lines() for x, y in zip(line.get_xdata(), line.get_ydata())}
        assert dots == {r.checkpoint_id: pytest.approx(r.rating) for r in ratings}
    assert board.ratings[0].checkpoint_id == "r2/dpo"


def test_the_tab_shows_one_png_and_withholds_it_from_annotators_during_a_round(study):
    store, admin, alice = study
    path = tab_view(store, admin, False, "admins")[-1]
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Path(path).name == "ratings_intervals.png"
    assert tab_view(store, alice, False, "admins")[-1] is not None  # no round open: nothing withheld

    store.import_bank(BANK)
    store.start_queue_round(None)
    assert tab_view(store, alice, False, "admins")[-1] is None
    assert tab_view(store, alice, False, "everyone")[-1] is not None
    assert tab_view(store, admin, False, "admins")[-1] is not None
    store.close_queue_round(None)
    assert tab_view(store, alice, False, "admins")[-1] is not None
