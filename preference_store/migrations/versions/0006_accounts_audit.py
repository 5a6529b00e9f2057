"""Accounts fit for a clinical study: ``audit_events`` (the append-only audit log, guarded by triggers that refuse
UPDATE and DELETE) and, on ``annotators``, ``disabled``, ``password_changed`` and ``password_weak`` (NULL for
existing accounts: their passwords are checked against the policy at their next login).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UTC = sa.DateTime  # stored as naive UTC (preference_store.models.UTCDateTime)
REFUSAL = "audit_events rows are append-only"


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("time", UTC(), nullable=False, index=True),
        sa.Column("actor", sa.String(100), nullable=True, index=True),
        sa.Column("action", sa.String(40), nullable=False, index=True),
        sa.Column("target", sa.String(255), nullable=True, index=True),
        sa.Column("address", sa.String(64), nullable=True, index=True),
        sa.Column("detail", sa.JSON(), nullable=True),
    )
    # plain ALTER TABLE, as in 0002: a batch copy would drop annotators, which judgments and tokens reference
    op.add_column("annotators", sa.Column("disabled", UTC(), nullable=True))
    op.add_column("annotators", sa.Column("password_changed", UTC(), nullable=True))
    op.add_column("annotators", sa.Column("password_weak", sa.Boolean(), nullable=True))
    # the repository never updates or deletes an audit row; the database refuses it too (a script, a console)
    if op.get_bind().dialect.name == "sqlite":
        for event in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_events_no_{event.lower()} BEFORE {event} ON audit_events "
                f"BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END"
            )
    elif op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{REFUSAL}'; END $$"
        )
        op.execute(
            "CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events "
            "FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_events_append_only ON audit_events")
        op.execute("DROP FUNCTION audit_events_append_only()")
    op.drop_table("audit_events")  # SQLite drops the table's triggers with it
    for column in ("password_weak", "password_changed", "disabled"):
        op.drop_column("annotators", column)
