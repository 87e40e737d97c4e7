"""An approximate index of which prompt blocks each backend has cached, for a gateway's routers.

In the simulator a router reads each instance's prefix cache exactly (``InstanceView
.prefix_lookup`` bound to the engine's ``BlockManager.match_prefix``). A gateway cannot: a vLLM
backend does not publish its cache. It does what llm-d's prefix-cache scorer does (the Gateway API
Inference Extension's ``prefix-cache-scorer``, "approximate prefix cache" mode): remember the
block hashes of the prompts it *sent* to each backend, assume the backend cached them, and forget
the least recently used ones beyond a per-backend capacity (llm-d's ``lruCapacityPerServer``).

* **Keys** are the engine's own block keys (:meth:`Prefix.key <proserve.core.request.Prefix.key>`),
  so a request's leading-run lookup here means the same thing as the simulator's: token-id prompts
  are hashed per ``block_size`` tokens exactly as vLLM hashes its blocks; text prompts by the
  documented text chunking of :func:`proserve.serve.openai.prompt_prefix` (64-character chunks,
  one per ~16 estimated tokens: an approximation, since the gateway has no tokenizer).
* **Capacity**: the backend's KV blocks from its profile by default (a backend cannot cache more
  prompt blocks than its KV cache holds; it caches fewer while it is busy, so the index
  overestimates under load, as llm-d's does).
* **Cost**: a lookup walks the prompt's keys until the first miss (dict lookups); a record
  touches every keyed block of the prompt (OrderedDict move-to-end) and evicts from the front.
  Both are O(prompt blocks), which the routing decision already pays to hash the prompt.
"""

from __future__ import annotations

from collections import OrderedDict

from ..core.request import Request


class PrefixIndex:
    """Block keys one backend is assumed to hold, least recently sent first."""

    __slots__ = ("capacity", "block_size", "_lru", "lookups", "hit_tokens")

    def __init__(self, capacity_blocks: int, block_size: int = 16) -> None:
        if capacity_blocks <= 0 or block_size <= 0:
            raise ValueError("capacity_blocks and block_size must be positive")
        self.capacity = capacity_blocks
        self.block_size = block_size
        self._lru: OrderedDict[tuple, None] = OrderedDict()
        self.lookups = 0
        self.hit_tokens = 0

    def __len__(self) -> int:
        return len(self._lru)

    def _n_keyed(self, req: Request) -> int:
        p = req.prefix
        assert p is not None
        # as the engine: at most prompt - 1 tokens can hit (the last one is always computed)
        return min(p.num_keyed(req.prompt_len, self.block_size),
                   (req.prompt_len - 1) // self.block_size)

    def lookup(self, req: Request) -> int:
        """Leading prompt tokens of ``req`` this backend is assumed to have cached."""
        p = req.prefix
        if p is None:
            return 0
        bs, lru = self.block_size, self._lru
        h = 0
        for j in range(self._n_keyed(req)):
            if p.key(j, bs) not in lru:
                break
            h += 1
        self.lookups += 1
        self.hit_tokens += h * bs
        return h * bs

    def record(self, req: Request) -> None:
        """``req`` was sent to this backend: its keyed prompt blocks are now (assumed) cached,
        most recently used; the oldest beyond capacity are forgotten."""
        p = req.prefix
        if p is None:
            return
        bs, lru = self.block_size, self._lru
        for j in range(p.num_keyed(req.prompt_len, bs)):
            k = p.key(j, bs)
            if k in lru:
                lru.move_to_end(k)
            else:
                lru[k] = None
        while len(lru) > self.capacity:
            lru.popitem(last=False)

    def clear(self) -> None:
        """Forget everything (the backend restarted, or was ejected: its cache is gone)."""
        self._lru.clear()
