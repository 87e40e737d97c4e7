"""Routers: health, staleness compensation, GoRouting's gain and the over-balancing example."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import random_requests, toy_model

from proserve.cluster.base import NoHealthyInstance, make_router, router_names
from proserve.cluster.view import InstanceView, view_of
from proserve.core.request import Request, Status
from proserve.engine import make_scheduler
from proserve.engine.base import EngineLoad, PrefillItem
from proserve.latency.model import LatencyModel
from proserve.sim.run import SimConfig, run
from proserve.sim.simulator import simulate

ROUTERS = [r for r in router_names() if r != "static-partition"]


def make(name: str, **kw):
    if name == "static-partition":
        kw.setdefault("shares", {"high": 1.0, "low": 1.0})
    if name in ("polyserve", "polyserve-go"):
        kw.setdefault("tiers", [("high", 0.05, 100), ("low", 0.1, 100)])
    return make_router(name, **kw)


def R(i, arrival=0.0, prompt=100, out=2, w=1.0, ttft=1.0, tpot=0.1, cls="low"):
    return Request(id=i, arrival=arrival, prompt_len=prompt, output_len=out, ttft_slo=ttft,
                   tpot_slo=tpot, weight=w, priority=0 if cls == "high" else 1, cls=cls)


def view(i: int, model: LatencyModel, *, healthy=True, queue=(), decodes=0, free=1000,
         received=-1, taken_at=0.0) -> InstanceView:
    items = [PrefillItem(*q) for q in queue]
    load = EngineLoad(prefill=items, decodes=decodes, decode_context=decodes * 500,
                      free_blocks=free, total_blocks=1000, received=received)
    return InstanceView(i, "slide", model, taken_at, load, healthy=healthy)


@settings(max_examples=60, deadline=None)
@given(router=st.sampled_from(router_names()), n=st.integers(1, 12),
       health=st.lists(st.booleans(), min_size=12, max_size=12), seed=st.integers(0, 99),
       queues=st.lists(st.integers(0, 4000), min_size=12, max_size=12))
def test_routers_only_pick_present_healthy_instances(router, n, health, seed, queues) -> None:
    m = toy_model()
    # the views a router gets may skip indices (a removed instance) and include unhealthy ones
    idx = [2 * k + 1 for k in range(n)]
    views = [view(i, m, healthy=health[k],
                  queue=[(queues[k], 0, 1.0, 0.0, 1.0, 0.1, 0)] if queues[k] else [])
             for k, i in enumerate(idx)]
    rt = make(router, seed=seed)
    if hasattr(rt, "set_instances"):
        rt.set_instances(max(idx) + 1)
    if hasattr(rt, "attach"):
        rt.attach(["colocated"] * (max(idx) + 1))
    healthy = {v.index for v in views if v.healthy}
    for j in range(5):
        req = R(j, 0.01 * j, cls="high" if j % 2 else "low")
        if not healthy:
            with pytest.raises(NoHealthyInstance):
                rt.route(req, views, 0.01 * j)
            continue
        assert rt.route(req, views, 0.01 * j) in healthy


def test_stale_views_are_compensated_by_own_dispatches() -> None:
    m = toy_model()
    stale = [view(i, m, received=0) for i in range(4)]  # all idle, taken long ago
    rt = make_router("min-load")
    picks = [rt.route(R(j, 0.0, prompt=2000), stale, 0.0) for j in range(8)]
    assert sorted(picks) == [0, 0, 1, 1, 2, 2, 3, 3]  # spread, not 8 x instance 0
    # a fresh view that already includes instance 0's two dispatches replaces them
    fresh = [view(0, m, received=2, queue=[(2000, 0, 1.0, 0.0, 1.0, 0.1, 0)] * 2)] + stale[1:]
    eff = rt._effective(fresh[0])
    assert len(eff.prefill) == 2  # the view's two, not 2 + 2 pending


def test_compensation_without_received_counts_uses_time() -> None:
    m = toy_model()
    rt = make_router("min-load")
    views = [view(i, m, taken_at=0.0) for i in range(2)]
    a = rt.route(R(0, 0.5, prompt=3000), views, 0.5)
    b = rt.route(R(1, 0.6, prompt=3000), views, 0.6)
    assert a != b
    later = [view(i, m, taken_at=1.0) for i in range(2)]  # taken after both dispatches
    assert all(len(rt._effective(v).prefill) == 0 for v in later)


def test_go_incremental_gain_negative_when_pushing_others_late() -> None:
    m = LatencyModel(c0=0.005, c1=0.0, c2=1e-3, c3=0.0, c4=0.0, d1=1e-4, d2=0.0, kv_blocks=10**5)
    rt = make_router("go")
    # a queued request that just meets its deadline; r is denser (weight 5) so it goes first
    # and pushes the queued one late: gain +5 (r on time) -1 (queued one now late) = 4
    queued = (400, 0, 1.0, 0.0, 0.5, 0.1, 0)
    load = rt._effective(view(0, m, queue=[queued]))
    g = rt.incremental_gain(R(9, 0.0, prompt=100, w=5.0, ttft=0.2), load, 0.0)
    assert g == pytest.approx(4.0)
    # a request that cannot make its own deadline and delays the queue: negative gain
    g = rt.incremental_gain(R(9, 0.0, prompt=100, w=1.0, ttft=0.01), load, 0.0)
    assert g < 0


def test_static_partition_blocks_follow_load_shares() -> None:
    rt = make_router("static-partition", shares={"high": 3.0, "low": 1.0})
    assert rt.partition(8) == {"high": {0, 1, 2, 3, 4, 5}, "low": {6, 7}}
    assert rt.partition(2) == {"high": {0}, "low": {1}}
    m = toy_model()
    views = [view(i, m) for i in range(8)]
    rt.set_instances(8)
    assert rt.route(R(0, cls="low"), views, 0.0) in {6, 7}
    assert rt.route(R(1, cls="high"), views, 0.0) in set(range(6))
    with pytest.raises(ValueError, match="instances"):
        rt.partition(1)


def _overbalance(router: str) -> dict[int, Request]:
    """The reference's over-balancing example on two instances (1 ms per prompt token)."""
    m = LatencyModel(c0=0.002, c1=0.0, c2=1e-3, c3=0.0, c4=0.0, d1=1e-4, d2=0.0,
                     kv_blocks=10**5)
    reqs = [
        R(0, 0.000, prompt=300, ttft=1.0),  # makes instance 0 moderately loaded
        R(1, 0.010, prompt=400, ttft=1.5),  # long, relaxed: fits behind request 0
        R(2, 0.020, prompt=500, ttft=0.6, w=2.0, cls="high"),  # long, high priority, tight
    ]
    engines = [make_scheduler("slide", m) for _ in range(2)]
    simulate(reqs, engines, router=make_router(router))
    return {r.id: r for r in reqs}


def test_go_avoids_over_balancing_where_min_load_fails() -> None:
    go = _overbalance("go")
    assert go[1].instance == 0 and go[2].instance == 1  # long request packed, idle one reserved
    assert all(r.status == Status.FINISHED and r.first_on_time for r in go.values())
    ml = _overbalance("min-load")
    assert ml[1].instance == 1  # min-load sends the long request to the idle instance
    assert not ml[2].first_on_time  # and the high-priority long request misses its TTFT


@pytest.mark.parametrize("router", router_names())
def test_every_router_colocated_and_disaggregated(router: str) -> None:
    base = dict(trace="azure-conv", rate=30.0, count=300, policy="slide", router=router, seed=2)
    co = run(SimConfig(**base, instances=3))
    assert co["router"] == router and co["instances"] == 3 and co["finished"] == 300
    assert len(co["per_instance"]) == 3
    pd = run(SimConfig(**base, mode="disaggregated", prefill_instances=2, decode_instances=2))
    assert pd["finished"] == 300 and pd["mode"] == "disaggregated"
    assert [x["role"] for x in pd["per_instance"]] == ["prefill"] * 2 + ["decode"] * 2


def test_kv_transfer_time_shows_in_ttft() -> None:
    base = dict(trace="azure-conv", rate=10.0, count=200, policy="slide", router="min-load",
                mode="disaggregated", prefill_instances=1, decode_instances=1)
    fast = run(SimConfig(**base, kv_link_gbytes_s=1000.0, kv_link_latency_ms=0.0))
    slow = run(SimConfig(**base, kv_link_gbytes_s=0.5, kv_link_latency_ms=0.0))
    # llama3.1-8b: 128 KiB of KV per token; ~1,000-token prompts at 0.5 GB/s take ~0.26 s
    assert slow["ttft_p50"] - fast["ttft_p50"] > 0.1


def test_routed_simulation_is_deterministic() -> None:
    for router in ("random", "power-of-two", "go"):
        cfg = SimConfig(trace="azure-conv", rate=40.0, count=400, instances=4, router=router,
                        view_interval_ms=50.0, seed=5)
        a, b = run(cfg), run(cfg)
        a.pop("sim_wall_s")
        b.pop("sim_wall_s")
        assert a == b


def test_stale_views_run_and_differ_from_exact() -> None:
    reqs = random_requests(3, 400, 200.0)
    copies = [[Request(r.id, r.arrival, r.prompt_len, r.output_len, r.ttft_slo, r.tpot_slo,
                       r.weight, r.priority, r.cls) for r in reqs] for _ in range(2)]
    placements = []
    for interval, rs in zip((0.0, 0.5), copies):
        engines = [make_scheduler("slide", toy_model()) for _ in range(4)]
        simulate(rs, engines, router=make_router("min-load"), view_interval=interval)
        assert all(r.status == Status.FINISHED for r in rs)
        placements.append([r.instance for r in rs])
    assert placements[0] != placements[1]


def test_unknown_router_and_bad_params() -> None:
    with pytest.raises(ValueError, match="available"):
        make_router("nope")
    with pytest.raises(ValueError, match="alpha"):
        make_router("go", alpha=0)
    with pytest.raises(ValueError, match="shares"):
        make_router("static-partition")
    with pytest.raises(ValueError):
        SimConfig(router="nope")


def test_view_of_reports_engine_load() -> None:
    eng = make_scheduler("slide", toy_model())
    eng.add_request(R(0, prompt=100, out=5), 0.0)
    out = eng.schedule(0.0)
    eng.update_from_output(out, out.duration)
    eng.add_request(R(1, prompt=50), 0.1)
    v = view_of(eng, 3, 0.1)
    assert v.index == 3 and v.load.decodes == 1 and len(v.load.prefill) == 1
    assert v.load.received == 2 and v.load.free_blocks == eng.kv.free
