"""Where config.json comes from: a file, an S3 object (`s3://bucket/key`) or an SSM parameter (`ssm:/name`).

A Lambda function reads it at each invocation, so a table-list change is an upload, not a new image. Each
container keeps what it read: an S3 object is fetched again only when its ETag changed (one HEAD request per
invocation), an SSM parameter only when its version did.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from lib.errors import ConfigError

S3_PREFIX, SSM_PREFIX = "s3://", "ssm:"
_cache: dict[str, tuple[str, str]] = {}  # location → (ETag or version, text)
_lock = threading.Lock()


def read_config_text(location: str | Path) -> str:
    """The text at `location`; a ConfigError that names it when it cannot be read."""
    where = str(location)
    try:
        if where.startswith(S3_PREFIX):
            return _s3(where)
        if where.startswith(SSM_PREFIX):
            return _ssm(where)
        return Path(where).read_text()
    except FileNotFoundError:
        raise ConfigError([f"config file {where} does not exist"]) from None
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - botocore's errors: which one does not change what to do
        raise ConfigError([f"config {where} cannot be read ({type(exc).__name__}: {exc}); check the location "
                           "(MIGRATION_CONFIG) and that this role may read it"]) from None


def _s3(location: str) -> str:
    import boto3

    bucket, _, key = location[len(S3_PREFIX):].partition("/")
    if not bucket or not key:
        raise ConfigError([f"config location {location} must be s3://<bucket>/<key>"])
    client = boto3.client("s3")
    tag = client.head_object(Bucket=bucket, Key=key)["ETag"]
    return _cached(location, tag, lambda: client.get_object(Bucket=bucket, Key=key)["Body"].read().decode())


def _ssm(location: str) -> str:
    import boto3

    name = location[len(SSM_PREFIX):]
    answer = boto3.client("ssm").get_parameter(Name=name, WithDecryption=True)["Parameter"]
    return _cached(location, str(answer["Version"]), lambda: str(answer["Value"]))


def _cached(location: str, tag: str, fetch: Any) -> str:
    with _lock:
        kept = _cache.get(location)
        if kept is not None and kept[0] == tag:
            return kept[1]
    text = fetch()
    with _lock:
        _cache[location] = (tag, text)
    return text
