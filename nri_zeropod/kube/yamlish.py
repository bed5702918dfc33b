"""A reader for the YAML that kubeconfig files are written in, without PyYAML.

kubectl, kind, k3s and kubeadm write kubeconfigs as block-style YAML:
nested mappings, ``- `` sequences (also at the same indent as their key),
plain and quoted scalars, ``{}``/``[]`` and comments. This module reads that
subset and JSON (a kubeconfig may be JSON, which kubectl accepts too).
Anything else (anchors, block scalars ``|``/``>``, multi-line flow
collections) raises :class:`ValueError` naming the line, rather than being
misread. Keeping this small avoids a compiled dependency for one file read
at start-up.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_INT = re.compile(r"^[-+]?[0-9]+$")


@dataclass
class _Line:
    number: int
    indent: int
    text: str


def load(text: str) -> Any:
    """The document in ``text``: dicts, lists, str, int, bool and None."""
    if text.lstrip().startswith(("{", "[")):
        return json.loads(text)
    lines = _lines(text)
    if not lines:
        return None
    value, end = _node(lines, 0, lines[0].indent)
    if end != len(lines):
        raise ValueError(f"line {lines[end].number}: unexpected indentation")
    return value


def _lines(text: str) -> list[_Line]:
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise ValueError(f"line {number}: tabs are not allowed for indentation")
        content = _strip_comment(raw).rstrip()
        if not content.strip() or content.strip() in ("---", "..."):
            continue
        out.append(_Line(number, len(content) - len(content.lstrip(" ")), content.strip()))
    return out


def _strip_comment(raw: str) -> str:
    quote = ""
    for i, ch in enumerate(raw):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"" and (i == 0 or raw[i - 1] in " :-[{,"):
            quote = ch
        elif ch == "#" and (i == 0 or raw[i - 1] in " \t"):
            return raw[:i]
    return raw


def _is_item(text: str) -> bool:
    return text == "-" or text.startswith("- ")


def _node(lines: list[_Line], i: int, indent: int) -> tuple[Any, int]:
    if _is_item(lines[i].text):
        return _sequence(lines, i, indent)
    return _mapping(lines, i, indent)


def _sequence(lines: list[_Line], i: int, indent: int) -> tuple[list[Any], int]:
    items: list[Any] = []
    while i < len(lines) and lines[i].indent == indent and _is_item(lines[i].text):
        line = lines[i]
        rest = line.text[1:].lstrip()
        if not rest:
            if i + 1 < len(lines) and lines[i + 1].indent > indent:
                value, i = _node(lines, i + 1, lines[i + 1].indent)
            else:
                value, i = None, i + 1
        elif _is_item(rest) or _split_key(rest) is not None:
            # "- key: value" opens a mapping whose keys sit at the column of "key".
            column = indent + len(line.text) - len(rest)
            lines[i] = _Line(line.number, column, rest)
            value, i = _node(lines, i, column)
        else:
            value, i = _scalar(rest, line.number), i + 1
        items.append(value)
    return items, i


def _mapping(lines: list[_Line], i: int, indent: int) -> tuple[dict[str, Any], int]:
    out: dict[str, Any] = {}
    while i < len(lines) and lines[i].indent == indent and not _is_item(lines[i].text):
        line = lines[i]
        split = _split_key(line.text)
        if split is None:
            raise ValueError(f"line {line.number}: expected 'key: value', got {line.text!r}")
        key, rest = split
        i += 1
        if rest:
            out[key] = _scalar(rest, line.number)
        elif i < len(lines) and (lines[i].indent > indent or (lines[i].indent == indent and _is_item(lines[i].text))):
            out[key], i = _node(lines, i, lines[i].indent)
        else:
            out[key] = None
    if i < len(lines) and lines[i].indent > indent:
        raise ValueError(f"line {lines[i].number}: unexpected indentation")
    return out, i


def _split_key(text: str) -> tuple[str, str] | None:
    """("key", "rest") of "key: rest" or "key:", honouring a quoted key; None if not a mapping entry."""
    if text[0] in "'\"":
        end = text.find(text[0], 1)
        if end < 0 or not text[end + 1 :].startswith(":"):
            return None
        key, after = _scalar(text[: end + 1], 0), text[end + 2 :]
        if after and not after.startswith(" "):
            return None
        return str(key), after.strip()
    match = re.match(r"^([^\s:][^:]*?|[^\s:]*?):(?:\s+(.*))?$", text)
    if not match or text.startswith(("{", "[")):
        return None
    return match.group(1).strip(), (match.group(2) or "").strip()


def _scalar(text: str, number: int) -> Any:
    if text[0] in "|>&*!":
        raise ValueError(f"line {number}: YAML feature {text[0]!r} is not supported in kubeconfig files")
    if text[0] == '"':
        return json.loads(text)
    if text[0] == "'":
        if not text.endswith("'") or len(text) < 2:
            raise ValueError(f"line {number}: unterminated quote")
        return text[1:-1].replace("''", "'")
    if text == "{}":
        return {}
    if text.startswith("["):
        if not text.endswith("]"):
            raise ValueError(f"line {number}: multi-line flow sequences are not supported")
        inner = text[1:-1].strip()
        return [_scalar(part.strip(), number) for part in inner.split(",")] if inner else []
    if text.startswith("{"):
        raise ValueError(f"line {number}: flow mappings are not supported")
    if text in ("null", "Null", "NULL", "~"):
        return None
    if text in ("true", "True", "TRUE"):
        return True
    if text in ("false", "False", "FALSE"):
        return False
    if _INT.match(text):
        return int(text)
    return text
