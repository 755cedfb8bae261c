"""Shared parsers of model answers. Pure functions: text in, values out, ParseError when
there is nothing to take. The rules that are part of the contract (docs/api.md, "The task
catalogue": how answers are read) live here and nowhere else.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Iterable
from typing import Any

from .base import ParseError

__all__ = [
    "after_last_prompt", "json_list", "json_object", "line_list", "markdown_sections",
    "pick_keys", "scores_by_index",
]

_PROMPT_MARK = "Prompt#:"


def after_last_prompt(answer: str) -> str:
    """evol-*: the text after the last `Prompt#:` (the whole answer when there is none),
    stripped. An empty result is a ParseError: the next round would rewrite nothing."""
    text = answer.rsplit(_PROMPT_MARK, 1)[-1].strip()
    if not text:
        raise ParseError("the answer has no text after its last 'Prompt#:'")
    return text


# `1.`, `1)`, `(1)`, `1]`, `1:`, `-`, `*`, `•`, `+` at the start of a line (not markdown bold: `**1.**` stays)
_MARKER = re.compile(r"^\s*(?:\(?\d{1,3}[.)\]:]|[-*•+])\s+")


def line_list(answer: str, limit: int | None = None) -> list[str]:
    """One item per non-blank line, list markers removed; at most `limit` items."""
    items = []
    for line in answer.splitlines():
        item = _MARKER.sub("", line, count=1).strip()
        if item:
            items.append(item)
    return items if limit is None else items[:limit]


_SCORE = re.compile(r"\[\s*(\d+)\s*\]\s*\**\s*score\s*\**\s*[:=]?\s*\**\s*([-+]?\d+(?:\.\d+)?)", re.IGNORECASE)


def scores_by_index(answer: str, n: int) -> list[float | None]:
    """`[i] Score: x` lines (any case, anywhere) give `scores[i-1] = x`; the first
    occurrence of an index wins, out-of-range indexes are ignored, unmatched positions are
    None. Parsing by the index, not the line, keeps a preamble line from shifting every
    score. No score at all is a ParseError."""
    scores: list[float | None] = [None] * n
    found = False
    for m in _SCORE.finditer(answer):
        i = int(m.group(1)) - 1
        if 0 <= i < n and scores[i] is None:
            scores[i] = float(m.group(2))
            found = True
    if not found:
        raise ParseError(f"no '[i] Score: x' line for any of the {n} items")
    return scores


_HEADING = re.compile(r"^\s*#{1,6}\s*(.+?)\s*#*\s*$")


def markdown_sections(answer: str) -> dict[str, str]:
    """The text under each markdown heading, keyed by the heading's lower-cased title
    (`## Positive` -> "positive"); the first section of a title wins."""
    sections: dict[str, str] = {}
    title: str | None = None
    lines: list[str] = []

    def close() -> None:
        if title is not None and title not in sections:
            sections[title] = "\n".join(lines).strip()

    for line in answer.splitlines():
        m = _HEADING.match(line)
        if m:
            close()
            title, lines = m.group(1).strip().strip(":*").strip().lower(), []
        elif title is not None:
            lines.append(line)
    close()
    return sections


_FENCE = re.compile(r"```[ \t]*(?:json|JSON|javascript|js)?[ \t]*\n(.*?)```", re.DOTALL)


def _json_values(answer: str, kind: type) -> Iterable[Any]:
    """Candidate values of type `kind` in an answer: fenced blocks first, then the whole
    answer, then each `{` / `[` where a value starts; JSON first, then the same places
    read as Python literals (`['A', 'B']`, `{'k': None}`), which models write too. Never
    eval: `ast.literal_eval` reads literals only, and only JSON-shaped ones are kept."""
    decoder = json.JSONDecoder()
    texts = [m.group(1).strip() for m in _FENCE.finditer(answer)] + [answer.strip()]
    for text in texts:
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: hostile nesting
            continue
        if isinstance(value, kind):
            yield value
    opener = "{" if kind is dict else "["
    starts = [i for i, c in enumerate(answer) if c == opener]
    for start in starts:
        try:
            value, _ = decoder.raw_decode(answer, start)
        except ValueError:
            value = None
        except RecursionError:  # hostile nesting: every later opening would recurse as deep
            break
        if isinstance(value, kind):
            yield value
    closer = "}" if kind is dict else "]"
    spans = texts + [answer[s:e + 1] for s in starts[:_MAX_LITERALS] if (e := _closing(answer, s, closer)) > 0]
    for text in spans:
        value = _literal(text)
        if isinstance(value, kind):
            yield value


_MAX_LITERALS = 16  # bracket openings tried as Python literals: the scan is linear, the tries are not
_MAX_LITERAL_CHARS = 200_000


def _closing(text: str, start: int, closer: str) -> int:
    """The index of the bracket that closes the one at `start`, skipping quoted strings;
    -1 when it is not closed."""
    depth, quote, i = 0, None, start
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c in "[{(":
            depth += 1
        elif c in "]})":
            depth -= 1
            if depth == 0:
                return i if c == closer else -1
        i += 1
    return -1


def _literal(text: str) -> Any:
    """`text` as a Python literal made of JSON types (tuples read as lists), else None."""
    if not text or text[0] not in "[{" or len(text) > _MAX_LITERAL_CHARS:
        return None
    try:
        return _as_json(ast.literal_eval(text))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def _as_json(value: Any) -> Any:
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, list | tuple):
        return [_as_json(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _as_json(v) for k, v in value.items()}
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def json_object(answer: str) -> dict[str, Any]:
    """The JSON object in an answer, bare or in a fenced block (the first one found), or
    else a Python dict literal."""
    for value in _json_values(answer, dict):
        return value
    raise ParseError("the answer holds no JSON object")


def json_list(answer: str) -> list[Any]:
    """The JSON list in an answer, bare or in a fenced block (the first one found), or
    else a Python list literal."""
    for value in _json_values(answer, list):
        return value
    raise ParseError("the answer holds no JSON list")


def pick_keys(obj: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """The given keys of a parsed object; a missing key is None."""
    return {k: obj.get(k) for k in keys}
