"""The Leaderboard tab's chart: every view of the Bradley-Terry ratings (overall, length-controlled, per
criterion) as a horizontal interval plot, one panel per view, as LMArena shows its ratings: a dot at the rating,
a bar over its 95% interval, best on top. One PNG holds every panel, so the image the tab shows is the one an
admin downloads for a report.
"""

from __future__ import annotations

from pathlib import Path

from preference_store.records import CheckpointRating, Leaderboard

OVERALL = "overall"
LENGTH_CONTROLLED = "length-controlled"


def interval_views(board: Leaderboard, criteria: list[str]) -> list[tuple[str, list[CheckpointRating]]]:
    """(title, ratings best first) for each view that has ratings: overall, length-controlled, then each
    criterion in ``criteria``'s order (the guideline's priority) that has ratings from the 1-5 scores."""
    views = [(OVERALL, board.ratings)]
    if board.length_controlled is not None:
        views.append((LENGTH_CONTROLLED, board.length_controlled.ratings))
    views += [(f"criterion: {c}", board.criterion_ratings[c]) for c in criteria if c in board.criterion_ratings]
    return [(title, ratings) for title, ratings in views if ratings]


def ratings_figure(views: list[tuple[str, list[CheckpointRating]]]):
    """A matplotlib figure with one horizontal interval panel per view (rows: checkpoints, best on top;
    provisional ratings hollow)."""
    # a Figure of its own rather than pyplot's (training/evaluation/report.py): the app draws from several
    # request threads at once, and pyplot's current-figure state is shared between them
    from matplotlib.figure import Figure

    rows = max((len(ratings) for _, ratings in views), default=1)
    fig = Figure(figsize=(8, 0.9 + (0.35 * rows + 0.8) * max(len(views), 1)))
    axes = fig.subplots(len(views) or 1, 1, squeeze=False)
    for ax, (title, ratings) in zip(axes[:, 0], views):
        ys = list(range(len(ratings)))[::-1]  # best first on top
        ax.hlines(ys, [r.ci95[0] for r in ratings], [r.ci95[1] for r in ratings], color="C0", linewidth=2)
        solid = [(r.rating, y) for r, y in zip(ratings, ys) if not r.provisional]
        hollow = [(r.rating, y) for r, y in zip(ratings, ys) if r.provisional]
        if solid:
            ax.plot(*zip(*solid), "o", color="C0", label="rating")
        if hollow:
            ax.plot(*zip(*hollow), "o", color="C0", markerfacecolor="white", label="provisional")
        ax.set_yticks(ys, [r.checkpoint_id for r in ratings])
        ax.set_title(f"{title}: Bradley-Terry rating, 95% interval")
        ax.grid(axis="x", alpha=0.3)
    if not views:
        axes[0, 0].set_title("no ratings yet")
    axes[-1, 0].set_xlabel("rating (1000 = average; +400 = 10:1 odds)")
    fig.tight_layout()
    return fig


def save_ratings_chart(board: Leaderboard, criteria: list[str], path: Path) -> Path | None:
    """Write the chart of :func:`interval_views` to ``path`` (PNG); None, and nothing written, with no ratings."""
    views = interval_views(board, criteria)
    if not views:
        return None
    ratings_figure(views).savefig(path, dpi=110)
    return path
