"""The Leaderboard tab: Bradley-Terry ratings with 95% intervals, win rates, vote counts and the
per-criterion means, all computed by the preference store."""

from __future__ import annotations

import gradio as gr

from preference_store.guidelines import DEFAULT_CRITERIA
from preference_store.records import Leaderboard
from preference_store.repository import PreferenceStore

CRITERIA = tuple(c.key for c in DEFAULT_CRITERIA)
RATING_COLUMNS = ["排名 rank", "检查点 checkpoint", "BT rating", "95% CI", "对局 battles", "胜 wins", "负 losses",
                  "平 ties"]


def ratings_table(board: Leaderboard) -> list[list]:
    """One row per checkpoint, best first."""
    return [[i + 1, r.checkpoint_id, round(r.rating, 1), f"{r.ci95[0]:.0f} – {r.ci95[1]:.0f}", r.battles, r.wins,
             r.losses, r.ties] for i, r in enumerate(board.ratings)]


def matrix_table(board: Leaderboard, values: dict[str, dict], fmt) -> tuple[list[str], list[list]]:
    """A checkpoint x checkpoint table (row against column); '' where the two never met."""
    names = [r.checkpoint_id for r in board.ratings]
    rows = [[row] + [fmt(values[row][col]) if col in values.get(row, {}) else "" for col in names] for row in names]
    return ["行 vs 列 row vs column"] + names, rows


def criteria_table(board: Leaderboard) -> list[list]:
    """Mean 1-5 score per criterion (with the number of scores) for every scored checkpoint."""
    return [[cid] + [f"{board.criteria[cid][c]:.2f} (n={board.criteria_n[cid][c]})" if c in board.criteria[cid]
                     else "" for c in CRITERIA] for cid in sorted(board.criteria)]


def summary_line(board: Leaderboard) -> str:
    a = board.agreement
    measured = a.percent is not None and a.fleiss_kappa is not None
    agreement = (f"标注者一致性 agreement on {a.comparisons} comparisons judged by several annotators: "
                 f"{a.percent:.0%}, Fleiss κ {a.fleiss_kappa:.2f}" if measured
                 else "标注者一致性 agreement: no comparison has been judged by more than one annotator yet")
    return f"共 {board.judgments} 次评判 judgments (ties and both-bad count half a win each). {agreement}."


def leaderboard_view(store: PreferenceStore) -> list:
    """Values for the tab's components, freshly computed from the store."""
    board = store.leaderboard()
    win_head, win_rows = matrix_table(board, board.win_rate, lambda v: f"{v:.0%}")
    count_head, count_rows = matrix_table(board, board.battles, str)
    return [
        summary_line(board),
        gr.update(value=ratings_table(board), headers=RATING_COLUMNS),
        gr.update(value=win_rows, headers=win_head),
        gr.update(value=count_rows, headers=count_head),
        gr.update(value=criteria_table(board), headers=["检查点 checkpoint", *(c for c in CRITERIA)]),
    ]


def build_leaderboard_tab(store: PreferenceStore, tab: gr.Tab) -> None:
    """Lay out the Leaderboard tab; it is recomputed whenever the tab is opened or refreshed."""
    refresh = gr.Button("刷新 Refresh", elem_id="refresh-leaderboard")
    summary = gr.Markdown(elem_id="leaderboard-summary")
    gr.Markdown("#### Bradley-Terry 评分 ratings (95% bootstrap intervals)")
    ratings = gr.Dataframe(headers=RATING_COLUMNS, interactive=False, elem_id="ratings")
    gr.Markdown("#### 胜率矩阵 Win rate (row beats column)")
    win_rate = gr.Dataframe(interactive=False, elem_id="win-rate")
    gr.Markdown("#### 对局数 Vote counts (row vs column)")
    counts = gr.Dataframe(interactive=False, elem_id="vote-counts")
    gr.Markdown("#### 各维度平均分 Mean scores per criterion (1-5)")
    criteria = gr.Dataframe(interactive=False, elem_id="criteria")
    outputs = [summary, ratings, win_rate, counts, criteria]
    refresh.click(lambda: leaderboard_view(store), None, outputs)
    tab.select(lambda: leaderboard_view(store), None, outputs)
