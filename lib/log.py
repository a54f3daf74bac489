"""Logging: one handler, never two (Lambda already installs one), key=value context fields."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

LOGGER_NAME = "migration"
CONTEXT_FIELDS = ("run_id", "table", "chunk")


class _ContextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        fields = [f"{k}={getattr(record, k)}" for k in CONTEXT_FIELDS if getattr(record, k, None) is not None]
        return f"{base} {' '.join(fields)}" if fields else base


def get_logger(level: int | str | None = None) -> logging.Logger:
    """The engine's logger. Inside Lambda the runtime's root handler prints; we add none."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level or os.environ.get("MIGRATION_LOG_LEVEL", "INFO"))
    if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
        logger.propagate = True
        return logger
    if not any(getattr(h, "_migration_handler", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_ContextFormatter("%(asctime)s %(levelname)s %(message)s"))
        handler._migration_handler = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    return logger


def ctx(**fields: Any) -> dict[str, Any]:
    """`extra=` for a log call: ctx(run_id=1, table='T', chunk=3)."""
    return {"extra": {k: v for k, v in fields.items() if k in CONTEXT_FIELDS}}
