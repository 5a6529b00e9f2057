"""One live judgment per (annotator, comparison) and one live single-answer rating per (annotator, answer).

Revision ID: 0005
Revises: 0004

``judgments`` and ``answer_ratings`` get ``superseded_by`` (the id of the record that replaced this one; NULL =
live) and ``superseded_why`` ("revised": the annotator's explicit revise; "duplicate": resolved here), and a
partial unique index over the live rows (SQLite and PostgreSQL both have partial indexes).

A store written before this rule may hold second votes (the API stored "A" and then "B" for one annotator and
comparison). They are resolved here as the rule says, keeping the latest (by time, then id): every earlier one
stays in the table, marked superseded by the latest with ``superseded_why = "duplicate"``, so nothing is dropped;
its pairs stay too but leave the export, the leaderboard and the training data. ``./launch.sh judgment-duplicates``
lists what was resolved. Downgrading removes the marks (the earlier votes become live again).
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# table -> the columns one live record is unique over
LIVE_KEYS = {"judgments": ("comparison_id", "annotator_id"), "answer_ratings": ("response_id", "annotator_id")}
LIVE_INDEX = {"judgments": "uq_judgments_live", "answer_ratings": "uq_answer_ratings_live"}


def upgrade() -> None:
    bind = op.get_bind()
    for table, key in LIVE_KEYS.items():
        op.add_column(table, sa.Column("superseded_by", sa.String(32), nullable=True))
        op.add_column(table, sa.Column("superseded_why", sa.String(16), nullable=True))
        rows = sa.table(
            table,
            sa.column("id"),
            sa.column("created"),
            sa.column("superseded_by"),
            sa.column("superseded_why"),
            *(sa.column(c) for c in key),
        )
        latest: dict[tuple, str] = {}  # (key values) -> the id of the newest record seen so far
        earlier: list[tuple[str, tuple]] = []
        ordered = sa.select(rows.c.id, *(rows.c[c] for c in key)).order_by(rows.c.created, rows.c.id)
        for record_id, *values in bind.execute(ordered):
            group = tuple(values)
            if group in latest:
                earlier.append((latest[group], group))
            latest[group] = record_id
        for record_id, group in earlier:
            bind.execute(
                rows.update()
                .where(rows.c.id == record_id)
                .values(superseded_by=latest[group], superseded_why="duplicate")
            )
        live = sa.text("superseded_by IS NULL")
        op.create_index(LIVE_INDEX[table], table, list(key), unique=True, sqlite_where=live, postgresql_where=live)


def downgrade() -> None:
    for table in LIVE_KEYS:
        op.drop_index(LIVE_INDEX[table], table_name=table)
        # plain ALTER TABLE, as in 0002: a batch copy would drop the table that scores and pairs reference
        op.drop_column(table, "superseded_why")
        op.drop_column(table, "superseded_by")
