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


def gauge(text: str, name: str, **labels: str) -> float:
    sel = "".join(f'(?=[^}}]*{k}="{v}")' for k, v in labels.items())
    m = re.search(rf"^{re.escape(name)}\{{{sel}[^}}]*\}} ([0-9.e+]+)$", text, re.M)
    assert m, f"{name} {labels} missing"
    return float(m.group(1))


def test_emulator_offloads_preempted_kv_and_exports_the_copies() -> None:
    """A KV cache of 30 blocks (480 tokens) and eight 150-token requests of two priorities:
    the engine must preempt; with ``full`` the victims' KV goes to host and comes back."""
    async def go():
        eng, c = await start(kv_blocks=30, preemption="full", policy="slide",
                             classes="high:w=2;low:w=1", max_model_len=400)
        try:
            async def one(i: int):
                r = await c.post("/v1/completions", json={
                    "model": MODEL, "prompt": list(range(i * 1000, i * 1000 + 150)),
                    "max_tokens": 60, "priority": i % 2})
                assert r.status == 200
                return (await r.json())["usage"]["completion_tokens"]
            done = await asyncio.gather(*(one(i) for i in range(8)))
            assert done == [60] * 8  # every request ends with all its tokens
            m = await (await c.get("/metrics")).text()
            assert counter(m, "vllm:num_preemptions") > 0
            off = gauge(m, "proserve_engine_preemptions", mode="offload")
            assert off > 0
            assert off + gauge(m, "proserve_engine_preemptions", mode="recompute") == counter(
                m, "vllm:num_preemptions")
            assert gauge(m, "proserve_engine_kv_blocks_copied", direction="out") > 0
            assert gauge(m, "proserve_engine_kv_blocks_copied", direction="in") > 0
            assert eng.scheduler.kv.host_free == eng.scheduler.kv.host_total  # all given back
        finally:
            await c.close()
    asyncio.run(go())
