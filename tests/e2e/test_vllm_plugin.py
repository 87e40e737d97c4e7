"""proserve's scheduler plug-in inside real vLLM: a waiting high-class request preempts running
low-class work (vLLM issue #40004) instead of waiting for a slot."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

pytestmark = pytest.mark.vllm


async def _stream(s: aiohttp.ClientSession, url: str, prio: int, n: int, first: asyncio.Event,
                  out: dict) -> None:
    body = {"model": "tiny", "prompt": [1] * 32, "max_tokens": n, "stream": True,
            "ignore_eos": True, "return_token_ids": True, "priority": prio}
    t0 = time.monotonic()
    tokens = 0
    async with s.post(url + "/v1/completions", json=body) as r:
        assert r.status == 200, await r.text()
        async for line in r.content:
            if line.startswith(b"data: {"):
                chunk = json.loads(line[6:])
                for ch in chunk.get("choices") or ():
                    tokens += len(ch.get("token_ids") or [])
                if tokens and "ttft" not in out:
                    out["ttft"] = time.monotonic() - t0
                    first.set()
    out["total"] = time.monotonic() - t0
    out["tokens"] = tokens


async def _preemptions(s: aiohttp.ClientSession, url: str) -> float:
    async with s.get(url + "/metrics") as r:
        text = await r.text()
    return sum(float(x.split()[-1]) for x in text.splitlines()
               if x.startswith("vllm:num_preemptions_total"))


def test_waiting_high_class_preempts_running_low_class(vllm_plugin_server) -> None:
    url = vllm_plugin_server

    async def go():
        async with aiohttp.ClientSession() as s:
            before = await _preemptions(s, url)
            lows = [{}, {}]
            started = [asyncio.Event(), asyncio.Event()]
            tasks = [asyncio.create_task(_stream(s, url, 1, 1500, started[i], lows[i]))
                     for i in range(2)]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 60)
            high: dict = {}
            await _stream(s, url, 0, 16, asyncio.Event(), high)  # both slots are taken
            still_running = [not t.done() for t in tasks]
            await asyncio.gather(*tasks)
            after = await _preemptions(s, url)
        print(f"plug-in: high TTFT {high['ttft']:.3f} s, done in {high['total']:.3f} s; "
              f"lows took {lows[0]['total']:.1f} / {lows[1]['total']:.1f} s; "
              f"preemptions {after - before:g}")
        assert high["tokens"] == 16 and all(x["tokens"] == 1500 for x in lows)
        assert all(still_running)  # the high request finished while both lows still ran
        assert 1 <= after - before <= 2  # ... because it preempted one of them, without churn
    asyncio.run(go())
