"""video change notify: PostgreSQL announces each committed change of a video's progress

Revision ID: 0007
Revises: 0002
Create Date: 2026-12-05 09:10:00

A trigger on `videos` sends `NOTIFY sora2_video_changes, '<video id>'` when a row's status or
progress changes, or the row is deleted. PostgreSQL delivers it when (and only if) the
transaction commits, to every api process LISTENing (`sora2.api.live`), whichever process made
the change: a `sora2 serve worker`, another api, an admin command. SQLite has no NOTIFY: there
the api's poll is the way across processes, and this migration does nothing.
"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0007"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTION = """
CREATE FUNCTION sora2_notify_video_change() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('sora2_video_changes', OLD.id);
    ELSIF NEW.status IS DISTINCT FROM OLD.status OR NEW.progress IS DISTINCT FROM OLD.progress THEN
        PERFORM pg_notify('sora2_video_changes', NEW.id);
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql
"""
TRIGGER = """
CREATE TRIGGER videos_notify_change AFTER UPDATE OR DELETE ON videos
FOR EACH ROW EXECUTE FUNCTION sora2_notify_video_change()
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(FUNCTION)
    op.execute(TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS videos_notify_change ON videos")
    op.execute("DROP FUNCTION IF EXISTS sora2_notify_video_change()")
