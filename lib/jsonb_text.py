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
    # integers parse exactly as int; other numbers stay the text they were written as; of equal keys the
    # last wins, as in jsonb (and in json.loads' dicts)
    return _render(json.loads(document, parse_float=_Number))


def _render(value: Any) -> str:
    if isinstance(value, dict):
        keys = sorted(value, key=_jsonb_key_order)
        return "{" + ", ".join(f"{_string(k)}: {_render(value[k])}" for k in keys) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_render(v) for v in value) + "]"
    if isinstance(value, _Number):
        return numeric_text(value)
    if isinstance(value, str):
        return _string(value)
    if value is True or value is False or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return str(value)  # an int, exact at any size


def _jsonb_key_order(key: str) -> tuple[int, bytes]:
    encoded = key.encode()
    return len(encoded), encoded


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


def _string(text: str) -> str:
    if not _NEEDS_ESCAPE.search(text):
        return f'"{text}"'
    out = ['"']
    for ch in text:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


_INTEGER = re.compile(r"-?[0-9]+")
_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f]')
_ESCAPES = {"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}

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
