"""Load generator and the live path end to end: emulators + gateway + bench, including a backend
killed mid-run (every request must end in a response or an explicit, counted error)."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys

import aiohttp
from aiohttp.test_utils import TestClient, TestServer

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


async def stack(n_backends: int, time_scale: float = 1.0):
    engines = [EmulatedEngine(EmulatorConfig(time_scale=time_scale), i) for i in range(n_backends)]
    servers = [TestServer(e.app(), handler_cancellation=True) for e in engines]
    for s in servers:
        await s.start_server()
    cfg = GatewayConfig.model_validate({
        "model": MODEL, "router": "go",
        "backends": [{"url": str(s.make_url("")).rstrip("/")} for s in servers],
        "tenants": [{"name": "hi", "api_keys": ["k-hi"], "class": "high"},
                    {"name": "lo", "api_keys": ["k-lo"], "class": "low"}],
        "health": {"interval_s": 0.1, "failures_to_eject": 1},
        "scrape_interval_s": 0.1, "retries": 2,
    })
    gw = Gateway(cfg)
    gsrv = TestServer(gw.app(), handler_cancellation=True)
    await gsrv.start_server()
    return engines, servers, gw, gsrv


def test_bench_direct_against_emulator_matches_workload() -> None:
    async def go():
        engines, servers, gw, gsrv = await stack(1)
        try:
            reqs = workload(30, rate=10.0)
            cfg = BenchConfig(target=str(servers[0].make_url("")).rstrip("/"), model=MODEL)
            res = await run_bench(cfg, reqs)
            assert res["errors"] == {} and res["ok"] == 30 and res["finished"] == 30
            assert res["output_tokens"] == sum(r.output_len for r in reqs)
            assert res["tdg_ratio"] > 0.9 and set(res["per_class"]) == {"high", "low"}
            assert all(r.first_token_time >= r.arrival for r in reqs)
        finally:
            await gsrv.close()
            for s in servers:
                await s.close()
    asyncio.run(go())


def _free_port() -> int:
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return sk.getsockname()[1]


async def _wait_healthy(url: str) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(200):
            try:
                async with s.get(url + "/health") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def test_killing_a_backend_mid_run_loses_nothing_silently() -> None:
    """Two emulators in their own processes; one is SIGKILLed while streams are in flight."""
    ports = [_free_port(), _free_port()]
    procs = [subprocess.Popen([sys.executable, "-m", "proserve.cli", "emulate", "--port", str(p)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for p in ports]

    async def go():
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        for u in urls:
            await _wait_healthy(u)
        cfg = GatewayConfig.model_validate({
            "model": MODEL, "router": "round-robin",
            "backends": [{"url": u} for u in urls],
            "tenants": [{"name": "hi", "api_keys": ["k-hi"], "class": "high"},
                        {"name": "lo", "api_keys": ["k-lo"], "class": "low"}],
            "health": {"interval_s": 0.1, "failures_to_eject": 1}, "retries": 2})
        gw = Gateway(cfg)
        gsrv = TestServer(gw.app(), handler_cancellation=True)
        await gsrv.start_server()
        try:
            reqs = workload(60, rate=30.0, seed=1)
            for r in reqs:
                r.output_len = 60
            bcfg = BenchConfig(target=str(gsrv.make_url("")).rstrip("/"), model=MODEL,
                               keys={"high": "k-hi", "low": "k-lo"}, timeout_s=30)

            async def killer():
                await asyncio.sleep(1.0)  # mid-run: streams are in flight on both backends
                procs[0].send_signal(signal.SIGKILL)

            res, _ = await asyncio.gather(run_bench(bcfg, reqs), killer())
            ok, errors = res["ok"], res["errors"]
            assert ok + sum(errors.values()) == 60  # every request ended, one way or another
            assert set(errors) <= {"stream_error", "502", "503"}, res["error_examples"]
            assert errors.get("stream_error", 0) >= 1  # the kill did cut live streams
            assert ok > 30  # the rest went to, or were retried on, the live backend
            client = TestClient(gsrv)
            for _ in range(50):  # the gateway counts right after its last write: allow a moment
                text = await (await client.get("/metrics")).text()
                counted = sum(float(x.split()[-1]) for x in text.splitlines()
                              if x.startswith("proserve_requests_total{"))
                if counted == 60:
                    break
                await asyncio.sleep(0.02)
            await client.close()
            assert counted == 60  # the gateway accounted for every request too
            cut = sum(float(x.split()[-1]) for x in text.splitlines()
                      if x.startswith("proserve_stream_errors_total{"))
            assert cut == errors["stream_error"]
            assert not gw.backends[0].healthy and gw.backends[1].healthy
        finally:
            await gsrv.close()

    try:
        asyncio.run(go())
    finally:
        for p in procs:
            p.kill()
            p.wait()
