"""Structured (JSON lines) logging for the daemon, uvicorn's loggers included.

Lines are written by python-json-logger's orjson formatter: ``ts`` (ISO 8601, UTC offset), ``level``,
``logger``, ``msg``, then every ``extra={...}`` field of the call, and ``exc_info`` for a traceback.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.orjson import OrjsonFormatter

__all__ = ["configure_logging", "json_formatter"]


def json_formatter() -> logging.Formatter:
    return OrjsonFormatter(
        "{levelname}{name}{message}",
        style="{",
        timestamp="ts",
        rename_fields={"levelname": "level", "name": "logger", "message": "msg"},
        reserved_attrs=[*RESERVED_ATTRS, "color_message"],  # uvicorn's coloured duplicate of msg
    )


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(json_formatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for chatty in ("alembic", "apscheduler", "apprise"):  # per-job and per-migration info lines drown ours
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
