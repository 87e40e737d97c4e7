"""PolyServe router units (issue 12): ``peak_kv``, ``chunked_prefill_s``, the admission test
``admits``, the ladder through the fleet API (own tier by load, lazy promotion, scale-up, per-tier
FIFO pending), the fleet's scale-down checks, the scale-up delay, and parameter validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import toy_model

from proserve.cluster.base import make_router
from proserve.cluster.polyserve import (
    Fleet,
    PolyServe,
    admits,
    chunked_prefill_s,
    iteration_time,
    load_after,
    parse_tiers,
    peak_kv,
)
from proserve.cluster.view import EffectiveLoad, InstanceView
from proserve.core.request import Request
from proserve.engine.base import EngineLoad, PrefillItem
from proserve.latency.model import LatencyModel

# tightest first: a (20 ms TPOT, iteration budget 18 ms at margin 0.9), b (100 ms, 90 ms)
TIERS = [("a", 0.02, 50), ("b", 0.1, 50)]
A, B = 0, 1


TPOT = {name: tpot for name, tpot, _ in TIERS}


def R(i, arrival=0.0, prompt=100, out=20, ttft=1.0, cls="a") -> Request:
    """A request of tier ``cls`` (its TPOT SLO is the tier's)."""
    return Request(id=i, arrival=arrival, prompt_len=prompt, output_len=out, ttft_slo=ttft,
                   tpot_slo=TPOT[cls], cls=cls)


def view(i: int, m: LatencyModel, *, decodes=(), gens=None, queue=(), healthy=True,
         received=0, taken_at=0.0) -> InstanceView:
    """A hand-built view: residents with the given contexts (tokens generated so far: ``gens``,
    default 0) and queued prefill items. ``received=0``: the router's own dispatches since count
    as not yet in the view."""
    ctx = [int(c) for c in decodes]
    gen = [int(g) for g in (gens if gens is not None else [0] * len(ctx))]
    used = sum(m.blocks_for(c) for c in ctx) + sum(m.blocks_for(q[0] + q[1]) for q in queue)
    items = [PrefillItem(*q) for q in queue]
    load = EngineLoad(prefill=items, decodes=len(ctx), decode_context=sum(ctx),
                      free_blocks=max(m.kv_blocks - used, 0), total_blocks=m.kv_blocks,
                      received=received, decode_ctx=ctx, decode_gen=gen)
    return InstanceView(i, "dynamic-chunk", m, taken_at, load, healthy=healthy)


def eff(v: InstanceView) -> EffectiveLoad:
    ld = v.load
    return EffectiveLoad(v, list(ld.prefill), ld.decodes, ld.decode_context, ld.free_blocks)


def router(n: int, *, tiers=TIERS, **kw) -> PolyServe:
    rt = make_router("polyserve", tiers=tiers, **kw)
    assert isinstance(rt, PolyServe)
    rt.attach(["colocated"] * n, 0.0)
    return rt


def members(rt: PolyServe, *tiers: int) -> None:
    """Put instance k into tier ``tiers[k]`` (-1: leave it in the pool)."""
    f = rt.fleet
    for k, t in enumerate(tiers):
        if t >= 0:
            f.join(k, t, 0.0, 0.0)


# ---------------------------------------------------------------------- peak_kv
def brute_peak_kv(ctx: list[int], rem: list[int]) -> float:
    """One iteration at a time: at iteration t, every sequence with more than t tokens still to
    go is in the batch with ctx + t tokens of KV."""
    best = 0.0
    for t in range(max(rem, default=0)):
        best = max(best, float(sum(c + t for c, r in zip(ctx, rem) if r > t)))
    return best


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 2000), st.integers(1, 60)), max_size=12))
def test_peak_kv_matches_step_by_step_simulation(rows) -> None:
    ctx = [c for c, _ in rows]
    rem = [r for _, r in rows]
    got = peak_kv(np.asarray(ctx, dtype=np.float64), np.asarray(rem, dtype=np.float64))
    assert got == pytest.approx(brute_peak_kv(ctx, rem), abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 2000), st.floats(1.0, 60.0)), min_size=1,
                     max_size=12))
def test_peak_kv_fractional_remaining_is_an_upper_bound(rows) -> None:
    """Expected lengths are means (fractional): the continuous peak is never below the peak of
    whole iterations (sequence alive at iteration t while t <= remaining - 1)."""
    ctx = [c for c, _ in rows]
    rem = [r for _, r in rows]
    got = peak_kv(np.asarray(ctx, dtype=np.float64), np.asarray(rem, dtype=np.float64))
    whole = max(sum(c + t for c, r in zip(ctx, rem) if t <= r - 1)
                for t in range(int(max(rem))))
    assert got >= whole - 1e-9
    assert got >= sum(ctx)


def test_peak_kv_small_cases() -> None:
    assert peak_kv(np.zeros(0), np.zeros(0)) == 0.0
    # one sequence: grows to ctx + rem - 1 on its last iteration
    assert peak_kv(np.array([100.0]), np.array([10.0])) == 109.0
    # a short one retiring early: the peak is either at t=0 (all) or late (the long one alone)
    assert peak_kv(np.array([100.0, 1000.0]), np.array([1000.0, 1.0])) == 1100.0
    assert peak_kv(np.array([100.0, 10.0]), np.array([1000.0, 1.0])) == 1099.0


# ---------------------------------------------------------------------- chunked_prefill_s
def exact_model() -> LatencyModel:
    """Prefill costs 1/1024 s per token, nothing else: every number below is exact in binary."""
    return LatencyModel(c0=0.25, c1=0.0, c2=1 / 1024, c3=0.0, c4=0.0, d1=0.0, d2=0.0,
                        kv_blocks=10_000, block_size=16)


def test_chunked_prefill_sums_iterations_exactly() -> None:
    m = exact_model()
    # room = 0.5 - 0.25 = 0.25 s = 256 tokens per iteration, each iteration also pays 0.25 s
    assert chunked_prefill_s(m, 0.25, [], 0.5, 32, math.inf) == 0.0
    assert chunked_prefill_s(m, 0.25, [(256, 0)], 0.5, 32, math.inf) == 0.5
    # 600 tokens: 256 + 256 + 88
    assert chunked_prefill_s(m, 0.25, [(600, 0)], 0.5, 32, math.inf) == 0.75 + 600 / 1024
    # items in order, each starts its own iteration: 256 + 44, then 100
    assert chunked_prefill_s(m, 0.25, [(300, 0), (100, 50)], 0.5, 32, math.inf) == \
        0.75 + 400 / 1024
    # no iteration budget (chunked=False): the whole prompt in one iteration
    assert chunked_prefill_s(m, 0.25, [(600, 0)], math.inf, 32, math.inf) == 0.25 + 600 / 1024


def test_chunked_prefill_inf_when_room_under_min_chunk() -> None:
    m = exact_model()
    assert chunked_prefill_s(m, 0.25, [(600, 0)], 0.5, 300, math.inf) == math.inf  # 256 < 300
    assert chunked_prefill_s(m, 0.25, [(600, 0)], 0.5, 256, math.inf) < math.inf
    # a remainder smaller than min_chunk only has to fit whole
    assert chunked_prefill_s(m, 0.25, [(200, 0)], 0.5, 300, math.inf) == 0.25 + 200 / 1024
    # the decode step fills the budget: no room at all
    assert chunked_prefill_s(m, 0.5, [(1, 0)], 0.5, 1, math.inf) == math.inf
    assert chunked_prefill_s(m, 0.6, [(1, 0)], 0.5, 1, math.inf) == math.inf
    # toy model, 18 ms budget: a 17.5 ms decode step leaves ~24 tokens of room (< 32)
    toy = toy_model()
    assert chunked_prefill_s(toy, 0.0175, [(500, 0)], 0.018, 32, math.inf) == math.inf
    assert chunked_prefill_s(toy, 0.0175, [(500, 0)], 0.018, 16, math.inf) < math.inf
    # the items ahead count too: a later item that cannot get min_chunk makes it inf
    assert chunked_prefill_s(m, 0.25, [(10, 0), (600, 0)], 0.5, 300, math.inf) == math.inf


def test_chunked_prefill_respects_limit() -> None:
    m = exact_model()
    total = 0.75 + 600 / 1024
    assert chunked_prefill_s(m, 0.25, [(600, 0)], 0.5, 32, total) == total
    assert chunked_prefill_s(m, 0.25, [(600, 0)], 0.5, 32, total - 1e-9) == math.inf
    assert chunked_prefill_s(m, 0.25, [(600, 0)], 0.5, 32, 0.1) == math.inf
    assert chunked_prefill_s(m, 0.25, [(600, 0)], 0.5, 32, -1.0) == math.inf


def ref_chunked(m, step, items, budget, min_chunk, limit) -> float:
    """Independent reference: largest chunk by linear search, one iteration per chunk; an
    item whose prefill is done decodes in every later iteration."""
    t = 0.0
    for pend, ctx in items:
        while pend > 0:
            c = 0
            while c < pend and m.prefill_time(c + 1, ctx) <= budget - step:
                c += 1
            if c < min(min_chunk, pend):
                return math.inf
            t += step + m.prefill_time(c, ctx)
            if t > limit:
                return math.inf
            pend -= c
            ctx += c
        step += m.decode_time(ctx + 1)
    return t


@settings(max_examples=150, deadline=None)
@given(items=st.lists(st.tuples(st.integers(1, 1500), st.integers(0, 3000)), max_size=4),
       step=st.floats(0.005, 0.03), budget=st.floats(0.01, 0.05), min_chunk=st.integers(1, 64),
       limit=st.one_of(st.just(math.inf), st.floats(0.0, 2.0)))
def test_chunked_prefill_matches_reference_on_toy_model(items, step, budget, min_chunk,
                                                        limit) -> None:
    m = toy_model()
    got = chunked_prefill_s(m, step, items, budget, min_chunk, limit)
    want = ref_chunked(m, step, items, budget, min_chunk, limit)
    if math.isinf(want):
        assert math.isinf(got)
    else:
        assert got == pytest.approx(want, rel=1e-12)
        assert got <= limit
        assert got >= len(items) * step  # at least one iteration per item


# ---------------------------------------------------------------------- admits
@settings(max_examples=100, deadline=None)
@given(prompt=st.integers(1, 10**6), ttft=st.floats(1e-4, 10.0), tpot=st.floats(1e-4, 1.0),
       waited=st.floats(0.0, 100.0), mean=st.floats(1.0, 1e5))
def test_admits_idle_instance_always(prompt, ttft, tpot, waited, mean) -> None:
    m = toy_model(kv_blocks=100)  # even a prompt larger than the whole KV cache
    r = Request(0, 0.0, prompt, 10, ttft, tpot)
    assert admits(eff(view(0, m)), r, tpot, mean, waited, margin=0.9, min_chunk=32)


def test_admits_refuses_when_kv_full() -> None:
    small = toy_model(kv_blocks=100)  # 1,600 tokens
    big = toy_model()
    r = R(0, prompt=100, ttft=5.0)
    assert not admits(eff(view(0, small, decodes=[1500])), r, 0.1, 50, 0.0, margin=0.9,
                      min_chunk=32)
    assert admits(eff(view(0, big, decodes=[1500])), r, 0.1, 50, 0.0, margin=0.9, min_chunk=32)
    # KV growth counts: 1,000 + 101 tokens fit now, not once both have grown by 300 tokens
    assert admits(eff(view(0, small, decodes=[1000])), r, 0.1, 50, 0.0, margin=0.9,
                  min_chunk=32)
    assert not admits(eff(view(0, small, decodes=[1000])), r, 0.1, 300, 0.0, margin=0.9,
                      min_chunk=32)
    # tokens already generated count towards the expected length
    assert admits(eff(view(0, small, decodes=[1000], gens=[290])), R(0, prompt=10, ttft=5.0),
                  0.1, 300, 0.0, margin=0.9, min_chunk=32)


@settings(max_examples=100, deadline=None)
@given(ctx=st.lists(st.integers(16, 800), min_size=1, max_size=6),
       prompt=st.integers(1, 800), mean=st.floats(1.0, 500.0))
def test_admits_refuses_whenever_residents_fill_the_kv(ctx, prompt, mean) -> None:
    m = toy_model(kv_blocks=sum(ctx) // 16)  # the residents alone fill it
    assert m.kv_tokens <= sum(ctx)
    assert not admits(eff(view(0, m, decodes=ctx)), R(0, prompt=prompt, ttft=100.0), 1.0, mean,
                      0.0, margin=1.0, min_chunk=1)


def test_admits_refuses_iteration_over_margin_tpot() -> None:
    m = toy_model()  # 5 ms + 0.1 ms per sequence: budget 18 ms allows 130 sequences
    r = R(0, prompt=10, ttft=10.0)
    ok = eff(view(0, m, decodes=[10] * 120))  # 121 with r: ~17.1 ms
    over = eff(view(0, m, decodes=[10] * 130))  # 131 with r: ~18.1 ms
    assert admits(ok, r, 0.02, 5, 0.0, margin=0.9, min_chunk=1)
    assert not admits(over, r, 0.02, 5, 0.0, margin=0.9, min_chunk=1)
    assert iteration_time(m, 131, 131 * 15) > 0.9 * 0.02
    # the margin is part of the budget: the same load passes at margin 1 (20 ms)
    assert admits(over, r, 0.02, 5, 0.0, margin=1.0, min_chunk=1)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 200), tpot=st.floats(0.006, 0.05), mean=st.floats(1.0, 100.0),
       margin=st.floats(0.5, 1.0))
def test_admitted_means_iteration_within_budget(n, tpot, mean, margin) -> None:
    m = toy_model()
    ctx = [50] * n
    r = R(0, prompt=20, ttft=100.0)
    if admits(eff(view(0, m, decodes=ctx)), r, tpot, mean, 0.0, margin=margin, min_chunk=1):
        kv = peak_kv(np.array(ctx + [21.0]), np.full(n + 1, max(mean, 1.0)))
        assert iteration_time(m, n + 1, kv) <= margin * tpot
        assert kv <= m.kv_tokens


def test_admits_ttft_and_late_requests() -> None:
    m = toy_model()
    # a long urgent prefill queued ahead: ~24 iterations of ~18 ms before r's prompt
    load = eff(view(0, m, decodes=[100] * 10, queue=[(20000, 0, 1.0, 0.0, 0.1, 0.02, 0)]))
    r = R(0, arrival=0.0, prompt=100, ttft=0.2)
    assert not admits(load, r, 0.02, 20, 0.0, margin=0.9, min_chunk=32)
    assert admits(load, R(1, arrival=0.0, prompt=100, ttft=5.0), 0.02, 20, 0.0, margin=0.9,
                  min_chunk=32)
    # already past its TTFT (waited in the pending queue): late anywhere, only TPOT/KV apply
    assert admits(load, r, 0.02, 20, 1.0, margin=0.9, min_chunk=32)
    # a prefill time predicted elsewhere (disaggregated) replaces the chunked prediction
    r2 = R(2, prompt=100, ttft=0.2)
    assert admits(load, r2, 0.02, 20, 0.0, margin=0.9, min_chunk=32, ttft_s=0.05)


def test_protect_queued_refuses_a_request_that_would_make_a_queued_one_late() -> None:
    m = toy_model()
    # a queued 3000-token prompt with a generous deadline that it just makes on its own
    solo = chunked_prefill_s(m, eff(view(0, m, decodes=[100] * 10)).decode_step(),
                             [(3000, 0)], 0.018, 32, math.inf)
    queued = (3000, 0, 1.0, 0.0, solo * 1.05, 0.02, 0)
    load = eff(view(0, m, decodes=[100] * 10, queue=[queued]))
    # r's slack is smaller, so the engine prefills r first and the queued one slips past
    step = eff(view(0, m, decodes=[100] * 10)).decode_step()
    r = R(0, arrival=0.0, prompt=1500,
          ttft=1.2 * chunked_prefill_s(m, step, [(1500, 0)], 0.018, 32, math.inf) + step)
    assert r.ttft_slo - m.prefill_time(1500) < queued[4] - m.prefill_time(3000)
    assert admits(load, r, 0.02, 20, 0.0, margin=0.9, min_chunk=32)  # the paper's test
    assert not admits(load, r, 0.02, 20, 0.0, margin=0.9, min_chunk=32, protect_queued=True)
    # with 25% spare the queued one still makes it behind a tiny r: admitted
    roomy = eff(view(0, m, decodes=[100] * 10, queue=[queued[:4] + (solo * 1.25,) + queued[5:]]))
    tiny = R(1, arrival=0.0, prompt=16, ttft=0.05)  # ahead of the queued one in slack order
    assert admits(roomy, tiny, 0.02, 20, 0.0, margin=0.9, min_chunk=32, protect_queued=True)
    # polyserve-go turns it on by default, polyserve does not
    assert make_router("polyserve-go", tiers=TIERS).protect_queued
    assert not make_router("polyserve", tiers=TIERS).protect_queued


def test_lazy_promotion_is_judged_with_host_tpot() -> None:
    m = toy_model()
    host = view(0, m, decodes=[100] * 150)  # 151 sequences with r: ~20.1 ms per iteration
    r = R(0, prompt=10, ttft=5.0, cls="b")
    # passes at tier b's own TPOT (90 ms budget), not at tier a's (18 ms)
    assert admits(eff(host), r, 0.1, 50, 0.0, margin=0.9, min_chunk=32)
    assert not admits(eff(host), r, 0.02, 50, 0.0, margin=0.9, min_chunk=32)
    # through the ladder: b's only instance is full; a's instance would do at b's TPOT, but a
    # promoted request must not hurt a's residents: pending (the pool is empty)
    full_b = view(1, toy_model(kv_blocks=100), decodes=[1590])
    rt = router(2)
    members(rt, A, B)
    assert rt.offer(r, [host, full_b], 0.0) == []
    assert rt.pending_requests() == [r]
    # a lighter tier-a instance (~15 ms with r) takes it
    light = view(0, m, decodes=[100] * 100)
    assert rt.retry([light, full_b], 0.1) == [(r, 0, -1)]
    assert not rt.has_pending()


# ---------------------------------------------------------------------- the ladder
def test_own_tier_highest_load_first_among_admitting() -> None:
    m = toy_model()
    rt = router(5)
    members(rt, A, A, A, B, -1)
    views = [view(0, m, decodes=[100] * 10), view(1, m, decodes=[100] * 50),
             view(2, m, decodes=[100] * 140),  # too loaded for tier a's 18 ms
             view(3, m, decodes=[100] * 80),  # tier b's: more loaded, but not tier a's
             view(4, m)]  # the pool: not needed
    r = R(0, prompt=100, ttft=1.0, cls="a")
    assert rt.offer(r, views, 0.0) == [(r, 1, -1)]
    assert rt.fleet.pool == [4]
    # a tier-b request stays in tier b although tier a's instance 1 is more loaded
    r2 = R(1, prompt=100, ttft=1.0, cls="b")
    assert rt.offer(r2, views, 0.0) == [(r2, 3, -1)]


def test_load_ties_break_by_batch_then_index() -> None:
    m = toy_model()
    rt = router(3)
    members(rt, A, A, A)
    views = [view(0, m, decodes=[100] * 5), view(1, m, decodes=[100] * 5),
             view(2, m, decodes=[100] * 5)]
    r = R(0, prompt=100, cls="a")
    assert rt.offer(r, views, 0.0) == [(r, 0, -1)]


@settings(max_examples=150, deadline=None)
@given(tiers=st.lists(st.integers(-1, 2), min_size=1, max_size=6),
       loads=st.lists(st.integers(0, 300), min_size=6, max_size=6),
       healthy=st.lists(st.booleans(), min_size=6, max_size=6),
       own=st.integers(0, 2), prompt=st.integers(1, 3000), ttft=st.floats(0.01, 2.0))
def test_ladder_matches_reference(tiers, loads, healthy, own, prompt, ttft) -> None:
    """The ladder on random memberships and loads, against a direct reading of the rules: own
    tier, most loaded admitting instance; else each tighter tier in turn, tested at its TPOT;
    else the first healthy pool instance joins; else pending."""
    spec = [("a", 0.02, 30), ("b", 0.05, 30), ("c", 0.2, 30)]
    m = toy_model()
    n = len(tiers)
    rt = router(n, tiers=spec)
    members(rt, *tiers)
    views = [view(k, m, decodes=[200] * loads[k], healthy=healthy[k]) for k in range(n)]
    name, tpot, mean = spec[own]
    r = Request(0, 0.0, prompt, 10, ttft, tpot, cls=name)

    want = None
    for host in range(own, -1, -1):
        cands = [eff(v) for v in views if tiers[v.index] == host and v.healthy]
        cands.sort(key=lambda x: (-load_after(x, r), -(x.decodes + len(x.prefill)), x.index))
        ok = [x.index for x in cands if admits(x, r, spec[host][1], spec[host][2], 0.0,
                                               margin=0.9, min_chunk=32)]
        if ok:
            want = ok[0]
            break
    if want is None:
        want = next((k for k in range(n) if tiers[k] == -1 and healthy[k]), None)
    got = rt.offer(r, views, 0.0)
    if want is None:
        assert got == [] and rt.pending_requests() == [r]
    else:
        assert got == [(r, want, -1)] and not rt.has_pending()
        assert rt.fleet.tier_of[want] == (tiers[want] if tiers[want] >= 0 else own)
    rt.fleet.check_invariants()


def test_promotion_only_when_own_tier_has_none_admitting() -> None:
    m = toy_model()
    rt = router(3)
    members(rt, A, B, -1)
    r = R(0, prompt=100, ttft=1.0, cls="b")
    a_inst = view(0, m, decodes=[100] * 60)  # more loaded than b's, admits at a's TPOT
    b_inst = view(1, m, decodes=[100] * 5)
    assert rt.offer(r, [a_inst, b_inst, view(2, m)], 0.0) == [(r, 1, -1)]
    # b's instance cannot take it: promoted to a's (before any scale-up from the pool)
    full_b = view(1, toy_model(kv_blocks=100), decodes=[1590])
    r2 = R(1, prompt=100, ttft=1.0, cls="b")
    assert rt.offer(r2, [a_inst, full_b, view(2, m)], 0.0) == [(r2, 0, -1)]
    assert rt.fleet.pool == [2]
    # never the other way: a tier-a request does not go to a looser tier's instance; with a's
    # instance refusing, the pool instance joins tier a
    over_a = view(0, m, decodes=[100] * 140)
    r3 = R(2, prompt=100, ttft=1.0, cls="a")
    assert rt.offer(r3, [over_a, b_inst, view(2, m)], 0.0) == [(r3, 2, -1)]
    assert rt.fleet.tier_of == [A, B, A]


def test_scale_up_takes_an_idle_pool_instance() -> None:
    m = toy_model()
    rt = router(3)
    assert rt.fleet.pool == [0, 1, 2]
    r = R(0, prompt=100, cls="b")
    views = [view(0, m, healthy=False), view(1, m), view(2, m)]  # unhealthy: skipped
    assert rt.offer(r, views, 0.5) == [(r, 1, -1)]
    f = rt.fleet
    assert f.tier_of == [-1, B, -1] and f.pool == [0, 2]
    assert f.scale_ups == [0, 1] and f.scale_downs == [0, 0]
    assert f.timeline[-1][0] == 0.5 and f.timeline[-1][1] == [0, 1]
    # the new member now serves its tier first (it admits: it only holds r)
    r2 = R(1, prompt=100, cls="b")
    assert rt.offer(r2, views, 0.6) == [(r2, 1, -1)]
    assert f.scale_ups == [0, 1]
    f.check_invariants()


def test_pending_when_pool_empty_fifo_per_tier_and_retry_places() -> None:
    small = toy_model(kv_blocks=100)
    rt = router(1)
    members(rt, A)
    full = [view(0, small, decodes=[1590])]
    r1, r2, r3 = R(1, 0.0, cls="b", ttft=5.0), R(2, 0.1, cls="b", ttft=5.0), \
        R(3, 0.2, cls="a", ttft=5.0)
    assert rt.offer(r1, full, 0.0) == []
    assert rt.offer(r2, full, 0.1) == []
    assert rt.offer(r3, full, 0.2) == []
    assert rt.has_pending()
    assert rt.pending_requests() == [r3, r1, r2]  # tightest tier first, FIFO within a tier
    assert rt.retry(full, 0.5) == []
    assert rt.tick(full, 0.5) == []
    assert rt.fleet_stats(0.5)["pending"] == {"a": 1, "b": 2}
    # capacity frees (the residents finished): all placed, in that order
    idle = [view(0, small, received=0)]
    assert rt.retry(idle, 1.0) == [(r3, 0, -1), (r1, 0, -1), (r2, 0, -1)]
    assert not rt.has_pending() and rt.pending_requests() == []


def test_pending_head_of_line_blocks_its_tier() -> None:
    m = toy_model(kv_blocks=1000)  # 16,000 tokens
    rt = router(1)
    members(rt, B)
    busy = [view(0, m, decodes=[500] * 10)]
    big = R(1, 0.0, prompt=15_000, cls="b", ttft=50.0)  # does not fit next to the residents
    small = R(2, 0.1, prompt=10, cls="b", ttft=50.0)
    assert rt.offer(big, busy, 0.0) == []
    assert rt.offer(small, busy, 0.1) == []  # would fit, but waits behind big
    assert rt.pending_requests() == [big, small]
    # capacity frees: big first, then small (which still fits next to big)
    assert rt.retry([view(0, m)], 0.2) == [(big, 0, -1), (small, 0, -1)]
    assert not rt.has_pending()


# ---------------------------------------------------------------------- the fleet
def test_fleet_scale_down_after_empty_checks() -> None:
    f = Fleet(3, [0, 1, 2], ["a", "b"], 0.0)
    f.join(0, 0, 0.0, 0.0)
    f.join(1, 1, 0.5, 0.5)
    f.check(set(), 2, 1.0)
    assert f.members() == [0, 1]
    f.check({1}, 2, 2.0)  # 1 busy: its streak restarts
    assert f.members() == [1] and f.pool == [0, 2]
    assert f.scale_downs == [1, 0]
    assert f.server_s == [2.0, 0.0]
    f.check(set(), 2, 3.0)
    assert f.members() == [1]
    f.check(set(), 2, 4.0)
    assert f.members() == [] and f.pool == [0, 1, 2]
    assert f.server_s == [2.0, 3.5] and f.scale_downs == [1, 1]
    s = f.stats(5.0, [0, 0])
    assert s["server_seconds"] == 5.5 and s["instances_per_tier"] == {"a": 0, "b": 0}
    f.check_invariants()


def test_router_tick_scales_down_empty_instances() -> None:
    m = toy_model()
    rt = router(2, check_period_s=1.0, empty_checks=2)
    r = R(0, prompt=100, cls="a")
    assert rt.offer(r, [view(0, m), view(1, m)], 0.0) == [(r, 0, -1)]
    # the instance holds r (the router's own dispatch, not yet in a view taken before it)
    rt.tick([view(0, m, received=0), view(1, m)], 0.0)
    assert rt.fleet.members() == [0] and rt.next_wakeup() == 1.0
    # r is done: empty at two checks in a row -> back to the pool
    done = [view(0, m, received=1), view(1, m)]
    rt.tick(done, 1.0)
    rt.tick(done, 1.5)  # between checks: not a check
    assert rt.fleet.members() == [0]
    rt.tick(done, 2.0)
    assert rt.fleet.members() == []
    assert rt.fleet.scale_downs == [1, 0]
    st_ = rt.fleet_stats(3.0)
    assert st_["server_seconds_per_tier"] == {"a": 2.0, "b": 0.0}
    assert rt.next_wakeup() == math.inf  # nothing to check with no member


def test_router_tick_empty_checks_three() -> None:
    m = toy_model()
    rt = router(1, check_period_s=0.5, empty_checks=3)
    members(rt, B)
    idle = [view(0, m)]
    for t in (0.0, 0.5):
        rt.tick(idle, t)
        assert rt.fleet.members() == [0]
    rt.tick(idle, 1.0)
    assert rt.fleet.members() == []


def test_scale_up_delay_instance_not_used_before_ready() -> None:
    m = toy_model()
    rt = router(3, scale_up_delay_s=2.0, check_period_s=10.0)
    views = [view(k, m) for k in range(3)]
    assert rt.tick(views, 0.0) == []  # the first periodic check; the next is at t=10
    r1 = R(1, 0.0, cls="a", ttft=5.0)
    assert rt.offer(r1, views, 0.0) == []  # instance 0 joins tier a, starting until t=2
    f = rt.fleet
    assert f.tier_of == [A, -1, -1] and f.ready_at[0] == 2.0 and f.scale_ups == [1, 0]
    assert rt.next_wakeup() == 2.0
    # one starting instance per tier at a time: a second tier-a request waits for it
    r2 = R(2, 0.5, cls="a", ttft=5.0)
    assert rt.offer(r2, views, 0.5) == []
    assert f.pool == [1, 2]
    # another tier scales up on its own
    r3 = R(3, 0.6, cls="b", ttft=5.0)
    assert rt.offer(r3, views, 0.6) == []
    assert f.tier_of == [A, B, -1] and rt.next_wakeup() == 2.0
    assert rt.retry(views, 1.9) == []  # not ready yet
    assert rt.tick(views, 1.9) == []
    assert rt.next_wakeup() == 2.0
    # instance 0 is ready; tier b's instance starts until 2.6, so r3 is promoted to tier a's
    got = rt.tick(views, 2.0)
    assert got == [(r1, 0, -1), (r2, 0, -1), (r3, 0, -1)]
    assert rt.next_wakeup() == pytest.approx(2.6)
    assert rt.tick(views, 2.6) == [] and rt.next_wakeup() == 10.0


def test_scale_up_delay_next_wakeup_with_short_check_period() -> None:
    m = toy_model()
    rt = router(1, scale_up_delay_s=2.0, check_period_s=0.5)
    views = [view(0, m)]
    rt.offer(R(1, cls="a"), views, 0.0)
    rt.tick(views, 0.0)
    # the earlier of the next check and the ready time
    assert rt.next_wakeup() == 0.5
    rt.tick(views, 0.5)
    rt.tick(views, 1.0)
    rt.tick(views, 1.5)
    assert rt.fleet.members() == [0]  # a starting instance is never "empty"
    assert rt.next_wakeup() == 2.0
    assert len(rt.tick(views, 2.0)) == 1


def test_initial_instances_per_tier() -> None:
    rt = router(4, initial={"b": 2, "a": 1})
    assert rt.fleet.tier_of == [B, B, A, -1]
    assert rt.fleet.counts() == [1, 2]
    rt.fleet.check_invariants()


def test_unknown_class_goes_to_the_loosest_tier_it_can() -> None:
    rt = router(1, tiers=[("a", 0.02, 10), ("b", 0.05, 10), ("c", 0.2, 10)])
    assert rt.tier_of(Request(0, 0.0, 10, 2, 1.0, 0.1, cls="x")) == 1
    assert rt.tier_of(Request(0, 0.0, 10, 2, 1.0, 0.01, cls="x")) == 0
    assert rt.tier_of(Request(0, 0.0, 10, 2, 1.0, 5.0, cls="x")) == 2
    assert rt.tier_of(Request(0, 0.0, 10, 2, 1.0, 5.0, cls="a")) == 0


def test_tiers_sorted_tightest_first() -> None:
    ts = parse_tiers([{"name": "lo", "tpot": 0.2}, ("hi", 0.01, 5)])
    assert [t.name for t in ts] == ["hi", "lo"] and ts[1].mean_output == 256.0


# ---------------------------------------------------------------------- validation
@pytest.mark.parametrize("kw, match", [
    (dict(tiers=None), "needs tiers"),
    (dict(tiers=[]), "needs tiers"),
    (dict(tiers=[("a", 0.0, 10)]), "tpot must be > 0"),
    (dict(tiers=[("a", -0.1, 10)]), "tpot must be > 0"),
    (dict(tiers=[("a", float("nan"), 10)]), "tpot must be > 0"),
    (dict(tiers=[("a", 0.1, 0.5)]), "mean_output >= 1"),
    (dict(tiers=[("a", 0.1, 10), ("a", 0.2, 10)]), "distinct"),
    (dict(margin=0.0), "margin"),
    (dict(margin=1.5), "margin"),
    (dict(margin=float("nan")), "margin"),
    (dict(min_chunk=0), "min_chunk >= 1"),
    (dict(check_period_s=0.0), "0 < check_period_s"),
    (dict(empty_checks=0), "empty_checks >= 1"),
    (dict(scale_up_delay_s=-1.0), "0 <= scale_up_delay_s"),
])
def test_bad_parameters_raise(kw, match) -> None:
    kw = {"tiers": TIERS, **kw}
    with pytest.raises(ValueError, match=match):
        make_router("polyserve", **kw)


def test_bad_initial_raises_at_attach() -> None:
    rt = make_router("polyserve", tiers=TIERS, initial={"zz": 1})
    with pytest.raises(ValueError, match="unknown tier 'zz'"):
        rt.attach(["colocated"] * 2)
    rt = make_router("polyserve", tiers=TIERS, initial={"a": 2, "b": 1})
    with pytest.raises(ValueError, match="more instances than the fleet has"):
        rt.attach(["colocated"] * 2)


def test_fleet_api_before_attach_raises() -> None:
    rt = make_router("polyserve", tiers=TIERS)
    with pytest.raises(RuntimeError, match="attach"):
        rt.offer(R(0), [], 0.0)
    with pytest.raises(RuntimeError, match="attach"):
        rt.next_wakeup()


def test_tier_dict_without_tpot_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="tpot"):
        make_router("polyserve", tiers=[{"name": "a"}])


@pytest.mark.parametrize("kw", [dict(check_period_s=float("nan")),
                                dict(scale_up_delay_s=float("nan")),
                                dict(scale_up_delay_s=float("inf"))])
def test_nan_periods_are_value_errors(kw) -> None:
    with pytest.raises(ValueError):
        make_router("polyserve", tiers=TIERS, **kw)
