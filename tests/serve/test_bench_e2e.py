"""Load generator and the live path end to end: emulators + gateway + bench, including a backend
killed mid-run (every request must end in a response or an explicit, counted error).

These run in real time on whatever machine runs the tests, so they assert counts and orderings
the code guarantees (every request answered, every token delivered and counted by the engine,
the gateway and the bench alike), never latencies, TDG or anything else a slow machine changes.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys

import aiohttp
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import generate_latest
from tests.serve.helpers import until

from proserve.latency.profiles import load_profile
from proserve.serve.bench import BenchConfig, run_bench
from proserve.serve.emulator import EmulatedEngine, EmulatorConfig
from proserve.serve.gateway import Gateway
from proserve.serve.gateway_config import GatewayConfig
from proserve.workload import make_workload

MODEL = "proserve-emulated"


def workload(n: int, rate: float, seed: int = 0):
    reqs, _ = make_workload("azure-conv", rate=rate, count=n, classes=None,
                            model=load_profile("llama3.1-8b@h100"), seed=seed)
    for r in reqs:  # keep outputs short so the test is quick
        r.output_len = min(r.output_len, 40)
    return reqs



def sample_sum(text: str, prefix: str) -> float:
    return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(prefix))


def engine_metric(engines: list[EmulatedEngine], prefix: str) -> float:
    return sum(sample_sum(generate_latest(e.registry).decode(), prefix) for e in engines)


def spy_classes(engines: list[EmulatedEngine]) -> list[str]:
    """The class of every request the engines were given, as they resolved it."""
    seen: list[str] = []
    for e in engines:
        orig = e.loop.submit

        def submit(req, orig=orig):
            seen.append(req.cls)
            return orig(req)

        e.loop.submit = submit
    return seen


async def emulators(n: int, time_scale: float = 0.05):
    engines = [EmulatedEngine(EmulatorConfig(time_scale=time_scale), i) for i in range(n)]
    servers = [TestServer(e.app(), handler_cancellation=True) for e in engines]
    for s in servers:
        await s.start_server()
    return engines, servers


async def stack(n_backends: int):
    engines, servers = await emulators(n_backends)
    cfg = GatewayConfig.model_validate({
        "model": MODEL, "router": "go",
        "backends": [{"url": str(s.make_url("")).rstrip("/")} for s in servers],
        "tenants": [{"name": "hi", "api_keys": ["k-hi"], "class": "high"},
                    {"name": "lo", "api_keys": ["k-lo"], "class": "low"}],
        # the engines run 20x faster than the gateway's latency model assumes, so its
        # predictions mean nothing here: no queueing (admission has its own tests, on a clock)
        "class_settings": {"high": {"queue_timeout_s": 0}, "low": {"queue_timeout_s": 0}},
        "health": {"interval_s": 0.1, "timeout_s": 5.0, "failures_to_eject": 3},
        "scrape_interval_s": 0.1, "retries": 2,
    })
    gw = Gateway(cfg)
    gsrv = TestServer(gw.app(), handler_cancellation=True)
    await gsrv.start_server()
    return engines, servers, gw, gsrv


def check_complete(res: dict, reqs: list) -> None:
    """Every request answered in full, and the bench's own accounting agrees."""
    n = len(reqs)
    assert res["errors"] == {}, res["error_examples"]
    assert res["ok"] == n and res["requests"] == n and res["finished"] == n
    assert all(r.generated == r.output_len for r in reqs)
    assert res["output_tokens"] == sum(r.output_len for r in reqs)
    assert set(res["per_class"]) == {r.cls for r in reqs} == {"high", "low"}
    assert sum(c["requests"] for c in res["per_class"].values()) == n
    # ordering: a token never arrives before its request was sent, nor the last before the first
    assert all(r.arrival <= r.first_token_time <= r.last_token_time for r in reqs)
    assert 0.0 < res["tdg_ratio"] <= 1.0  # well formed; its value depends on the machine


def test_bench_direct_against_emulator_matches_workload() -> None:
    async def go():
        engines, servers = await emulators(1)
        seen = spy_classes(engines)
        try:
            reqs = workload(30, rate=50.0)
            cfg = BenchConfig(target=str(servers[0].make_url("")).rstrip("/"), model=MODEL)
            res = await run_bench(cfg, reqs)
            check_complete(res, reqs)
            # the engine saw exactly the workload, each request in its class (by `priority`)
            assert sorted(seen) == sorted(r.cls for r in reqs)
            assert engine_metric(engines, "vllm:request_success_total") == 30
            assert engine_metric(engines, "vllm:generation_tokens_total") == res["output_tokens"]
            assert engine_metric(engines, "vllm:prompt_tokens_total") == sum(
                r.prompt_len for r in reqs)
        finally:
            for s in servers:
                await s.close()
    asyncio.run(go())


def test_bench_through_gateway_counts_every_request_by_tenant() -> None:
    async def go():
        engines, servers, gw, gsrv = await stack(2)
        seen = spy_classes(engines)
        client = TestClient(gsrv)
        try:
            reqs = workload(30, rate=50.0, seed=3)
            cfg = BenchConfig(target=str(gsrv.make_url("")).rstrip("/"), model=MODEL,
                              keys={"high": "k-hi", "low": "k-lo"})
            res = await run_bench(cfg, reqs)
            check_complete(res, reqs)
            n_hi = sum(r.cls == "high" for r in reqs)

            def counted(text: str, cls: str, tenant: str) -> float:
                return sample_sum(text, f'proserve_requests_total{{class="{cls}",code="200",'
                                        f'model="proserve-emulated",tenant="{tenant}"}}')

            # the gateway counts right after its last write: allow it that moment
            texts = []

            async def scrape() -> None:
                texts.append(await (await client.get("/metrics")).text())

            for _ in range(500):
                await scrape()
                if counted(texts[-1], "high", "hi") + counted(texts[-1], "low", "lo") == 30:
                    break
                await asyncio.sleep(0.01)
            text = texts[-1]
            assert counted(text, "high", "hi") == n_hi and counted(text, "low", "lo") == 30 - n_hi
            assert sample_sum(text, 'proserve_ttft_seconds_count{class="high"') == n_hi
            assert all(not b.inflight for b in gw.backends)
            assert engine_metric(engines, "vllm:request_success_total") == 30
            assert engine_metric(engines, "vllm:generation_tokens_total") == res["output_tokens"]
            # the gateway's classes reached the engines: each request ran as its tenant's class
            assert sorted(seen) == sorted(r.cls for r in reqs)
        finally:
            await client.close()
            for s in servers:
                await s.close()
    asyncio.run(go())


def _free_port() -> int:
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return sk.getsockname()[1]


async def _wait_healthy(url: str, proc: subprocess.Popen) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(1200):
            assert proc.poll() is None, f"{url}: the emulator exited with {proc.returncode}"
            try:
                async with s.get(url + "/health") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def test_killing_a_backend_mid_run_loses_nothing_silently() -> None:
    """Two emulators in their own processes; one is SIGKILLed while one of its streams is
    mid-way (the moment is chosen by what the gateway has in flight, not by a timer)."""
    ports = [_free_port(), _free_port()]
    procs = [subprocess.Popen([sys.executable, "-m", "proserve.cli", "emulate", "--port", str(p)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for p in ports]
    n = 20

    async def go():
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        for u, p in zip(urls, procs):
            await _wait_healthy(u, p)
        cfg = GatewayConfig.model_validate({
            "model": MODEL, "router": "round-robin",
            "backends": [{"url": u} for u in urls],
            "tenants": [{"name": "hi", "api_keys": ["k-hi"], "class": "high"},
                        {"name": "lo", "api_keys": ["k-lo"], "class": "low"}],
            "class_settings": {"high": {"queue_timeout_s": 0}, "low": {"queue_timeout_s": 0}},
            "health": {"interval_s": 0.1, "timeout_s": 5.0, "failures_to_eject": 1},
            "retries": 2})
        gw = Gateway(cfg)
        gsrv = TestServer(gw.app(), handler_cancellation=True)
        await gsrv.start_server()
        try:
            reqs = workload(n, rate=20.0, seed=1)
            for r in reqs:
                r.output_len = 300  # ~2 s of decoding each in real time: long-lived streams
            bcfg = BenchConfig(target=str(gsrv.make_url("")).rstrip("/"), model=MODEL,
                               keys={"high": "k-hi", "low": "k-lo"}, timeout_s=120)
            at_kill: list[int] = []

            async def killer():
                b0 = gw.backends[0]
                # a stream on backend 0 has started and has far to go: kill it now
                await until(lambda: any(1 <= r.generated <= 60 for r in b0.inflight.values()),
                            "a stream under way on backend 0")
                at_kill.append(len(b0.inflight))
                procs[0].send_signal(signal.SIGKILL)

            res, _ = await asyncio.gather(run_bench(bcfg, reqs), killer())
            ok, errors = res["ok"], res["errors"]
            # every request ended: in full on a live backend, or with an explicit stream error;
            # only streams already under way on the killed backend can be cut, and one was
            assert set(errors) == {"stream_error"}, res["error_examples"]
            assert ok + errors["stream_error"] == n
            assert 1 <= errors["stream_error"] <= at_kill[0]
            assert res["finished"] == ok
            client = TestClient(gsrv)
            for _ in range(500):  # the gateway counts right after its last write: allow a moment
                text = await (await client.get("/metrics")).text()
                if sample_sum(text, "proserve_requests_total{") == n:
                    break
                await asyncio.sleep(0.01)
            await client.close()
            assert sample_sum(text, "proserve_requests_total{") == n  # the gateway counted all
            assert sample_sum(text, "proserve_stream_errors_total{") == errors["stream_error"]
            assert not gw.backends[0].healthy and gw.backends[1].healthy
        finally:
            await gsrv.close()

    try:
        asyncio.run(go())
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_a_second_run_against_one_server_finds_nothing_of_the_first_in_its_prefix_cache() -> None:
    """Request ids restart at 0 in every workload: without a per-run salt the second replay of a
    workload against one server (profile, then measure; or repeats) is served from the cache
    the first one left, and measures cache hits instead of the trace. A fixed salt shared by
    both runs must still reproduce the warm cache (the check that the counter can move)."""
    async def go():
        engines, servers = await emulators(1)
        url = str(servers[0].make_url("")).rstrip("/")

        async def hits_of(salt: int | None) -> tuple[float, int]:
            before = engine_metric(engines, "vllm:prefix_cache_hits_total")
            res = await run_bench(BenchConfig(target=url, model=MODEL, salt=salt),
                                  workload(12, rate=50.0))
            assert res["errors"] == {}, res["error_examples"]
            return engine_metric(engines, "vllm:prefix_cache_hits_total") - before, \
                res["prompt_salt"]

        try:
            first, s1 = await hits_of(None)
            second, s2 = await hits_of(None)
            assert s1 != s2
            assert first == 0 and second == 0, (first, second)
            await hits_of(7)
            warm, s = await hits_of(7)
            assert s == 7
            assert warm > 0.5 * sum(r.prompt_len for r in workload(12, rate=50.0))
        finally:
            for sv in servers:
                await sv.close()
    asyncio.run(go())


def test_a_salt_outside_what_prompts_can_spell_is_refused() -> None:
    """Two base-990 tokens spell the salt: a larger or negative one would alias another run's
    salt silently, so it is an error before anything is sent."""
    import pytest

    from proserve.serve.bench import SALTS
    for bad in (-1, SALTS):
        with pytest.raises(ValueError, match="salt must be in"):
            asyncio.run(run_bench(BenchConfig(target="http://127.0.0.1:9", salt=bad), []))


def test_a_refusal_is_counted_as_rejected_as_in_the_simulator() -> None:
    """A 429 (admission shed, queue timeout, tenant limit) is what the simulator's --admission
    counts as rejected: no gain, a miss in attainment, and no latency sample; other failures
    stay unfinished."""
    from aiohttp import web

    from proserve.core.request import Request, Status

    async def handler(request: web.Request) -> web.Response:
        body = await request.json()
        if body["prompt"][0] == 10:  # request id 0 spells 10 first: refused
            return web.json_response({"error": {"message": "no capacity",
                                                "code": "capacity_shed"}}, status=429)
        return web.json_response({"error": {"message": "boom"}}, status=500)

    async def go():
        app = web.Application()
        app.router.add_post("/v1/completions", handler)
        async with TestServer(app) as sv:
            reqs = [Request(i, 0.01 * i, 16, 4, ttft_slo=1.0, tpot_slo=0.1, cls="low")
                    for i in range(2)]
            res = await run_bench(BenchConfig(target=str(sv.make_url("")), model=MODEL), reqs)
            return reqs, res

    reqs, res = asyncio.run(go())
    assert reqs[0].status == Status.REJECTED and reqs[0].finish_time >= 0
    assert reqs[1].status == Status.UNFINISHED
    assert res["rejected"] == 1 and res["per_class"]["low"]["rejected"] == 1
    assert res["errors"] == {"429": 1, "500": 1}
    assert res["slo_attainment"] == 0.0
