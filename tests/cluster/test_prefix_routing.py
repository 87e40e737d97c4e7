"""Prefix-aware routing: views expose each instance's cached prefixes; GoRouting prices a request's
prefill at its uncached cost; the llm-d-style prefix-affinity baseline.

Hand-built views use the round model of test_go_router.py: 1 ms per prefill token, c0 = 5 ms,
1 ms per decode sequence; block size 16.
"""

from __future__ import annotations

from tests.conftest import toy_model

from proserve.cluster import go, routers
from proserve.cluster.base import make_router
from proserve.cluster.view import InstanceView, view_of
from proserve.core.request import Prefix, Request
from proserve.engine import make_scheduler
from proserve.engine.base import EngineLoad, PrefillItem
from proserve.latency.model import LatencyModel

M = LatencyModel(c0=0.005, c1=0.0, c2=1e-3, c3=0.0, c4=0.0, d1=1e-3, d2=0.0, kv_blocks=1000,
                 block_size=16, name="round")
SYS = Prefix(tuple(f"s{k}" for k in range(64)), 16)  # a 1024-token identified prompt head


def V(i: int, *, cached: int = 0, queue: tuple = (), decodes: int = 0) -> InstanceView:
    items = [PrefillItem(*q) for q in queue]
    load = EngineLoad(prefill=items, decodes=decodes, decode_context=decodes * 100,
                      free_blocks=1000, total_blocks=1000, received=0)
    return InstanceView(i, "slide", M, 0.0, load,
                        prefix_lookup=(lambda r, c=cached: min(c, r.prompt_len - 1)))


def R(i: int = 0, prompt: int = 1000, ttft: float = 1.5, prefix: Prefix | None = SYS) -> Request:
    return Request(id=i, arrival=0.0, prompt_len=prompt, output_len=10, ttft_slo=ttft,
                   tpot_slo=0.05, weight=1.0, prefix=prefix)


def queued(tokens: int, ttft: float = 10.0) -> tuple:
    return (tokens, 0, 1.0, 0.0, ttft, 0.1, 0)


def go_router(**kw) -> go.GoRouter:
    rt = make_router("go", alpha=0.9, light_frac=0.5, tpot_headroom=0.8, all_light="pack", **kw)
    assert isinstance(rt, go.GoRouter)
    return rt


# ------------------------------------------------------------------ the view's lookup
def test_view_cached_tokens_matches_the_engine_after_a_prefill_and_changes_nothing() -> None:
    m = toy_model(kv_blocks=1000)
    eng = make_scheduler("slide", m)
    first = Request(id=0, arrival=0.0, prompt_len=2000, output_len=4, ttft_slo=10.0,
                    tpot_slo=1.0, prefix=SYS)
    eng.add_request(first, 0.0)
    t = 0.0
    v0 = view_of(eng, 0, t)
    second = Request(id=1, arrival=0.0, prompt_len=1500, output_len=4, ttft_slo=10.0,
                     tpot_slo=1.0, prefix=SYS)
    assert v0.cached_tokens(second) == 0  # nothing computed yet
    while first.generated == 0:
        out = eng.schedule(t)
        t += out.duration
        eng.update_from_output(out, t)
    view = view_of(eng, 0, t)
    free, cached, hits = eng.kv.free, eng.kv.num_cached, eng.kv.hit_tokens
    assert view.cached_tokens(second) == 1024
    assert view.cached_tokens(second) == eng.kv.match_prefix(second)[0] * m.block_size
    assert (eng.kv.free, eng.kv.num_cached, eng.kv.hit_tokens) == (free, cached, hits)
    assert second.blocks == 0 and second.computed == 0
    # the engine then really skips exactly what the view promised
    eng.add_request(second, t)
    eng.update_from_output(eng.schedule(t), t)
    assert second.cached_tokens == 1024
    # no identity, or a view that cannot tell: 0
    assert view.cached_tokens(R(prefix=None)) == 0
    assert InstanceView(0, "slide", m, 0.0, eng.load()).cached_tokens(second) == 0
    off = make_scheduler("slide", m, prefix_caching=False)
    assert view_of(off, 0, 0.0).prefix_lookup is None


# ------------------------------------------------------------------ GoRouting
def test_go_picks_the_prefix_holder_when_loads_are_equal_and_the_prefix_saves_work() -> None:
    """Equal queues (200 ms: 235 ms with its 7 slices). r: 1000 tokens, TTFT SLO 1.1 s, light
    limit 0.55 s. Uncached, r costs 1 s of prefill + 34 slices = 1.17 s: it misses its SLO even
    served first (gain 0 everywhere) and is heavy. Instance 1 caches 960 tokens: r costs 40 ms +
    2 slices there, first token at 0.285 s behind the queue: gain 1, light -> instance 1."""
    views = [V(0, queue=(queued(200),)), V(1, cached=960, queue=(queued(200),)),
             V(2, queue=(queued(200),))]
    rt = go_router()
    assert rt.choose(R(ttft=1.1), views, 0.0).index == 1
    assert rt.last_cached == {0: 0, 1: 960, 2: 0}
    # the gain estimate sees the saving too: r meets its deadline only where cached
    assert rt.last_gains[1] == 1.0 and rt.last_gains[0] == 0.0
    assert rt.incremental_gain(R(ttft=1.1), rt._loads(views)[1], 0.0) == 1.0
    assert go_router(prefix_aware=False).incremental_gain(R(ttft=1.1), rt._loads(views)[1],
                                                          0.0) == 0.0


def test_go_prefers_the_light_prefix_holder_over_packing() -> None:
    """r: 600 tokens, TTFT SLO 2 s (light limit 1 s); light everywhere: instance 0 (100 ms
    queued) 0.12 + 0.7 s, instance 1 0.7 s, instance 2 (512 tokens cached) 0.1 s. Unaware, go packs
    onto the queued instance 0; aware, it takes the prefix holder."""
    views = [V(0, queue=(queued(100),)), V(1), V(2, cached=512)]
    assert go_router().choose(R(prompt=600, ttft=2.0), views, 0.0).index == 2
    assert go_router(prefix_aware=False).choose(R(prompt=600, ttft=2.0), views, 0.0).index == 0


def test_go_prefix_aware_false_ignores_the_cache() -> None:
    views = [V(0, queue=(queued(200),)), V(1, cached=960, queue=(queued(200),))]
    rt = go_router(prefix_aware=False)
    assert rt.choose(R(ttft=1.1), views, 0.0).index == 0
    assert rt.last_cached == {0: 0, 1: 0}
    assert rt.last_gains[1] == rt.last_gains[0] == 0.0


def test_go_prefix_does_not_override_a_much_better_gain_elsewhere() -> None:
    """The cache holder's queue is heavier work (weight 100) that r cannot overtake: r misses
    its deadline there, cached or not, while an idle uncached instance meets it. The cache
    holder is no gain candidate, so the prefix filter does not bring r back to it."""
    heavy = (3000, 0, 100.0, 0.0, 3.5, 0.1, 0)
    views = [V(0, cached=960, queue=(heavy,)), V(1)]
    rt = go_router()
    assert rt.choose(R(ttft=1.5), views, 0.0).index == 1
    assert rt.last_gains[0] < 0.9 * rt.last_gains[1]


def test_go_prefix_filter_keeps_r_with_its_cache_among_gain_candidates() -> None:
    """r can overtake the cache holder's queue (denser: 40 uncached tokens), so its gain there
    equals the idle instance's. The prefix filter sends it to its cache, although the idle
    instance would answer sooner; without the filter the light/heavy rule picks the idle one."""
    views = [V(0, cached=960, queue=(queued(3000, ttft=3.5),)), V(1)]
    rt = go_router()
    assert rt.choose(R(ttft=1.5), views, 0.0).index == 0
    assert rt.last_gains[0] >= 0.9 * rt.last_gains[1]
    assert go_router(prefix_filter=False).choose(R(ttft=1.5), views, 0.0).index == 1


# ------------------------------------------------------------------ prefix-affinity
def test_prefix_affinity_prefers_overlap_over_moderate_load() -> None:
    rt = make_router("prefix-affinity")
    assert isinstance(rt, routers.PrefixAffinity)
    assert (rt.prefix_weight, rt.load_weight) == (3.0, 2.0)
    # instance 1 caches 90% of the prompt but has more queued work than instance 0
    views = [V(0), V(1, cached=900, queue=(queued(300),)), V(2, queue=(queued(600),))]
    assert rt.choose(R(), views, 0.0).index == 1
    # scores: 3 * overlap + 2 * (max - work) / (max - min)
    s = rt.last_scores
    assert s[0] == 2.0 and 2.7 + 0.9 < s[1] < 2.7 + 1.1 and s[2] == 0.0


def test_prefix_affinity_falls_back_to_load_without_overlap() -> None:
    rt = make_router("prefix-affinity")
    views = [V(0, queue=(queued(600),)), V(1, queue=(queued(100),)), V(2, queue=(queued(300),))]
    assert rt.choose(R(), views, 0.0).index == 1
    assert rt.choose(R(prefix=None), [V(0, queue=(queued(50),)), V(1, cached=900)],
                     0.0).index == 1  # no identity: overlap 0 everywhere, least loaded wins


def test_prefix_affinity_load_weight_can_outweigh_overlap() -> None:
    views = [V(0), V(1, cached=300, queue=(queued(600),))]
    assert make_router("prefix-affinity").choose(R(), views, 0.0).index == 0  # 2.0 vs 0.9
    assert make_router("prefix-affinity", load_weight=0.5).choose(R(), views, 0.0).index == 1
