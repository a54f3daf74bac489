"""Configuration: every problem reported at once, secrets only by reference, a stable fingerprint."""

from __future__ import annotations

import json
import re

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
                {"source": "B", "source_watermark": "UPDATED_AT", "insert_only_mode": True},
                {"target": "public.c", "chunk_colums": ["X"]},
            ],
        }},
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, "s", {"parallel_threads": -3, "drop_everything": True})
    text = str(caught.value)
    expected = [
        "defaults.parallel_threads must be an integer from 1 to 256, or 0 for one per core, got -1",
        "unknown setting 'batch_sise' (did you mean 'batch_size'?)",
        "override 'drop_everything' is not allowed",
        "overrides.parallel_threads must be an integer from 1 to 256, or 0 for one per core, got -3",
        "snowflake.password must be a reference",
        "references ${NOT_SET_ANYWHERE}, which is not set",
        "chunking_column_types entry 'uuid' must be one of date, numeric, string, timestamp",
        "a watermark load merges changed rows: insert_only_mode must be false or left out",
        "'source' is required",
        "unknown option 'chunk_colums' (did you mean 'chunking_columns'",
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


def test_fingerprint_does_not_depend_on_the_order_tables_are_named() -> None:
    raw = {"sources": {"s": {**_source(), "tables": [{"source": "A"}, {"source": "B"}, {"source": "C"}]}}}
    forward = parse_config(raw, "s", {"tables": ["A", "B"]}).fingerprint()
    assert parse_config(raw, "s", {"tables": ["B", "A"]}).fingerprint() == forward
    reordered = {"sources": {"s": {**_source(), "tables": [{"source": "C"}, {"source": "B"}, {"source": "A"}]}}}
    assert parse_config(reordered, "s", {}).fingerprint() == parse_config(raw, "s", {}).fingerprint()


@pytest.mark.parametrize(("overrides", "problem"), [
    ({"no_resume": "false", "parallel_threads": 0}, None),
    ({"no_resume": "TRUE"}, None),
    ({"no_resume": "no"}, "override 'no_resume' must be true or false"),
    ({"no_resume": 1}, "override 'no_resume' must be true or false"),
    ({"tables": ['"unbalanced']}, "override 'tables': '\"unbalanced' is not a table name: unterminated quoted identifier"),
    ({"tables": "A"}, "override 'tables' must be a non-empty list of table names"),
    ({"source_name": ["s"]}, "override 'source_name' must be a source name (a string)"),
    ({"lease_seconds": 0}, "overrides.lease_seconds must be an integer from 2 to 86,400"),
    ({"chunk_rows": "1000"}, "overrides.chunk_rows must be an integer from 1 to 1,000,000,000 (rows), got '1000'"),
    ({"parallel_threads": 10_000}, "overrides.parallel_threads must be an integer from 1 to 256"),
    ({"batch_size": 2.5}, "overrides.batch_size must be an integer"),
    ({"resume_max_age": True}, "overrides.resume_max_age must be a number of hours"),
    ({"max_target_connections": 1}, "overrides.max_target_connections must be an integer of at least 2"),
])
def test_execution_overrides_are_parsed_with_their_real_types(overrides, problem) -> None:
    raw = {"sources": {"s": {**_source(), "tables": [{"source": "A"}]}}}
    if problem is None:
        config = parse_config(raw, "s", overrides)
        assert config.no_resume is (str(overrides["no_resume"]).lower() == "true")
        return
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, "s", overrides)
    assert problem in str(caught.value)
    assert len(caught.value.problems) == 1


def test_every_bad_override_is_listed_at_once() -> None:
    raw = {"sources": {"s": _source()}}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, "s", {"no_resume": "false ", "tables": [7], "lease_seconds": -1, "max_attempts": "3",
                                "workers": 2})
    assert len(caught.value.problems) == 4, caught.value.problems


@pytest.mark.parametrize(("source_filter", "problem"), [
    ("STATUS = 'open' AND (AMOUNT > 5", "has 1 unclosed '('"),
    ("STATUS = 'open) AND AMOUNT > 5", "has an unterminated ' quote"),
    ("AMOUNT > 5)", "has a ')' without its '('"),
    ("AMOUNT > 5; DROP TABLE T", "contains ';' outside quotes"),
    ("AMOUNT > 5 -- big ones", "contains a comment (--)"),
    ("NOTE = 'it''s (fine); -- really' AND \"Odd \"\" Name\" > 0 AND GROWTH_PCT LIKE '5%'", None),
])
def test_source_filter_must_be_one_balanced_predicate(source_filter, problem) -> None:
    raw = {"sources": {"s": _source(source_filter=source_filter)}}
    if problem is None:
        assert parse_config(raw, "s", {}).tables[0].source_filter == source_filter
        return
    with pytest.raises(ConfigError, match=re.escape(problem)):
        parse_config(raw, "s", {})


def test_target_names_postgres_would_truncate_are_refused_with_the_truncated_name() -> None:
    long_name = "monthly_revenue_by_customer_segment_and_region_including_returns_v2"  # 68 bytes
    with pytest.raises(ConfigError) as caught:
        parse_config({"sources": {"s": _source(target=f"analytics.{long_name}")}}, "s", {})
    assert f"would silently call it '{long_name[:63]}'" in str(caught.value)
    assert parse_config({"sources": {"s": _source(target=f"analytics.{long_name[:63]}")}}, "s", {}).tables[0]


def test_every_contradictory_load_option_is_listed_at_once() -> None:
    raw = {"sources": {"s": {**_source(), "tables": [
        {"source": "A", "load_mode": "replace"},
        {"source": "B", "load_mode": "swap", "truncate_onstart": True, "insert_only_mode": False},
        {"source": "C", "load_mode": "swap", "source_watermark": "TS", "merge_key": ["ID"]},
        {"source": "D", "target_watermark": "ts", "watermark_lag": -5},
        {"source": "E", "source_watermark": "TS", "insert_only_mode": True, "truncate_onstart": True},
        {"source": "F", "merge_key": "ID"},
    ]}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, "s", {})
    expected = [
        "(A): load_mode 'replace' must be one of in_place, swap",
        "(B): load_mode swap never truncates the live table",
        "(B): load_mode swap reloads the whole table into an empty shadow: insert_only_mode=false",
        "(C): load_mode swap reloads the whole table: it cannot be combined with source_watermark",
        "(C): merge_key is used by catch-up and merge loads only",
        "(D): watermark_lag must be a number of at least 0",
        "(D): target_watermark needs source_watermark",
        "(E): a watermark load merges changed rows: insert_only_mode must be false or left out",
        "(E): a watermark load continues from the last window: it cannot truncate_onstart",
        "(F): merge_key must be a list of source column names",
    ]
    for fragment in expected:
        assert fragment in str(caught.value), fragment
    assert len(caught.value.problems) == len(expected), caught.value.problems


def test_load_options_can_be_overridden_for_every_selected_table() -> None:
    raw = {"sources": {"s": {**_source(), "tables": [{"source": "A"}, {"source": "B", "truncate_onstart": True}]}}}
    config = parse_config(raw, "s", {"insert_only_mode": "false", "tables": ["A"]})
    assert [t.merges for t in config.tables] == [True]
    with pytest.raises(ConfigError, match=re.escape("override load_mode on DB.S.B: load_mode swap never truncates")):
        parse_config(raw, "s", {"load_mode": "swap"})
    assert parse_config(raw, "s", {}).fingerprint() != config.fingerprint()


def test_schema_changes_is_evolve_or_freeze_and_every_bad_value_is_listed() -> None:
    raw = {"sources": {"s": {**_source(), "tables": [
        {"source": "A", "schema_changes": "ignore", "load_mode": "replace"},
        {"source": "B", "schema_changes": True},
        {"source": "C", "schema_changes": "freeze"},
        {"source": "D"},
    ]}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, "s", {})
    assert caught.value.problems == [
        "sources.s.tables[0] (A): load_mode 'replace' must be one of in_place, swap",
        "sources.s.tables[0] (A): schema_changes 'ignore' must be one of evolve, freeze",
        "sources.s.tables[1] (B): schema_changes True must be one of evolve, freeze"]
    valid = parse_config({"sources": {"s": {**_source(), "tables": raw["sources"]["s"]["tables"][2:]}}}, "s", {})
    assert [t.schema_changes for t in valid.tables] == ["freeze", "evolve"]
