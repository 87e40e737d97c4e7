"""The gateway's approximate prefix index (cluster/prefix_index.py): what it remembers, what it
forgets, and that routers reading it keep a shared prefix on one backend."""

from __future__ import annotations

import asyncio

from tests.serve.test_gateway import GOLD, MODEL, emulators, gateway_for, url

from proserve.cluster.prefix_index import PrefixIndex
from proserve.core.request import Prefix, Request
from proserve.serve.openai import CompletionRequest, prompt_prefix


def _req(ids: list[int], prompt_len: int) -> Request:
    return Request(0, 0.0, prompt_len, 4, 1.0, 0.1,
                   prefix=Prefix(tuple(ids), 16) if ids else None)


def test_index_answers_the_leading_run_of_sent_blocks() -> None:
    ix = PrefixIndex(capacity_blocks=100, block_size=16)
    a = _req([1, 2, 3, 4], 64)
    assert ix.lookup(a) == 0
    ix.record(a)
    # the same prompt: at most prompt - 1 tokens can hit, so 3 of its 4 blocks
    assert ix.lookup(a) == 48
    # a prompt sharing the first two chunk ids, then diverging, with more tokens
    assert ix.lookup(_req([1, 2, 9, 9, 9], 80)) == 32
    assert ix.lookup(_req([7, 2, 3, 4], 64)) == 0  # chained ids: a different head shares nothing
    assert ix.lookup(_req([], 64)) == 0


def test_index_forgets_least_recently_sent_blocks_beyond_capacity() -> None:
    ix = PrefixIndex(capacity_blocks=4, block_size=16)
    a, b = _req([1, 2, 3], 49), _req([5, 6, 7], 49)
    ix.record(a)
    ix.record(b)  # 6 blocks sent, 4 kept: a's first two are the oldest
    assert len(ix) == 4
    assert ix.lookup(a) == 0 and ix.lookup(b) == 48
    ix.record(a)  # a is back, most recent; b's oldest go
    assert ix.lookup(a) == 48 and ix.lookup(b) == 0
    ix.clear()
    assert len(ix) == 0 and ix.lookup(a) == 0


def test_text_prompts_are_indexed_by_the_documented_chunking() -> None:
    shared = "You are a careful assistant. " * 20  # 580 characters: 9 full 64-char chunks
    p1 = prompt_prefix(CompletionRequest(model=MODEL, prompt=shared + "question one"), 16)
    p2 = prompt_prefix(CompletionRequest(model=MODEL, prompt=shared + "another one!"), 16)
    assert p1 is not None and p2 is not None
    assert p1.ids[:9] == p2.ids[:9]
    ix = PrefixIndex(1000, 16)
    ix.record(Request(0, 0.0, 150, 4, 1.0, 0.1, prefix=p1))
    assert ix.lookup(Request(1, 0.0, 150, 4, 1.0, 0.1, prefix=p2)) == 9 * 16


def test_gateway_keeps_a_shared_prefix_on_one_backend() -> None:
    """Three backends, prefix-affinity routing: requests that share a 512-token prefix (sent one
    after another, so nothing else differs) all go where the first one went, and that backend's
    own prefix-cache counters show the hits; an unrelated prompt may go anywhere."""
    async def go():
        engines, servers = await emulators(3)
        gw, c = await gateway_for([url(s) for s in servers], router="prefix-affinity")
        try:
            shared = list(range(5000, 5512))
            for i in range(6):
                r = await c.post("/v1/completions", headers=GOLD, json={
                    "model": MODEL, "prompt": shared + [i, i + 1, i + 2], "max_tokens": 2})
                assert r.status == 200, await r.text()
            served = [e.scheduler.num_finished for e in engines]
            assert sorted(served) == [0, 0, 6], served
            k = served.index(6)
            b = gw.pools[MODEL].backends[k]
            assert b.prefix is not None and len(b.prefix) >= 32
            assert engines[k].scheduler.kv.hit_tokens >= 5 * 512 - 16
        finally:
            await c.close()
            for s in servers:
                await s.close()
    asyncio.run(go())
