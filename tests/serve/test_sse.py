"""sse_json: the client-side reader of OpenAI-style SSE streams (bench, profiler)."""

from __future__ import annotations

import asyncio

import pytest

from proserve.serve.openai import IncompleteStream, sse_json


async def _lines(*xs: bytes):
    for x in xs:
        yield x


def _collect(*xs: bytes) -> list:
    async def go():
        return [c async for c in sse_json(_lines(*xs))]

    return asyncio.run(go())


def test_yields_json_chunks_until_done_and_skips_other_lines() -> None:
    out = _collect(b": comment\n", b'data: {"a": 1}\n', b"\n", b'data: {"error": {}}\n',
                   b"data: [DONE]\n", b'data: {"after": 1}\n')
    assert out == [{"a": 1}, {"error": {}}]


def test_stream_without_done_is_incomplete_and_bad_json_is_an_error() -> None:
    with pytest.raises(IncompleteStream):
        _collect(b'data: {"a": 1}\n')
    with pytest.raises(ValueError):
        _collect(b"data: {oops\n", b"data: [DONE]\n")
