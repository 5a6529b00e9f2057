"""The annotation study: guideline versions, the prompt bank and its assignments, scores on the
guideline's own criteria, single-answer ratings, identity-leak flags on answers.

Revision ID: 0003
Revises: 0002

The fixed-column ``scores`` table becomes ``criterion_scores`` (one row per answer and criterion), with
every stored score copied over. New columns on existing tables are added in place (plain ALTER TABLE,
see 0002); SQLite cannot add a foreign-key constraint that way, so the reference columns added to old
tables (comparisons.bank_prompt_id, comparisons.assignment_id, judgments.guideline_version) have none on
any backend; the repository is their one writer.
"""

from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

from preference_store.rubric import DEFAULT_CRITERIA, DEFAULT_TEXT

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UTC = sa.DateTime  # stored as naive UTC (preference_store.models.UTCDateTime)
OLD_CRITERIA = ("safety", "correctness", "completeness")


def upgrade() -> None:
    guidelines = op.create_table(
        "guidelines",
        sa.Column("version", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("criteria", sa.JSON(), nullable=False),
        sa.Column("author_id", sa.Integer(), sa.ForeignKey("annotators.id"), nullable=True),
        sa.Column("created", UTC(), nullable=False),
    )
    # version 1 is the built-in default rubric, there from the start: every judgment has a guideline in
    # force, and no first judgment has to write it (32 annotators judging at once would all try to)
    op.bulk_insert(
        guidelines,
        [
            {
                "version": 1,
                "text": DEFAULT_TEXT,
                "author_id": None,
                "created": datetime.now(timezone.utc).replace(tzinfo=None),  # noqa: UP017 - UTC names a column type here
                "criteria": [{"key": c.key, "name": c.name, "description": c.description} for c in DEFAULT_CRITERIA],
            }
        ],
    )
    op.create_table(
        "bank_prompts",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("bank", sa.String(100), nullable=False, index=True),
        sa.Column("messages", sa.JSON(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("split", sa.String(8), nullable=False),
        sa.Column("content_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("imported_by", sa.Integer(), sa.ForeignKey("annotators.id"), nullable=True),
        sa.Column("created", UTC(), nullable=False, index=True),
        sa.CheckConstraint("split IN ('train', 'heldout')", name="ck_bank_prompts_split"),
    )
    op.create_table(
        "assignments",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("bank_prompt_id", sa.String(32), sa.ForeignKey("bank_prompts.id"), nullable=False, index=True),
        sa.Column("annotator_id", sa.Integer(), sa.ForeignKey("annotators.id"), nullable=False, index=True),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("assigned", UTC(), nullable=False),
        sa.Column("completed", UTC(), nullable=True),
        sa.UniqueConstraint("bank_prompt_id", "annotator_id", "round", name="uq_assignments_annotator"),
        sa.CheckConstraint("status IN ('open', 'done', 'expired')", name="ck_assignments_status"),
    )
    op.create_table(
        "criterion_scores",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("judgment_id", sa.String(32), sa.ForeignKey("judgments.id"), nullable=False, index=True),
        sa.Column("response_id", sa.String(32), sa.ForeignKey("responses.id"), nullable=False, index=True),
        sa.Column("criterion", sa.String(32), nullable=False),
        sa.Column("value", sa.Integer(), nullable=False),
        sa.UniqueConstraint("judgment_id", "response_id", "criterion", name="uq_criterion_scores_answer"),
        sa.CheckConstraint("value BETWEEN 1 AND 5", name="ck_criterion_scores_value"),
    )
    for criterion in OLD_CRITERIA:  # every stored score, one row per criterion given
        op.execute(
            f"INSERT INTO criterion_scores (judgment_id, response_id, criterion, value) "
            f"SELECT judgment_id, response_id, '{criterion}', {criterion} FROM scores WHERE {criterion} IS NOT NULL"
        )
    op.drop_table("scores")
    op.create_table(
        "answer_ratings",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("client_id", sa.String(100), nullable=False, unique=True),
        sa.Column("comparison_id", sa.String(32), sa.ForeignKey("comparisons.id"), nullable=False, index=True),
        sa.Column("response_id", sa.String(32), sa.ForeignKey("responses.id"), nullable=False, index=True),
        sa.Column("annotator_id", sa.Integer(), sa.ForeignKey("annotators.id"), nullable=False, index=True),
        sa.Column("label", sa.Boolean(), nullable=False),
        sa.Column("correction", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("guideline_version", sa.Integer(), sa.ForeignKey("guidelines.version"), nullable=True),
        sa.Column("created", UTC(), nullable=False, index=True),
    )
    op.create_table(
        "exported_ratings",
        sa.Column("export_id", sa.Integer(), sa.ForeignKey("exports.id"), primary_key=True),
        sa.Column("rating_id", sa.String(32), sa.ForeignKey("answer_ratings.id"), primary_key=True, index=True),
        sa.Column("split", sa.String(8), nullable=False),
    )
    op.add_column("annotators", sa.Column("guideline_seen", sa.Integer(), nullable=True))
    op.add_column("comparisons", sa.Column("bank_prompt_id", sa.String(32), nullable=True))
    op.add_column("comparisons", sa.Column("assignment_id", sa.String(32), nullable=True))
    op.create_index("ix_comparisons_bank_prompt_id", "comparisons", ["bank_prompt_id"])
    op.create_index("ix_comparisons_assignment_id", "comparisons", ["assignment_id"])
    op.add_column("responses", sa.Column("leaks", sa.JSON(), nullable=True))
    op.add_column("judgments", sa.Column("guideline_version", sa.Integer(), nullable=True))
    op.add_column("exports", sa.Column("kind", sa.String(16), nullable=False, server_default="pairs"))


def downgrade() -> None:
    op.drop_column("exports", "kind")
    op.drop_column("judgments", "guideline_version")
    op.drop_column("responses", "leaks")
    op.drop_index("ix_comparisons_assignment_id", "comparisons")
    op.drop_index("ix_comparisons_bank_prompt_id", "comparisons")
    op.drop_column("comparisons", "assignment_id")
    op.drop_column("comparisons", "bank_prompt_id")
    op.drop_column("annotators", "guideline_seen")
    op.drop_table("exported_ratings")
    op.drop_table("answer_ratings")
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
    # the old table holds the three old criteria only; scores on other criteria have no place there
    op.execute(
        "INSERT INTO scores (judgment_id, response_id, safety, correctness, completeness) "
        "SELECT judgment_id, response_id, "
        + ", ".join(f"MAX(CASE WHEN criterion = '{c}' THEN value END)" for c in OLD_CRITERIA)
        + " FROM criterion_scores GROUP BY judgment_id, response_id"
        " HAVING " + " OR ".join(f"MAX(CASE WHEN criterion = '{c}' THEN value END) IS NOT NULL" for c in OLD_CRITERIA)
    )
    op.drop_table("criterion_scores")
    op.drop_table("guidelines")  # after judgments.guideline_version and answer_ratings, which refer to it
    op.drop_table("assignments")
    op.drop_table("bank_prompts")
