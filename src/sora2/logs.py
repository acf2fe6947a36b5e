"""Logging for every service: one console stream plus rotating files under `LOG_DIR`.

Each service writes `<service>.log` (everything at its level) and `<service>.error.log` (errors
only). Every line carries the request id of the exchange it belongs to, taken from a context
variable that the web proxy and the api set per request. Bodies, cookies, `Authorization` and
secret-looking query values never reach a log line: `redact_query` is the one place that decides.
"""

from __future__ import annotations

import contextvars
import logging
import logging.handlers
import re
import sys
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s"
MAX_LOG_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 5

_SECRET_KEY = re.compile(
    r"(pass|secret|token|key|auth|session|sig|signature|code|credential|jwt|cookie)", re.IGNORECASE
)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


def redact_query(query: str) -> str:
    """The query string with the value of every secret-looking parameter replaced by `***`."""
    if not query:
        return ""
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode(
        [(name, "***" if _SECRET_KEY.search(name) else value) for name, value in pairs], safe="*"
    )


def _file_handler(path: Path, level: int) -> logging.Handler:
    handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=MAX_LOG_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8"
    )
    handler.setLevel(level)
    return handler


def configure_logging(service: str, *, level: str = "INFO", log_dir: Path | None = None) -> None:
    """Route the root logger to stderr and, when `log_dir` is given, to the service's files."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(_file_handler(log_dir / f"{service}.log", logging.DEBUG))
        handlers.append(_file_handler(log_dir / f"{service}.error.log", logging.ERROR))
    formatter = logging.Formatter(LOG_FORMAT)
    request_ids = _RequestIdFilter()
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(request_ids)
        root.addHandler(handler)
    root.setLevel(level)
    # Access lines are our own (one per exchange, redacted); the servers' own would duplicate them.
    for noisy in ("aiohttp.access", "uvicorn.access"):
        logging.getLogger(noisy).disabled = True
