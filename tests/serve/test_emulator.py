"""The emulator: OpenAI formats (streaming and not), metrics, bad input, priority, disconnects."""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import TestClient, TestServer
from tests.serve.helpers import record_submits, sse, until

from proserve.core.request import Status
from proserve.serve.emulator import EmulatedEngine, EmulatorConfig

MODEL = "proserve-emulated"


def run(coro):
    return asyncio.run(coro)


async def start(**kw) -> tuple[EmulatedEngine, TestClient]:
    kw.setdefault("time_scale", 0.02)  # 50x faster than real time
    eng = EmulatedEngine(EmulatorConfig(**kw))
    client = TestClient(TestServer(eng.app(), handler_cancellation=True))
    await client.start_server()
    return eng, client




def test_completion_non_streaming_counts_tokens() -> None:
    async def go():
        eng, c = await start()
        try:
            r = await c.post("/v1/completions", json={"model": MODEL, "prompt": [1, 2, 3, 4, 5],
                                                      "max_tokens": 7})
            assert r.status == 200
            d = await r.json()
            assert d["object"] == "text_completion"
            assert d["usage"] == {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
            assert d["choices"][0]["finish_reason"] == "length"
            assert d["choices"][0]["text"].count("token") == 7
        finally:
            await c.close()
    run(go())


def test_streaming_completion_and_chat_with_usage() -> None:
    async def go():
        eng, c = await start()
        try:
            r = await c.post("/v1/completions", json={
                "model": MODEL, "prompt": "hello " * 40, "max_tokens": 5, "stream": True,
                "stream_options": {"include_usage": True}})
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
            chunks = sse(await r.text())
            assert chunks[-1] == "[DONE]"
            texts = [x for x in chunks[:-1] if x["choices"]]
            assert len(texts) == 5 and texts[-1]["choices"][0]["finish_reason"] == "length"
            assert chunks[-2]["usage"]["completion_tokens"] == 5
            assert chunks[-2]["usage"]["prompt_tokens"] == 60  # 240 chars / 4
            r = await c.post("/v1/chat/completions", json={
                "model": MODEL, "messages": [{"role": "user", "content": "hi there"}],
                "max_tokens": 3, "stream": True})
            chunks = sse(await r.text())
            assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
            assert [x["choices"][0]["delta"].get("content") for x in chunks[1:-1]] == [
                " token"] * 3
            assert chunks[0]["object"] == "chat.completion.chunk"
            r = await c.post("/v1/chat/completions", json={
                "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
            d = await r.json()
            assert d["object"] == "chat.completion"
            assert d["choices"][0]["message"]["role"] == "assistant"
        finally:
            await c.close()
    run(go())


def test_models_health_and_vllm_metrics() -> None:
    async def go():
        eng, c = await start(kv_blocks=64)
        try:
            assert (await c.get("/health")).status == 200
            d = await (await c.get("/v1/models")).json()
            assert d["data"][0]["id"] == MODEL
            # hold the engine until all six are queued, so they contend whatever the machine's
            # speed (sent one by one, each could finish before the next arrives)
            await eng.loop.stop()
            sends = [asyncio.ensure_future(c.post("/v1/completions", json={
                "model": MODEL, "prompt": [1000 + i] + list(range(299)), "max_tokens": 40}))
                for i in range(6)]  # distinct first tokens: no shared prefix blocks
            await until(lambda: len(list(eng.scheduler.requests())) == 6, "all six queued")
            text = await (await c.get("/metrics")).text()
            assert f'vllm:num_requests_waiting{{model_name="{MODEL}"}} 6.0' in text
            eng.loop.start()
            assert all(r.status == 200 for r in await asyncio.gather(*sends))
            text = await (await c.get("/metrics")).text()
            for name in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                         "vllm:kv_cache_usage_perc", "vllm:time_to_first_token_seconds_count",
                         "vllm:inter_token_latency_seconds_bucket",
                         "vllm:e2e_request_latency_seconds_sum", "vllm:num_preemptions_total",
                         "vllm:request_success_total"):
                assert name in text, name
            assert f'vllm:request_success_total{{model_name="{MODEL}"}} 6.0' in text
            # 6 x (300 + 40) tokens cannot all fit in 64 blocks (1,024 tokens): preemption
            line = next(x for x in text.splitlines() if x.startswith("vllm:num_preemptions_total"))
            assert float(line.split()[-1]) > 0
        finally:
            await c.close()
    run(go())


def test_bad_requests_get_openai_errors() -> None:
    async def go():
        eng, c = await start(max_model_len=1000)
        try:
            cases = [
                (b"{not json", 400, "malformed JSON"),
                ({"model": MODEL, "prompt": "x", "max_tokens": "many"}, 400, "max_tokens"),
                ({"model": MODEL, "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
                ({"model": "gpt-9", "prompt": "x"}, 404, "gpt-9"),
                ({"model": MODEL}, 400, "prompt"),
                ({"model": MODEL, "prompt": ""}, 400, "prompt"),
                ({"model": MODEL, "prompt": list(range(990)), "max_tokens": 20}, 400,
                 "maximum context length is 1000"),
                ({"model": MODEL, "prompt": "x", "vllm_xargs": {"weight": -1}}, 400,
                 "vllm_xargs.weight"),
                ({"model": MODEL, "prompt": "x", "vllm_xargs": {"class": 7}}, 400, "class"),
                ({"model": MODEL, "prompt": "x", "n": 3}, 400, "n"),
            ]
            for body, status, word in cases:
                kw = {"data": body} if isinstance(body, bytes) else {"json": body}
                r = await c.post("/v1/completions", **kw)
                d = await r.json()
                assert r.status == status, (body, d)
                assert set(d["error"]) == {"message", "type", "param", "code"}
                assert word in d["error"]["message"], (body, d)
            r = await c.post("/v1/completions", data=b"x" * (5 * 1024 * 1024),
                             headers={"Content-Type": "application/json"})
            assert r.status == 413
            r = await c.post("/v1/chat/completions", json={"model": MODEL, "messages": []})
            assert r.status == 400 and "messages" in (await r.json())["error"]["message"]
            assert not list(eng.scheduler.requests())  # nothing rejected was queued
        finally:
            await c.close()
    run(go())


def test_priority_reaches_the_engine_scheduler() -> None:
    async def go():
        # one sequence at a time: the waiting queue decides who runs next
        eng, c = await start(policy="vllm-priority", policy_args={"max_num_seqs": 1})
        await eng.loop.stop()  # hold the engine while the test queues requests in a known order
        names: dict[int, str] = {}
        orig_submit = eng.loop.submit

        def submit(req, name=None):
            names[req.id] = f"{'high' if req.priority == 0 else 'low'}{len(names)}"
            return orig_submit(req)

        eng.loop.submit = submit
        finished: list[str] = []  # in the order the engine finished them
        orig_update = eng.scheduler.update_from_output

        def update(out, now):
            done = orig_update(out, now)
            finished.extend(names[r.id] for r in done)
            return done

        eng.scheduler.update_from_output = update
        try:
            sends = []
            for prio in (1, 1, 1, 0):  # three low, then one high: arrival order is fixed
                sends.append(asyncio.ensure_future(c.post("/v1/completions", json={
                    "model": MODEL, "prompt": list(range(50)), "max_tokens": 30,
                    "priority": prio})))
                await until(lambda n=len(sends): len(names) == n, "request queued")
            assert sorted(names.values()) == ["high3", "low0", "low1", "low2"]
            eng.loop.start()
            assert all(r.status == 200 for r in await asyncio.gather(*sends))
            # the later, more urgent request goes first; equal priorities keep arrival order
            assert finished == ["high3", "low0", "low1", "low2"], finished
        finally:
            await c.close()
    run(go())


def test_client_disconnect_aborts_and_frees_kv() -> None:
    async def go():
        eng, c = await start(time_scale=0.2)
        seen = record_submits(eng)
        try:
            r = await c.post("/v1/completions", json={
                "model": MODEL, "prompt": list(range(100)), "max_tokens": 8000, "stream": True})
            await r.content.readline()  # first chunk arrived: the request is running
            assert eng.scheduler.kv.used > 0
            r.close()  # client goes away mid-stream
            await until(lambda: not list(eng.scheduler.requests()), "the request left")
            assert eng.scheduler.kv.used == 0
            # it left because it was aborted, not because it ran to the end meanwhile
            (req,) = seen
            assert req.status == Status.UNFINISHED and req.generated < req.output_len
        finally:
            await c.close()
    run(go())


def test_slo_fields_from_vllm_xargs() -> None:
    async def go():
        eng, c = await start(classes="gold:w=4,ttft=300ms;std:w=1")
        seen = record_submits(eng)
        try:
            await c.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2,
                                                  "priority": 5})
            await c.post("/v1/completions", json={
                "model": MODEL, "prompt": "x", "max_tokens": 2,
                "vllm_xargs": {"class": "gold", "tpot_slo_ms": 40, "weight": 3}})
            a, b = seen
            assert (a.cls, a.weight) == ("std", 1.0)  # priority 5 clamps to the last class
            assert (b.cls, b.weight, b.ttft_slo, b.tpot_slo) == ("gold", 3.0, 0.3, 0.04)
            # never trusted as sent: unknown classes and out-of-range values get 400, named
            bad = [({"class": "gateway-vip"}, "vllm_xargs.class"),
                   ({"weight": 8}, "vllm_xargs.weight"),  # above the heaviest class (4)
                   ({"weight": 0.5}, "vllm_xargs.weight"),  # below the lightest (1)
                   ({"ttft_slo_ms": 1}, "vllm_xargs.ttft_slo_ms"),  # tighter than gold's 300
                   ({"tpot_slo_ms": "fast"}, "vllm_xargs.tpot_slo_ms"),
                   ({"tpot_slo_ms": -3}, "vllm_xargs.tpot_slo_ms")]
            for x, param in bad:
                r = await c.post("/v1/completions", json={
                    "model": MODEL, "prompt": "x", "max_tokens": 2, "vllm_xargs": x})
                d = await r.json()
                assert r.status == 400 and d["error"]["param"] == param, (x, d)
                assert param in d["error"]["message"]
            assert len(seen) == 2  # none of them reached the engine
        finally:
            await c.close()
    run(go())
