"""Secret references: a secret field holds `${ENV_VAR}` or `aws-secretsmanager:<secret-id>#<json-key>`, never a
literal; references are resolved only when a connection opens, and never logged or stored."""

from __future__ import annotations

import json
import os
import re
from typing import Any

from lib.errors import ConfigError

SECRETS_MANAGER_PREFIX = "aws-secretsmanager:"


ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def is_reference(value: Any) -> bool:
    return isinstance(value, str) and (
        bool(ENV_REF.fullmatch(value)) or value.startswith(SECRETS_MANAGER_PREFIX)
    )


def resolve_tree(tree: dict[str, Any], cache: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out[key] = resolve_tree(value, cache)
        elif isinstance(value, str):
            out[key] = _resolve_value(value, cache)
        else:
            out[key] = value
    if "port" in out and isinstance(out["port"], str) and out["port"].isdigit():
        out["port"] = int(out["port"])
    return out


def _resolve_value(value: str, cache: dict[str, str]) -> str:
    if value.startswith(SECRETS_MANAGER_PREFIX):
        if value not in cache:
            cache[value] = _fetch_secret(value[len(SECRETS_MANAGER_PREFIX):])
        return cache[value]
    return ENV_REF.sub(lambda m: os.environ.get(m.group(1), ""), value)


def _fetch_secret(reference: str) -> str:
    import boto3

    secret_id, _, json_key = reference.partition("#")
    response = boto3.client("secretsmanager").get_secret_value(SecretId=secret_id)
    secret = response["SecretString"]
    if not json_key:
        return secret
    try:
        return str(json.loads(secret)[json_key])
    except (ValueError, KeyError):
        raise ConfigError([f"secret {secret_id!r} has no JSON key {json_key!r}"]) from None
