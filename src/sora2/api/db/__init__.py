"""The api's database: one `Database` (engine + sessions), the declarative base, migrations."""

from sora2.api.db.base import Base, UTCDateTime, new_id, utcnow
from sora2.api.db.engine import Database

__all__ = ["Base", "Database", "UTCDateTime", "new_id", "utcnow"]
