"""Configuration: every problem reported at once, secrets only by reference, a stable fingerprint."""

from __future__ import annotations

import json

import pytest

from lib.config import ConfigError, load_config, parse_config
from tests.helpers import cli


def _source(**table: object) -> dict:
    return {
        "snowflake": {"account": "acct", "user": "u", "password": "${SF_PW}", "database": "DB", "schema": "S"},
        "postgres": {"dbname": "target", "password": "${PG_PW}"},
        "tables": [{"source": "T", **table}],
    }


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SF_PW", "sf-secret-value")
    monkeypatch.setenv("PG_PW", "pg-secret-value")


def test_bad_config_lists_every_problem_at_once() -> None:
    raw = {
        "defaults": {"parallel_threads": -1, "batch_sise": 10},
        "sources": {"s": {
            "snowflake": {"account": "a", "user": "u", "password": "hunter2", "database": "D", "schema": "S"},
            "postgres": {"dbname": "x", "password": "${NOT_SET_ANYWHERE}"},
            "tables": [
                {"source": "A", "chunking_columns": ["ID"], "chunking_column_types": ["uuid"]},
                {"source": "B", "source_watermark": "UPDATED_AT", "insert_only_mode": False},
                {"target": "public.c", "chunk_colums": ["X"]},
            ],
        }},
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, "s", {"parallel_threads": -3, "drop_everything": True})
    text = str(caught.value)
    expected = [
        "defaults.parallel_threads must be a positive integer, or 0 for one per core",
        "unknown setting 'batch_sise' (did you mean 'batch_size'?)",
        "override 'drop_everything' is not allowed",
        "overrides.parallel_threads must be a positive integer, or 0 for one per core",
        "snowflake.password must be a reference",
        "references ${NOT_SET_ANYWHERE}, which is not set",
        "chunking_column_types entry 'uuid' must be one of date, numeric",
        "option 'source_watermark' is not supported yet",
        "insert_only_mode=false (merge/upsert) is not supported yet",
        "'source' is required",
        "unknown option 'chunk_colums' (did you mean 'chunking_columns'?)",
    ]
    for fragment in expected:
        assert fragment in text, fragment
    assert len(caught.value.problems) == len(expected)
    assert "hunter2" not in text


def test_cli_prints_all_problems_and_exits_2(tmp_path, env) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"sources": {"test": {"snowflake": {}, "postgres": {}, "tables": []}}}))
    result = cli(env.env, path)
    assert result.returncode == 2
    for fragment in ("snowflake.account is required", "postgres.dbname is required", "tables must be a non-empty list"):
        assert fragment in result.stderr


def test_fingerprint_ignores_secrets_and_runtime_knobs(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = {"sources": {"s": _source()}}
    base = parse_config(raw, "s", {}).fingerprint()
    monkeypatch.setenv("SF_PW", "rotated-password")
    assert parse_config(raw, "s", {"parallel_threads": 7, "batch_size": 5, "resume_max_age": 1}).fingerprint() == base
    assert parse_config({"sources": {"s": _source(source_filter="X > 1")}}, "s", {}).fingerprint() != base
    assert parse_config(raw, "s", {"chunk_rows": 5}).fingerprint() != base


def test_secrets_never_appear_in_the_redacted_config() -> None:
    config = parse_config({"sources": {"s": _source()}}, "s", {})
    text = json.dumps(config.redacted())
    assert "sf-secret-value" not in text and "pg-secret-value" not in text
    assert config.snowflake_connect_args()["password"] == "sf-secret-value"


def test_identifiers_fold_like_their_databases() -> None:
    config = parse_config({"sources": {"s": _source(source='"Mixed Case"', target='Sales."Orders 2024"')}}, "s", {})
    table = config.tables[0]
    assert table.source == ("DB", "S", "Mixed Case")
    assert table.target == ("sales", "Orders 2024")
    lower = parse_config({"sources": {"s": _source(source="db2.sch.orders")}}, "s", {}).tables[0]
    assert lower.source == ("DB2", "SCH", "ORDERS") and lower.target == ("public", "orders")


def test_secrets_manager_reference_is_resolved_at_connect_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3
    from moto import mock_aws

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        boto3.client("secretsmanager").create_secret(Name="sf/prod", SecretString=json.dumps({"password": "from-sm"}))
        raw = {"sources": {"s": _source()}}
        raw["sources"]["s"]["snowflake"]["password"] = "aws-secretsmanager:sf/prod#password"
        config = parse_config(raw, "s", {})
        assert "from-sm" not in json.dumps(config.redacted())
        assert config.snowflake_connect_args()["password"] == "from-sm"


def test_table_override_selects_configured_tables_only(tmp_path) -> None:
    raw = {"sources": {"s": {**_source(), "tables": [{"source": "A"}, {"source": "B"}]}}}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(raw))
    assert [t.name for t in load_config("s", {"tables": ["b"]}, path).tables] == ["DB.S.B"]
    with pytest.raises(ConfigError, match="'Z' is not a configured table"):
        load_config("s", {"tables": ["Z"]}, path)
