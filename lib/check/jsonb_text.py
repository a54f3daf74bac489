"""PostgreSQL's jsonb text form of a JSON document, computed outside PostgreSQL.

jsonb normalises a document: object keys ordered by byte length, then bytes (the last of equal keys
wins), `", "` and `": "` between elements, numbers as PostgreSQL numerics (exponents expanded, the
scale kept, no negative zero), strings escaped only where JSON requires it. Verification compares a
VARIANT with its jsonb copy through this form: the target side is simply `column::text`; the source
side is this function, run inside Snowflake as a temporary JavaScript UDF (JSONB_TEXT_JS, the same
algorithm) or, for the local stand-in, as a DuckDB function (`jsonb_text`). Key order or spacing in
the source text is therefore never a difference; a changed value is.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

UDF_NAME = "MIGRATION_JSONB_TEXT"


class _Number(str):
    """A JSON number token, kept as text so no digit is lost."""


def jsonb_text(document: str | None) -> str | None:
    if document is None:
        return None
    return _render(_DECODER.decode(document))


# integers parse exactly as int; other numbers stay the text they were written as; of equal keys the last
# wins, as in jsonb (and in json.loads' dicts). One decoder for every call: json.loads with arguments
# builds a new one each time.
_DECODER = json.JSONDecoder(parse_float=_Number)
_CONSTANTS = {True: "true", False: "false", None: "null"}


def _render(value: Any) -> str:
    kind = type(value)
    if kind is str:
        return _string(value)
    if kind is dict:
        return "{" + ", ".join([_string(k) + ": " + _render(value[k]) for k in sorted(value, key=_jsonb_key_order)]) + "}"
    if kind is int:
        return str(value)  # exact at any size
    if kind is _Number:
        return numeric_text(value)
    if kind is list:
        return "[" + ", ".join([_render(v) for v in value]) + "]"
    return _CONSTANTS[value]


def _jsonb_key_order(key: str) -> tuple[int, str]:
    # UTF-8 orders as code points do, so comparing the str gives jsonb's byte order; only the length
    # must be counted in bytes
    return (len(key), key) if key.isascii() else (len(key.encode()), key)


def numeric_text(token: str) -> str:
    """A JSON number as PostgreSQL's numeric prints it: digits after the point = max(0, written - exponent)."""
    if _INTEGER.fullmatch(token):  # the common case, printed as written (JSON has no leading zeros)
        return "0" if token == "-0" else token
    number = Decimal(token)
    _, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)
    scale = max(0, -exponent)
    text = format(number.quantize(Decimal(1).scaleb(-scale)) if scale else number, "f")
    if not any(d for d in digits):  # zero has no sign in a numeric
        text = text.lstrip("-")
    return text


_INTEGER = re.compile(r"-?[0-9]+")
# jsonb escapes `"`, `\`, \b \f \n \r \t and other control characters as \u00xx (lower case),
# nothing else: exactly what the json module's encoder does with ensure_ascii off
_string = json.encoder.encode_basestring

# The same algorithm for Snowflake (a temporary JavaScript UDF; JavaScript's numbers would lose digits, so
# numbers are rewritten from their text; keys live in a Map, so "constructor" or "__proto__" are keys like any
# other). Run with node against PostgreSQL and the Python form by tests/test_jsonb_text.py.
JSONB_TEXT_JS = r"""
var s = DOC, i = 0;
function ws() { while (i < s.length && " \t\n\r".indexOf(s[i]) >= 0) i++; }
function str() { var start = i; i++; var out = "";
  while (s[i] !== '"') { if (s[i] === "\\") { var c = s[i + 1];
      if (c === "u") { out += String.fromCharCode(parseInt(s.substr(i + 2, 4), 16)); i += 6; }
      else { out += {'"': '"', "\\": "\\", "/": "/", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t"}[c]; i += 2; } }
    else { out += s[i]; i++; } }
  i++; return out; }
function quote(t) { var out = '"';
  for (var k = 0; k < t.length; k++) { var ch = t[k], code = t.charCodeAt(k);
    if (ch === '"') out += '\\"'; else if (ch === "\\") out += "\\\\";
    else if (ch === "\b") out += "\\b"; else if (ch === "\f") out += "\\f"; else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r"; else if (ch === "\t") out += "\\t";
    else if (code < 32) out += "\\u" + ("000" + code.toString(16)).slice(-4); else out += ch; }
  return out + '"'; }
function utf8(t) { return unescape(encodeURIComponent(t)); }
function num(tok) { var neg = tok[0] === "-"; if (neg) tok = tok.slice(1);
  var e = 0, m = tok, p = tok.search(/[eE]/); if (p >= 0) { e = parseInt(tok.slice(p + 1), 10); m = tok.slice(0, p); }
  var d = m.indexOf("."), ip = d >= 0 ? m.slice(0, d) : m, fp = d >= 0 ? m.slice(d + 1) : "";
  var digits = ip + fp, point = ip.length + e, scale = Math.max(0, fp.length - e);
  while (point < 0) { digits = "0" + digits; point++; }
  while (digits.length < point + scale) digits += "0";
  var intpart = digits.slice(0, point).replace(/^0+/, "") || "0", frac = digits.slice(point, point + scale);
  var text = intpart + (scale ? "." + frac : "");
  return (neg && /[1-9]/.test(digits) ? "-" : "") + text; }
function val() { ws(); var c = s[i];
  if (c === "{") { i++; var keys = new Map(); ws();
    if (s[i] === "}") { i++; return "{}"; }
    for (;;) { ws(); var k = str(); ws(); i++; keys.set(k, val()); ws();
      if (s[i] === ",") { i++; continue; } i++; break; }
    var names = Array.from(keys.keys(), function (n) { return [utf8(n), n]; });
    names.sort(function (a, b) { if (a[0].length !== b[0].length) return a[0].length - b[0].length;
      return a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0; });
    return "{" + names.map(function (n) { return quote(n[1]) + ": " + keys.get(n[1]); }).join(", ") + "}"; }
  if (c === "[") { i++; var items = []; ws(); if (s[i] === "]") { i++; return "[]"; }
    for (;;) { items.push(val()); ws(); if (s[i] === ",") { i++; continue; } i++; break; }
    return "[" + items.join(", ") + "]"; }
  if (c === '"') return quote(str());
  var m = s.slice(i).match(/^(true|false|null|-?[0-9.eE+-]+)/)[0]; i += m.length;
  return /^[-0-9]/.test(m) ? num(m) : m; }
return DOC === null || DOC === undefined ? null : val();
"""


def snowflake_udf_ddl() -> str:
    """The temporary JavaScript UDF that computes jsonb's text form inside a Snowflake session."""
    return (f"CREATE OR REPLACE TEMPORARY FUNCTION {UDF_NAME}(DOC STRING) RETURNS STRING LANGUAGE JAVASCRIPT "
            f"AS $${JSONB_TEXT_JS}$$")
