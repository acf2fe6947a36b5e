"""What a database error no route handled becomes: a passing condition is a 503 to retry."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from sora2.api.errors import unexpected_error_response


def _locked_error(path: Path) -> sqlite3.OperationalError:
    """SQLite's own error when another connection holds the write lock past the busy timeout."""
    holder = sqlite3.connect(path, isolation_level=None)
    waiter = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError) as raised:
            waiter.execute("BEGIN IMMEDIATE")
        return raised.value
    finally:
        holder.close()
        waiter.close()


@pytest.mark.parametrize("wrapped", [False, True], ids=["driver", "sqlalchemy"])
def test_a_write_lock_held_elsewhere_is_a_503_to_retry(tmp_path: Path, wrapped: bool) -> None:
    error: Exception = _locked_error(tmp_path / "busy.db")
    if wrapped:
        error = OperationalError("BEGIN IMMEDIATE", {}, error)
    response = unexpected_error_response(error, show_internals=False)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    body = json.loads(bytes(response.body))
    assert body["message"].startswith("The database is busy")


def test_any_other_sqlite_error_is_still_a_bug() -> None:
    response = unexpected_error_response(
        sqlite3.OperationalError("no such table: videos"), show_internals=False
    )
    assert response.status_code == 500
