"""Helpers shared by the live-serving tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable


async def until(pred: Callable[[], bool], what: str, tries: int = 3000) -> None:
    """Wait for ``pred`` (bounded by a number of polls; no duration is asserted)."""
    for _ in range(tries):
        if pred():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def sse(text: str) -> list:
    """The payloads of an SSE body: JSON chunks, and the literal ``[DONE]``."""
    return [b[6:] if b[6:] == "[DONE]" else json.loads(b[6:])
            for b in text.split("\n\n") if b.startswith("data: ")]


def record_submits(engine) -> list:
    """Every request an emulated engine's loop is handed, in order (the loop still gets it)."""
    seen: list = []
    orig = engine.loop.submit

    def spy(req):
        seen.append(req)
        return orig(req)

    engine.loop.submit = spy
    return seen
