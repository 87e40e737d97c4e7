"""Prefix-cache hit rate: the simulator against a real vLLM server on the same requests.

Used by ``benchmarks/prefix_vllm.py`` and the vLLM end-to-end test. The requests come from a
workload with prefix identity (Mooncake's ``hash_ids``, or ``--shared-prefix``); the simulator
serves one copy with its block manager, ``proserve bench`` sends another copy to the server as
token-id prompts that spell the same prefixes out (:func:`proserve.serve.bench.prompt_token_ids`),
and the server's own counters (``vllm:prefix_cache_queries`` / ``vllm:prefix_cache_hits``, in
tokens) give its hit rate, scraped before and after the replay.
"""

from __future__ import annotations

import asyncio
import re
import urllib.request
from typing import Any

from ..core.metrics import summarize
from ..core.request import Request
from ..engine import make_scheduler
from ..latency.model import LatencyModel
from ..serve.bench import BenchConfig, run_bench
from ..sim.simulator import simulate


def copy_requests(reqs: list[Request]) -> list[Request]:
    """Fresh copies (engine state and metrics reset), prefix identity shared."""
    return [Request(r.id, r.arrival, r.prompt_len, r.output_len, r.ttft_slo, r.tpot_slo,
                    r.weight, r.priority, r.cls, r.tenant, prefix=r.prefix) for r in reqs]


def offline_hits(reqs: list[Request], block: int = 16) -> tuple[int, int]:
    """``(hit tokens, prompt tokens)`` of an unbounded cache that holds every earlier request's
    keyed prompt blocks (arrival order; hits are leading runs of whole ``block``-token blocks, at
    most prompt - 1 tokens, as an engine counts them): the exact offline count both engines
    approach at low load. Shares only :meth:`Prefix.key` with the engine's block manager, not
    its refcounts or eviction."""
    seen: set[tuple] = set()
    hit = total = 0
    for r in sorted(reqs, key=lambda x: (x.arrival, x.id)):
        total += r.prompt_len
        p = r.prefix
        if p is None:
            continue
        keys = [p.key(j, block) for j in range(p.num_keyed(r.prompt_len, block))]
        h = 0
        for k in keys[:(r.prompt_len - 1) // block]:
            if k not in seen:
                break
            h += 1
        hit += h * block
        seen.update(keys)
    return hit, total


def offline_hit_rate(reqs: list[Request], block: int = 16) -> float:
    """:func:`offline_hits` as a fraction of prompt tokens."""
    hit, total = offline_hits(reqs, block)
    return hit / total if total else 0.0


def simulated_hit_rate(reqs: list[Request], model: LatencyModel, policy: str = "vllm-fcfs",
                       **params: Any) -> dict[str, Any]:
    eng = make_scheduler(policy, model, **params)
    res = simulate(copy_requests(reqs), [eng], drain_s=3600.0)
    s = summarize(res.requests)
    return {"hit_rate": s["prefix_hit_rate"], "finished": s["finished"],
            "prompt_tokens": sum(r.prompt_len for r in reqs)}


def scrape_prefix_counters(url: str) -> tuple[float, float]:
    """(queries, hits) in tokens from a vLLM server's /metrics, summed over its engines."""
    with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=10) as r:
        text = r.read().decode()

    def total(name: str) -> float:
        vals = re.findall(rf"^{re.escape(name)}_total(?:\{{[^}}]*\}})? ([0-9.e+]+)$", text, re.M)
        if not vals:
            raise RuntimeError(f"{url}/metrics has no {name}_total (prefix caching off?)")
        return sum(float(v) for v in vals)

    return total("vllm:prefix_cache_queries"), total("vllm:prefix_cache_hits")


def measured_hit_rate(url: str, model_name: str, reqs: list[Request]) -> dict[str, Any]:
    """Replay ``reqs`` against the server with ``proserve bench``; its hit rate from its own
    counters over exactly this replay."""
    q0, h0 = scrape_prefix_counters(url)
    res = asyncio.run(run_bench(BenchConfig(target=url, model=model_name, send_priority=False),
                                copy_requests(reqs)))
    q1, h1 = scrape_prefix_counters(url)
    q, h = q1 - q0, h1 - h0
    return {"hit_rate": h / q if q else 0.0, "queries": q, "hits": h,
            "finished": res["finished"], "errors": res.get("errors", {})}
