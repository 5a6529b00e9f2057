"""Bearer tokens for the OpenAI-compatible server (``./launch.sh serve``): ``api_tokens``, one row per token,
each an annotator's, holding only the token's sha256.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UTC = sa.DateTime  # stored as naive UTC (preference_store.models.UTCDateTime)


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("annotator_id", sa.Integer(), sa.ForeignKey("annotators.id"), nullable=False, index=True),
        sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("created", UTC(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("api_tokens")
