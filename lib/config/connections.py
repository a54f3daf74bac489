"""What each driver is handed: the connection keys a config may set, which of them are secrets, and
the settings the engine always adds (exact decimals, one %-interpolation rule, timeouts, keepalives).

A key that is not listed here is a configuration error, never silently dropped: a typo such as
`ssl_mode` would otherwise fall back to libpq's `sslmode=prefer` without any certificate check.
"""

from __future__ import annotations

import json
import os
from typing import Any

import psycopg

from lib.config.secrets import ENV_REF, SECRETS_MANAGER_PREFIX, is_reference
from lib.config.settings import suggest
from lib.errors import classify

# Keys of the `snowflake` block passed to snowflake.connector.connect (connector 4.x names).
SNOWFLAKE_KEYS = frozenset({
    "account", "user", "password", "host", "port", "protocol", "region", "database", "schema", "warehouse", "role",
    "authenticator", "private_key", "private_key_passphrase", "private_key_file", "private_key_file_pwd", "token",
    "passcode", "passcode_in_password", "login_timeout", "network_timeout", "socket_timeout", "session_parameters",
    "client_session_keep_alive", "client_session_keep_alive_heartbeat_frequency",
    "application", "ocsp_fail_open", "validate_default_parameters", "platform_detection_timeout_seconds",
})

# Keys of the `postgres` block: libpq connection parameters.
POSTGRES_KEYS = frozenset({
    "host", "hostaddr", "port", "dbname", "user", "password", "passfile", "service", "options",
    "application_name", "target_session_attrs", "connect_timeout",
    "sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword", "sslcrl", "sslcrldir", "sslsni",
    "ssl_min_protocol_version", "ssl_max_protocol_version", "channel_binding", "gssencmode", "krbsrvname",
    "require_auth", "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout",
})

# Values that must be references (${ENV} or aws-secretsmanager:...), never literals in config.json.
SECRET_KEYS = frozenset({
    "password", "sslpassword", "private_key", "private_key_passphrase", "private_key_file_pwd", "token", "passcode",
})

# Set on every Snowflake connection, whatever the config says:
# - arrow_number_to_decimal: NUMBER(p,s>0) arrives as decimal128. Without it, real Snowflake sends small
#   unscaled values as integers plus a scale and the connector turns them into float64, which rounds
#   1234567890123.123456 to 1234567890123.123535 while the row counts still match.
# - interpolate_empty_sequences: the connector applies `command % params` to every statement, also with
#   empty params, so a `%` in an identifier or a filter is escaped the same way everywhere (see
#   lib.identifiers.quote_snowflake and snowflake_source.run).
SNOWFLAKE_FORCED = {"arrow_number_to_decimal": True, "interpolate_empty_sequences": True}

# The connector's first login in a process probes six cloud metadata endpoints (AWS, Azure, GCP) for its
# telemetry, waiting up to 0.2 s: 70 ms here, the full 0.2 s in a Lambda (which has no metadata endpoint), on
# every cold start and every local run. 0.0 keeps the environment-variable checks and skips the probes; a
# config may set `platform_detection_timeout_seconds` to have them.
SNOWFLAKE_DEFAULTS = {"platform_detection_timeout_seconds": 0.0}

# Every session of the engine, on both sides, works in UTC wherever a date or time is compared, cast or
# bucketed: Snowflake's default TIMEZONE is America/Los_Angeles, PostgreSQL's is the server's. Set last, so
# that a config cannot move one side to another zone than the other.
SESSION_TIME_ZONE = "UTC"

# TCP keepalives for PostgreSQL, unless configured: a peer that vanished without closing the socket
# (failover, NAT timeout) is noticed within about a minute, not after the kernel's two hours.
POSTGRES_KEEPALIVES = {
    "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3,
    "tcp_user_timeout": 60_000,
}


# Not a connector key: SnowflakeSource takes it out and, on a session whose login reports
# CLIENT_RESULT_CHUNK_SIZE, sets that parameter with ALTER SESSION (so its presence still tells the
# server's answer apart from ours).
RESULT_CHUNK_MB_KEY = "engine_result_chunk_mb"

# Keys the memory budget owns: set from settings, so the budget counts what the connector really does.
SNOWFLAKE_SETTING_KEYS = {"client_prefetch_threads": "result_prefetch",
                          "CLIENT_RESULT_CHUNK_SIZE": "result_chunk_mb", "CLIENT_PREFETCH_THREADS": "result_prefetch"}


def snowflake_kwargs(resolved: dict[str, Any], statement_timeout_seconds: int, result_prefetch: int = 1,
                     result_chunk_mb: int = 48) -> dict[str, Any]:
    """Connector kwargs from a resolved `snowflake` block. Result parts are downloaded `result_prefetch`
    ahead (the connector's default, 4, would hold five parts per thread) and asked to be at most
    `result_chunk_mb` (Snowflake's CLIENT_RESULT_CHUNK_SIZE, 160 by default; see RESULT_CHUNK_MB_KEY)."""
    kwargs = {**SNOWFLAKE_DEFAULTS, **resolved}
    if isinstance(kwargs["platform_detection_timeout_seconds"], int):
        kwargs["platform_detection_timeout_seconds"] = float(kwargs["platform_detection_timeout_seconds"])
    session = dict(kwargs.get("session_parameters") or {})
    if statement_timeout_seconds:
        session.setdefault("STATEMENT_TIMEOUT_IN_SECONDS", statement_timeout_seconds)
    session["CLIENT_PREFETCH_THREADS"] = result_prefetch  # else the login's answer (4) replaces the kwarg
    session["TIMEZONE"] = SESSION_TIME_ZONE
    kwargs["client_prefetch_threads"] = result_prefetch
    kwargs[RESULT_CHUNK_MB_KEY] = result_chunk_mb
    if session:
        kwargs["session_parameters"] = session
    _private_key(kwargs)
    kwargs.update(SNOWFLAKE_FORCED)
    return kwargs


def _private_key(kwargs: dict[str, Any]) -> None:
    """Key-pair authentication from a secret: a PEM text (the usual form in Secrets Manager), optionally
    encrypted with `private_key_passphrase`, is decoded here; base64 DER text goes to the connector as is."""
    key = kwargs.get("private_key")
    passphrase = kwargs.get("private_key_passphrase")
    if isinstance(passphrase, str):
        kwargs["private_key_passphrase"] = passphrase = passphrase.encode()
    if isinstance(key, str) and key.lstrip().startswith("-----BEGIN"):
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        from lib.errors import ConfigError

        try:
            kwargs["private_key"] = load_pem_private_key(key.encode(), password=passphrase or None)
        except (ValueError, TypeError) as exc:
            raise ConfigError([f"snowflake.private_key cannot be read ({exc}); "
                               "check the key and private_key_passphrase"]) from None
        kwargs.pop("private_key_passphrase", None)
    if key is not None:
        kwargs.setdefault("authenticator", "SNOWFLAKE_JWT")


def postgres_kwargs(resolved: dict[str, Any], statement_timeout_seconds: int, lock_timeout_seconds: int) -> dict[str, Any]:
    """psycopg/libpq kwargs from a resolved `postgres` block, with the engine's timeouts and keepalives.

    The timeouts go first in `options`, so a `-c statement_timeout=...` in the config's own options wins; the
    time zone goes last, so nothing moves the engine's sessions out of UTC.
    """
    kwargs = {**POSTGRES_KEEPALIVES, **resolved}
    engine = f"-c statement_timeout={statement_timeout_seconds * 1000} -c lock_timeout={lock_timeout_seconds * 1000}"
    zone = f"-c TimeZone={SESSION_TIME_ZONE}"
    kwargs["options"] = f"{engine} {kwargs['options']} {zone}" if kwargs.get("options") else f"{engine} {zone}"
    kwargs.setdefault("application_name", "snowflake-pg-migrate")
    return kwargs


def connect(args: dict[str, Any], autocommit: bool = False) -> psycopg.Connection[Any]:
    """Open a connection with libpq parameters as built by SourceConfig.postgres_connect_args."""
    kwargs = {"application_name": "snowflake-pg-migrate", **args}
    try:
        return psycopg.connect(autocommit=autocommit, **kwargs)
    except Exception as exc:
        raise classify(exc, "connecting to PostgreSQL") from exc


def parse_connection(raw: Any, where: str, problems: list[str], required: tuple[str, ...],
                      allowed: frozenset[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        problems.append(f"{where} must be an object of connection settings")
        return {}
    for key in required:
        if key not in raw:
            problems.append(f"{where}.{key} is required")
    for key, value in raw.items():
        if key == "$comment":
            continue
        if key in SNOWFLAKE_SETTING_KEYS and allowed is SNOWFLAKE_KEYS:
            problems.append(_owned_by_setting(where, key))
        elif key not in allowed:
            problems.append(f"{where}: unknown connection setting {key!r}{suggest(key, allowed)}; "
                            "it would not reach the driver")
        if key == "session_parameters" and isinstance(value, dict):
            problems.extend(_owned_by_setting(f"{where}.session_parameters", k) for k in value
                            if str(k).upper() in SNOWFLAKE_SETTING_KEYS)
        if key in SECRET_KEYS and not is_reference(value):
            problems.append(
                f"{where}.{key} must be a reference like ${{ENV_VAR}} or "
                f"{SECRETS_MANAGER_PREFIX}<secret-id>#<key>, never a literal secret"
            )
        for name in ENV_REF.findall(json.dumps(value)):
            if name not in os.environ:
                problems.append(f"{where}.{key} references ${{{name}}}, which is not set in the environment")
    return {k: v for k, v in raw.items() if k != "$comment"}


def _owned_by_setting(where: str, key: str) -> str:
    setting = SNOWFLAKE_SETTING_KEYS.get(key) or SNOWFLAKE_SETTING_KEYS[key.upper()]
    return (f"{where}: {key!r} is set by the engine from the setting {setting!r} (in defaults or an override), "
            "so that the memory budget counts what the connector holds; move it there")
