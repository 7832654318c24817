"""The fast lane's framing (``modelplane/direct.py``), checked against the websockets library's
own frame parser, which is what the server's other frames come from."""

from __future__ import annotations

import asyncio
import json
from typing import cast

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from modelplane.direct import Flusher, FrameWriter, frame_header, next_message, next_prefix


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


class _Recorder:
    """Stands in for a FrameWriter: records when the flusher flushes it."""

    def __init__(self) -> None:
        self.flushed: list[float] = []

    def flush(self) -> None:
        self.flushed.append(asyncio.get_running_loop().time())


async def test_a_flusher_writes_at_once_after_quiet_and_then_once_per_interval() -> None:
    loop = asyncio.get_running_loop()
    flusher = Flusher(0.05)
    first, second = _Recorder(), _Recorder()
    started = loop.time()
    flusher.add(cast("FrameWriter", first))
    flusher.add(cast("FrameWriter", second))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert len(first.flushed) == 1  # quiet before: flushed at the end of the iteration
    assert len(second.flushed) == 1  # in the same batch
    assert first.flushed[0] - started < 0.04
    flusher.add(cast("FrameWriter", first))  # busy now: waits for the interval
    await asyncio.sleep(0.01)
    assert len(first.flushed) == 1
    await asyncio.sleep(0.08)
    assert len(first.flushed) == 2
    assert first.flushed[1] - first.flushed[0] >= 0.049
