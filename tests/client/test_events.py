"""The CLI's event-stream parser (app.client.http.EventParser): events split anywhere
across chunks, the three line ends of the SSE format, and JSON text that holds characters
`str.splitlines` would cut at (written raw by the server's ensure_ascii=False JSON)."""

from __future__ import annotations

import json
import random

import pytest

from app.client.http import EventParser

EVENTS = [("row", str(i), {"index": i, "row": {"generation": "a\u2028b\x85c\u2029d é 日本 " * (i % 4)}})
          for i in range(60)] + [("done", "60", {"status": "completed"})]


def encode(newline: str) -> bytes:
    return "".join(f": keep-alive{newline}event: {e}{newline}id: {i}{newline}data: {json.dumps(d, ensure_ascii=False)}"
                   f"{newline}{newline}" for e, i, d in EVENTS).encode()


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_events_cut_anywhere_come_out_whole(newline):
    raw = encode(newline)
    rng = random.Random(7)
    for _ in range(20):
        parser, got, pos = EventParser(), [], 0
        while pos < len(raw):
            size = rng.randint(1, 64)
            got += parser.feed(raw[pos:pos + size])
            pos += size
        got += parser.feed(b"")
        assert got == EVENTS


def test_one_byte_at_a_time_and_all_at_once():
    raw = encode("\r\n")
    parser = EventParser()
    assert [e for i in range(len(raw)) for e in parser.feed(raw[i:i + 1])] == EVENTS
    assert EventParser().feed(raw) == EVENTS


def test_multi_line_data_default_event_and_no_space_after_the_colon():
    parser = EventParser()
    assert parser.feed(b'data:[1,\ndata: 2]\n\nevent:progress\ndata:{}\n\n') == [
        ("message", None, [1, 2]), ("progress", None, {})]


def test_an_event_without_its_blank_line_is_not_dispatched():
    parser = EventParser()
    assert parser.feed(b"event: row\ndata: {}\n") == []
    assert parser.feed(b"") == []
