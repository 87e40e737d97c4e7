"""Prefix caching in the block manager (engine/kv.py) and in every policy that uses it.

Three layers: hand-built cases for each rule (hit, cap at num_tokens - 1, caching on completion,
dedupe, LRU of free cached blocks, eviction order, preemption); a hypothesis comparison of the
counting :class:`BlockManager` against an explicit-block-id reference pool over random operation
sequences (a block never owned twice, refcounts == block tables, capacity, tokens conserved); and
every registered policy on random shared-prefix workloads under tight KV with per-step checks.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from tests.conftest import toy_model

from proserve.core.request import Prefix, Request, Status, block_keys
from proserve.engine import make_scheduler, policy_names
from proserve.engine.base import SchedulerOutput
from proserve.engine.kv import BlockManager, KVCapacityError
from proserve.sim.simulator import simulate

BS = 16


def req(i: int, prompt: int, prefix: Prefix | None, out: int = 4, arrival: float = 0.0) -> Request:
    return Request(id=i, arrival=arrival, prompt_len=prompt, output_len=out, ttft_slo=10.0,
                   tpot_slo=1.0, prefix=prefix)


def chain(name: str, n: int, block: int = BS) -> Prefix:
    return Prefix(tuple(f"{name}{k}" for k in range(n)), block)


def prefill(kv: BlockManager, r: Request, tokens: int | None = None) -> int:
    """Look up, allocate and compute ``tokens`` (default: the whole prompt); returns the hit."""
    hit = kv.acquire_prefix(r) if not r.blocks and not r.computed else 0
    q = (tokens if tokens is not None else r.prompt_len) - r.computed
    assert kv.allocate(r, r.computed + q)
    r.computed += q
    kv.commit(r)
    return hit


# ---------------------------------------------------------------------------- the rules
def test_key_mapping_covers_engine_blocks_inside_a_chunk() -> None:
    p = Prefix((7, 8, 9), 512)  # Mooncake: 512-token chunks
    assert p.key(0, 16) == (7, 0) and p.key(31, 16) == (7, 31) and p.key(32, 16) == (8, 32)
    assert p.num_keyed(1500, 16) == 1500 // 16  # the last chunk is partial: up to the prompt
    assert p.num_keyed(5000, 16) == 3 * 512 // 16  # ids cover only 1536 tokens
    # engine blocks that straddle a chunk boundary take the later chunk's id (it covers both)
    q = Prefix(("sys",), 40)  # a 40-token system prompt: blocks 0, 1 lie in it, block 2 not
    assert block_keys(q, 1000, 16) == [("sys", 0), ("sys", 1)]
    assert block_keys(Prefix((1, 2), 48), 200, 32) == [(1, 0), (2, 1), (2, 2)]


def test_hit_counts_as_computed_capped_below_the_prompt() -> None:
    kv = BlockManager(100, BS)
    p = chain("a", 10)
    a = req(0, 160, p)
    assert prefill(kv, a) == 0
    kv.release(a)
    assert kv.free == 100 and kv.num_evictable == 10 and kv.num_cached == 10
    b = req(1, 160, p)  # the same 160-token prompt: vLLM recomputes the last token
    assert kv.acquire_prefix(b) == 144
    assert (b.computed, b.blocks, b.cached_blocks) == (144, 9, 9)
    assert kv.free == 91 and kv.num_evictable == 1
    c = req(2, 100, p)  # a shorter prompt with the same start: 6 full blocks, all cached
    assert kv.acquire_prefix(c) == 96
    assert kv.refcount(p.key(0, BS)) == 2
    kv.check([b, c], full=True)


def test_only_completed_blocks_are_cached_and_unkeyed_blocks_are_not() -> None:
    kv = BlockManager(100, BS)
    a = req(0, 200, chain("a", 4))  # ids cover 64 of 200 tokens
    kv.acquire_prefix(a)
    assert kv.allocate(a, 40)
    a.computed = 40
    kv.commit(a)  # blocks 0, 1 complete; block 2 is half done
    assert a.cached_blocks == 2 and kv.num_cached == 2
    assert kv.allocate(a, 200)
    a.computed = 200
    kv.commit(a)
    assert a.cached_blocks == 4 and kv.num_cached == 4  # blocks 4.. have no key
    kv.check([a], full=True)
    kv.release(a)
    assert kv.num_evictable == 4 and kv.free == 100


def test_concurrent_misses_dedupe_on_completion() -> None:
    kv = BlockManager(100, BS)
    p = chain("a", 8)
    a, b = req(0, 128, p), req(1, 128, p)
    for r in (a, b):
        assert kv.acquire_prefix(r) == 0
        assert kv.allocate(r, 128)
    assert kv.free == 100 - 16
    for r in (a, b):
        r.computed = 128
        kv.commit(r)
    # b found a's blocks cached: it shares them and its 8 private copies return to the pool
    assert kv.free == 100 - 8 and kv.refcount(p.key(0, BS)) == 2
    kv.check([a, b], full=True)
    kv.release(a)
    assert kv.free == 92 and kv.num_evictable == 0
    kv.release(b)
    assert kv.free == 100 and kv.num_evictable == 8


def test_lru_eviction_takes_empty_blocks_first_then_oldest_tails_first() -> None:
    kv = BlockManager(10, BS)
    a, b = req(0, 64, chain("a", 4)), req(1, 64, chain("b", 4))
    prefill(kv, a)
    prefill(kv, b)
    kv.release(a)  # freed first: least recently used
    kv.release(b)
    assert kv.free == 10 and kv.num_evictable == 8
    c = req(2, 48, None)
    assert kv.allocate(c, 48)  # 3 blocks: 2 empty ones, then evict a's tail block
    assert kv.evictions == 1 and not kv.is_cached(chain("a", 4).key(3, BS))
    assert kv.is_cached(chain("a", 4).key(2, BS))
    d = req(3, 64, chain("a", 4))  # a's head blocks still hit
    assert kv.acquire_prefix(d) == 48
    kv.check([c, d], full=True)


def test_matching_changes_nothing_and_a_head_that_does_not_fit_is_not_touched() -> None:
    kv = BlockManager(40, BS)
    p = chain("a", 10)
    a = req(0, 160, p)
    prefill(kv, a)
    kv.release(a)
    order = list(kv._lru)
    assert kv.match_prefix(req(1, 400, p)) == (10, 10)
    assert list(kv._lru) == order and kv.free == 40
    # an engine whose waiting head hits 10 blocks but needs 20 more than the KV has left
    eng = make_scheduler("vllm-fcfs", toy_model(kv_blocks=40))
    eng.add_request(req(0, 160, p, out=1), 0.0)
    out = eng.schedule(0.0)
    eng.update_from_output(out, out.duration)
    big = req(1, 559, None, out=50, arrival=1.0)  # 35 blocks: 5 of a's cached ones evicted
    eng.add_request(big, 1.0)
    eng.update_from_output(eng.schedule(1.0), 1.1)
    lru = list(eng.kv._lru)
    head = req(2, 400, p, arrival=2.0)
    assert eng.kv.match_prefix(head) == (5, 5)  # a hit, but the rest of it does not fit
    eng.add_request(head, 2.0)
    out = eng.schedule(2.0)
    assert out.reqs == [big]
    assert (head.blocks, head.computed, head.cached_blocks) == (0, 0, 0)
    assert list(eng.kv._lru) == lru  # not even touched
    eng.check()


def test_preempted_request_keeps_its_blocks_cached_for_its_recompute() -> None:
    m = toy_model(kv_blocks=200)
    eng = make_scheduler("vllm-fcfs", m)
    p = chain("s", 20)
    r = req(0, 320, p, out=50)
    assert eng.add_request(r, 0.0)
    out = eng.schedule(0.0)
    assert out.num_tokens == [320]
    eng.update_from_output(out, out.duration)
    assert r.cached_blocks == 20 and r.generated == 1
    eng._preempt(r, SchedulerOutput())
    assert r.computed == 0 and r.blocks == 0 and eng.kv.num_evictable == 20
    out = eng.schedule(1.0)
    # recompute: prompt + 1 generated token; the 20 cached prompt blocks hit
    assert out.reqs == [r] and r.computed == 320 and out.num_tokens == [1]
    assert r.cached_tokens == 0  # the request's first scheduling had no hit
    eng.check()


def test_prefill_cost_covers_only_uncached_tokens_in_every_policy() -> None:
    m = toy_model(kv_blocks=1000)
    p = chain("sys", 64)  # a 1024-token shared prompt
    for name in policy_names():
        eng = make_scheduler(name, m)
        first = req(0, 2000, p)
        eng.add_request(first, 0.0)
        t = 0.0
        while first.generated == 0:
            out = eng.schedule(t)
            t += out.duration
            eng.update_from_output(out, t)
        second = req(1, 1500, p, arrival=t)
        eng.add_request(second, t)
        out = eng.schedule(t)
        i = out.reqs.index(second)
        assert second.cached_tokens == 1024 and second.computed == 1024, name
        assert out.num_tokens[i] == 1500 - 1024, name
        expect = m.batch_time(zip(out.num_tokens, (r.computed for r in out.reqs)))
        assert out.duration == pytest.approx(expect), name
        eng.check()


def test_free_blocks_in_the_load_count_evictable_cached_blocks() -> None:
    eng = make_scheduler("slide", toy_model(kv_blocks=300))
    r = req(0, 320, chain("a", 20), out=1)
    eng.add_request(r, 0.0)
    out = eng.schedule(0.0)
    eng.update_from_output(out, out.duration)
    assert r.status == Status.FINISHED
    assert eng.kv.num_evictable == 20 and eng.load().free_blocks == 300
    assert eng.stats()["prefix_hit_tokens"] == 0


def test_caching_off_ignores_prefixes() -> None:
    eng = make_scheduler("vllm-fcfs", toy_model(kv_blocks=300), prefix_caching=False)
    p = chain("a", 20)
    for i in range(2):
        r = req(i, 320, p, out=1)
        eng.add_request(r, float(i))
        out = eng.schedule(float(i))
        assert out.num_tokens == [320]
        eng.update_from_output(out, i + out.duration)
    assert eng.kv.num_cached == 0 and eng.kv.free == 300


def test_check_catches_corrupted_books() -> None:
    kv = BlockManager(50, BS)
    p = chain("a", 4)
    a = req(0, 64, p)
    prefill(kv, a)
    kv.check([a], full=True)
    kv._refs[p.key(0, BS)] += 1
    with pytest.raises(KVCapacityError):
        kv.check([a], full=True)
    with pytest.raises(KVCapacityError):
        kv.check([a], full=False)
    kv._refs[p.key(0, BS)] -= 1
    a.cached_blocks = 3
    with pytest.raises(KVCapacityError):
        kv.check([a], full=True)


# ---------------------------------------------------------------------------- reference pool
class RefPool:
    """The same semantics with explicit physical block ids: the oracle for BlockManager."""

    def __init__(self, total: int, bs: int) -> None:
        self.bs = bs
        self.empty = list(range(total))
        self.lru: OrderedDict[tuple, int] = OrderedDict()  # free cached: key -> block, LRU first
        self.cached: dict[tuple, int] = {}  # key -> block
        self.ref = [0] * total
        self.key_of: list[tuple | None] = [None] * total
        self.tables: dict[int, list[int]] = {}
        self.ncached: dict[int, int] = {}

    def free(self) -> int:
        return len(self.empty) + len(self.lru)

    def _take(self) -> int:
        if self.empty:
            b = self.empty.pop()
        else:
            k, b = self.lru.popitem(last=False)
            del self.cached[k]
            self.key_of[b] = None
        self.ref[b] = 1
        return b

    def lookup(self, r: Request) -> int:
        keys = block_keys(r.prefix, r.prompt_len, self.bs) if r.prefix else []
        keys = keys[:(r.prompt_len + r.generated - 1) // self.bs]
        table = []
        for k in keys:
            b = self.cached.get(k)
            if b is None:
                break
            if self.ref[b] == 0:
                del self.lru[k]
            self.ref[b] += 1
            table.append(b)
        self.tables[r.id] = table
        self.ncached[r.id] = len(table)
        return len(table) * self.bs

    def allocate(self, r: Request, tokens: int) -> bool:
        table = self.tables.setdefault(r.id, [])
        need = -(-tokens // self.bs) - len(table)
        if need > self.free():
            return False
        table.extend(self._take() for _ in range(max(need, 0)))
        return True

    def commit(self, r: Request) -> None:
        keys = block_keys(r.prefix, r.prompt_len, self.bs) if r.prefix else []
        table = self.tables[r.id]
        n = min(len(keys), r.computed // self.bs)
        for j in range(self.ncached[r.id], n):
            k, b = keys[j], table[j]
            have = self.cached.get(k)
            if have is None:
                self.cached[k] = b
                self.key_of[b] = k
                continue
            if self.ref[have] == 0:
                del self.lru[k]
            self.ref[have] += 1
            self.ref[b] = 0
            self.empty.append(b)
            table[j] = have
        self.ncached[r.id] = max(n, self.ncached[r.id])

    def release(self, r: Request) -> None:
        table = self.tables.pop(r.id, [])
        self.ncached.pop(r.id, None)
        for b in reversed(table):
            self.ref[b] -= 1
            if self.ref[b] == 0:
                k = self.key_of[b]
                if k is None:
                    self.empty.append(b)
                else:
                    self.lru[k] = b

    def check(self, live: list[Request]) -> None:
        owners: dict[int, int] = {}
        for r in live:
            table = self.tables.get(r.id, [])
            assert len(table) == r.blocks and self.ncached.get(r.id, 0) == r.cached_blocks
            assert len(set(table)) == len(table), "a block twice in one table"
            for b in table:
                owners[b] = owners.get(b, 0) + 1
        for b, n in owners.items():
            assert self.ref[b] == n, "refcount != tables holding the block"
            assert n == 1 or self.key_of[b] is not None, "a private block owned twice"
        assert len(owners) + self.free() == len(self.ref), "blocks lost or double-counted"


@st.composite
def scenario(draw):
    bs = draw(st.sampled_from([16, 32]))
    block = draw(st.sampled_from([16, 32, 48]))
    total = draw(st.integers(4, 80))
    # conversation chains that fork: a later chain repeats an earlier one's first ids
    chains: list[tuple] = []
    for c in range(draw(st.integers(1, 4))):
        base = draw(st.sampled_from(chains)) if chains and draw(st.booleans()) else ()
        keep = draw(st.integers(0, len(base)))
        chains.append(base[:keep] + tuple(f"c{c}.{k}" for k in range(keep, 12)))
    reqs = []
    for i in range(draw(st.integers(2, 8))):
        ids = draw(st.sampled_from(chains + chains + [None]))
        plen = draw(st.integers(1, min(12 * block + 40, total * bs)))
        prefix = Prefix(ids[:draw(st.integers(1, len(ids)))], block) if ids else None
        reqs.append(req(i, plen, prefix, out=draw(st.integers(1, 6))))
    ops = draw(st.lists(st.tuples(st.sampled_from(["step"] * 6 + ["preempt", "abort"]),
                                  st.integers(0, len(reqs) - 1), st.integers(1, 200)),
                        min_size=20, max_size=80))
    return bs, total, reqs, ops


@settings(max_examples=300, derandomize=True, database=None, deadline=None,
          phases=[Phase.explicit, Phase.generate], suppress_health_check=[HealthCheck.too_slow])
@given(scenario())
def test_block_manager_matches_an_explicit_block_pool(sc) -> None:
    bs, total, reqs, ops = sc
    kv, ref = BlockManager(total, bs), RefPool(total, bs)
    done: set[int] = set()
    work = {r.id: 0 for r in reqs}  # tokens computed by steps since the last lookup
    hit = {r.id: 0 for r in reqs}
    for op, i, q in ops:
        r = reqs[i]
        if i in done:
            continue
        live = r.blocks > 0
        if op == "step":
            looked = False
            if not live and r.computed == 0:
                h = kv.acquire_prefix(r)
                assert h == ref.lookup(r), "hit differs from the explicit pool's"
                hit[i], work[i], looked = h, 0, True
            q = min(q, r.prompt_len + r.generated - r.computed)
            ok = kv.allocate(r, r.computed + q)
            assert ok == ref.allocate(r, r.computed + q)
            if not ok:
                if looked:  # the policy would not schedule it: give the hit back
                    kv.release(r)
                    ref.release(r)
                    r.computed = 0
            else:
                r.computed += q
                work[i] += q
                kv.commit(r)
                ref.commit(r)
                if r.computed == r.prompt_len + r.generated:
                    r.generated += 1
                    if r.generated >= r.output_len:
                        kv.release(r)
                        ref.release(r)
                        done.add(i)
        elif live:  # preempt or abort: drop the KV
            kv.release(r)
            ref.release(r)
            r.computed = 0
            if op == "abort":
                done.add(i)
        holders = [x for x in reqs if x.blocks > 0]
        kv.check(holders, full=True)
        ref.check(holders)
        assert kv.free == ref.free() and kv.num_evictable == len(ref.lru)
        assert set(kv._refs) == set(ref.cached)
        for x in holders:  # tokens conserved: KV covers what was hit plus what was computed
            assert x.computed == hit[x.id] + work[x.id] <= x.blocks * bs < x.computed + bs
    for r in reqs:
        if r.blocks:
            kv.release(r)
    assert kv.free == total


# ---------------------------------------------------------------------------- every policy
def shared_prefix_requests(seed: int, n: int, rate: float, block: int) -> list[Request]:
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1.0 / rate, n))
    chains = [tuple(f"s{c}.{k}" for k in range(40)) for c in range(3)]
    out = []
    for i in range(n):
        hi = bool(rng.random() < 0.5)
        c = int(rng.integers(0, 4))
        prefix = Prefix(chains[c][:int(rng.integers(1, 41))], block) if c < 3 else None
        out.append(Request(
            id=i, arrival=float(t[i]), prompt_len=int(rng.integers(1, 1200)),
            output_len=int(rng.integers(1, 80)), ttft_slo=0.3, tpot_slo=0.03,
            weight=2.0 if hi else 1.0, priority=0 if hi else 1, cls="high" if hi else "low",
            prefix=prefix))
    return out


class Checked:
    """Wraps a scheduler: after every step the KV books are checked in full."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def schedule(self, now: float) -> SchedulerOutput:
        inner = self.inner
        out = inner.schedule(now)
        bs = inner.kv.block_size
        for r, q in zip(out.reqs, out.num_tokens):
            assert 1 <= q <= r.pending and r.blocks * bs >= r.computed + q
        expect = inner.model.batch_time(zip(out.num_tokens, (r.computed for r in out.reqs)))
        assert not out.reqs or abs(out.duration - expect) < 1e-9
        for r in inner.requests():  # a request the policy did not schedule holds no hit
            assert r.blocks > 0 or r.cached_blocks == 0
        inner.kv.check(inner.requests(), full=True)
        return out


@pytest.mark.parametrize("policy", policy_names())
@settings(max_examples=6, derandomize=True, database=None, deadline=None,
          phases=[Phase.explicit, Phase.generate], suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n=st.integers(1, 40), rate=st.floats(2.0, 60.0),
       kv_blocks=st.sampled_from([120, 400, 4000]), block=st.sampled_from([16, 48, 512]))
def test_every_policy_keeps_the_books_with_shared_prefixes(policy, seed, n, rate, kv_blocks,
                                                           block) -> None:
    m = toy_model(kv_blocks=kv_blocks)
    reqs = shared_prefix_requests(seed, n, rate, block)
    eng = make_scheduler(policy, m, max_num_seqs=16, check_invariants=True)
    res = simulate(reqs, [Checked(eng)], drain_s=1e5, check_every=1)
    fits = kv_blocks * 16
    for r in res.requests:
        if r.prompt_len + r.output_len > fits:
            assert r.status == Status.REJECTED
            continue
        assert r.status == Status.FINISHED and r.generated == r.output_len, (policy, r)
        assert 0 <= r.cached_tokens < r.prompt_len and r.cached_tokens % 16 == 0
    assert eng.kv.free == eng.kv.total and eng.kv.used == 0
    assert eng.tokens_emitted == sum(r.generated for r in res.requests)


def test_shared_prefixes_make_the_same_workload_cheaper() -> None:
    """Caching on vs off on one workload: same tokens out, fewer prefill tokens computed."""
    results = {}
    for pc in (True, False):
        reqs = shared_prefix_requests(3, 200, 20.0, 512)
        eng = make_scheduler("slide", toy_model(kv_blocks=4000), prefix_caching=pc)
        res = simulate(reqs, [eng], drain_s=1e5, check_every=10)
        results[pc] = (res.busy_time[0], sum(r.cached_tokens for r in reqs), eng.tokens_emitted)
    assert results[True][1] > 0 and results[False][1] == 0
    assert results[True][2] == results[False][2]
    assert results[True][0] < results[False][0]
    assert not math.isnan(results[True][0])
