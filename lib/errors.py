"""Exception types and the single place where driver errors are classified.

Every exception that crosses the driver edge (Snowflake connector, psycopg, pyarrow, the network)
goes through `classify()`, which answers one question: is it worth retrying?
"""

from __future__ import annotations

import socket

import psycopg
import pyarrow as pa
import snowflake.connector.errors as sf_errors
from psycopg import errors as pg_errors


class MigrationError(Exception):
    """Base class of every error the engine raises on purpose."""


class ConfigError(MigrationError):
    """A configuration with one or more problems; all of them are listed at once."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid configuration ({len(self.problems)} problem(s)):\n{lines}")


class FatalError(MigrationError):
    """Retrying cannot help: bad SQL, missing object, permission, auth, data that does not fit."""


class TransientError(MigrationError):
    """A retry after reconnecting may succeed: lost connection, restart, lock/serialization conflict."""


class FenceLostError(MigrationError):
    """The chunk was reclaimed by another worker; this worker's transaction must not commit."""


# SQLSTATE classes / codes that heal on retry.
_PG_TRANSIENT_SQLSTATES = {
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "55P03",  # lock_not_available
    "57P01",  # admin_shutdown
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now
    "53300",  # too_many_connections
    "08000", "08003", "08006", "08001", "08004",  # connection exceptions
}

# Snowflake error numbers that heal on retry (session/token expiry, connection failures).
_SF_TRANSIENT_ERRNOS = {
    390111, 390112, 390114,  # session / master token expired
    250001, 250003,  # could not connect / failed to execute request (HTTP 5xx after retries)
    253003,  # connection reset
    604,  # statement canceled (e.g. warehouse suspend)
}


def is_transient(exc: BaseException) -> bool:
    """True when the error is worth a reconnect and retry, False when it is fatal."""
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, (FatalError, FenceLostError, ConfigError)):
        return False
    if isinstance(exc, psycopg.Error):
        sqlstate = getattr(exc, "sqlstate", None)
        if sqlstate is None:
            # No SQLSTATE: raised client-side, i.e. the connection is broken or closed.
            return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))
        return sqlstate in _PG_TRANSIENT_SQLSTATES or sqlstate.startswith("08")
    if isinstance(exc, sf_errors.Error):
        if getattr(exc, "errno", None) in _SF_TRANSIENT_ERRNOS:
            return True
        # OperationalError/InterfaceError: the connection or the service failed, not the statement.
        return isinstance(exc, (sf_errors.OperationalError, sf_errors.InterfaceError))
    if isinstance(exc, pa.ArrowInvalid):
        return False  # a value that does not fit the target type
    return isinstance(exc, (ConnectionError, TimeoutError, socket.timeout, EOFError))


def classify(exc: BaseException, context: str = "") -> MigrationError:
    """Wrap any exception as TransientError or FatalError with a message a person can act on."""
    if isinstance(exc, MigrationError):
        return exc
    kind: type[MigrationError] = TransientError if is_transient(exc) else FatalError
    detail = _describe(exc)
    message = f"{context}: {detail}" if context else detail
    error = kind(message)
    error.__cause__ = exc
    return error


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (pg_errors.NumericValueOutOfRange, pa.ArrowInvalid)):
        return f"value does not fit the target column type ({type(exc).__name__}: {exc})"
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        return f"permission denied in PostgreSQL: {exc}"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
