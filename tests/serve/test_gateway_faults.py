"""The gateway's fault matrix: backends that hang, stall, die or answer garbage.

Each case checks the three promises of issue 14: the client gets a response or an explicit error
(never silence) within the configured timeouts; the gateway's ``proserve_requests_total``
counts exactly what the client saw (``stream_error`` for a 200 stream that ended in an SSE error
event); and nothing leaks (no request left in a backend's in-flight record, no tenant slot held).
Killed workers and a stopped/restarted Redis are covered in test_gateway_workers.py and
test_gateway_limits.py; a backend killed mid-stream in test_gateway.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

from aiohttp import web
from tests.serve.helpers import sse
from tests.serve.test_gateway import GOLD, MODEL, emulators, gateway_for, run, server, url

FAST = {"timeouts": {"connect_s": 0.5, "first_byte_s": 0.4, "between_tokens_s": 0.4},
        "request_timeout_s": 1.5, "health": {"interval_s": 30, "timeout_s": 0.5,
                                             "failures_to_eject": 100}}
CHUNK = b'data: {"choices": [{"index": 0, "text": " tok", "finish_reason": null}]}\n\n'


def codes(text: str) -> dict[str, float]:
    """proserve_requests_total by code (summed over tenants and classes)."""
    out: dict[str, float] = {}
    for m in re.finditer(r'^proserve_requests_total\{[^}]*code="([^"]+)"[^}]*\} ([0-9.e+]+)$',
                         text, re.M):
        out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


async def health(request: web.Request) -> web.Response:
    return web.Response()


async def fake_backend(handler) -> object:
    app = web.Application()
    app.router.add_post("/v1/completions", handler)
    app.router.add_get("/health", health)
    return await server(app)


async def no_leaks(gw) -> None:
    for _ in range(200):
        if all(not b.inflight for p in gw.pools.values() for b in p.backends) and \
                not any(gw.limiter.inflight.values()):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("a request stayed in flight or held a tenant slot")


async def hang(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(3600)  # accepts, never answers
    return web.Response()


async def stall(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(CHUNK)
    await asyncio.sleep(3600)  # then nothing, connection open
    return resp


async def garbage(request: web.Request) -> web.StreamResponse:
    if (await request.json()).get("stream"):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: {not json\n\nrandom bytes \xff\xfe\n\n")
        return resp  # ends without [DONE]
    return web.Response(text="<html>definitely not JSON</html>", content_type="text/html")


def body(stream: bool) -> dict:
    return {"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 4, "stream": stream}


def test_hung_backend_is_retried_then_timed_out_explicitly() -> None:
    async def go():
        hung = await fake_backend(hang)
        engines, good = await emulators(1)
        gw, c = await gateway_for([url(hung), url(good[0])], router="round-robin", **FAST)
        try:
            # one hung backend and one good one: each request ends 200, on the good one
            for _ in range(2):
                t0 = time.monotonic()
                r = await c.post("/v1/completions", headers=GOLD, json=body(True))
                assert r.status == 200
                assert sse(await r.text())[-1] == "[DONE]"
                assert time.monotonic() - t0 < 3 * 0.4 + 1.0
            await no_leaks(gw)
        finally:
            await c.close()
            await good[0].close()
            await hung.close()
    run(go())


def test_only_hung_backends_give_504_within_the_timeouts() -> None:
    async def go():
        hung = [await fake_backend(hang) for _ in range(2)]
        gw, c = await gateway_for([url(s) for s in hung], **FAST)
        try:
            for stream, limit in ((True, 3 * 0.4), (False, 3 * 1.5)):  # retries + 1 attempts
                t0 = time.monotonic()
                r = await c.post("/v1/completions", headers=GOLD, json=body(stream))
                took = time.monotonic() - t0
                assert r.status == 504, await r.text()
                err = (await r.json())["error"]
                assert err["code"] == "backend_timeout" and "no response within" in err["message"]
                assert took < limit + 1.0, took
            m = codes(await (await c.get("/metrics")).text())
            assert m == {"504": 2.0}, m
            await no_leaks(gw)
        finally:
            await c.close()
            for s in hung:
                await s.close()
    run(go())


def test_stalled_stream_ends_in_an_error_event_counted_as_stream_error() -> None:
    async def go():
        s = await fake_backend(stall)
        gw, c = await gateway_for([url(s)], **FAST)
        try:
            t0 = time.monotonic()
            r = await c.post("/v1/completions", headers=GOLD, json=body(True))
            assert r.status == 200
            chunks = sse(await r.text())
            assert time.monotonic() - t0 < 0.4 + 0.4 + 1.0
            assert chunks[0]["choices"][0]["text"] == " tok"
            assert chunks[-2]["error"]["code"] == "backend_timeout"
            assert "between_tokens_s" in chunks[-2]["error"]["message"]
            assert chunks[-1] == "[DONE]"
            m = codes(await (await c.get("/metrics")).text())
            assert m == {"stream_error": 1.0}, m
            await no_leaks(gw)
        finally:
            await c.close()
            await s.close()
    run(go())


def test_garbage_answers_become_explicit_errors() -> None:
    async def go():
        s = await fake_backend(garbage)
        gw, c = await gateway_for([url(s)], **FAST)
        try:
            r = await c.post("/v1/completions", headers=GOLD, json=body(False))
            assert r.status == 502
            assert (await r.json())["error"]["code"] == "backend_failed"
            r = await c.post("/v1/completions", headers=GOLD, json=body(True))
            assert r.status == 200
            text = await r.text()
            events = [e for e in text.split("\n\n") if e.strip()]
            last = json.loads(events[-2].strip().split("data: ", 1)[1])
            assert last["error"]["code"] == "backend_failed" and events[-1].strip() == \
                "data: [DONE]"
            m = codes(await (await c.get("/metrics")).text())
            assert m == {"502": 1.0, "stream_error": 1.0}, m
            await no_leaks(gw)
        finally:
            await c.close()
            await s.close()
    run(go())


def test_backend_slow_to_start_is_admitted_once_it_answers() -> None:
    """A backend that is not listening yet: requests fail over to the live one (or get 503 while
    none is up), and once it starts, health checks admit it and it serves."""
    async def go():
        engines, live = await emulators(2)
        late_url = url(live[1])
        await live[1].close()  # "not started yet": nothing listens on its port
        gw, c = await gateway_for([url(live[0]), late_url], router="round-robin",
                                  health={"interval_s": 0.05, "timeout_s": 0.3,
                                          "failures_to_eject": 1},
                                  timeouts={"connect_s": 0.3})
        try:
            for _ in range(4):
                r = await c.post("/v1/completions", headers=GOLD, json=body(False))
                assert r.status == 200
            assert engines[0].scheduler.num_finished == 4
            port = int(late_url.rsplit(":", 1)[1])
            late = web.AppRunner(engines[1].app())
            await late.setup()
            await web.TCPSite(late, "127.0.0.1", port).start()  # it comes up
            for _ in range(200):
                if all(b.routable for b in gw.pools[MODEL].backends):
                    break
                await asyncio.sleep(0.02)
            for _ in range(4):
                r = await c.post("/v1/completions", headers=GOLD, json=body(False))
                assert r.status == 200
            assert engines[1].scheduler.num_finished >= 1
            m = codes(await (await c.get("/metrics")).text())
            assert m == {"200": 8.0}, m
            await no_leaks(gw)
            await late.cleanup()
        finally:
            await c.close()
            await live[0].close()
    run(go())
