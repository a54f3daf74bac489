"""Exception types and the single place where driver errors are classified.

Every exception that crosses the driver edge (Snowflake connector, psycopg, pyarrow, the network)
goes through `classify()`, which answers one question: is it worth retrying?
"""

from __future__ import annotations

import errno
import socket

import psycopg
import pyarrow as pa
import snowflake.connector.errorcode as sf_codes
import snowflake.connector.errors as sf_errors
from psycopg import errors as pg_errors
from snowflake.connector.network import CREDENTIAL_REJECTION_GS_CODES
from snowflake.connector.vendored.requests import exceptions as sf_requests
from snowflake.connector.vendored.urllib3 import exceptions as sf_urllib3


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


class StillRunning(MigrationError):
    """A Snowflake query submitted asynchronously has not finished within this invocation's wait: a later one
    takes its result (lib/source/deferred.py). Not a failure."""

    def __init__(self, query_id: str, what: str) -> None:
        super().__init__(f"{what}: Snowflake query {query_id} is still running")
        self.query_id = query_id


class StageNextTime(TransientError):
    """A chunk copied straight into the target hit the key: the next attempt goes through the stage (the ledger
    remembers it), which sees the rows that are already there, or names the key the source repeats."""


class FenceLostError(MigrationError):
    """The chunk was reclaimed by another worker; this worker's transaction must not commit."""


# SQLSTATEs that heal on retry; every class 08 (connection exception) code does too.
_PG_TRANSIENT_SQLSTATES = {
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "55P03",  # lock_not_available (lock_timeout, NOWAIT)
    "57014",  # query_canceled (statement_timeout, e.g. behind a stalled connection; retries are capped)
    "57P01",  # admin_shutdown (pg_terminate_backend, fast shutdown)
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now (starting up, shutting down)
    "53300",  # too_many_connections
}

# A login the server refuses reaches psycopg only as libpq's text: a plain OperationalError with no
# SQLSTATE, like a refused socket. Last resort, so by message: these server phrases mean credentials,
# pg_hba.conf, or a missing role/database, which no retry fixes. (A localized server is missed and
# retried, within the retry cap.)
_PG_LOGIN_REFUSALS = (
    "authentication failed",  # password/scram/md5/peer/ident... authentication failed for user
    "pg_hba.conf",  # no pg_hba.conf entry / pg_hba.conf rejects connection
    "does not exist",  # role "x" / database "x" does not exist
    "no password supplied",  # libpq: the server asked for a password and none was configured
    "is not permitted to log in",
    "permission denied for database",
)

# Snowflake error numbers that heal on a retry after reconnecting.
_SF_TRANSIENT_ERRNOS = {
    390104,  # user must log in again (session unknown to the server)
    390111,  # session no longer exists
    390112,  # session expired (and could not be renewed)
    390113, 390114, 390115,  # master token not found / expired / invalid
    sf_codes.ER_FAILED_TO_CONNECT_TO_DB,  # 250001: Snowflake unreachable within login_timeout
    sf_codes.ER_CONNECTION_IS_CLOSED,  # 250002
    sf_codes.ER_FAILED_TO_REQUEST,  # 250003: request failed after the connector's own retries
    sf_codes.ER_HTTP_GENERAL_ERROR + 401,  # HTTP 401 on a query: the server dropped the session token
    604,  # statement canceled (e.g. warehouse suspend)
}
# The connector's classes for HTTP 5xx / 429 responses it already retried until network_timeout, and
# for a failed connection or service (OperationalError, InterfaceError), not a failed statement.
_SF_TRANSIENT_CLASSES = (
    sf_errors.InternalServerError, sf_errors.BadGatewayError, sf_errors.ServiceUnavailableError,
    sf_errors.GatewayTimeoutError, sf_errors.TooManyRequests, sf_errors.OtherHTTPRetryableError,
    sf_errors.OperationalError, sf_errors.InterfaceError,
)
# Rejected credentials: the connector reports them with SQLSTATE 28000 and these error numbers.
_SF_AUTH_ERRNOS = {int(code) for code in CREDENTIAL_REJECTION_GS_CODES}

# The HTTP library inside the Snowflake connector, when a connection breaks off (a server gone mid-answer, a reset
# socket) or times out in a way the connector does not wrap in its own errors.
_HTTP_BROKEN = (
    sf_requests.ConnectionError, sf_requests.ChunkedEncodingError, sf_requests.Timeout,
    sf_urllib3.ProtocolError, sf_urllib3.ReadTimeoutError,
)

# OSError numbers of a network that is down or unreachable (not ConnectionError subclasses).
_NET_ERRNOS = {errno.ENETDOWN, errno.ENETUNREACH, errno.EHOSTDOWN, errno.EHOSTUNREACH}


def is_transient(exc: BaseException) -> bool:
    """True when the error is worth a reconnect and retry, False when it is fatal."""
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, MigrationError):
        return False
    if isinstance(exc, psycopg.Error):
        return _pg_transient(exc)
    if isinstance(exc, sf_errors.Error):
        return _sf_transient(exc)
    if isinstance(exc, (pa.ArrowException, MemoryError)):
        return False  # data that cannot be converted, or no memory for it: a retry meets the same
    if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout, EOFError, *_HTTP_BROKEN)):
        return True
    return isinstance(exc, OSError) and exc.errno in _NET_ERRNOS


def _pg_transient(exc: psycopg.Error) -> bool:
    if exc.sqlstate is not None:
        if exc.sqlstate == "08P01":
            return False  # protocol_violation: the data we sent does not match the column (e.g. it changed type)
        return exc.sqlstate in _PG_TRANSIENT_SQLSTATES or exc.sqlstate.startswith("08")
    # No SQLSTATE: raised client-side. A refused login is fatal; otherwise the connection is broken,
    # closed or unreachable (OperationalError, InterfaceError), or the client rejected a value (fatal).
    if any(phrase in str(exc) for phrase in _PG_LOGIN_REFUSALS):
        return False
    return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))


def _sf_transient(exc: sf_errors.Error) -> bool:
    if exc.sqlstate == "28000" or exc.errno in _SF_AUTH_ERRNOS or isinstance(exc, sf_errors.NonRetryableTlsError):
        return False  # bad credentials; a TLS setup the server will never accept
    return exc.errno in _SF_TRANSIENT_ERRNOS or isinstance(exc, _SF_TRANSIENT_CLASSES)


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


def with_context(error: MigrationError, context: str) -> MigrationError:
    """The same kind of error, its message led by `context` (which chunk of which table) unless it says it."""
    if context in str(error) or isinstance(error, ConfigError):
        return error
    wrapped = type(error)(f"{context}: {error}")
    wrapped.__cause__ = error.__cause__ or error
    return wrapped


# Values the target column type cannot hold, as PostgreSQL reports them.
_DOES_NOT_FIT = (
    pg_errors.NumericValueOutOfRange, pg_errors.StringDataRightTruncation, pg_errors.InvalidTextRepresentation,
    pg_errors.InvalidDatetimeFormat, pg_errors.DatetimeFieldOverflow, pg_errors.CharacterNotInRepertoire,
    pg_errors.UntranslatableCharacter, pg_errors.InvalidBinaryRepresentation,
)


def _describe(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, _DOES_NOT_FIT):
        hint = ("; a NUL byte? set nul_bytes to strip or replace:<char>"
                if isinstance(exc, (pg_errors.CharacterNotInRepertoire, pg_errors.UntranslatableCharacter)) else "")
        return f"value does not fit the target column type ({type(exc).__name__}: {exc}){hint}"
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        return f"permission denied in PostgreSQL: {exc}"
    if isinstance(exc, (MemoryError, pa.ArrowMemoryError)):
        return (f"out of memory while reading or encoding a batch ({type(exc).__name__}: {first}): lower batch_size "
                "or parallel_threads, or raise the memory available")
    if isinstance(exc, pa.ArrowException):
        return (f"the Arrow data of the source could not be read or converted ({type(exc).__name__}: {first}); "
                "not a limit of the target column types")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
