"""GoRouting decisions on hand-built instance views, with hand-derived expected choices.

The model has round numbers: c0 = 5 ms per iteration, 1 ms per prefill token, 1 ms per decode
sequence, nothing else; so one decode iteration of n sequences takes 5 + n ms. Routers predict
prefill queues in 30 ms slices, each slice paying one iteration overhead (c0 + the decode batch).
Every router is built with explicit alpha, light_frac, tpot_headroom and all_light.
"""

from __future__ import annotations

import pytest

from proserve.cluster import go
from proserve.cluster.base import make_router
from proserve.cluster.view import InstanceView
from proserve.core.request import Request
from proserve.engine.base import EngineLoad, PrefillItem
from proserve.latency.model import LatencyModel

M = LatencyModel(c0=0.005, c1=0.0, c2=1e-3, c3=0.0, c4=0.0, d1=1e-3, d2=0.0, kv_blocks=1000,
                 block_size=16, name="round")


def router(**kw) -> go.GoRouter:
    params = dict(alpha=0.9, light_frac=0.5, tpot_headroom=0.8, all_light="pack")
    params.update(kw)
    rt = make_router("go", **params)
    assert isinstance(rt, go.GoRouter)
    return rt


def V(i: int, *, decodes: int = 0, queue: tuple = (), free: int = 1000,
      min_tpot: float = float("inf"), role: str = "colocated") -> InstanceView:
    items = [PrefillItem(*q) for q in queue]
    load = EngineLoad(prefill=items, decodes=decodes, decode_context=decodes * 100,
                      free_blocks=free, total_blocks=1000, received=0, min_decode_tpot=min_tpot)
    return InstanceView(i, "slide", M, 0.0, load, role=role)


def R(i: int = 0, prompt: int = 100, ttft: float = 2.0, tpot: float = 0.05,
      w: float = 1.0) -> Request:
    return Request(id=i, arrival=0.0, prompt_len=prompt, output_len=10, ttft_slo=ttft,
                   tpot_slo=tpot, weight=w)


def queued(tokens: int, ttft: float = 10.0) -> tuple:
    """A queued fresh prefill (pending, computed, weight, arrival, ttft, tpot, generated)."""
    return (tokens, 0, 1.0, 0.0, ttft, 0.1, 0)


# ---------------------------------------------------------------- decode instance (pick_decode)
def test_pick_decode_packs_the_most_loaded_within_tpot_headroom() -> None:
    """r's TPOT SLO 0.05 x headroom 0.8 = 40 ms. With r added: inst0 (10 decodes) 16 ms,
    inst1 (30) 36 ms: both fit; inst2 (40) 46 ms does not. Pack: inst1 (not the idlest, not the
    busiest)."""
    rt = router()
    views = [V(0, decodes=10), V(1, decodes=30), V(2, decodes=40)]
    assert rt.pick_decode(R(), rt._loads(views), 0.0).index == 1


def test_pick_decode_uses_the_tightest_tpot_on_the_instance() -> None:
    """r's own TPOT SLO is relaxed (0.5 s). inst1 (30 decodes: 36 ms with r) already runs a
    request with TPOT SLO 0.03: its limit is 0.8 x 0.03 = 24 ms, so only inst0 (16 ms) fits.
    With 0.05 there instead (limit 40 ms) inst1 fits and, busier, is packed."""
    rt = router()
    views = [V(0, decodes=10), V(1, decodes=30, min_tpot=0.03)]
    assert rt.pick_decode(R(tpot=0.5), rt._loads(views), 0.0).index == 0
    views = [V(0, decodes=10), V(1, decodes=30, min_tpot=0.05)]
    assert rt.pick_decode(R(tpot=0.5), rt._loads(views), 0.0).index == 1
    # r's own SLO counts too: 0.025 -> limit 20 ms: inst1 (36 ms) no longer fits
    assert rt.pick_decode(R(tpot=0.025), rt._loads(views), 0.0).index == 0


def test_pick_decode_needs_kv_for_the_prompt_and_falls_back_to_least_loaded() -> None:
    """A 100-token prompt + 1 needs 7 blocks of 16. inst1 has 6 free: excluded. When nothing
    fits the TPOT headroom, the least-loaded instance (smallest decode step) is chosen."""
    rt = router()
    views = [V(0, decodes=10), V(1, decodes=30, free=6), V(2, decodes=40)]
    assert rt.pick_decode(R(), rt._loads(views), 0.0).index == 0
    heavy = [V(0, decodes=50), V(1, decodes=45), V(2, decodes=60)]
    assert rt.pick_decode(R(), rt._loads(heavy), 0.0).index == 1


def test_route_pair_packs_decodes_until_headroom_then_moves_on() -> None:
    """Decode views are stale (they include none of the router's dispatches), so each decision
    adds the router's own earlier decode dispatches. TPOT SLO 0.0505 -> limit 40.4 ms: inst0 with
    33 decodes takes r1 (39 ms) and r2 (40 ms); r3 would make 41 ms: it goes to inst3."""
    rt = router()
    pre = [V(0, role="prefill"), V(1, role="prefill")]
    dec = [V(2, decodes=33, role="decode"), V(3, role="decode")]
    pairs = [rt.route_pair(R(i, tpot=0.0505), pre, dec, 0.0) for i in range(3)]
    assert [d for _, d in pairs] == [2, 2, 3]
    assert all(p in (0, 1) for p, _ in pairs)


# ---------------------------------------------------------------- candidate filter (choose)
def test_choose_drops_instances_past_tpot_headroom() -> None:
    """inst0: 40 decodes (45 ms steps) and a 50-token queued prefill; inst1: idle. r (100 tokens,
    TTFT SLO 2 s) is on time and light on both (first token 0.14 + 0.28 s and 0.12 s, limit 1 s)
    with gain 1 on both, so packing alone would pick the busier inst0. But r's decode would make
    inst0's iteration 46 ms > 0.8 x 50 ms: the filter leaves inst1."""
    rt = router()
    views = [V(0, decodes=40, queue=[queued(50)]), V(1)]
    assert rt.route(R(), views, 0.0) == 1
    assert rt.last_gains == {0: 1.0, 1: 1.0}
    # with room for r's decode (30 decodes: 36 ms <= 40 ms) packing picks inst0
    rt = router()
    views = [V(0, decodes=30, queue=[queued(50)]), V(1)]
    assert rt.route(R(), views, 0.0) == 0


def test_choose_filter_uses_the_instance_tightest_tpot_and_free_kv() -> None:
    """A fresh router per decision (a router remembers its own dispatches)."""
    r = R(tpot=0.5)
    # r is relaxed (TPOT 0.5 s) but inst0 serves a 30 ms request: limit 24 ms < 26 ms with r
    views = [V(0, decodes=20, queue=[queued(50)], min_tpot=0.03), V(1)]
    assert router().route(r, views, 0.0) == 1
    views = [V(0, decodes=20, queue=[queued(50)], min_tpot=0.04), V(1)]  # limit 32 ms: fits
    assert router().route(r, views, 0.0) == 0
    # KV: r's prompt + 1 token needs 7 blocks; 6 free is not enough
    views = [V(0, decodes=20, queue=[queued(50)], free=6), V(1)]
    assert router().route(r, views, 0.0) == 1
    views = [V(0, decodes=20, queue=[queued(50)], free=7), V(1)]
    assert router().route(r, views, 0.0) == 0


def test_choose_when_no_instance_passes_the_filter_uses_all() -> None:
    """Both instances past the headroom: all healthy instances are candidates again, and the
    light one with more queued work is packed."""
    rt = router()
    views = [V(0, decodes=40, queue=[queued(50)]), V(1, decodes=40)]
    assert rt.route(R(), views, 0.0) == 0


# ---------------------------------------------------------------- light_frac and all_light
def _light_views() -> list[InstanceView]:
    """inst0 queues a 310-token prefill: 0.31 s of work in 11 slices of 5 ms overhead = 0.365 s.
    r (100 tokens: 0.1 s in 4 slices = 0.12 s) would get its first token at 0.485 s there, and
    at 0.12 s on the idle inst1. Both give gain 1 (the queued request's deadline is 10 s)."""
    return [V(0, queue=[queued(310)]), V(1)]


@pytest.mark.parametrize(("light_frac", "expect"), [
    (0.5, 1),  # limit 0.40 s: inst0 heavy (0.485), only inst1 light
    (0.6, 1),  # limit 0.48 s: still heavy
    (0.7, 0),  # limit 0.56 s: both light -> pack onto the one with more queued work
])
def test_light_frac_decides_packing(light_frac: float, expect: int) -> None:
    rt = router(light_frac=light_frac)
    assert rt.route(R(ttft=0.8), _light_views(), 0.0) == expect
    assert rt.last_gains == {0: 1.0, 1: 1.0}


def test_all_light_idle_takes_the_least_loaded_when_every_candidate_is_light() -> None:
    assert router(light_frac=0.7, all_light="pack").route(R(ttft=0.8), _light_views(), 0.0) == 0
    assert router(light_frac=0.7, all_light="idle").route(R(ttft=0.8), _light_views(), 0.0) == 1
    # not all light (light_frac 0.5): "idle" changes nothing, the light one is taken
    assert router(light_frac=0.5, all_light="idle").route(R(ttft=0.8), _light_views(), 0.0) == 1


def test_all_heavy_goes_to_the_least_loaded() -> None:
    """TTFT SLO 0.2 s: light limit 0.1 s, r's own cost 0.12 s: heavy everywhere. r still makes
    its deadline on both (gain 1), so both are candidates and the least loaded (inst1) wins."""
    rt = router()
    assert rt.route(R(ttft=0.2), [V(0, queue=[queued(30)]), V(1, queue=[queued(20)])], 0.0) == 1


def test_no_gain_anywhere_falls_back_to_least_loaded() -> None:
    """TTFT SLO 0.1 s < r's 0.12 s cost: r earns nothing anywhere; the least loaded instance is
    chosen (inst1, with the shorter queue) rather than packing."""
    rt = router(light_frac=10.0)
    views = [V(0, queue=[queued(300)]), V(1, queue=[queued(100)])]
    assert rt.route(R(ttft=0.1), views, 0.0) == 1
    assert rt.last_gains == {0: 0.0, 1: 0.0}
