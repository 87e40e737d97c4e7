"""``proserve profile --offline MODEL``: measure iteration latency through vLLM's ``LLM`` API.

For a machine with vLLM and the model but no server running. The engine is built in-process with
the same engine arguments a server would take (``--engine-arg key=value``), prefix caching on.

- **Prefill** ``q`` on ``p`` cached: the prefix is generated once to fill the prefix cache, then
  prefix + ``q`` new tokens with ``max_tokens=1`` is timed. This includes one ``generate`` call's
  overhead, as a request's first token does.
- **Decode** ``batch`` at context ``L``: ``batch`` prompts run once with ``max_tokens=1`` and once
  with ``max_tokens=1+n``; the difference divided by ``n`` is one decode step of the batch, with
  the prefill and call overhead cancelled out.

Every timed call follows an untimed call of the same shape (other random tokens, so no prefix-cache
hit). Without it the first call of a shape pays one-off costs (kernel set-up for a new shape,
threads waking from idle) that the subtraction above does not cancel: on a shared 2-core CI
machine the ``max_tokens=1`` call of a fresh shape took longer than the ``1+n`` call after it, and
every decode point came out non-positive.

vLLM is imported lazily; it is not a dependency of proserve.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from .grid import decode_prompt_len, random_tokens

_DECODE_TRIES = 3


class OfflineBackend:
    """Times iterations of an in-process ``vllm.LLM``."""

    def __init__(self, model: str, *, engine_args: dict[str, Any] | None = None,
                 repeats: int = 3, decode_tokens: int = 16, seed: int = 0) -> None:
        try:
            from vllm import LLM, SamplingParams
        except ImportError:
            raise RuntimeError("proserve profile --offline needs vLLM importable in this Python "
                               "(or profile a running server with --server URL)") from None
        if repeats < 1 or decode_tokens < 4:
            raise ValueError("repeats must be >= 1 and decode_tokens >= 4")
        args = {"enable_prefix_caching": True, **(engine_args or {})}
        self.llm = LLM(model=model, **args)
        self._sp = SamplingParams
        self.repeats = repeats
        self.decode_tokens = decode_tokens
        self._rng = np.random.default_rng(seed)
        cc = self.llm.llm_engine.vllm_config.cache_config
        self.blocks, self.block_size = int(cc.num_gpu_blocks or 0), int(cc.block_size)
        self.prefix_align = self.block_size
        import vllm

        self.description = (f"vLLM {vllm.__version__} offline LLM({model!r}, {args}), "
                            f"{self.blocks} KV blocks of {self.block_size}; median of {repeats}")

    def _prompts(self, n: int, length: int) -> list[dict[str, list[int]]]:
        return [{"prompt_token_ids": random_tokens(self._rng, length)} for _ in range(n)]

    def _gen(self, prompts: list[dict[str, list[int]]], max_tokens: int) -> float:
        sp = self._sp(max_tokens=max_tokens, ignore_eos=True, detokenize=False)
        t0 = time.perf_counter()
        self.llm.generate(prompts, sp, use_tqdm=False)
        return time.perf_counter() - t0

    def _prefill_once(self, q: int, p: int) -> float:
        self._gen(self._prompts(1, p + q), 1)  # warm-up of the shape, untimed
        prefix = self._prompts(1, p)[0]["prompt_token_ids"] if p else []
        if p:
            self._gen([{"prompt_token_ids": prefix}], 1)
        new = self._prompts(1, q)[0]["prompt_token_ids"]
        return self._gen([{"prompt_token_ids": prefix + new}], 1)

    def time_prefill(self, q: int, p: int) -> float:
        return statistics.median(self._prefill_once(q, p) for _ in range(self.repeats))

    def _decode_once(self, batch: int, context: int) -> float:
        n = self.decode_tokens
        plen = decode_prompt_len(context, n)
        self._gen(self._prompts(batch, plen), 1 + n)  # warm-up of the shape, untimed
        for _ in range(_DECODE_TRIES):
            base = self._gen(self._prompts(batch, plen), 1)
            full = self._gen(self._prompts(batch, plen), 1 + n)
            if full > base:
                return (full - base) / n
        # a clamped or made-up value would silently pull the fit's decode terms to zero
        raise RuntimeError(
            f"decode of batch {batch} at context {context}: {n} extra decode steps took no "
            f"measurable time in {_DECODE_TRIES} tries (timing noise larger than {n} steps); "
            "raise --decode-tokens or profile on a quieter machine")

    def time_decode(self, batch: int, context: int) -> float:
        return statistics.median(self._decode_once(batch, context) for _ in range(self.repeats))

    def kv_capacity(self) -> tuple[int, int]:
        return self.blocks, self.block_size

    def close(self) -> None:
        del self.llm
