"""Tenant limits across workers and hosts: requests/s, tokens/s and concurrency kept in a real
``redis-server`` (installed by the tests if missing; tests/serve/helpers.py: RedisServer), what
happens when Redis goes away and comes back (``on_error: open | closed``), the concurrency
lease's TTL guard, and concurrency kept in one process.

The shared-rate test runs two ``proserve gateway`` processes: what it asserts is a count (the
requests admitted over the run against ``max_rps`` x its length, within 10%), never a speed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from tests.serve.helpers import (
    RedisServer,
    free_port,
    stop_procs,
    until,
    wait_http,
)

from proserve.serve.emulator import EmulatedEngine, EmulatorConfig
from proserve.serve.gateway import Gateway
from proserve.serve.gateway_config import GatewayConfig, LimitsConfig, TenantConfig
from proserve.serve.tenant_limits import Lease, RedisLimiter, Refusal, rate_window

MODEL = "proserve-emulated"
CLASSES = "std:w=1,ttft=30s,tpot=1s"
CLI = [sys.executable, "-m", "proserve.cli"]
KEY = {"Authorization": "Bearer k-t"}
FREE = {"Authorization": "Bearer k-free"}
BODY = {"model": MODEL, "prompt": "x", "max_tokens": 1}


@pytest.fixture
def redis_srv():
    rs = RedisServer().start()
    try:
        yield rs
    finally:
        rs.stop()


def doc(backends: list[str], limits: dict | None = None, **tenant) -> dict:
    return {
        "model": MODEL, "classes": CLASSES,
        "class_settings": {"std": {"queue_timeout_s": 5}},
        "backends": [{"url": u} for u in backends],
        "tenants": [{"name": "t", "api_keys": ["k-t"], "class": "std", **tenant},
                    {"name": "free", "api_keys": ["k-free"], "class": "std"}],
        "health": {"interval_s": 0.2, "timeout_s": 5.0, "failures_to_eject": 3},
        "scrape_interval_s": 0.2, "shutdown_grace_s": 5,
        **({"limits": limits} if limits else {}),
    }


async def start_gateway(d: dict) -> tuple[Gateway, TestClient]:
    gw = Gateway(GatewayConfig.model_validate(d))
    c = TestClient(TestServer(gw.app(), handler_cancellation=True))
    await c.start_server()
    return gw, c


async def emulator() -> TestServer:
    eng = EmulatedEngine(EmulatorConfig(classes=CLASSES, time_scale=0.01))
    s = TestServer(eng.app())
    await s.start_server()
    return s


def url(s: TestServer) -> str:
    return str(s.make_url("")).rstrip("/")


def metric(text: str, start: str) -> float:
    return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(start))


class Held:
    """A backend whose completions wait until ``release`` (count: how many arrived)."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.arrived = 0
        self.server: TestServer | None = None

    async def start(self) -> str:
        async def complete(request: web.Request) -> web.Response:
            await request.read()
            self.arrived += 1
            await self.gate.wait()
            return web.json_response({"choices": [{"index": 0, "text": " t",
                                                   "finish_reason": "length"}],
                                      "usage": {"completion_tokens": 1}})

        async def ok(_: web.Request) -> web.Response:
            return web.Response(text="")

        app = web.Application()
        app.router.add_post("/v1/completions", complete)
        app.router.add_get("/health", ok)
        app.router.add_get("/metrics", ok)
        self.server = TestServer(app)
        await self.server.start_server()
        return url(self.server)


# ---------------------------------------------------------------------------- units
def test_rate_window_makes_fractional_rates_whole() -> None:
    assert rate_window(20) == (20, 1)
    assert rate_window(0.5) == (1, 2)
    assert rate_window(2.5) == (5, 2)
    assert rate_window(1 / 3) == (1, 3)
    assert rate_window(0.001) == (1, 60)  # below one per minute: at least one per minute
    amount, seconds = rate_window(7.77)
    assert abs(amount / seconds - 7.77) / 7.77 < 0.01


def test_limits_config_needs_a_url_for_redis() -> None:
    with pytest.raises(ValueError, match="limits.url"):
        LimitsConfig(backend="redis")
    with pytest.raises(ValueError, match="url"):
        LimitsConfig(backend="redis", url="http://127.0.0.1:6379")
    assert LimitsConfig(backend="redis", url="redis://h:1/0").on_error == "open"


# ---------------------------------------------------------------------------- in one process
def test_local_concurrency_limit_refuses_then_frees() -> None:
    async def go():
        held = Held()
        gw, c = await start_gateway(doc([await held.start()], max_concurrency=2))
        try:
            a = asyncio.ensure_future(c.post("/v1/completions", json=BODY, headers=KEY))
            b = asyncio.ensure_future(c.post("/v1/completions", json=BODY, headers=KEY))
            await until(lambda: held.arrived == 2, "two in flight")
            r = await c.post("/v1/completions", json=BODY, headers=KEY)
            d = await r.json()
            assert r.status == 429 and d["error"]["code"] == "concurrency_limited"
            assert r.headers["Retry-After"] == "1"
            # another tenant is not limited by t's slots
            f = asyncio.ensure_future(c.post("/v1/completions", json=BODY, headers=FREE))
            await until(lambda: held.arrived == 3, "the other tenant's request in flight")
            held.gate.set()
            assert [x.status for x in await asyncio.gather(a, b, f)] == [200] * 3
            r = await c.post("/v1/completions", json=BODY, headers=KEY)
            assert r.status == 200  # slots given back
            assert gw.limiter.inflight["t"] == 0
        finally:
            held.gate.set()
            await c.close()
            await held.server.close()
    asyncio.run(go())


# ---------------------------------------------------------------------------- Redis
def test_concurrency_is_shared_by_two_gateways_through_redis(redis_srv: RedisServer) -> None:
    async def go():
        held = Held()
        u = await held.start()
        lim = {"backend": "redis", "url": redis_srv.url}
        gws = [await start_gateway(doc([u], lim, max_concurrency=2)) for _ in range(2)]
        (_, c1), (_, c2) = gws
        try:
            a = asyncio.ensure_future(c1.post("/v1/completions", json=BODY, headers=KEY))
            b = asyncio.ensure_future(c2.post("/v1/completions", json=BODY, headers=KEY))
            await until(lambda: held.arrived == 2, "one in flight through each gateway")
            for c in (c1, c2):  # both gateways see the tenant's two slots taken
                r = await c.post("/v1/completions", json=BODY, headers=KEY)
                assert r.status == 429 and (await r.json())["error"]["code"] == \
                    "concurrency_limited"
            held.gate.set()
            assert [x.status for x in await asyncio.gather(a, b)] == [200, 200]
            held.gate.clear()
            # released in Redis: two fit again, through either gateway
            a = asyncio.ensure_future(c2.post("/v1/completions", json=BODY, headers=KEY))
            b = asyncio.ensure_future(c2.post("/v1/completions", json=BODY, headers=KEY))
            await until(lambda: held.arrived == 4, "two more in flight")
            held.gate.set()
            assert [x.status for x in await asyncio.gather(a, b)] == [200, 200]
        finally:
            held.gate.set()
            for _, c in gws:
                await c.close()
            await held.server.close()
    asyncio.run(go())


def test_tokens_per_second_are_shared_by_two_gateways_through_redis(
        redis_srv: RedisServer) -> None:
    async def go():
        emu = await emulator()
        lim = {"backend": "redis", "url": redis_srv.url}
        gws = [await start_gateway(doc([url(emu)], lim, max_tokens_per_s=100))
               for _ in range(2)]
        (_, c1), (_, c2) = gws
        fifty = {"model": MODEL, "prompt": [1] * 40, "max_tokens": 10}  # 50 tokens
        try:
            codes = [(await c.post("/v1/completions", json=fifty, headers=KEY)).status
                     for c in (c1, c2)]
            assert codes == [200, 200]  # 100 tokens: the budget, taken through both
            for c in (c1, c2):
                r = await c.post("/v1/completions", json=fifty, headers=KEY)
                d = await r.json()
                assert r.status == 429 and "tokens/s" in d["error"]["message"]
                assert int(r.headers["Retry-After"]) >= 1
            r = await c1.post("/v1/completions", json=fifty, headers=FREE)
            assert r.status == 200  # another tenant's budget is its own
        finally:
            for _, c in gws:
                await c.close()
            await emu.close()
    asyncio.run(go())


def test_a_slot_held_by_a_dead_process_frees_itself_after_its_ttl(
        redis_srv: RedisServer) -> None:
    t = TenantConfig.model_validate({"name": "ttl", "api_keys": ["k"], "class": "std",
                                     "max_concurrency": 1})
    cfg = LimitsConfig(backend="redis", url=redis_srv.url, lease_ttl_s=1.0)

    async def go():
        dead = RedisLimiter(cfg, [t], time.monotonic)
        await dead.start()
        assert isinstance(await dead.admit(t, 1), Lease)
        dead._task.cancel()  # the process "dies": no renewal, no release
        alive = RedisLimiter(cfg, [t], time.monotonic)
        await alive.start()
        try:
            first = await alive.admit(t, 1)
            assert isinstance(first, Refusal) and first.code == "concurrency_limited"
            got = None
            for _ in range(300):  # the 1 s lease expires: bounded polls, no timed assert
                got = await alive.admit(t, 1)
                if isinstance(got, Lease):
                    break
                await asyncio.sleep(0.02)
            assert isinstance(got, Lease)
            # a live lease is renewed past its TTL: a long stream keeps its slot
            alive_ttl = RedisLimiter(cfg.model_copy(update={"key_prefix": "renew"}), [t],
                                     time.monotonic)
            await alive_ttl.start()
            held = await alive_ttl.admit(t, 1)
            assert isinstance(held, Lease)
            key = alive_ttl._ckey("ttl")
            score0 = await alive_ttl.redis.zscore(key, held.slot[1])
            for _ in range(300):
                await asyncio.sleep(0.02)
                if await alive_ttl.redis.zscore(key, held.slot[1]) > score0:
                    break
            assert await alive_ttl.redis.zscore(key, held.slot[1]) > score0  # renewed
            await alive_ttl.release(held)
            assert await alive_ttl.redis.zcard(key) == 0
            await alive_ttl.close()
        finally:
            await alive.close()
            await dead.close()
    asyncio.run(go())


def test_close_returns_even_if_the_renewal_loop_swallows_its_cancellation() -> None:
    """redis-py can swallow a cancellation that lands inside a command (redis/redis-py#2028);
    close() then must not wait on the renewal task for good (it once hung a test run): the loop
    ends at its next turn."""
    t = TenantConfig.model_validate({"name": "x", "api_keys": ["k"], "class": "std",
                                     "max_concurrency": 1})
    cfg = LimitsConfig(backend="redis", url="redis://127.0.0.1:1/0", lease_ttl_s=0.3,
                       timeout_s=0.05)

    async def go():
        lim = RedisLimiter(cfg, [t], time.monotonic)
        swallowed, ended = [], []

        async def stubborn():  # the renewal loop as redis-py may leave it: cancels ignored
            for _ in range(1000):  # gives up after ~10 s: a regression fails, never hangs
                if getattr(lim, "_closing", False):
                    ended.append("closing")
                    return
                try:
                    await asyncio.sleep(0.01)
                except asyncio.CancelledError:
                    swallowed.append(True)
            ended.append("gave up")

        lim._task = asyncio.get_running_loop().create_task(stubborn())
        await asyncio.sleep(0.02)
        await asyncio.wait_for(lim.close(), timeout=30)
        assert swallowed and lim._task.done() and ended == ["closing"]
    asyncio.run(go())


@pytest.mark.parametrize("on_error", ["open", "closed"])
def test_redis_stopped_mid_run_behaves_as_configured(redis_srv: RedisServer,
                                                     on_error: str) -> None:
    async def go():
        emu = await emulator()
        lim = {"backend": "redis", "url": redis_srv.url, "on_error": on_error,
               "retry_s": 0.1, "timeout_s": 0.5}
        gw, c = await start_gateway(doc([url(emu)], lim, max_rps=3))
        try:
            r = await c.post("/v1/completions", json=BODY, headers=KEY)
            assert r.status == 200
            assert metric(await (await c.get("/metrics")).text(),
                          "proserve_limit_store_up") == 1.0
            redis_srv.stop()  # Redis goes away mid-run
            codes = []
            for _ in range(6):
                r = await c.post("/v1/completions", json=BODY, headers=KEY)
                codes.append(r.status)
                if r.status == 503:
                    d = await r.json()
                    assert d["error"]["code"] == "limit_store_unavailable"
                    assert int(r.headers["Retry-After"]) >= 1
            text = await (await c.get("/metrics")).text()
            assert metric(text, "proserve_limit_store_up") == 0.0
            assert metric(text, 'proserve_limit_store_errors_total{op="admit"}') >= 1
            unavailable = metric(text, f'proserve_limit_store_unavailable_total{{model="{MODEL}"'
                                       f',on_error="{on_error}"}}')
            if on_error == "closed":
                assert codes == [503] * 6 and unavailable == 6
            else:
                # open: judged by this process's own limits (3/s, a burst of 3), not unlimited
                assert codes.count(200) == 3 and codes.count(429) == 3, codes
                assert unavailable == 3  # the admitted ones; refusals are plain 429s
            redis_srv.start()  # back on the same port: shared limits again
            for _ in range(500):
                r = await c.post("/v1/completions", json=BODY, headers=FREE)
                text = await (await c.get("/metrics")).text()
                if metric(text, "proserve_limit_store_up") == 1.0:
                    break
                await asyncio.sleep(0.02)
            assert metric(text, "proserve_limit_store_up") == 1.0
            for _ in range(200):  # t's local burst may still be spent; Redis has budget
                r = await c.post("/v1/completions", json=BODY, headers=KEY)
                if r.status == 200:
                    break
                await asyncio.sleep(0.05)
            assert r.status == 200
        finally:
            await c.close()
            await emu.close()
    asyncio.run(go())


def _load(urls: list[str], rate: float, seconds: float):
    """benchmarks/gateway_shared_limits.py's open-loop sender (one copy of it): each request's
    (gateway index, status, error code) and the span the sends covered."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        from gateway_shared_limits import load
    finally:
        sys.path.pop(0)
    return load(urls, rate, seconds)


def test_two_gateway_processes_hold_a_tenant_to_max_rps_through_redis(
        redis_srv: RedisServer, tmp_path: Path) -> None:
    max_rps, seconds = 20, 8.0
    procs: list[subprocess.Popen] = []
    try:
        eport = free_port()
        procs.append(subprocess.Popen(
            [*CLI, "emulate", "--port", str(eport), "--classes", CLASSES, "--time-scale",
             "0.01"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        wait_http(f"http://127.0.0.1:{eport}/health", procs[0])
        gurls = []
        for i in range(2):  # two gateway "hosts" sharing one Redis
            port = free_port()
            d = {**doc([f"http://127.0.0.1:{eport}"],
                       {"backend": "redis", "url": redis_srv.url}, max_rps=max_rps),
                 "port": port}
            p = tmp_path / f"gw{i}.yaml"
            p.write_text(json.dumps(d))
            procs.append(subprocess.Popen([*CLI, "gateway", "--config", str(p)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                          text=True))
            gurls.append(f"http://127.0.0.1:{port}")
        for u, proc in zip(gurls, procs[1:]):
            wait_http(u + "/health", proc)

        # the sender warms both gateways first (connections, Redis scripts)
        out, span = asyncio.run(_load(gurls, 3 * max_rps, seconds))
        admitted = [k for k, status, _ in out if status == 200]
        refused = [code for _, status, code in out if status == 429]
        assert len(admitted) + len(refused) == len(out), out  # nothing but 200 and 429
        assert set(refused) == {"rate_limited"}
        expected = max_rps * span
        assert abs(len(admitted) - expected) <= 0.1 * expected, (len(admitted), expected, span)
        assert admitted.count(0) > 0 and admitted.count(1) > 0  # both gateways admitted
    finally:
        codes = stop_procs(procs)
    assert codes[1:] == [0, 0]  # the gateways drained and exited cleanly
