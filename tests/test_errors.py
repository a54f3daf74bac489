"""classify() on errors the real drivers raise: PostgreSQL errors from the embedded server, Snowflake
errors from the real connector (against fakesnow, or a local HTTP proxy in front of it that answers
like Snowflake does when it fails), pyarrow's own cast errors, and real socket errors."""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import snowflake.connector
import snowflake.connector.errorcode as sf_codes
import snowflake.connector.errors as sf_errors
from psycopg import errors as pg_errors

from lib.errors import ConfigError, FatalError, FenceLostError, MigrationError, TransientError, classify, is_transient
from scripts.local_stack import free_port
from tests.sf_proxy import TRUNCATED, SnowflakeProxy

ExcType = type[BaseException]


def raised(kind: ExcType, action: Callable[[], Any]) -> BaseException:
    """Run `action`, which must raise exactly `kind` (not a subclass); return that exception."""
    with pytest.raises(kind) as info:
        action()
    assert type(info.value) is kind, f"expected {kind.__name__}, got {type(info.value).__name__}: {info.value}"
    return info.value


def _one_row_table(env) -> None:
    """Table t with the single row (1, 0) that two sessions fight over."""
    with env.pg() as setup:
        setup.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
        setup.execute("INSERT INTO t VALUES (1, 0)")


def assert_transient(exc: BaseException) -> TransientError:
    error = classify(exc, "doing the thing")
    assert isinstance(error, TransientError), f"{type(exc).__name__} should be transient: {exc}"
    assert is_transient(exc)
    assert error.__cause__ is exc
    assert str(error).startswith("doing the thing: ")
    return error


def assert_fatal(exc: BaseException) -> FatalError:
    error = classify(exc, "doing the thing")
    assert isinstance(error, FatalError), f"{type(exc).__name__} should be fatal: {exc}"
    assert not is_transient(exc)
    assert error.__cause__ is exc
    assert str(error).startswith("doing the thing: ")
    return error


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


# --- PostgreSQL: errors of statements ------------------------------------------------------------

def test_pg_statement_errors_are_fatal(env) -> None:
    with env.pg() as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, short varchar(3))")
        assert_fatal(raised(pg_errors.SyntaxError, lambda: conn.execute("SELEC 1")))
        assert_fatal(raised(pg_errors.UndefinedTable, lambda: conn.execute("SELECT * FROM not_there")))
        assert_fatal(raised(pg_errors.UndefinedColumn, lambda: conn.execute("SELECT nope FROM t")))


def test_pg_values_that_do_not_fit_are_fatal_and_say_so(env) -> None:
    with env.pg() as conn:
        conn.execute("CREATE TABLE t (short varchar(3))")
        cases = [
            (pg_errors.NumericValueOutOfRange, "SELECT 40000::smallint"),
            (pg_errors.StringDataRightTruncation, "INSERT INTO t VALUES ('abcdef')"),
            (pg_errors.InvalidTextRepresentation, "SELECT 'abc'::integer"),
        ]
        for kind, sql in cases:
            error = assert_fatal(raised(kind, lambda sql=sql: conn.execute(sql)))
            assert "does not fit the target column type" in str(error)


def test_pg_insufficient_privilege_is_fatal(env) -> None:
    role = unique("errtest_norights")
    with env.pg() as conn:
        conn.execute("CREATE TABLE secret (id int)")
        conn.execute(f"CREATE ROLE {role} NOLOGIN")
        try:
            conn.execute(f"SET ROLE {role}")
            error = assert_fatal(raised(pg_errors.InsufficientPrivilege, lambda: conn.execute("SELECT * FROM secret")))
            assert "permission denied" in str(error)
        finally:
            conn.execute("RESET ROLE")
            conn.execute(f"DROP ROLE {role}")


# --- PostgreSQL: conflicts between transactions --------------------------------------------------

def test_pg_serialization_failure_is_transient(env) -> None:
    _one_row_table(env)
    with env.pg() as first, env.pg() as second:
        first.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        first.execute("SELECT v FROM t WHERE id = 1")  # takes the snapshot
        second.execute("UPDATE t SET v = 2 WHERE id = 1")  # autocommit: committed at once
        exc = raised(pg_errors.SerializationFailure, lambda: first.execute("UPDATE t SET v = 1 WHERE id = 1"))
        first.execute("ROLLBACK")
    assert exc.sqlstate == "40001"
    assert_transient(exc)


def test_pg_deadlock_is_transient(env) -> None:
    with env.pg() as setup:
        setup.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
        setup.execute("INSERT INTO t VALUES (1, 0), (2, 0)")
    with env.pg() as first, env.pg() as second:
        for conn, row in ((first, 1), (second, 2)):
            conn.execute("SET deadlock_timeout = '100ms'")
            conn.execute("BEGIN")
            conn.execute("UPDATE t SET v = 1 WHERE id = %s", (row,))
        errors: list[BaseException] = []

        def cross(conn: psycopg.Connection[Any], row: int) -> None:
            try:
                conn.execute("UPDATE t SET v = 2 WHERE id = %s", (row,))
            except psycopg.Error as exc:
                errors.append(exc)
                conn.execute("ROLLBACK")

        other = threading.Thread(target=cross, args=(first, 2))
        other.start()
        cross(second, 1)
        other.join(timeout=30)
        for conn in (first, second):
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.execute("ROLLBACK")
    assert len(errors) == 1 and type(errors[0]) is pg_errors.DeadlockDetected
    assert_transient(errors[0])


def test_pg_lock_timeout_is_transient(env) -> None:
    _one_row_table(env)
    with env.pg() as holder, env.pg() as waiter:
        holder.execute("BEGIN")
        holder.execute("SELECT * FROM t WHERE id = 1 FOR UPDATE")
        waiter.execute("SET lock_timeout = '50ms'")
        exc = raised(pg_errors.LockNotAvailable, lambda: waiter.execute("UPDATE t SET v = 1 WHERE id = 1"))
        holder.execute("ROLLBACK")
    assert_transient(exc)


def test_pg_statement_timeout_is_transient(env) -> None:
    with env.pg() as conn:
        conn.execute("SET statement_timeout = '50ms'")
        assert_transient(raised(pg_errors.QueryCanceled, lambda: conn.execute("SELECT pg_sleep(5)")))


# --- PostgreSQL: lost and refused connections ----------------------------------------------------

def test_pg_terminated_backend_then_dead_connection_are_transient(env) -> None:
    with env.pg() as victim, env.pg() as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s, 5000)", (victim.info.backend_pid,)).fetchone() == (True,)
        assert_transient(raised(pg_errors.AdminShutdown, lambda: victim.execute("SELECT 1")))
        # the same connection, used again
        assert_transient(raised(psycopg.OperationalError, lambda: victim.execute("SELECT 1")))


def test_pg_closed_connection_is_transient(env) -> None:
    conn = env.pg()
    conn.close()
    assert_transient(raised(psycopg.OperationalError, lambda: conn.execute("SELECT 1")))


def test_pg_unreachable_server_is_transient(env) -> None:
    args = env.stack.pg_args(env.pg_database)
    missing_socket = dict(args, host="/tmp/definitely-missing-dir", connect_timeout=1)
    closed_port = dict(args, host="127.0.0.1", port=free_port(), connect_timeout=1)
    for kwargs in (missing_socket, closed_port):
        exc = raised(psycopg.OperationalError, lambda kwargs=kwargs: psycopg.connect(**kwargs))
        assert exc.sqlstate is None
        assert_transient(exc)


def test_pg_too_many_connections_for_role_is_transient(env) -> None:
    role = unique("errtest_limited")
    args = env.stack.pg_args(env.pg_database)
    with env.pg() as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 0")
        try:
            exc = raised(psycopg.OperationalError, lambda: psycopg.connect(**dict(args, user=role)))
        finally:
            admin.execute(f"DROP ROLE {role}")
    assert "too many connections" in str(exc)
    assert_transient(exc)


def test_pg_unknown_role_or_database_at_login_is_fatal(env) -> None:
    args = env.stack.pg_args(env.pg_database)
    for kwargs in (dict(args, user=unique("errtest_nobody")), dict(args, dbname=unique("errtest_nodb"))):
        exc = raised(psycopg.OperationalError, lambda kwargs=kwargs: psycopg.connect(**kwargs))
        assert exc.sqlstate is None  # libpq gives no SQLSTATE for a refused login
        assert_fatal(exc)


def test_pg_bad_password_is_fatal(env) -> None:
    """The embedded server trusts every local login; one pg_hba.conf line makes this role use scram."""
    role = unique("errtest_pw")
    hba = env.stack.pgdata / "pg_hba.conf"
    original = hba.read_text()
    args = dict(env.stack.pg_args(env.pg_database), user=role)
    with env.pg() as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'right'")
        try:
            hba.write_text(f"local all {role} scram-sha-256\n{original}")
            admin.execute("SELECT pg_reload_conf()")
            wrong = _refused_login(dict(args, password="wrong"))
            missing = _refused_login(dict(args, password=""))
        finally:
            hba.write_text(original)
            admin.execute("SELECT pg_reload_conf()")
            admin.execute(f"DROP ROLE {role}")
    assert "password authentication failed" in str(wrong)
    assert "no password supplied" in str(missing) or "password authentication failed" in str(missing)
    for exc in (wrong, missing):
        assert type(exc) is psycopg.OperationalError and exc.sqlstate is None
        assert_fatal(exc)


def _refused_login(kwargs: dict[str, Any]) -> BaseException:
    """Connect until the reloaded pg_hba.conf refuses the login (the reload is asynchronous)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            psycopg.connect(**kwargs).close()
        except psycopg.OperationalError as exc:
            return exc
        assert time.monotonic() < deadline, "pg_hba.conf reload did not take effect"
        time.sleep(0.05)


@pytest.mark.parametrize(("kind", "transient"), [
    (pg_errors.CrashShutdown, True),
    (pg_errors.CannotConnectNow, True),
    (pg_errors.TooManyConnections, True),
    (pg_errors.ConnectionFailure, True),
    (pg_errors.InvalidPassword, False),
    (pg_errors.InvalidAuthorizationSpecification, False),
])
def test_pg_sqlstates_the_server_cannot_be_made_to_send_here(kind: type[psycopg.Error], transient: bool) -> None:
    """Crash, start-up and exhaustion errors need a server in that state; psycopg's own classes carry the SQLSTATE."""
    exc = kind("reported by the server")
    assert exc.sqlstate is not None
    (assert_transient if transient else assert_fatal)(exc)


# --- Snowflake: the real connector against fakesnow ----------------------------------------------

def test_sf_statement_errors_are_fatal(env) -> None:
    with env.sf() as conn, conn.cursor() as cur:
        syntax = raised(sf_errors.ProgrammingError, lambda: cur.execute("SELEC 1"))
        missing = raised(sf_errors.ProgrammingError, lambda: cur.execute("SELECT * FROM NOT_THERE"))
    for exc in (syntax, missing):
        assert_fatal(exc)


def test_sf_unreachable_server_is_transient() -> None:
    exc = raised(sf_errors.OperationalError, lambda: snowflake.connector.connect(
        account="fakesnow", user="fake", password="snow", host="127.0.0.1", port=free_port(), protocol="http",
        login_timeout=2, network_timeout=2))
    assert exc.errno == sf_codes.ER_FAILED_TO_CONNECT_TO_DB
    assert_transient(exc)


QUERY = "/queries/v1/query-request"  # statements only: the connector's abort-request still reaches fakesnow
LOGIN = "/session/v1/login-request"


def proxy_connect(proxy: SnowflakeProxy, timeout: int = 1) -> Any:
    return snowflake.connector.connect(account="fakesnow", user="fake", password="snow", host="127.0.0.1",
                                       port=proxy.port, protocol="http", login_timeout=timeout, network_timeout=timeout)


def failure(code: str, message: str) -> dict[str, Any]:
    """A Snowflake JSON answer with success false, as GS sends it."""
    return {"data": None, "code": code, "message": message, "success": False}


@pytest.mark.parametrize(("status", "kind"), [
    (500, sf_errors.InternalServerError),
    (502, sf_errors.BadGatewayError),
    (503, sf_errors.ServiceUnavailableError),
    (504, sf_errors.GatewayTimeoutError),
    (599, sf_errors.OtherHTTPRetryableError),
    (429, sf_errors.TooManyRequests),
])
def test_sf_http_5xx_after_the_connectors_retries_is_transient(sf_proxy: SnowflakeProxy, status: int, kind: ExcType) -> None:
    with proxy_connect(sf_proxy) as conn, conn.cursor() as cur:
        assert cur.execute("SELECT 1").fetchall() == [(1,)]
        sf_proxy.canned = {QUERY: (status, None)}
        exc = raised(kind, lambda: cur.execute("SELECT 1"))
        sf_proxy.canned = {}
    # errno is ER_HTTP_GENERAL_ERROR (290000) + status; the connector's re-raise adds 290000 once more
    assert exc.errno % sf_codes.ER_HTTP_GENERAL_ERROR == status
    assert_transient(exc)


def test_sf_answer_broken_off_mid_body_is_transient(sf_proxy: SnowflakeProxy) -> None:
    """The stand-in (or a proxy) stopped while it answered: the connector raises the HTTP library's error."""
    with proxy_connect(sf_proxy, timeout=5) as conn, conn.cursor() as cur:
        sf_proxy.canned = {QUERY: (TRUNCATED, None)}
        with pytest.raises(Exception) as info:
            cur.execute("SELECT 1")
        sf_proxy.canned = {}
    assert "ChunkedEncodingError" in type(info.value).__name__ or "IncompleteRead" in str(info.value), repr(info.value)
    assert_transient(info.value)


def test_sf_http_5xx_at_login_is_transient(sf_proxy: SnowflakeProxy) -> None:
    sf_proxy.canned = {LOGIN: (503, None)}
    exc = raised(sf_errors.OperationalError, lambda: proxy_connect(sf_proxy))
    assert exc.errno == sf_codes.ER_FAILED_TO_CONNECT_TO_DB
    assert_transient(exc)


@pytest.mark.parametrize(("answers", "errno"), [
    # master token expired on a query
    ({QUERY: (200, failure("390114", "Authentication token has expired.  The user must authenticate again."))}, 390114),
    # session expired, and renewing it fails because the master token expired too
    ({QUERY: (200, failure("390112", "Your session has expired. Please login again.")),
      "/session/token-request": (200, failure("390114", "Authentication token has expired."))}, 390114),
    ({QUERY: (200, failure("390111", "Session no longer exists.  New login required to access the service."))}, 390111),
])
def test_sf_session_and_master_token_expiry_is_transient(sf_proxy: SnowflakeProxy, answers: dict[str, Any], errno: int) -> None:
    with proxy_connect(sf_proxy) as conn, conn.cursor() as cur:
        sf_proxy.canned = answers
        exc = raised(sf_errors.ProgrammingError, lambda: cur.execute("SELECT 1"))
        sf_proxy.canned = {}
    assert exc.errno == errno
    assert_transient(exc)


def test_sf_unknown_session_token_is_transient(sf_proxy: SnowflakeProxy) -> None:
    """What fakesnow itself answers (HTTP 401, 390104) for a session it does not know, e.g. after a restart."""
    with proxy_connect(sf_proxy) as conn, conn.cursor() as cur:
        sf_proxy.canned = {QUERY: (401, failure("390104", "User must login again to access the service."))}
        exc = raised(sf_errors.HttpError, lambda: cur.execute("SELECT 1"))
        sf_proxy.canned = {}
    assert exc.errno == sf_codes.ER_HTTP_GENERAL_ERROR + 401
    assert_transient(exc)


@pytest.mark.parametrize("code", ["390100", "390144"])
def test_sf_rejected_credentials_are_fatal(sf_proxy: SnowflakeProxy, code: str) -> None:
    sf_proxy.canned = {LOGIN: (200, failure(code, "Incorrect username or password was specified."))}
    exc = raised(sf_errors.DatabaseError, lambda: proxy_connect(sf_proxy))
    assert exc.errno == int(code) and exc.sqlstate == "28000"
    assert_fatal(exc)


def test_sf_forbidden_login_is_fatal(sf_proxy: SnowflakeProxy) -> None:
    """HTTP 403 at login: the connector's 'verify the account name' error."""
    sf_proxy.canned = {LOGIN: (403, None)}
    assert_fatal(raised(sf_errors.ForbiddenError, lambda: proxy_connect(sf_proxy)))


def test_sf_errors_built_as_the_connector_builds_them() -> None:
    """Cases fakesnow cannot produce (it issues no master token, so a closed connection keeps working)."""
    closed = sf_errors.DatabaseError(msg="Connection is closed", errno=sf_codes.ER_CONNECTION_IS_CLOSED, sqlstate="08003")
    request = sf_errors.OperationalError(msg="Failed to execute request: reset", errno=sf_codes.ER_FAILED_TO_REQUEST)
    expired = sf_errors.ProgrammingError(msg="Authentication token has expired.", errno=390114, sqlstate="08001")
    tls = sf_errors.NonRetryableTlsError(msg="certificate verify failed", errno=sf_codes.ER_FAILED_TO_REQUEST)
    for exc in (closed, request, expired):
        assert_transient(exc)
    assert_fatal(tls)


# --- pyarrow --------------------------------------------------------------------------------------

def test_arrow_errors_are_fatal_and_not_blamed_on_the_target() -> None:
    """A raw Arrow error (here a cast outside the wire) is about the data, not about the target's types:
    values that do not fit are reported by lib/wire.py, with column, value and row (tests/test_wire.py)."""
    exc = raised(pa.ArrowInvalid, lambda: pc.cast(pa.array([40000]), pa.int16()))
    error = str(assert_fatal(exc))
    assert "could not be read or converted" in error and "does not fit" not in error


# --- the network ----------------------------------------------------------------------------------

def test_real_socket_errors_are_transient() -> None:
    refused = raised(ConnectionRefusedError, lambda: socket.create_connection(("127.0.0.1", free_port()), timeout=2))
    with socket.create_server(("127.0.0.1", 0)) as server, socket.create_connection(server.getsockname(), timeout=2) as client:
        peer, _ = server.accept()
        client.settimeout(0.05)
        timed_out = raised(TimeoutError, lambda: client.recv(1))
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        peer.close()  # linger 0: the peer sends RST
        client.settimeout(2)
        reset = raised(ConnectionResetError, lambda: client.recv(1))
    for exc in (refused, timed_out, reset):
        assert_transient(exc)


@pytest.mark.parametrize("exc", [
    ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
    TimeoutError("timed out"),
    TimeoutError("timed out"),
    BrokenPipeError(errno.EPIPE, "Broken pipe"),
    EOFError(),
    OSError(errno.ENETUNREACH, os.strerror(errno.ENETUNREACH)),
], ids=lambda exc: type(exc).__name__ + (f"-{exc.errno}" if getattr(exc, "errno", None) else ""))
def test_network_errors_are_transient(exc: BaseException) -> None:
    assert_transient(exc)


@pytest.mark.parametrize("exc", [ValueError("bad"), KeyError("k"), FileNotFoundError(errno.ENOENT, "gone")],
                         ids=lambda exc: type(exc).__name__)
def test_other_errors_are_fatal(exc: BaseException) -> None:
    assert_fatal(exc)


# --- classify()'s contract ------------------------------------------------------------------------

def test_classify_puts_the_context_first_and_keeps_the_cause() -> None:
    exc = ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
    error = classify(exc, "copying chunk 7 of ORDERS")
    assert str(error) == "copying chunk 7 of ORDERS: ConnectionResetError: [Errno 104] Connection reset by peer"
    assert error.__cause__ is exc
    bare = classify(ValueError("first line\nsecond line"))
    assert str(bare) == "ValueError: first line"


@pytest.mark.parametrize("error", [TransientError("t"), FatalError("f"), FenceLostError("lost"), ConfigError(["x"]), MigrationError("m")],
                         ids=lambda error: type(error).__name__)
def test_classify_returns_migration_errors_unchanged(error: MigrationError) -> None:
    assert classify(error, "context") is error
    assert is_transient(error) is isinstance(error, TransientError)
