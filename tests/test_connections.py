"""What reaches the drivers: exact decimals from the connector, every libpq/TLS setting, the engine's
timeouts and keepalives, key-pair authentication; and nothing silently dropped."""

from __future__ import annotations

from decimal import Decimal

import pyarrow as pa
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from snowflake.connector.arrow_context import ArrowConverterContext
from snowflake.connector.constants import IterUnit
from snowflake.connector.result_batch import _create_nanoarrow_iterator

from lib.config import ConfigError, parse_config
from lib.source.snowflake import SnowflakeSource
from lib.target import postgres as pg
from lib.typemap import map_column

TABLES = [{"source": "T"}]


def _fixed_result(unscaled: list[int | None], precision: int, scale: int) -> bytes:
    """An Arrow IPC result as real Snowflake sends NUMBER(p,s) whose unscaled values fit 64 bits: int64
    values with the logical type and scale in the field metadata (fakesnow sends decimal128 instead)."""
    field = pa.field("AMOUNT", pa.int64(), metadata={
        "logicalType": "FIXED", "precision": str(precision), "scale": str(scale), "charLength": "0"})
    batch = pa.record_batch([pa.array(unscaled, pa.int64())], schema=pa.schema([field]))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def test_scaled_numbers_from_real_snowflake_keep_every_digit_through_the_engine(env) -> None:
    config = env.config(TABLES)
    source = SnowflakeSource(config.snowflake_connect_args(), config.retry_policy())
    try:
        conn = source.connection()
        # decoded exactly as the connector decodes a result chunk on the engine's own connection (real
        # Snowflake always sends the session's TIMEZONE; the stand-in does not)
        context = ArrowConverterContext({"TIMEZONE": "UTC", **conn._session_parameters})
        table = next(iter(_create_nanoarrow_iterator(
            _fixed_result([1234567890123123456, -1, None], 38, 6), context,
            False, False, conn._arrow_number_to_decimal, IterUnit.TABLE_UNIT)))
    finally:
        source.close()
    column = map_column("AMOUNT", "NUMBER", 38, 6)
    with env.pg() as target:
        target.execute("CREATE TABLE amounts (amount numeric(38,6))")
        with target.transaction():
            pg.copy_batches(target, ("public", "amounts"), [column], table.to_batches())
        stored = [r[0] for r in target.execute("SELECT amount FROM amounts ORDER BY amount NULLS LAST").fetchall()]
    assert stored == [Decimal("-0.000001"), Decimal("1234567890123.123456"), None]


def test_libpq_tls_and_keepalive_settings_reach_the_server_connection(env) -> None:
    postgres = {"sslmode": "verify-full", "sslrootcert": "system", "channel_binding": "prefer", "connect_timeout": 7,
                "keepalives_idle": 11, "tcp_user_timeout": 12_000, "options": "-c work_mem=7MB"}
    config = env.config(TABLES, defaults={"statement_timeout_seconds": 120, "lock_timeout_seconds": 9}, postgres=postgres)
    with pg.connect(config.postgres_connect_args(), autocommit=True) as conn:
        used = {o.keyword.decode(): (o.val or b"").decode() for o in conn.pgconn.info}
        settings = {name: conn.execute(f"SHOW {name}").fetchone()[0]
                    for name in ("statement_timeout", "lock_timeout", "work_mem", "application_name")}
    assert {k: used[k] for k in postgres if k != "options"} == {k: str(v) for k, v in postgres.items() if k != "options"}
    assert used["keepalives_interval"] == "10" and used["keepalives"] == "1"  # the engine's defaults where unset
    assert settings == {"statement_timeout": "2min", "lock_timeout": "9s", "work_mem": "7MB",
                        "application_name": "snowflake-pg-migrate"}


def test_unknown_connection_settings_are_config_errors_with_close_matches() -> None:
    raw = {"sources": {"s": {
        "snowflake": {"account": "a", "user": "u", "database": "D", "schema": "S", "warehose": "W"},
        "postgres": {"dbname": "x", "ssl_mode": "verify-full", "keepalive_idle": 5},
        "tables": TABLES,
    }}}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, "s", {})
    text = str(caught.value)
    assert "postgres: unknown connection setting 'ssl_mode' (did you mean 'sslmode'" in text
    assert "postgres: unknown connection setting 'keepalive_idle' (did you mean 'keepalives_idle'" in text
    assert "snowflake: unknown connection setting 'warehose' (did you mean 'warehouse'" in text
    assert len(caught.value.problems) == 3


def _encrypted_key(passphrase: bytes) -> tuple[rsa.RSAPrivateKey, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.BestAvailableEncryption(passphrase)).decode()
    return key, pem


def test_an_encrypted_private_key_from_a_secret_reaches_the_connector_and_logs_in(env, monkeypatch) -> None:
    key, pem = _encrypted_key(b"open sesame")
    monkeypatch.setenv("SF_PRIVATE_KEY", pem)
    monkeypatch.setenv("SF_KEY_PASSPHRASE", "open sesame")
    config = env.config(TABLES, snowflake={"password": None, "private_key": "${SF_PRIVATE_KEY}",
                                           "private_key_passphrase": "${SF_KEY_PASSPHRASE}"})

    args = config.snowflake_connect_args()
    assert args["authenticator"] == "SNOWFLAKE_JWT"
    assert args["private_key"].public_key().public_numbers() == key.public_key().public_numbers()
    assert "private_key_passphrase" not in args
    source = SnowflakeSource(args, config.retry_policy())
    try:
        assert source.count((env.sf_database, "INFORMATION_SCHEMA", "TABLES"), None) >= 0
    finally:
        source.close()
    assert pem not in str(config.redacted())

    monkeypatch.setenv("SF_KEY_PASSPHRASE", "wrong")
    with pytest.raises(ConfigError, match=r"snowflake\.private_key cannot be read"):
        env.config(TABLES, snowflake={"password": None, "private_key": "${SF_PRIVATE_KEY}",
                                      "private_key_passphrase": "${SF_KEY_PASSPHRASE}"}).snowflake_connect_args()


def test_snowflake_sessions_get_a_statement_timeout_unless_configured(env) -> None:
    config = env.config(TABLES, defaults={"snowflake_statement_timeout_seconds": 77})
    assert config.snowflake_connect_args()["session_parameters"]["STATEMENT_TIMEOUT_IN_SECONDS"] == 77
    assert config.snowflake_connect_args()["arrow_number_to_decimal"] is True


def test_every_session_works_in_utc_on_both_sides_whatever_the_config_or_the_database_says(env) -> None:
    with env.pg() as conn:
        conn.execute(f'ALTER DATABASE "{env.pg_database}" SET timezone = \'America/Los_Angeles\'')
    config = env.config(TABLES, snowflake={"session_parameters": {"TIMEZONE": "Asia/Tokyo"}},
                        postgres={"options": "-c TimeZone=Europe/Paris"})
    assert config.snowflake_connect_args()["session_parameters"]["TIMEZONE"] == "UTC"
    with pg.connect(config.postgres_connect_args(), autocommit=True) as conn:
        assert conn.execute("SHOW TimeZone").fetchone()[0] == "UTC"


PROBE_COUNT = """
import json, sys
from snowflake.connector import platform_detection
from lib.source.snowflake import SnowflakeSource
probes = []
platform_detection.is_ec2_instance = lambda *a, **k: probes.append("ec2") or platform_detection._DetectionState.NOT_DETECTED
source = SnowflakeSource(json.loads(sys.argv[1]), None)
source.count(tuple(sys.argv[2:5]), None)
source.close()
print(len(probes))
"""


@pytest.mark.parametrize(("configured", "probes"), [(None, "0"), (0.5, "1")])
def test_a_login_probes_no_cloud_metadata_endpoint_unless_the_config_asks(env, configured, probes) -> None:
    """The connector's first login in a process asks six metadata endpoints which cloud it runs in, for its
    telemetry, up to 0.2 s: in a Lambda (no such endpoint) every cold start would wait for it."""
    import json
    import subprocess
    import sys

    snowflake = {} if configured is None else {"platform_detection_timeout_seconds": configured}
    args = env.config(TABLES, snowflake=snowflake).snowflake_connect_args()
    args.pop("session_parameters")  # not JSON-safe values aside, the login is the same
    done = subprocess.run([sys.executable, "-c", PROBE_COUNT, json.dumps(args, default=str),
                           env.sf_database, "INFORMATION_SCHEMA", "TABLES"],
                          capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == probes
