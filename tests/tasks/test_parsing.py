"""The shared parsers (tasks/parsing.py), as tables of answers a model really gives."""

from __future__ import annotations

import pytest

from tasks.base import ParseError
from tasks.parsing import (after_last_prompt, json_list, json_object, line_list, markdown_sections,
                           pick_keys, scores_by_index)


@pytest.mark.parametrize("answer, expected", [
    ("#Rewritten Prompt#:\nWrite a haiku.", "Write a haiku."),
    ("Sure! Here it is.\n#Rewritten Prompt#: Write a haiku.  \n", "Write a haiku."),
    ("#Created Prompt#:\nA\n#Rewritten Prompt#:\nB", "B"),       # the last marker wins
    ("Just the new prompt, no marker.", "Just the new prompt, no marker."),
    ("#Rewritten Prompt#:\n\nTwo\nlines", "Two\nlines"),
])
def test_after_last_prompt(answer, expected):
    assert after_last_prompt(answer) == expected


@pytest.mark.parametrize("answer", ["", "   ", "#Rewritten Prompt#:", "#Rewritten Prompt#:\n  \n"])
def test_after_last_prompt_empty_is_a_parse_error(answer):
    with pytest.raises(ParseError):
        after_last_prompt(answer)


@pytest.mark.parametrize("answer, limit, expected", [
    ("a\nb\nc", None, ["a", "b", "c"]),
    ("1. a\n2) b\n(3) c\n- d\n* e\n• f\n+ g", None, list("abcdefg")),
    ("\n\n  a  \n\n\nb\n", None, ["a", "b"]),
    ("a\nb\nc\nd", 2, ["a", "b"]),
    ("10. ten\n3.5 is a number?", None, ["ten", "3.5 is a number?"]),
    ("-not a marker without a space", None, ["-not a marker without a space"]),
])
def test_line_list(answer, limit, expected):
    assert line_list(answer, limit) == expected


@pytest.mark.parametrize("answer, n, expected", [
    ("[1] Score: 1\n[2] Score: 3", 2, [1.0, 3.0]),
    ("Here are my scores:\n[1] Score: 2\n[2] Score: 4\n[3] Score: 1", 3, [2.0, 4.0, 1.0]),  # preamble
    ("[2] Score: 5\n[1] Score: 4", 2, [4.0, 5.0]),                     # any order
    ("[1] score: 2.5 and [3] SCORE:1", 3, [2.5, None, 1.0]),            # any case, anywhere; gap
    ("[1] Score: 2\n[1] Score: 9", 1, [2.0]),                          # the first wins
    ("[0] Score: 1\n[4] Score: 2\n[2] Score: 3", 3, [None, 3.0, None]),  # out of range ignored
    ("[1] **Score:** 3", 1, [3.0]),
])
def test_scores_by_index(answer, n, expected):
    assert scores_by_index(answer, n) == expected


@pytest.mark.parametrize("answer", ["", "I cannot rank these.", "Score: 1\nScore: 2", "[1] 5"])
def test_scores_none_found_is_a_parse_error(answer):
    with pytest.raises(ParseError):
        scores_by_index(answer, 2)


@pytest.mark.parametrize("answer, expected", [
    ("## Positive\nA cat sat.\n## Negative\nA car sat.", {"positive": "A cat sat.", "negative": "A car sat."}),
    ("Sure:\n\n## Positive\n\nline one\nline two\n\n## Negative\nx\n", {"positive": "line one\nline two", "negative": "x"}),
    ("### Positive:\nA", {"positive": "A"}),
    ("## Positive\nA\n## Positive\nB", {"positive": "A"}),
    ("no headings at all", {}),
])
def test_markdown_sections(answer, expected):
    assert markdown_sections(answer) == expected


@pytest.mark.parametrize("answer, expected", [
    ('{"a": 1, "b": "x"}', {"a": 1, "b": "x"}),
    ('Here you go:\n```json\n{"a": true, "b": null}\n```\nEnjoy!', {"a": True, "b": None}),
    ('```\n{"a": [1, 2]}\n```', {"a": [1, 2]}),
    ('The object is {"a": "has } brace"} and more text {', {"a": "has } brace"}),
    ('{broken {"a": 2}', {"a": 2}),
    ('[1, 2] then {"a": 3}', {"a": 3}),
    # Python literals, after any JSON: read with ast.literal_eval, never eval
    ("{'a': 1}", {"a": 1}),
    ("Sure! {'a': None, 'b': True, 'c': ('x', 2.5)} ok", {"a": None, "b": True, "c": ["x", 2.5]}),
    ("```python\n{'q': \"it's\", 'k': '}'}\n```", {"q": "it's", "k": "}"}),
    ("{'a': 1} and then {\"b\": 2}", {"b": 2}),  # JSON first
])
def test_json_object(answer, expected):
    assert json_object(answer) == expected


@pytest.mark.parametrize("answer", [
    "", "no json here", "[1, 2, 3]", "{\"a\": 1", "__import__('os').system('true')",
    "{'a': __import__('os').system('true')}", "{'a': {1, 2}}", "{1: 'not a str key'}", "{'a': 1e999}",
    "{'a': b'bytes'}", "[" * 5000, "{'a': " * 5000,
])
def test_json_object_missing_is_a_parse_error(answer):
    with pytest.raises(ParseError):
        json_object(answer)


@pytest.mark.parametrize("answer, expected", [
    ('["a", "b"]', ["a", "b"]),
    ('Tasks:\n```json\n["a",\n "b"]\n```', ["a", "b"]),
    ('Here: ["x"] done', ["x"]),
    ("[ 'A', 'B', 'C' ]", ["A", "B", "C"]),  # distilabel's own fixture
    ("Tasks: ['it\\'s', \"b]\"] done", ["it's", "b]"]),
])
def test_json_list(answer, expected):
    assert json_list(answer) == expected


@pytest.mark.parametrize("answer", ["", "- a\n- b", '{"a": 1}', "['open'", "[print('x')]"])
def test_json_list_missing_is_a_parse_error(answer):
    with pytest.raises(ParseError):
        json_list(answer)


def test_pick_keys_missing_are_none():
    assert pick_keys({"a": 1, "extra": 2}, ["a", "b"]) == {"a": 1, "b": None}
