"""Initial schema: annotators, checkpoints, conversations, comparisons, responses, judgments, scores,
pairs, the export log and the consumption log.

Revision ID: 0001
Revises:
"""

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# stored as naive UTC (preference_store.models.UTCDateTime)
UTC = sa.DateTime


def upgrade() -> None:
    meta = op.create_table(
        "store_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )
    # the salt of the pseudonymous annotator ids in exports: random per database, never exported
    op.bulk_insert(meta, [{"key": "pseudonym_salt", "value": secrets.token_hex(16)}])

    op.create_table(
        "annotators",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=True),
        sa.Column("created", UTC(), nullable=False),
        sa.CheckConstraint("role IN ('annotator', 'admin')", name="ck_annotators_role"),
    )
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("run_id", sa.String(200), nullable=False, index=True),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("registered", UTC(), nullable=False),
    )
    op.create_table(
        "conversations",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("annotator_id", sa.Integer(), sa.ForeignKey("annotators.id"), nullable=False, index=True),
        sa.Column("created", UTC(), nullable=False),
    )
    op.create_table(
        "comparisons",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("conversation_id", sa.String(32), sa.ForeignKey("conversations.id"), nullable=False, index=True),
        sa.Column("annotator_id", sa.Integer(), sa.ForeignKey("annotators.id"), nullable=False),
        sa.Column("messages", sa.JSON(), nullable=False),
        sa.Column("blind", sa.Boolean(), nullable=False),
        sa.Column("created", UTC(), nullable=False, index=True),
    )
    op.create_table(
        "responses",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("comparison_id", sa.String(32), sa.ForeignKey("comparisons.id"), nullable=False, index=True),
        sa.Column("panel", sa.Integer(), nullable=False),
        sa.Column("checkpoint_id", sa.String(255), sa.ForeignKey("checkpoints.id"), nullable=False, index=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("decoding", sa.JSON(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=True),
        sa.Column("latency_s", sa.Float(), nullable=True),
        sa.Column("n_tokens", sa.Integer(), nullable=True),
        sa.UniqueConstraint("comparison_id", "panel", name="uq_responses_panel"),
    )
    op.create_table(
        "judgments",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("client_id", sa.String(100), nullable=False, unique=True),
        sa.Column("comparison_id", sa.String(32), sa.ForeignKey("comparisons.id"), nullable=False, index=True),
        sa.Column("annotator_id", sa.Integer(), sa.ForeignKey("annotators.id"), nullable=False, index=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("choice", sa.String(16), nullable=True),
        sa.Column("ranking", sa.JSON(), nullable=True),
        sa.Column("correction", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created", UTC(), nullable=False, index=True),
        sa.CheckConstraint("kind IN ('pairwise', 'ranking', 'correction')", name="ck_judgments_kind"),
    )
    op.create_table(
        "scores",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("judgment_id", sa.String(32), sa.ForeignKey("judgments.id"), nullable=False, index=True),
        sa.Column("response_id", sa.String(32), sa.ForeignKey("responses.id"), nullable=False, index=True),
        sa.Column("safety", sa.Integer(), nullable=True),
        sa.Column("correctness", sa.Integer(), nullable=True),
        sa.Column("completeness", sa.Integer(), nullable=True),
        sa.UniqueConstraint("judgment_id", "response_id", name="uq_scores_answer"),
        sa.CheckConstraint("safety BETWEEN 1 AND 5", name="ck_scores_safety"),
        sa.CheckConstraint("correctness BETWEEN 1 AND 5", name="ck_scores_correctness"),
        sa.CheckConstraint("completeness BETWEEN 1 AND 5", name="ck_scores_completeness"),
    )
    op.create_table(
        "pairs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("judgment_id", sa.String(32), sa.ForeignKey("judgments.id"), nullable=False, index=True),
        sa.Column("comparison_id", sa.String(32), sa.ForeignKey("comparisons.id"), nullable=False, index=True),
        sa.Column("chosen_response_id", sa.String(32), sa.ForeignKey("responses.id"), nullable=True),
        sa.Column("rejected_response_id", sa.String(32), sa.ForeignKey("responses.id"), nullable=False),
        sa.Column("created", UTC(), nullable=False, index=True),
    )
    op.create_table(
        "exports",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("n_pairs", sa.Integer(), nullable=False),
        sa.Column("created", UTC(), nullable=False),
    )
    op.create_table(
        "exported_pairs",
        sa.Column("export_id", sa.Integer(), sa.ForeignKey("exports.id"), primary_key=True),
        sa.Column("pair_id", sa.String(40), sa.ForeignKey("pairs.id"), primary_key=True, index=True),
        sa.Column("content_sha256", sa.String(64), nullable=False, index=True),
        sa.Column("split", sa.String(8), nullable=False),
        sa.Column("duplicate_of", sa.String(40), nullable=True),
    )
    op.create_table(
        "consumptions",
        sa.Column("pair_id", sa.String(40), sa.ForeignKey("pairs.id"), primary_key=True),
        sa.Column("run_id", sa.String(200), primary_key=True, index=True),
        sa.Column("consumed", UTC(), nullable=False),
    )


def downgrade() -> None:
    for table in (
        "consumptions",
        "exported_pairs",
        "exports",
        "pairs",
        "scores",
        "judgments",
        "responses",
        "comparisons",
        "conversations",
        "checkpoints",
        "annotators",
        "store_meta",
    ):
        op.drop_table(table)
