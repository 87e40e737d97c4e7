"""The gateway with ``router: polyserve``: tiers from the classes, the fleet API (requests held
in the router's pending queue), the autoscaler gauges, queue timeouts and disconnects, SIGHUP
backend reloads (for polyserve and for a plain router), and the config checks.

The classes make the router's decisions exact, whatever the timing: ``tight`` has a 5 ms TPOT,
so its budget (0.9 x 5 ms) is below one iteration's fixed cost (c0 ~ 6 ms on llama3.1-8b@h100)
and a tight backend admits a request only when it is idle (one at a time); ``loose`` has a 1 s
TPOT and packs. Backends that must stay busy are stubs the test holds and releases.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from tests.serve.helpers import record_submits, sse, until

from proserve.serve.emulator import EmulatedEngine, EmulatorConfig
from proserve.serve.gateway import Gateway, serve_gateway
from proserve.serve.gateway_config import GatewayConfig, load_gateway_config

MODEL = "m"
CLASSES = "tight:w=4,ttft=10s,tpot=5ms;loose:w=1,ttft=10s,tpot=1s"
TIGHT = {"Authorization": "Bearer k-tight"}
LOOSE = {"Authorization": "Bearer k-loose"}


class Held:
    """A backend that logs ("start"/"end", prompt length) per request; prompt lengths in
    ``hold`` wait for their event (a stream sends its first chunk, then waits)."""

    def __init__(self) -> None:
        self.log: list[tuple[str, int]] = []
        self.hold: dict[int, asyncio.Event] = {}
        self.server: TestServer | None = None
        self.url = ""

    async def complete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        n = len(body["prompt"])
        k = int(body.get("max_tokens") or 1)
        self.log.append(("start", n))
        chunk = {"choices": [{"index": 0, "text": " t", "finish_reason": None}]}
        if body.get("stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            if n in self.hold:
                await self.hold[n].wait()
            for _ in range(k - 1):
                await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            self.log.append(("end", n))
            return resp
        if n in self.hold:
            await self.hold[n].wait()
        self.log.append(("end", n))
        return web.json_response({
            "choices": [{"index": 0, "text": " t" * k, "finish_reason": "length"}],
            "usage": {"prompt_tokens": n, "completion_tokens": k, "total_tokens": n + k}})

    async def start(self) -> str:
        async def ok(_: web.Request) -> web.Response:
            return web.Response(text="")

        app = web.Application()
        app.router.add_post("/v1/completions", self.complete)
        app.router.add_get("/metrics", ok)
        app.router.add_get("/health", ok)
        self.server = TestServer(app)
        await self.server.start_server()
        self.url = str(self.server.make_url("")).rstrip("/")
        return self.url

    def started(self, n: int) -> bool:
        return ("start", n) in self.log

    def release(self) -> None:
        for e in self.hold.values():
            e.set()


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def config(urls: list[str], **over) -> dict:
    return {
        "model": MODEL, "classes": CLASSES, "router": "polyserve",
        "router_args": {"check_period_s": 60.0, "mean_output": {"tight": 64}},
        "class_settings": {"tight": {"queue_timeout_s": 60}, "loose": {"queue_timeout_s": 60}},
        "backends": [{"url": u, "kind": "proserve"} for u in urls],
        "tenants": [{"name": "t", "api_keys": ["k-tight"], "class": "tight"},
                    {"name": "l", "api_keys": ["k-loose"], "class": "loose"}],
        "health": {"interval_s": 0.05, "timeout_s": 5.0, "failures_to_eject": 3},
        "scrape_interval_s": 0.05,
        "max_model_len": 4000,
        **over,
    }


async def gateway(urls: list[str], clock=None, **over) -> tuple[Gateway, TestClient]:
    return await gateway_from(config(urls, **over), clock)


async def gateway_from(doc: dict, clock=None) -> tuple[Gateway, TestClient]:
    cfg = GatewayConfig.model_validate(doc)
    gw = Gateway(cfg) if clock is None else Gateway(cfg, clock=clock)
    client = TestClient(TestServer(gw.app(), handler_cancellation=True))
    await client.start_server()
    return gw, client


async def emulators(n: int) -> tuple[list[EmulatedEngine], list[TestServer]]:
    engines = [EmulatedEngine(EmulatorConfig(model_name=MODEL, classes=CLASSES,
                                             time_scale=0.02), i) for i in range(n)]
    servers = []
    for e in engines:
        s = TestServer(e.app())
        await s.start_server()
        servers.append(s)
    return engines, servers


def url(s: TestServer) -> str:
    return str(s.make_url("")).rstrip("/")


def post(c: TestClient, n: int, headers: dict, **extra) -> asyncio.Task:
    body = {"model": MODEL, "prompt": [1] * n, "max_tokens": 1, **extra}
    return asyncio.ensure_future(c.post("/v1/completions", json=body, headers=headers))


def gauges(text: str) -> dict[str, float]:
    """The tier/pool gauges of a /metrics text: {'name{labels}': value}."""
    out = {}
    for line in text.splitlines():
        if line.startswith(("proserve_tier_", "proserve_pool_")):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


async def scrape(c: TestClient) -> dict[str, float]:
    return gauges(await (await c.get("/metrics")).text())


def spy_placements(gw: Gateway) -> list[tuple[str, int, str]]:
    """(class, backend, tier of that backend when placed) for every placement the router
    hands back, from any of offer/retry/tick."""
    seen: list[tuple[str, int, str]] = []
    pool = gw.pool  # the model's pool: its router's placements go through its _apply
    orig = pool._apply
    ps = gw.fleet
    assert ps is not None

    def spy(placements):
        for r, k, _ in placements:
            t = ps.fleet.tier_of[k]
            seen.append((r.cls, k, ps.tiers[t].name if t >= 0 else "pool"))
        return orig(placements)

    pool._apply = spy
    return seen


# ---------------------------------------------------------------------------- (a) tiers
def test_two_tiers_complete_on_backends_of_their_tier() -> None:
    async def go():
        engines, servers = await emulators(3)
        submits = [record_submits(e) for e in engines]
        gw, c = await gateway([url(s) for s in servers])
        placed = spy_placements(gw)
        ps = gw.fleet
        try:
            # tiers from the classes: absolute TPOTs, mean output from router_args or 256
            assert [(t.name, t.tpot, t.mean_output) for t in ps.tiers] == [
                ("tight", 0.005, 64.0), ("loose", 1.0, 256.0)]
            assert ps.fleet.pool == [0, 1, 2]
            # loose first (one backend joins "loose" and packs them), then tight, then loose
            loose = [post(c, 20 + i, LOOSE, max_tokens=8, stream=i % 2 == 0) for i in range(4)]
            rs = await asyncio.wait_for(asyncio.gather(*loose), timeout=60)
            tight = [post(c, 40 + i, TIGHT, max_tokens=8, stream=i % 2 == 1) for i in range(3)]
            rs += await asyncio.wait_for(asyncio.gather(*tight), timeout=60)
            more = [post(c, 60 + i, LOOSE, max_tokens=4) for i in range(2)]
            rs += await asyncio.wait_for(asyncio.gather(*more), timeout=60)
            streamed = 0
            for r in rs:
                assert r.status == 200, await r.text()
                if r.content_type == "text/event-stream":
                    chunks = sse(await r.text())
                    assert chunks[-1] == "[DONE]" and len(chunks) == 9
                    streamed += 1
                else:
                    assert (await r.json())["usage"]["completion_tokens"] in (4, 8)
            assert streamed == 3
            # every placement went to a backend of the request's own tier
            assert len(placed) == 9
            assert all(cls == tier for cls, _, tier in placed), placed
            tight_backends = {k for cls, k, _ in placed if cls == "tight"}
            loose_backends = {k for cls, k, _ in placed if cls == "loose"}
            assert len(loose_backends) == 1 and not tight_backends & loose_backends
            # the engines saw the same split (each one only the classes of its tier)
            for k, seen in enumerate(submits):
                want = "tight" if k in tight_backends else "loose" if k in loose_backends else None
                assert {r.cls for r in seen} <= {want}, (k, [r.cls for r in seen])
            assert sum(len(s) for s in submits) == 9
            # fleet state and its gauges agree
            f = ps.fleet
            f.check_invariants()
            counts = dict(zip([t.name for t in ps.tiers], f.counts()))
            assert counts["loose"] == 1 and counts["tight"] == len(tight_backends) >= 1
            g = await scrape(c)
            assert g['proserve_tier_instances{model="m",tier="loose"}'] == 1.0
            assert g['proserve_tier_instances{model="m",tier="tight"}'] == counts["tight"]
            assert g['proserve_pool_instances{model="m"}'] == 3 - 1 - counts["tight"]
            assert g['proserve_tier_pending{model="m",tier="tight"}'] == 0.0
            assert not ps.has_pending() and all(not b.inflight for b in gw.backends)
        finally:
            await c.close()
            for s in servers:
                await s.close()
    asyncio.run(go())


# ---------------------------------------------------------------------------- (b) gauges
def test_gauges_track_saturation_pending_and_scale_down() -> None:
    async def go():
        stubs = [Held(), Held()]
        urls = [await s.start() for s in stubs]
        gw, c = await gateway(urls, router_args={"check_period_s": 0.05, "empty_checks": 2})
        placed = spy_placements(gw)
        try:
            g = await scrape(c)
            assert g == {'proserve_tier_instances{model="m",tier="tight"}': 0.0,
                         'proserve_tier_instances{model="m",tier="loose"}': 0.0,
                         'proserve_tier_desired_instances{model="m",tier="tight"}': 0.0,
                         'proserve_tier_desired_instances{model="m",tier="loose"}': 0.0,
                         'proserve_tier_pending{model="m",tier="tight"}': 0.0,
                         'proserve_tier_pending{model="m",tier="loose"}': 0.0,
                         'proserve_pool_instances{model="m"}': 2.0}
            for n in (10, 11):
                stubs[0].hold[n] = asyncio.Event()
                stubs[1].hold[n] = asyncio.Event()
            a = post(c, 10, TIGHT)
            await until(lambda: any(s.started(10) for s in stubs), "A forwarded")
            b = post(c, 11, TIGHT)  # the first backend is busy: the pool's last one joins
            await until(lambda: any(s.started(11) for s in stubs), "B forwarded")
            first = 0 if stubs[0].started(10) else 1
            assert stubs[1 - first].started(11)
            g = await scrape(c)
            assert g['proserve_tier_instances{model="m",tier="tight"}'] == 2.0
            assert g['proserve_pool_instances{model="m"}'] == 0.0
            assert g['proserve_tier_desired_instances{model="m",tier="tight"}'] == 2.0
            # saturated, pool empty: C and D pend, and the tier wants one more backend
            stubs[first].hold[12] = asyncio.Event()
            d = post(c, 12, TIGHT)
            await until(lambda: gw.fleet.has_pending() or d.done(), "C pending")
            e = post(c, 13, TIGHT)
            await until(lambda: len(gw.fleet.pending_requests()) == 2 or e.done(), "D pending")
            assert not d.done() and not e.done()
            g = await scrape(c)
            assert g['proserve_tier_pending{model="m",tier="tight"}'] == 2.0
            assert g['proserve_tier_desired_instances{model="m",tier="tight"}'] == 3.0
            assert g['proserve_tier_instances{model="m",tier="tight"}'] == 2.0
            assert g['proserve_tier_pending{model="m",tier="loose"}'] == 0.0
            text = await (await c.get("/metrics")).text()
            assert 'proserve_queue_depth{class="tight",model="m"} 2.0' in text
            # A finishing frees its backend: C goes there at once; D, placed in the same retry
            # call, must see C there (the view counts the router's own placement) and wait
            stubs[first].hold[10].set()
            await until(lambda: stubs[first].started(12), "C forwarded")
            assert (await asyncio.wait_for(a, timeout=60)).status == 200
            assert [r.prompt_len for r in gw.fleet.pending_requests()] == [13]
            assert not stubs[first].started(13) and not stubs[1 - first].started(12)
            log = stubs[first].log
            assert log.index(("end", 10)) < log.index(("start", 12))
            g = await scrape(c)
            assert g['proserve_tier_pending{model="m",tier="tight"}'] == 1.0
            assert g['proserve_tier_desired_instances{model="m",tier="tight"}'] == 3.0
            # C finishing lets D through, on the same backend
            stubs[first].hold[12].set()
            rd, re_ = await asyncio.wait_for(asyncio.gather(d, e), timeout=60)
            assert rd.status == 200 and re_.status == 200
            assert stubs[first].started(13) and not stubs[1 - first].started(13)
            assert [p[1] for p in placed] == [first, 1 - first, first, first]
            g = await scrape(c)
            assert g['proserve_tier_pending{model="m",tier="tight"}'] == 0.0
            assert g['proserve_tier_desired_instances{model="m",tier="tight"}'] == 2.0
            stubs[1 - first].release()
            assert (await asyncio.wait_for(b, timeout=60)).status == 200
            # all idle: two empty checks later both backends are back in the pool
            async def pooled() -> bool:
                return (await scrape(c))['proserve_pool_instances{model="m"}'] == 2.0

            for _ in range(500):
                if await pooled():
                    break
                await asyncio.sleep(0.01)
            g = await scrape(c)
            assert g['proserve_pool_instances{model="m"}'] == 2.0
            assert g['proserve_tier_instances{model="m",tier="tight"}'] == 0.0
            assert g['proserve_tier_desired_instances{model="m",tier="tight"}'] == 0.0
        finally:
            for s in stubs:
                s.release()
            await c.close()
            for s in stubs:
                await s.server.close()
    asyncio.run(go())


# ---------------------------------------------------------------------------- (d) timeouts
def test_pending_past_its_queue_timeout_gets_429_and_leaves_the_queue() -> None:
    async def go():
        stub, clock = Held(), FakeClock()
        gw, c = await gateway([await stub.start()], clock, class_settings={
            "tight": {"queue_timeout_s": 0.5}, "loose": {"sheddable": True}})
        ps = gw.fleet
        try:
            stub.hold[10] = asyncio.Event()
            a = post(c, 10, TIGHT)
            await until(lambda: stub.started(10), "A forwarded")
            b = post(c, 11, TIGHT)
            await until(lambda: ps.has_pending() or b.done(), "B pending")
            clock.t += 0.3  # inside its 0.5 s timeout: still pending
            await asyncio.sleep(0.2)
            assert not b.done() and [r.prompt_len for r in ps.pending_requests()] == [11]
            clock.t += 0.3  # past it
            rb = await asyncio.wait_for(b, timeout=60)
            d = await rb.json()
            assert rb.status == 429 and d["error"]["code"] == "queue_timeout", d
            assert "tight" in d["error"]["message"] and int(rb.headers["Retry-After"]) >= 1
            assert not ps.has_pending() and not stub.started(11)
            g = await scrape(c)
            assert g['proserve_tier_pending{model="m",tier="tight"}'] == 0.0
            text = await (await c.get("/metrics")).text()
            assert ('proserve_requests_total{class="tight",code="429",model="m",tenant="t"} 1.0'
                    in text)
            assert 'proserve_shed_total{class="tight",model="m",tenant="t"} 1.0' in text
            # a sheddable class that would pend is refused at once, and does not pend
            r = await c.post("/v1/completions", headers=LOOSE,
                             json={"model": MODEL, "prompt": [1] * 13, "max_tokens": 1})
            d = await r.json()
            assert r.status == 429 and d["error"]["code"] == "capacity_shed", d
            assert not ps.has_pending() and not stub.started(13)
            # a pending request whose client goes away leaves the queue (never forwarded)
            e = post(c, 14, TIGHT)
            await until(lambda: ps.has_pending() or e.done(), "E pending")
            assert not e.done()
            e.cancel()
            await until(lambda: not ps.has_pending(), "E left the queue")
            await until(lambda: 'code="499",model="m",tenant="t"} 1.0' in gw_metrics(gw),
                        "499 counted")
            stub.hold[10].set()
            assert (await asyncio.wait_for(a, timeout=60)).status == 200
            await asyncio.sleep(0.1)
            assert not stub.started(14) and not stub.started(11)
            assert gw.backends[0].inflight == {}
        finally:
            stub.release()
            await c.close()
            await stub.server.close()
    asyncio.run(go())


def gw_metrics(gw: Gateway) -> str:
    from prometheus_client import generate_latest

    return generate_latest(gw.registry).decode()


# ---------------------------------------------------------------------------- (c) SIGHUP
def free_port() -> int:
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return sk.getsockname()[1]


def test_sighup_adds_and_removes_backends_without_dropping_streams(tmp_path: Path) -> None:
    async def go():
        old = Held()  # holds the stream in flight through the reload
        engines, servers = await emulators(2)
        submits = [record_submits(e) for e in engines]
        kept, new = url(servers[0]), url(servers[1])
        port = free_port()
        path = tmp_path / "gw.yaml"
        doc = config([await old.start(), kept], port=port)
        path.write_text(json.dumps(doc))
        cfg = load_gateway_config(path)
        ready, stop = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(serve_gateway(cfg, ready=ready, stop=stop, config_path=path))
        await asyncio.wait_for(ready.wait(), timeout=30)
        base = f"http://127.0.0.1:{port}"
        old.hold[10] = asyncio.Event()
        try:
            async with aiohttp.ClientSession() as s:
                async def metrics() -> str:
                    async with s.get(base + "/metrics") as r:
                        return await r.text()

                async def complete(n: int, headers: dict) -> int:
                    async with s.post(base + "/v1/completions", headers=headers, json={
                            "model": MODEL, "prompt": [1] * n, "max_tokens": 3}) as r:
                        await r.read()
                        return r.status

                async with s.post(base + "/v1/completions", headers=TIGHT, json={
                        "model": MODEL, "prompt": [1] * 10, "max_tokens": 50,
                        "stream": True}) as stream:
                    first = await stream.content.readline()
                    assert first.startswith(b"data: ") and old.started(10)
                    # a loose request: the held backend is tight and busy, the kept one joins
                    assert await complete(20, LOOSE) == 200
                    assert [r.cls for r in submits[0]] == ["loose"]
                    # SIGHUP: the held backend goes, a new one comes
                    doc["backends"] = [{"url": kept}, {"url": new}]
                    path.write_text(json.dumps(doc))
                    assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, None)
                    os.kill(os.getpid(), signal.SIGHUP)
                    for _ in range(500):
                        healthy = f'proserve_backend_healthy{{backend="{new}",model="m"}} 1.0'
                        if healthy in await metrics():
                            break
                        await asyncio.sleep(0.01)
                    text = await metrics()
                    assert f'proserve_backend_healthy{{backend="{new}",model="m"}} 1.0' in text
                    assert f'proserve_backend_healthy{{backend="{old.url}",model="m"}} 0.0' in text
                    assert f'proserve_backend_inflight{{backend="{old.url}",model="m"}} 1.0' in text
                    g = gauges(text)
                    # the removed backend left the tight tier; the new one is in the pool
                    assert g['proserve_tier_instances{model="m",tier="tight"}'] == 0.0
                    assert g['proserve_tier_instances{model="m",tier="loose"}'] == 1.0
                    assert g['proserve_pool_instances{model="m"}'] == 1.0
                    # new requests while the old stream is still held: none reach the old one
                    codes = [await complete(30 + i, TIGHT) for i in range(3)]
                    codes += [await complete(40 + i, LOOSE) for i in range(2)]
                    assert codes == [200] * 5
                    assert old.log == [("start", 10)]
                    assert sorted(r.prompt_len for r in submits[1]) == [30, 31, 32]
                    assert sorted(r.prompt_len for r in submits[0]) == [20, 40, 41]
                    # the stream in flight on the removed backend still finishes in full
                    old.hold[10].set()
                    rest = (await stream.read()).decode()
                chunks = sse(first.decode() + rest)
                assert chunks[-1] == "[DONE]" and len(chunks) == 51
                assert old.log == [("start", 10), ("end", 10)]
                done = f'proserve_backend_inflight{{backend="{old.url}",model="m"}} 0.0'
                assert done in await metrics()
                # a bad file on SIGHUP changes nothing
                path.write_text("backends: [unclosed")
                os.kill(os.getpid(), signal.SIGHUP)
                await asyncio.sleep(0.1)
                assert await complete(50, TIGHT) == 200
                assert old.log == [("start", 10), ("end", 10)]
        finally:
            old.release()
            stop.set()
            await asyncio.wait_for(task, timeout=30)
            await old.server.close()
            for x in servers:
                await x.close()
    asyncio.run(go())


def test_reload_with_a_plain_router_routes_to_the_new_backend(tmp_path: Path) -> None:
    async def go():
        old = Held()
        engines, servers = await emulators(2)
        submits = [record_submits(e) for e in engines]
        kept, new = url(servers[0]), url(servers[1])
        doc = config([await old.start(), kept], router="round-robin", router_args={})
        gw, c = await gateway_from(doc)
        assert gw.fleet is None
        old.hold[10] = asyncio.Event()
        path = tmp_path / "gw.yaml"
        try:
            s = post(c, 10, TIGHT, max_tokens=5, stream=True)
            await until(lambda: old.started(10), "stream on the old backend")
            doc["backends"] = [{"url": kept}, {"url": new}]
            path.write_text(json.dumps(doc))
            changes = gw.reload(path)
            assert changes == {"added": [new], "removed": [old.url], "updated": []}
            assert [b.index for b in gw.backends] == [0, 1, 2] and gw.backends[0].removed
            rs = [await c.post("/v1/completions", headers=LOOSE, json={
                "model": MODEL, "prompt": [1] * (20 + i), "max_tokens": 2}) for i in range(4)]
            assert [r.status for r in rs] == [200] * 4
            assert old.log == [("start", 10)]
            assert len(submits[0]) == 2 and len(submits[1]) == 2  # round-robin over the two
            health = await (await c.get("/health")).json()
            assert health == {"healthy_backends": 2, "backends": 2}
            old.hold[10].set()
            r = await asyncio.wait_for(s, timeout=60)
            chunks = sse(await r.text())
            assert r.status == 200 and chunks[-1] == "[DONE]" and len(chunks) == 6
            # the old URL coming back joins with a new index (indices are never reused)
            doc["backends"] = [{"url": kept}, {"url": new}, {"url": old.url}]
            path.write_text(json.dumps(doc))
            assert gw.reload(path)["added"] == [old.url]
            assert gw.backends[3].url == old.url and not gw.backends[3].removed
            assert gw.reload(tmp_path / "missing.yaml") is None  # logged, nothing changes
            assert len(gw.backends) == 4
        finally:
            old.release()
            await c.close()
            await old.server.close()
            for x in servers:
                await x.close()
    asyncio.run(go())


# ---------------------------------------------------------------------------- (e) config
def test_config_rejects_relative_tpot_and_bad_router_args(tmp_path: Path) -> None:
    base = config(["http://127.0.0.1:1"])
    p = tmp_path / "gw.yaml"
    for over, words in [
        ({"classes": "tight:tpot=5ms;loose:tpot=3x"},
         ["class 'loose'", "relative TPOT", "absolute"]),
        ({"classes": "vip:w=2"}, ["class 'vip'", "relative TPOT"]),  # default tpot is 5x
        ({"router_args": {"mean_output": {"gold": 10}}}, ["mean_output", "'gold'"]),
        ({"router_args": {"mean_output": {"tight": 0}}}, ["mean_output.tight"]),
        ({"router_args": {"tiers": [["a", 0.1, 10]]}}, ["router_args.tiers"]),
        ({"router_args": {"bogus": 1}}, ["router_args", "bogus"]),
        # a share the fleet router would ignore is refused, not accepted and dropped
        ({"class_settings": {"loose": {"sheddable": True, "yield_target": 0.9}}},
         ["class_settings.loose", "yield_target", "own admission"]),
        ({"class_settings": {"loose": {"yield_share": 0.5}}},
         ["class_settings.loose", "yield_share"]),
    ]:
        doc = {**base, **over}
        if "classes" in over:
            doc["class_settings"] = {}
            doc["router_args"] = {}
            doc["tenants"] = [{"name": "a", "api_keys": ["k"],
                               "class": over["classes"].split(":")[0]}]
        p.write_text(json.dumps(doc))
        with pytest.raises(ValueError) as e:
            load_gateway_config(p)
        for w in words:
            assert w in str(e.value), (over, str(e.value))
        assert str(p) in str(e.value)
    # the same classes are fine with a router that does not make tiers
    p.write_text(json.dumps({**base, "router": "go", "router_args": {},
                             "classes": "tight:tpot=5ms;loose:tpot=3x", "class_settings": {}}))
    assert load_gateway_config(p).router == "go"
    # and a valid polyserve config passes the tiers, not mean_output, to the router
    cfg = GatewayConfig.model_validate(base)
    assert cfg.router_kwargs() == {"check_period_s": 60.0, "tiers": [
        {"name": "tight", "tpot": 0.005, "mean_output": 64.0},
        {"name": "loose", "tpot": 1.0, "mean_output": 256.0}]}


def test_a_request_refused_on_scraped_load_is_placed_when_the_scrape_clears() -> None:
    """Regression (a CI flake): a tight request refused because the backend's scraped metrics
    still counted a request that had just finished waited for the next periodic check (60 s
    here) instead of the next scrape. A scrape that moves a backend's numbers retries them."""
    async def go():
        running = {"n": 0}

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(text=f"vllm:num_requests_running {running['n']}\n")

        async def ok(_: web.Request) -> web.Response:
            return web.Response(text="")

        async def complete(request: web.Request) -> web.Response:
            await request.json()
            return web.json_response({
                "choices": [{"index": 0, "text": " t", "finish_reason": "length"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})

        app = web.Application()
        app.router.add_post("/v1/completions", complete)
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/health", ok)
        backend = TestServer(app)
        await backend.start_server()
        gw, client = await gateway([str(backend.make_url("")).rstrip("/")])
        body = {"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 1}
        try:
            r = await client.post("/v1/completions", headers=TIGHT, json=body)
            assert r.status == 200  # the idle backend joined the tight tier
            running["n"] = 1  # another client's request: the tight backend is busy
            await until(lambda: gw.pool.backends[0].scraped_running == 1, "the busy scrape")
            second = asyncio.create_task(client.post("/v1/completions", headers=TIGHT,
                                                     json=body))
            await asyncio.sleep(0.3)
            assert not second.done()  # held in the router's pending queue
            running["n"] = 0
            r2 = await asyncio.wait_for(second, timeout=5)  # the next scrape, not 60 s
            assert r2.status == 200
        finally:
            await client.close()
            await backend.close()

    asyncio.run(go())
