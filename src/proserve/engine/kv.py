"""KV-cache block manager of one engine instance, with prefix caching as vLLM does it.

Blocks come in two kinds, and only one of them needs identity:

* **Private** blocks hold KV no other request can use (generated tokens, the unkeyed part of a
  prompt, a prompt block still being prefilled). They are fungible, so they are a *count*: each
  request's ``blocks`` minus its ``cached_blocks``. Allocation stays an O(1) counter update on the
  per-iteration hot path, and with no prefix caching (or requests without a
  :class:`~proserve.core.request.Prefix`) that is all that ever happens.
* **Cached** blocks are full prompt blocks identified by their key (the prompt's prefix-chained
  id for that block, :meth:`Prefix.key <proserve.core.request.Prefix.key>`). Each key is one
  physical block shared by every live request whose block table holds it, with a reference
  count. A request's cached blocks are always the *leading* ``cached_blocks`` blocks of its table
  (hits are leading runs, and prefill completes blocks in order).

Life cycle (vLLM's ``KVCacheManager``/``BlockPool``, v1):

* **Hit** (:meth:`match_prefix`, then :meth:`acquire_prefix`; a policy calls them when it is
  about to schedule a request that holds no KV): the longest run of the request's leading block
  keys present in the cache, at most ``num_tokens - 1`` tokens (vLLM recomputes the last token to
  get logits), counts as computed: the policy sizes the request's chunk and its cost from there,
  so the prefill pays only for the uncached tokens. Matching changes nothing (a request that then
  does not fit the step is not touched, as vLLM's ``get_computed_blocks``); only when the policy
  takes the request are the blocks taken by reference (refcount + 1, ``computed`` set), and given
  back (:meth:`release`) should its allocation still fail.
* **Caching** (:meth:`commit`, after each step): every full keyed prompt block the step completed
  becomes a cache entry. If another request cached the same key meanwhile (both missed and
  prefilled it concurrently), the request switches to the existing block and its private copy goes
  back to the pool: vLLM v0's ``promote_to_immutable_block`` does this; v1 keeps both copies
  until freed. The difference is memory only while both are alive; hits are the same.
* **Release** (finish, abort, recompute preemption): private blocks return to the free pool; each
  cached block's refcount drops, and one that reaches 0 joins an LRU list of *free but cached*
  blocks, tail block first (vLLM frees in reverse so a prompt's tail is evicted before its head).
  A later request with the same key can still hit it.
* **Eviction**: free-but-cached blocks count as free (``free``, :attr:`usage`, routers' view).
  When an allocation takes more blocks than the empty pool holds, least recently freed cached
  blocks are evicted (their key is forgotten) to make up the difference.

Books (:meth:`check`): ``free`` = empty + evictable; used = private + cached blocks with
refcount > 0 = ``total - free``; a cached block's refcount equals the number of live requests
whose table holds it; evictable blocks are exactly the refcount-0 entries.

**Host tier** (``host_blocks`` > 0; ProServe section 3, see engine/offload.py for the modes and
their timing): a request's ``host_blocks`` are copies of its KV in host memory. While it runs they
are backups of its leading *full* blocks (immutable once full, so a backup stays valid); when it
is preempted by offload (:meth:`offload`) the rest of its KV is copied out, its device blocks are
freed and ``computed`` is kept; when it is scheduled again, allocating its blocks *is* the reload
(:meth:`allocate` lists it in ``reloading`` for the scheduler to charge the copy). Books:
``host_free`` = ``host_total`` - the sum of every live request's ``host_blocks``; a device-resident
request holds at most ``computed // block_size`` host blocks, an offloaded one exactly
``ceil(computed / block_size)``.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable

from ..core.request import Request

FULL_CHECK_ENTRIES = 50_000  # check() scans the whole prefix cache up to this many entries


class KVCapacityError(AssertionError):
    """An invariant of the block manager was violated (a bug, never a user error)."""


class BlockManager:
    __slots__ = ("total", "free", "block_size", "caching", "_refs", "_lru", "hit_tokens",
                 "evictions", "host_total", "host_free", "reloading", "holding")

    def __init__(self, total_blocks: int, block_size: int = 16, *,
                 prefix_caching: bool = True, host_blocks: int = 0) -> None:
        if total_blocks <= 0 or block_size <= 0:
            raise ValueError("total_blocks and block_size must be positive")
        if host_blocks < 0:
            raise ValueError("host_blocks must be >= 0")
        self.host_total = self.host_free = host_blocks
        # requests whose KV came back from host in allocations since the scheduler last looked
        self.reloading: list[Request] = []
        self.total = total_blocks
        self.free = total_blocks  # blocks no live request holds: empty + evictable cached
        self.block_size = block_size
        self.caching = prefix_caching
        self._refs: dict[tuple, int] = {}  # key -> live requests holding it (0: evictable)
        self._lru: OrderedDict[tuple, None] = OrderedDict()  # refcount-0 keys, LRU first
        # counters: prompt tokens taken from the cache (every acquisition, recomputes after a
        # preemption included) and cached blocks evicted
        self.hit_tokens = 0
        self.evictions = 0
        # requests holding device blocks (what vLLM's max_num_seqs counts: engine/deadline.py,
        # resident_seqs), kept here where blocks change hands so no caller scans for it
        self.holding = 0

    # ------------------------------------------------------------------ allocation
    def blocks_needed(self, req: Request, tokens: int) -> int:
        """Extra blocks ``req`` needs to hold ``tokens`` tokens of KV."""
        return max(-(-tokens // self.block_size) - req.blocks, 0)

    def can_allocate(self, req: Request, tokens: int) -> bool:
        return self.blocks_needed(req, tokens) <= self.free

    def allocate(self, req: Request, tokens: int) -> bool:
        """Grow ``req``'s allocation to cover ``tokens`` tokens; False (and no change) if full.

        New blocks are private; they come from the empty pool, then by evicting free cached
        blocks, least recently used first.
        """
        need = -(-tokens // self.block_size) - req.blocks
        if need <= 0:
            return True
        if need > self.free:
            return False
        if req.blocks == 0:
            self.holding += 1
            if req.host_blocks and req.computed:
                self.reloading.append(req)  # its KV is on host: these blocks are a reload
        self.free -= need
        req.blocks += need
        if self.free < len(self._lru):
            self._evict()
        return True

    def _evict(self) -> None:
        lru, refs = self._lru, self._refs
        while len(lru) > self.free:
            key, _ = lru.popitem(last=False)
            del refs[key]
            self.evictions += 1

    def release(self, req: Request) -> None:
        """Drop all of ``req``'s KV: private blocks to the free pool, cached ones dereferenced
        (refcount 0: free but still cached, most recently used, tail block first)."""
        if req.blocks:
            self.holding -= 1
        c = req.cached_blocks
        if c:
            p = req.prefix
            assert p is not None
            ids, blk, bs = p.ids, p.block, self.block_size
            refs, lru = self._refs, self._lru
            freed = 0
            for j in range(c - 1, -1, -1):
                key = (ids[((j + 1) * bs - 1) // blk], j)
                n = refs[key] - 1
                refs[key] = n
                if n == 0:
                    lru[key] = None
                    freed += 1
            self.free += req.blocks - c + freed
            req.cached_blocks = 0
        else:
            self.free += req.blocks
        req.blocks = 0
        if self.free > self.total:
            raise KVCapacityError(f"freed more blocks than exist ({self.free} > {self.total})")

    # ------------------------------------------------------------------ host tier
    def offload(self, req: Request) -> int:
        """Preempt ``req`` by offload: copy the blocks of its ``computed`` KV not yet backed up to
        host and free its device blocks (``computed`` is kept). Returns the blocks copied, or -1
        (and nothing changed) if host memory cannot hold them."""
        n = -(-req.computed // self.block_size)
        need = n - req.host_blocks
        if need > self.host_free or need < 0:
            return -1
        self.host_free -= need
        req.host_blocks = n
        self.release(req)
        return need

    def backup(self, req: Request, limit: int) -> int:
        """Copy up to ``limit`` more of ``req``'s full blocks to host (eager backup, oldest first);
        returns how many."""
        add = min(req.computed // self.block_size - req.host_blocks, limit, self.host_free)
        if add <= 0:
            return 0
        self.host_free -= add
        req.host_blocks += add
        return add

    def keep_full_backup(self, req: Request) -> None:
        """After a reload: keep the host copies of ``req``'s full blocks as backups (the partial
        last block will change; its copy is dropped)."""
        extra = req.host_blocks - req.computed // self.block_size
        if extra > 0:
            self.host_free += extra
            req.host_blocks -= extra

    def drop_host(self, req: Request) -> None:
        """Forget ``req``'s host copies (it finished, or recomputes)."""
        self.host_free += req.host_blocks
        req.host_blocks = 0

    # ------------------------------------------------------------------ prefix caching
    def _max_hit_blocks(self, req: Request) -> int:
        p = req.prefix
        assert p is not None
        bs = self.block_size
        # keyed prompt blocks, but at most num_tokens - 1 tokens: the last is always computed
        return min(min(req.prompt_len, len(p.ids) * p.block) // bs,
                   (req.prompt_len + req.generated - 1) // bs)

    def match_prefix(self, req: Request) -> tuple[int, int]:
        """``(hit, evictable)``: how many leading blocks of ``req`` are cached now, and how many
        of those are free-but-cached (acquiring them takes them out of ``free``). Changes
        nothing."""
        p = req.prefix
        if p is None or not self.caching:
            return 0, 0
        ids, blk, bs, refs = p.ids, p.block, self.block_size, self._refs
        h = z = 0
        for j in range(self._max_hit_blocks(req)):
            ref = refs.get((ids[((j + 1) * bs - 1) // blk], j))
            if ref is None:
                break
            h += 1
            if ref == 0:
                z += 1
        return h, z

    def acquire_prefix(self, req: Request, blocks: int | None = None) -> int:
        """Take ``req``'s cached leading blocks (the first ``blocks`` of them, as matched by
        :meth:`match_prefix` with nothing changed since; by default, match now) by reference and
        mark their tokens computed; returns the tokens hit. ``req`` must hold no KV and have
        computed nothing. The request must then be allocated for its first chunk, or given back
        with :meth:`release` (and ``computed`` reset) if that fails."""
        if req.blocks or req.computed:
            raise KVCapacityError(f"request {req.id}: prefix lookup with KV already held")
        p = req.prefix
        if p is None or not self.caching:
            return 0
        n = self._max_hit_blocks(req) if blocks is None else blocks
        ids, blk, bs = p.ids, p.block, self.block_size
        refs, lru = self._refs, self._lru
        h = 0
        for j in range(n):
            key = (ids[((j + 1) * bs - 1) // blk], j)
            ref = refs.get(key)
            if ref is None:
                if blocks is not None:
                    raise KVCapacityError(f"request {req.id}: matched block {j} is gone")
                break
            if ref == 0:  # free but cached: back in use
                del lru[key]
                self.free -= 1
            refs[key] = ref + 1
            h += 1
        req.blocks = req.cached_blocks = h
        if h:
            self.holding += 1
        req.computed = h * bs
        self.hit_tokens += h * bs
        return h * bs

    def commit(self, req: Request) -> None:
        """Cache the full keyed prompt blocks ``req`` has computed since the last call."""
        p = req.prefix
        if p is None or not self.caching:
            return
        bs = self.block_size
        n = min(min(req.prompt_len, len(p.ids) * p.block), req.computed) // bs
        c = req.cached_blocks
        if n <= c:
            return
        ids, blk = p.ids, p.block
        refs, lru = self._refs, self._lru
        for j in range(c, n):
            key = (ids[((j + 1) * bs - 1) // blk], j)
            ref = refs.get(key)
            if ref is None:
                refs[key] = 1  # the private block becomes the cache entry
                continue
            # cached meanwhile by another request: share that block, free the private copy
            if ref == 0:
                del lru[key]  # an evictable block back in use ...
            else:
                self.free += 1  # ... or only our private copy freed (the net free change)
            refs[key] = ref + 1
        req.cached_blocks = n

    # ------------------------------------------------------------------ introspection
    @property
    def used(self) -> int:
        return self.total - self.free

    @property
    def usage(self) -> float:
        return (self.total - self.free) / self.total

    @property
    def num_cached(self) -> int:
        """Blocks that are prefix-cache entries (in use or evictable)."""
        return len(self._refs)

    @property
    def num_evictable(self) -> int:
        """Free blocks that still hold a cached prefix (counted in ``free``)."""
        return len(self._lru)

    def is_cached(self, key: tuple) -> bool:
        return key in self._refs

    def refcount(self, key: tuple) -> int:
        """Live requests holding the cached block ``key`` (-1 if it is not cached)."""
        return self._refs.get(key, -1)

    def check(self, holders: Iterable[Request], full: bool | None = None) -> None:
        """Assert the books balance (see the module docstring), given every live request.

        Cost: O(blocks the holders hold), plus a scan of the whole cache (``full``; by default
        when it has at most :data:`FULL_CHECK_ENTRIES` entries). Without the scan the
        free-but-cached entries are checked by count only: a cache kept for a whole trace can
        hold millions of entries, and the simulator checks every thousand steps.
        """
        holders = list(holders)
        holding = sum(1 for r in holders if r.blocks > 0)
        if holding != self.holding:
            raise KVCapacityError(f"{holding} requests hold blocks, the count says "
                                  f"{self.holding}")
        private = 0
        owners: Counter[tuple] = Counter()
        bs = self.block_size
        for r in holders:
            c = r.cached_blocks
            if not 0 <= c <= r.blocks:
                raise KVCapacityError(f"request {r.id}: cached_blocks={c} outside [0, "
                                      f"{r.blocks}]")
            private += r.blocks - c
            if c:
                p = r.prefix
                if p is None or c > min(r.prompt_len, len(p.ids) * p.block) // bs:
                    raise KVCapacityError(f"request {r.id}: {c} cached blocks, more than its "
                                          "keyed prompt blocks")
                keys = [p.key(j, bs) for j in range(c)]
                if len(set(keys)) != c:
                    raise KVCapacityError(f"request {r.id}: a block twice in its table")
                owners.update(keys)
        self._check_host(holders)
        refs, lru = self._refs, self._lru
        if full is None:
            full = len(refs) <= FULL_CHECK_ENTRIES
        if not full:
            for k, n in owners.items():
                if refs.get(k) != n:
                    raise KVCapacityError(f"prefix cache refcount of {k} is {refs.get(k)} but "
                                          f"{n} block tables hold it")
            live = len(owners)  # every held key is live with the right count; the rest are
            if live != len(refs) - len(lru):  # refcount 0, as many as the evictable list
                raise KVCapacityError(f"{len(refs) - len(lru)} cached blocks in use, but the "
                                      f"block tables hold {live}")
            self._check_totals(private, live)
            return
        # one pass over the cache: every entry's refcount equals its holders, refcount-0
        # entries are exactly the evictable list, and no holder holds an uncached key
        live = zero = 0
        for k, n in refs.items():
            if n > 0:
                if owners.get(k, 0) != n:
                    raise KVCapacityError(f"prefix cache refcount of {k} is {n} but "
                                          f"{owners.get(k, 0)} block tables hold it")
                live += 1
            elif n == 0 and k in lru:
                zero += 1
            else:
                raise KVCapacityError(f"cached block {k}: refcount {n}, "
                                      f"{'' if k in lru else 'not '}evictable")
        if live != len(owners):
            bad = next(k for k in owners if refs.get(k, 0) <= 0)
            raise KVCapacityError(f"a block table holds {bad}, which is not a live cached block")
        if zero != len(lru):
            raise KVCapacityError("the evictable list holds blocks that are not cached")
        self._check_totals(private, live)

    def _check_host(self, holders: Iterable[Request]) -> None:
        bs = self.block_size
        held = 0
        for r in holders:
            h = r.host_blocks
            held += h
            if r.blocks > 0 and not 0 <= h <= r.computed // bs:
                raise KVCapacityError(f"request {r.id}: {h} host blocks while on device with "
                                      f"{r.computed // bs} full blocks")
            if r.blocks == 0 and h and h != -(-r.computed // bs):
                raise KVCapacityError(f"request {r.id}: offloaded with {h} host blocks for "
                                      f"{r.computed} computed tokens")
        if held != self.host_total - self.host_free or not 0 <= self.host_free <= self.host_total:
            raise KVCapacityError(f"host KV books unbalanced: held={held} free={self.host_free} "
                                  f"total={self.host_total}")

    def _check_totals(self, private: int, live: int) -> None:
        used = private + live
        if (used != self.total - self.free or not 0 <= self.free <= self.total
                or self.free < len(self._lru)):
            raise KVCapacityError(
                f"KV books unbalanced: private={private} cached-in-use={live} "
                f"evictable={len(self._lru)} free={self.free} total={self.total}"
            )
