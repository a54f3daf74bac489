"""jsonb's text form computed outside PostgreSQL, both ways the engine computes it: in Python (the local
stand-in's UDF) and in JavaScript (the temporary UDF real Snowflake runs, executed here with node), each
against PostgreSQL's own `::jsonb::text`."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from lib.check.jsonb_text import JSONB_TEXT_JS, jsonb_text

DOCUMENTS = [
    '{"b": 1, "a": 2, "aa": 3, "é": 4, "z": 5}',  # by byte length, then bytes: "é" is two bytes
    '{"constructor": 1, "toString": 2, "__proto__": 3, "hasOwnProperty": 4, "valueOf": {"x": [1, {}]}}',
    '{"k": 1, "k": 2}',  # the last of equal keys wins
    '[1, -0, 0.0, -0.0, 1.50, 1e3, 1E-3, 2.5e-1, 123456789012345678901234567890, -92233720368547758080, 1e400]',
    '{"s": "quote \\" backslash \\\\ slash \\/ tab \\t nl \\n ctl \\u0001 é \\u00e9 € \\ud83d\\ude00"}',
    '[true, false, null, "", [], {}, [[]], {"": {"": null}}]',
    '  {  "spaced" :  [ 1 ,2 , 3 ]  }  ',
    '"just a string"',
    '42',
    '{"€": 1, "abc": 2, "ÿa": 3, "\\u0007": 4}',  # three bytes each: a, ÿ, € in byte order; an escaped key
    # a long document: numbers written every way, nested, and long strings
    "[" + ", ".join(f'{{"i": {i}, "f": {i}.{i % 7}e{i % 5 - 2}, "s": "{"x" * (i % 300)}"}}' for i in range(3000)) + "]",
]


@pytest.fixture(scope="module")
def node() -> str:
    found = shutil.which("node")
    if found is None:
        pytest.fail("node is needed to run Snowflake's JavaScript UDF (it also runs `make lint-aws`)")
    return found


def _javascript(node: str, documents: list[str]) -> list[str]:
    script = (f"function jsonbText(DOC) {{ {JSONB_TEXT_JS} }}\n"
              f"console.log(JSON.stringify({json.dumps(documents)}.map(jsonbText)));")
    done = subprocess.run([node], input=script, capture_output=True, text=True, check=True, timeout=60)
    return json.loads(done.stdout)


def test_python_and_javascript_give_postgresqls_jsonb_text(env, node: str) -> None:
    with env.pg() as conn:
        postgres = [conn.execute("SELECT %s::jsonb::text", (d,)).fetchone()[0] for d in DOCUMENTS]  # type: ignore[index]
    assert [jsonb_text(d) for d in DOCUMENTS] == postgres
    assert _javascript(node, DOCUMENTS) == postgres
    assert _javascript(node, [None]) == [None]  # type: ignore[list-item]
