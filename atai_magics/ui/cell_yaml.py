"""Write JSON data as ``%%atai_job`` YAML that reads back as exactly the same data.

The inverse of ``atai_magics.spec.parse_cell`` for the values a form produces. A string is
written plain only when it is a simple word YAML reads back as that string; anything else is
double-quoted with escapes, so ``yes``, ``1e3``, ``null``, ``#``, ``: `` or a line break stay
strings. ``{{`` would start an interpolation (the cell is scanned for it before YAML parsing,
quotes or not), so the first ``{`` of each pair is written as the YAML escape ``\\x7b``: the
scan no longer sees ``{{`` and YAML still reads ``{``. Two things cannot be written at all and
raise `NotRepresentable`: lone surrogates (not UTF-8) and U+E000-U+E01F (private characters
the cell loader reserves for its ``{{ }}`` placeholders).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import yaml

__all__ = ["NotRepresentable", "block", "comment", "flow", "scalar"]

_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_./@-]*(?: [A-Za-z0-9_./@-]+)*")
_RESERVED = re.compile("[\ue000-\ue01f\ud800-\udfff]")
_PRINTABLE = re.compile(  # what YAML prints as is, less line breaks and the BOM
    "[\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]"
)
_RESOLVER = yaml.resolver.Resolver()
_STR = "tag:yaml.org,2002:str"
_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\n": "\\n",
    "\t": "\\t",
    "\r": "\\r",
    "\0": "\\0",
}


class NotRepresentable(ValueError):
    """A value the cell format cannot carry (a reserved character, NaN, a non-JSON type)."""


def _string(text: str) -> str:
    bad = _RESERVED.search(text)
    if bad:
        raise NotRepresentable(
            f"{text[:30]!r} contains U+{ord(bad.group()):04X}, which a cell cannot hold"
        )
    if _PLAIN.fullmatch(text) and _resolves_to_str(text):
        return text
    out = []
    for i, char in enumerate(text):
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif char == "{" and text[i + 1 : i + 2] == "{":
            out.append("\\x7b")
        elif _PRINTABLE.match(char):
            out.append(char)
        elif ord(char) <= 0xFF:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:  # pragma: no cover - every astral character is printable
            out.append(f"\\U{ord(char):08x}")
    return '"' + "".join(out) + '"'


def _resolves_to_str(text: str) -> bool:
    tag = _RESOLVER.resolve(yaml.ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
    return bool(tag == _STR)


def _float(number: float) -> str:
    if not math.isfinite(number):
        raise NotRepresentable(f"{number} is not a JSON number")
    text = repr(number)
    mantissa, e, exponent = text.partition("e")
    if "." not in mantissa:  # YAML 1.1 reads 1e-05 as a string, 1.0e-05 as a float
        mantissa += ".0"
    return mantissa + e + exponent


def scalar(value: Any) -> str:
    """One scalar (str, int, float, bool or None) as YAML text."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, str):
        return _string(value)
    raise NotRepresentable(f"a {type(value).__name__} is not JSON data")


def flow(value: Any) -> str:
    """Any JSON value on one line: ``[a, b]``, ``{k: v}`` or a scalar."""
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{scalar(str(k))}: {flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(flow(v) for v in value) + "]"
    return scalar(value)


def block(mapping: Mapping[str, Any], indent: int = 0) -> list[str]:
    """A mapping as block-style lines; non-empty mappings nest, everything else is flow."""
    pad = " " * indent
    lines = []
    for key, value in mapping.items():
        if isinstance(value, Mapping) and value:
            lines.append(f"{pad}{scalar(str(key))}:")
            lines += block(value, indent + 2)
        else:
            lines.append(f"{pad}{scalar(str(key))}: {flow(value)}")
    return lines


def comment(text: str) -> str:
    """``# text`` on one line, made harmless for the cell loader (no ``{{``, no reserved
    characters: both are checked in comments too)."""
    words = " ".join(text.split()).replace("{{", "{ {")
    return "# " + "".join(
        "?" if _RESERVED.match(c) or not _PRINTABLE.match(c) else c for c in words
    )
