"""MIGRATION_CONFIG may name an S3 object or an SSM parameter: read at each invocation, kept per container until
it changes, so a table-list change is an upload; the template grants exactly that read."""

from __future__ import annotations

import json
import re
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from lib.config import ConfigError, load_config, location

ROOT = Path(__file__).resolve().parent.parent


def _raw(tables: list[str]) -> str:
    return json.dumps({"sources": {"s": {
        "snowflake": {"account": "a", "user": "u", "database": "D", "schema": "S"},
        "postgres": {"dbname": "p"}, "tables": [{"source": t} for t in tables]}}})


@pytest.fixture
def aws(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    location._cache.clear()
    with mock_aws():
        yield


def test_a_config_in_s3_is_read_again_only_when_it_changed(aws, monkeypatch) -> None:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="cfg", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.put_object(Bucket="cfg", Key="migration/config.json", Body=_raw(["A"]).encode())
    monkeypatch.setenv("MIGRATION_CONFIG", "s3://cfg/migration/config.json")
    fetched = []
    real_fetch = location._cached

    def counting(where, tag, fetch):
        return real_fetch(where, tag, lambda: fetched.append(tag) or fetch())

    monkeypatch.setattr(location, "_cached", counting)
    assert [t.source[-1] for t in load_config("s").tables] == ["A"]
    assert [t.source[-1] for t in load_config("s").tables] == ["A"]
    s3.put_object(Bucket="cfg", Key="migration/config.json", Body=_raw(["A", "B"]).encode())  # an upload, no build
    assert [t.source[-1] for t in load_config("s").tables] == ["A", "B"]
    assert len(fetched) == 2, "the object is downloaded again only when its ETag changed"


def test_a_config_in_ssm_follows_the_parameters_version(aws, monkeypatch) -> None:
    ssm = boto3.client("ssm")
    ssm.put_parameter(Name="/migration/config", Value=_raw(["A"]), Type="String")
    monkeypatch.setenv("MIGRATION_CONFIG", "ssm:/migration/config")
    assert [t.source[-1] for t in load_config("s").tables] == ["A"]
    ssm.put_parameter(Name="/migration/config", Value=_raw(["C"]), Type="String", Overwrite=True)
    assert [t.source[-1] for t in load_config("s").tables] == ["C"]


def test_a_config_location_that_cannot_be_read_names_itself(aws, monkeypatch) -> None:
    monkeypatch.setenv("MIGRATION_CONFIG", "s3://nowhere/config.json")
    with pytest.raises(ConfigError, match=r"config s3://nowhere/config\.json cannot be read"):
        load_config("s")


def test_the_template_grants_exactly_the_read_of_the_configured_location() -> None:
    template = (ROOT / "aws" / "template.yaml").read_text()
    assert "- !Sub s3://${ConfigS3Object}" in template and '!Sub "ssm:${ConfigSsmParameter}"' in template
    grants = template[template.index("Sid: ConfigInS3"):template.index("Sid: Secrets")]
    assert re.search(r"Action: s3:GetObject\s", grants) and "arn:${AWS::Partition}:s3:::${ConfigS3Object}" in grants
    assert re.search(r"Action: ssm:GetParameter\s", grants) and ":parameter${ConfigSsmParameter}" in grants
    assert "s3:*" not in template and "ssm:*" not in template
