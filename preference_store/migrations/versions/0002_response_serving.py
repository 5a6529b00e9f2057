"""How each answer was served: ``responses.serving`` (JSON, null for answers stored before).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


# Plain ALTER TABLE, not batch mode: SQLite adds and (since 3.35) drops a column in place, whereas a
# batch copy would drop the old responses table, which scores and pairs reference.
def upgrade() -> None:
    op.add_column("responses", sa.Column("serving", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("responses", "serving")
