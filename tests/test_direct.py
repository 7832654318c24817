"""The fast lane's framing (``modelplane/direct.py``), checked against the websockets library's
own frame parser, which is what the server's other frames come from."""

from __future__ import annotations

import asyncio
import json

import pytest
import uvloop
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from modelplane.direct import frame_header, next_message, next_prefix
from modelplane.settings import load_settings


def text_frame(data: bytes) -> bytes:
    return frame_header(len(data)) + data


def _parse(data: bytes) -> tuple[Frame, bytes]:
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
    else:
        raise AssertionError("the parser wanted more bytes than the frame holds")
    rest = reader.buffer
    return frame, bytes(rest)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 1000, 65535, 65536, 200_000])
def test_text_frames_parse_as_final_unmasked_text(size: int) -> None:
    payload = ("é" * size).encode()[:size] if size else b""
    frame, rest = _parse(text_frame(payload))
    assert frame.opcode is Opcode.TEXT
    assert frame.fin
    assert frame.data == payload
    assert rest == b""


def test_two_frames_in_one_write_parse_one_after_the_other() -> None:
    first, second = text_frame(b'{"a":1}'), text_frame(b"x" * 300)
    frame, rest = _parse(first + second)
    assert frame.data == b'{"a":1}'
    frame, rest = _parse(rest)
    assert frame.data == b"x" * 300
    assert rest == b""


def test_next_message_is_the_protocol_message() -> None:
    text = next_message(next_prefix('id "1"'), '{"data":{"x":[1,2]}}')
    assert json.loads(text) == {"id": 'id "1"', "type": "next", "payload": {"data": {"x": [1, 2]}}}


async def test_the_suite_runs_on_the_loop_serve_uses() -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    assert load_settings().event_loop == "uvloop"
