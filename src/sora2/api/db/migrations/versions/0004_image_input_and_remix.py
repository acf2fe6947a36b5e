"""videos: the reference image a video started from, and the video it remixes

Revision ID: 0004
Revises: 0005
Create Date: 2026-12-05 09:10:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    # Plain columns, no foreign key: a remix keeps naming its source after the source is deleted
    # (the pages then say so), and SQLite adds them without rebuilding the table.
    op.add_column("videos", sa.Column("input_reference_key", sa.String(length=255), nullable=True))
    op.add_column("videos", sa.Column("remix_of", sa.String(length=36), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("videos") as batch:
        batch.drop_column("remix_of")
        batch.drop_column("input_reference_key")
