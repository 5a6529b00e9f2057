"""The arena's contraindication warnings: ``responses.warnings`` (JSON: the warnings shown with the answer, each
citing the CMeKG entry; [] = checked, none; null for answers stored before; docs/safety.md).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


# plain ALTER TABLE, as in 0002: a batch copy would drop the responses table, which scores and pairs reference
def upgrade() -> None:
    op.add_column("responses", sa.Column("warnings", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("responses", "warnings")
