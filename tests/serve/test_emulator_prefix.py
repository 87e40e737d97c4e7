"""The emulator caches prompt prefixes as vLLM does and exports vLLM's prefix-cache counters."""

from __future__ import annotations

import asyncio
import re

from tests.serve.test_emulator import MODEL, start

from proserve.serve.openai import ChatRequest, CompletionRequest, prompt_prefix


def counter(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)}_total\{{[^}}]*\}} ([0-9.e+]+)$", text, re.M)
    assert m, f"{name} missing"
    return float(m.group(1))


def test_token_id_prompts_share_their_prefix_blocks() -> None:
    async def go():
        eng, c = await start()
        try:
            shared = list(range(1000, 1064))  # 64 tokens: 4 full blocks of 16
            for tail in ([1, 2, 3], [7, 8, 9]):  # one after the other: the first one cached it
                r = await c.post("/v1/completions", json={"model": MODEL, "prompt": shared + tail,
                                                          "max_tokens": 3})
                assert r.status == 200
            m = await (await c.get("/metrics")).text()
            assert counter(m, "vllm:prefix_cache_queries") == 2 * 67
            assert counter(m, "vllm:prefix_cache_hits") == 64  # the second request's 4 blocks
            # an unrelated prompt hits nothing
            r = await c.post("/v1/completions", json={"model": MODEL,
                                                      "prompt": list(range(67)), "max_tokens": 3})
            assert r.status == 200
            m = await (await c.get("/metrics")).text()
            assert counter(m, "vllm:prefix_cache_hits") == 64
        finally:
            await c.close()
    asyncio.run(go())


def test_chat_prompts_with_the_same_system_message_hit() -> None:
    async def go():
        eng, c = await start()
        try:
            system = {"role": "system", "content": "You are a careful assistant. " * 20}
            for q in ("first question?", "a different question"):
                r = await c.post("/v1/chat/completions", json={
                    "model": MODEL, "max_tokens": 2,
                    "messages": [system, {"role": "user", "content": q}]})
                assert r.status == 200
            m = await (await c.get("/metrics")).text()
            assert counter(m, "vllm:prefix_cache_hits") > 0
        finally:
            await c.close()
    asyncio.run(go())


def test_prompt_prefix_ids_are_chained_and_stable() -> None:
    a = prompt_prefix(CompletionRequest(model=MODEL, prompt=list(range(40))), 16)
    b = prompt_prefix(CompletionRequest(model=MODEL, prompt=list(range(32)) + [0] * 8), 16)
    assert a is not None and b is not None and len(a.ids) == 2 == len(b.ids)  # full blocks only
    assert a.ids == b.ids  # same first 32 tokens
    c = prompt_prefix(CompletionRequest(model=MODEL, prompt=[5] + list(range(1, 40))), 16)
    assert c.ids[0] != a.ids[0] and c.ids[1] != a.ids[1]  # a change in block 0 changes block 1
    assert prompt_prefix(CompletionRequest(model=MODEL, prompt=[1, 2, 3]), 16) is None
    chat = ChatRequest(model=MODEL, messages=[{"role": "user", "content": "x" * 130}])
    p = prompt_prefix(chat, 16)
    assert p is not None and len(p.ids) == 2  # 6 + 130 characters: two 64-character chunks
