"""paid work exactly once: a start key per job, the upstream-stop outbox, 64-bit balances

Revision ID: 0003
Revises: 0004
Create Date: 2026-12-05 09:10:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("start_key", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("start_sent_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "upstream_stops",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("provider_job_id", sa.String(length=128), nullable=True),
        sa.Column("search", sa.JSON(), nullable=True),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("run_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_upstream_stops")),
    )
    op.create_index(
        "ix_upstream_stops_done_at_run_after", "upstream_stops", ["done_at", "run_after"]
    )
    with op.batch_alter_table("users") as batch:
        batch.alter_column("credits", type_=sa.BigInteger(), existing_nullable=False)
    with op.batch_alter_table("credit_transactions") as batch:
        batch.alter_column("amount", type_=sa.BigInteger(), existing_nullable=False)
        batch.alter_column("balance_after", type_=sa.BigInteger(), existing_nullable=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("credit_transactions") as batch:
        batch.alter_column("balance_after", type_=sa.Integer(), existing_nullable=False)
        batch.alter_column("amount", type_=sa.Integer(), existing_nullable=False)
    with op.batch_alter_table("users") as batch:
        batch.alter_column("credits", type_=sa.Integer(), existing_nullable=False)
    op.drop_index("ix_upstream_stops_done_at_run_after", table_name="upstream_stops")
    op.drop_table("upstream_stops")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("start_sent_at")
        batch.drop_column("start_key")
