"""Gateway: tenants and keys, escalation, bad input, limits, shedding, priority propagation,
retries, mid-stream failures, health ejection, config errors."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from tests.serve.helpers import sse

from proserve.serve.emulator import EmulatedEngine, EmulatorConfig
from proserve.serve.gateway import Gateway, TokenBucket
from proserve.serve.gateway_config import GatewayConfig, load_gateway_config

MODEL = "proserve-emulated"
LM = f'model="{MODEL}"'  # every gateway metric's model label
CLASSES = "gold:w=4;silver:w=2;bronze:w=1;scrap:w=0.5,ttft=1ms"  # the gateway's and engines'
GOLD = {"Authorization": "Bearer k-gold"}
BRONZE = {"Authorization": "Bearer k-bronze"}


def run(coro):
    return asyncio.run(coro)



async def server(app: web.Application) -> TestServer:
    s = TestServer(app, handler_cancellation=True)
    await s.start_server()
    return s


class FrozenClock:
    """An injected gateway clock that only moves when told: limits become exact."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


async def gateway_for(urls: list[str], clock=None, **over) -> tuple[Gateway, TestClient]:
    doc = {
        "model": MODEL,
        "classes": CLASSES,
        "class_settings": {"scrap": {"queue_timeout_s": 0, "sheddable": True}},
        "backends": [{"url": u, "kind": "proserve"} for u in urls],
        "tenants": [
            {"name": "acme", "api_keys": ["k-gold"], "class": "gold"},
            {"name": "cheap", "api_keys": ["k-bronze"], "class": "bronze", "max_rps": 2},
        ],
        "health": {"interval_s": 0.05, "timeout_s": 0.5, "failures_to_eject": 2},
        "scrape_interval_s": 0.05,
        "max_model_len": 2000,
        **over,
    }
    cfg = GatewayConfig.model_validate(doc)
    gw = Gateway(cfg) if clock is None else Gateway(cfg, clock=clock)
    client = TestClient(TestServer(gw.app(), handler_cancellation=True))
    await client.start_server()
    return gw, client


async def emulators(n: int, **kw) -> tuple[list[EmulatedEngine], list[TestServer]]:
    kw.setdefault("classes", CLASSES)  # engines behind a gateway define the gateway's classes
    engines = [EmulatedEngine(EmulatorConfig(time_scale=0.02, **kw), i) for i in range(n)]
    servers = [await server(e.app()) for e in engines]
    return engines, servers


def url(s: TestServer) -> str:
    return str(s.make_url("")).rstrip("/")


def test_keys_escalation_and_bad_bodies() -> None:
    async def go():
        _, servers = await emulators(1)
        gw, c = await gateway_for([url(servers[0])])
        body = {"model": MODEL, "prompt": "hello", "max_tokens": 3}
        try:
            r = await c.post("/v1/completions", json=body)
            assert r.status == 401 and "missing API key" in (await r.json())["error"]["message"]
            r = await c.post("/v1/completions", json=body, headers={"Authorization": "Bearer x"})
            assert r.status == 401
            r = await c.post("/v1/completions", json=body,
                             headers={**BRONZE, "x-priority-class": "gold"})
            assert r.status == 403 and (await r.json())["error"]["code"] == "priority_not_allowed"
            r = await c.post("/v1/completions", json={**body, "priority_class": "gold"},
                             headers=BRONZE)
            assert r.status == 403
            r = await c.post("/v1/completions", json=body,
                             headers={**GOLD, "x-priority-class": "bronze"})  # lower: allowed
            assert r.status == 200
            r = await c.post("/v1/completions", json=body,
                             headers={**GOLD, "x-priority-class": "platinum"})
            assert r.status == 400 and "platinum" in (await r.json())["error"]["message"]
            cases = [(b"{oops", 400, "malformed JSON"),
                     ({**body, "max_tokens": -5}, 400, "max_tokens"),
                     ({**body, "stream": "yes please"}, 400, "stream"),
                     ({**body, "model": "other"}, 404, "other"),
                     ({**body, "prompt": list(range(1990)), "max_tokens": 20}, 400,
                      "maximum context length")]
            for b, status, word in cases:
                kw = {"data": b} if isinstance(b, bytes) else {"json": b}
                r = await c.post("/v1/completions", headers=GOLD, **kw)
                d = await r.json()
                assert r.status == status and word in d["error"]["message"], (b, d)
            r = await c.post("/v1/completions", data=b"{" + b" " * (5 << 20) + b"}",
                             headers={**GOLD, "Content-Type": "application/json"})
            assert r.status == 413
            text = await (await c.get("/metrics")).text()
            req = "proserve_requests_total"
            assert f'{req}{{class="bronze",code="200",{LM},tenant="acme"}} 1.0' in text
            assert f'{req}{{class="bronze",code="403",{LM},tenant="cheap"}} 2.0' in text
        finally:
            await c.close()
            for s in servers:
                await s.close()
    run(go())


def test_streaming_priority_propagation_and_metrics() -> None:
    async def go():
        engines, servers = await emulators(2)
        seen = []
        for e in engines:
            orig = e.loop.submit

            def spy(req, orig=orig):
                seen.append(req)
                return orig(req)

            e.loop.submit = spy
        gw, c = await gateway_for([url(s) for s in servers])
        try:
            r = await c.post("/v1/completions", headers=GOLD, json={
                "model": MODEL, "prompt": "hello world", "max_tokens": 4, "stream": True})
            chunks = sse(await r.text())
            assert r.status == 200 and chunks[-1] == "[DONE]" and len(chunks) == 5
            r = await c.post("/v1/chat/completions", headers=BRONZE, json={
                "model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2})
            assert r.status == 200
            gold, bronze = seen
            assert (gold.cls, gold.weight, gold.priority) == ("gold", 4.0, 0)
            assert (bronze.cls, bronze.weight, bronze.priority) == ("bronze", 1.0, 2)
            text = await (await c.get("/metrics")).text()
            assert f'proserve_ttft_seconds_count{{class="gold",{LM},tenant="acme"}} 1.0' in text
            assert f'proserve_tdg_gain_max_total{{class="gold",{LM},tenant="acme"}} 16.0' in text
            assert 'proserve_backend_healthy{backend="' in text
            assert gw.backends[0].inflight == {} and gw.backends[1].inflight == {}
        finally:
            await c.close()
            for s in servers:
                await s.close()
    run(go())


def test_rate_limit_and_shedding_get_429_with_retry_after() -> None:
    async def go():
        _, servers = await emulators(1)
        clock = FrozenClock()  # the 2/s bucket refills only when the test moves the clock
        gw, c = await gateway_for([url(servers[0])], clock=clock, tenants=[
            {"name": "cheap", "api_keys": ["k-bronze"], "class": "bronze", "max_rps": 2},
            {"name": "junk", "api_keys": ["k-scrap"], "class": "scrap"}])
        body = {"model": MODEL, "prompt": "x", "max_tokens": 2}
        try:
            codes = [(await c.post("/v1/completions", json=body, headers=BRONZE)).status
                     for _ in range(3)]
            assert codes == [200, 200, 429]
            r = await c.post("/v1/completions", json=body, headers=BRONZE)
            d = await r.json()
            assert r.status == 429 and d["error"]["code"] == "rate_limited"
            assert "requests/s" in d["error"]["message"] and r.headers["Retry-After"] == "1"
            clock.t += 0.5  # one request's worth refilled (refusals took nothing)
            codes = [(await c.post("/v1/completions", json=body, headers=BRONZE)).status
                     for _ in range(2)]
            assert codes == [200, 429]
            # class "scrap" has a 1 ms TTFT SLO no backend can meet, and is sheddable
            r = await c.post("/v1/completions", json=body,
                             headers={"Authorization": "Bearer k-scrap"})
            d = await r.json()
            assert r.status == 429 and d["error"]["code"] == "capacity_shed"
            assert "Retry-After" in r.headers
            text = await (await c.get("/metrics")).text()
            assert f'proserve_shed_total{{class="scrap",{LM},tenant="junk"}} 1.0' in text
        finally:
            await c.close()
            for s in servers:
                await s.close()
    run(go())


def test_backend_down_before_first_byte_is_retried_elsewhere() -> None:
    async def go():
        _, servers = await emulators(1)
        dead = "http://127.0.0.1:9"  # nothing listens on the discard port
        gw, c = await gateway_for([dead, url(servers[0])], router="round-robin")
        body = {"model": MODEL, "prompt": "x", "max_tokens": 3, "stream": True}
        try:
            for _ in range(3):
                r = await c.post("/v1/completions", json=body, headers=GOLD)
                assert r.status == 200 and sse(await r.text())[-1] == "[DONE]"
            text = await (await c.get("/metrics")).text()
            assert f'proserve_retries_total{{backend="{dead}",model="proserve-emulated"}}' in text
            # with every backend gone the client gets an explicit error, not silence
            await servers[0].close()
            r = await c.post("/v1/completions", json=body, headers=GOLD)
            d = await r.json()
            assert r.status in (502, 503) and d["error"]["code"] in ("backend_failed",
                                                                     "no_backend")
        finally:
            await c.close()
    run(go())


def test_failure_mid_stream_ends_with_sse_error_event() -> None:
    async def flaky(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        chunk = {"choices": [{"index": 0, "text": " token", "finish_reason": None}]}
        await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        request.transport.close()  # the engine dies mid-stream
        return resp

    async def health(request: web.Request) -> web.Response:
        return web.Response()

    async def go():
        app = web.Application()
        app.router.add_post("/v1/completions", flaky)
        app.router.add_get("/health", health)
        s = await server(app)
        gw, c = await gateway_for([url(s)])
        try:
            r = await c.post("/v1/completions", headers=GOLD, json={
                "model": MODEL, "prompt": "x", "max_tokens": 5, "stream": True})
            chunks = sse(await r.text())
            assert chunks[0]["choices"][0]["text"] == " token"
            assert chunks[-2]["error"]["code"] == "backend_failed" and chunks[-1] == "[DONE]"
            text = await (await c.get("/metrics")).text()
            assert "proserve_stream_errors_total" in text and 'code="stream_error"' in text
        finally:
            await c.close()
            await s.close()
    run(go())


def test_health_checks_eject_and_readmit() -> None:
    state = {"ok": False}

    async def health(request: web.Request) -> web.Response:
        return web.Response(status=200 if state["ok"] else 500)

    async def go():
        app = web.Application()
        app.router.add_get("/health", health)
        s = await server(app)
        _, servers = await emulators(1)
        gw, c = await gateway_for([url(s), url(servers[0])])
        try:
            for _ in range(100):
                await asyncio.sleep(0.02)
                if not gw.backends[0].healthy:
                    break
            assert not gw.backends[0].healthy and gw.backends[1].healthy
            r = await c.post("/v1/completions", headers=GOLD,
                             json={"model": MODEL, "prompt": "x", "max_tokens": 2})
            assert r.status == 200  # served by the healthy backend
            state["ok"] = True
            for _ in range(100):
                await asyncio.sleep(0.02)
                if gw.backends[0].healthy:
                    break
            assert gw.backends[0].healthy
        finally:
            await c.close()
            await s.close()
            for x in servers:
                await x.close()
    run(go())


def test_token_bucket() -> None:
    b = TokenBucket(rate=2.0, burst=2.0, now=0.0)
    assert b.take(1, 0.0) == 0 and b.take(1, 0.0) == 0
    assert b.take(1, 0.0) == pytest.approx(0.5)
    assert b.take(1, 0.5) == 0


def test_config_errors_name_the_file_and_field(tmp_path: Path) -> None:
    good = {"backends": [{"url": "http://127.0.0.1:1"}],
            "tenants": [{"name": "a", "api_keys": ["k"], "class": "high"}]}
    p = tmp_path / "gw.yaml"
    for doc, word in [
        ({**good, "tenants": [{"name": "a", "api_keys": ["k"], "class": "gold"}]},
         "tenants.0.class: unknown class 'gold'"),
        ({**good, "tenants": [{"name": "a", "api_keys": ["k"], "class": "high"},
                              {"name": "b", "api_keys": ["k"], "class": "low"}]},
         "tenants.1.api_keys"),
        ({**good, "backends": [{"url": "ftp://x"}]}, "backends.0.url"),
        ({**good, "router": "nope"}, "unknown router"),
        ({**good, "bogus": 1}, "bogus"),
        ({**good, "class_settings": {"vip": {}}}, "class_settings"),
    ]:
        p.write_text(json.dumps(doc))
        with pytest.raises(ValueError, match=word) as e:
            load_gateway_config(p)
        assert str(p) in str(e.value)
    p.write_text("backends: [unclosed")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_gateway_config(p)
    with pytest.raises(ValueError, match="no such file"):
        load_gateway_config(tmp_path / "missing.yaml")
    example = Path(__file__).parents[2] / "examples" / "gateway.yaml"
    cfg = load_gateway_config(example)
    assert len(cfg.backends) == 2 and {t.class_ for t in cfg.tenants} == {"interactive", "batch"}


def test_graceful_shutdown_drains_in_flight_streams() -> None:
    from proserve.serve.gateway import serve_gateway

    async def go():
        _, servers = await emulators(1, classes=None)  # the gateway's default classes too
        import socket

        with socket.socket() as sk:
            sk.bind(("127.0.0.1", 0))
            port = sk.getsockname()[1]
        cfg = GatewayConfig.model_validate({
            "model": MODEL, "port": port, "shutdown_grace_s": 10,
            "backends": [{"url": url(servers[0])}],
            "tenants": [{"name": "acme", "api_keys": ["k-gold"], "class": "high"}]})
        ready, stop = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(serve_gateway(cfg, ready=ready, stop=stop))
        await ready.wait()
        import aiohttp

        body = {"model": MODEL, "prompt": "x", "max_tokens": 400, "stream": True}
        try:
            async with aiohttp.ClientSession() as s, s.post(
                    f"http://127.0.0.1:{port}/v1/completions", headers=GOLD, json=body) as r:
                first = await r.content.readline()
                assert first.startswith(b"data: ")
                stop.set()  # shut down while this stream is in flight
                rest = (await r.read()).decode()
            chunks = sse(first.decode() + rest)
            assert chunks[-1] == "[DONE]"
            assert sum(1 for x in chunks[:-1] if x["choices"]) == 400  # drained, not cut
            await asyncio.wait_for(task, timeout=15)
        finally:
            stop.set()
            for s in servers:
                await s.close()
    run(go())
