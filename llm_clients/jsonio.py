"""JSON on the per-call path: orjson (a tenth of the stdlib's cost per document, which at
thousands of calls a second was a tenth of a row's CPU), with the stdlib for the rare
document orjson refuses. An LLM may answer a lone surrogate (`"\\ud800"`), which orjson
neither reads nor writes and the stdlib does: such an answer must still be read, cached
and passed on (app.encoding cleans it at the edge)."""

from __future__ import annotations

import json
from typing import Any

import orjson

_SORTED = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


def dumps(value: Any, *, sort_keys: bool = False) -> bytes:
    """Compact JSON; with `sort_keys`, canonical (what the call cache hashes)."""
    try:
        return orjson.dumps(value, option=_SORTED if sort_keys else orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:  # a lone surrogate, an integer beyond 64 bits
        return json.dumps(value, sort_keys=sort_keys, separators=(",", ":")).encode()


def loads(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:  # a lone surrogate escaped: the stdlib reads it
        return json.loads(data)
