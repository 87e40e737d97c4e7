"""PolyServe in the simulator (issue 12, "Invariants (hypothesis)"): on random small workloads
with 2-3 tiers, every request ends exactly once; at every router call each instance is in exactly
one tier or the pool and only tier members hold requests; a request is pending in the router, on
exactly one instance, or done; server-seconds add up. Plus the ``run()`` path with a scale-up
delay: deterministic, with per-tier scale-ups and scale-downs in the result."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import toy_model

from proserve.cluster.base import make_router
from proserve.cluster.polyserve import PolyServe
from proserve.core.request import Request, Status
from proserve.engine.base import make_scheduler
from proserve.sim.run import SimConfig, run
from proserve.sim.simulator import simulate

DONE = (Status.FINISHED, Status.REJECTED)


class Probe:
    """Wraps a PolyServe router's fleet API (offer, retry, tick, including the calls they make
    to each other) and checks the invariants before and after every call."""

    def __init__(self, rt: PolyServe, engines) -> None:
        self.rt = rt
        self.engines = engines
        self.offered: list[Request] = []
        self.calls = 0
        self.last_now = -math.inf
        self.max_pending = 0
        self.end_at: float | None = None
        self.counts: list[tuple[float, list[int]]] = []
        for name in ("offer", "retry", "tick"):
            setattr(rt, name, self._wrap(name, getattr(rt, name)))
        stats = rt.fleet_stats

        def fleet_stats(now: float):
            self.end_at = now
            return stats(now)

        rt.fleet_stats = fleet_stats

    def _wrap(self, name: str, fn):
        # offer(req, views, now), retry(views, now, freed=None), tick(views, now)
        at = 2 if name == "offer" else 1

        def call(*args, **kw):
            now = kw["now"] if "now" in kw else args[at]
            assert now >= self.last_now, f"{name}: time went back ({now} < {self.last_now})"
            self.last_now = now
            self.check(now, [])
            if name == "offer":
                req = args[0]
                assert all(r.id != req.id for r in self.offered), f"request {req.id} offered twice"
                self.offered.append(req)
            placed = fn(*args, **kw)
            self.calls += 1
            self.check(now, placed)
            self.max_pending = max(self.max_pending, len(self.rt.pending_requests()))
            self.counts.append((now, self.rt.fleet.counts()))
            return placed

        return call

    def check(self, now: float, placed) -> None:
        f = self.rt.fleet
        f.check_invariants()  # every instance in exactly one tier or the pool
        held: dict[int, int] = {}
        for k, eng in enumerate(self.engines):
            ids = [r.id for r in eng.requests()]
            if f.tier_of[k] < 0:
                assert not eng.has_unfinished(), f"pool instance {k} holds {ids} at t={now}"
            for i in ids:
                assert i not in held, f"request {i} on instances {held[i]} and {k}"
                held[i] = k
        pend = [r.id for r in self.rt.pending_requests()]
        assert len(set(pend)) == len(pend), f"a request pending twice: {pend}"
        assert not set(pend) & set(held), "a request both pending and on an instance"
        placed_ids = [r.id for r, _, _ in placed]
        assert len(set(placed_ids)) == len(placed_ids)
        for r, k, d in placed:
            assert d == -1
            assert f.tier_of[k] >= 0 and f.ready_at[k] <= now, \
                f"request {r.id} placed on instance {k} (tier {f.tier_of[k]}, ready at " \
                f"{f.ready_at[k]}) at t={now}"
        offered = {r.id for r in self.offered}
        assert set(held) <= offered and set(pend) <= offered
        for r in self.offered:
            where = (r.id in pend) + (r.id in held) + (r.id in placed_ids) + (r.status in DONE)
            assert where == 1, f"request {r.id} (status {r.status.name}) is in {where} places " \
                f"at t={now}: pending {r.id in pend}, held {r.id in held}, placed " \
                f"{r.id in placed_ids}"


def integral(timeline, start_counts: list[int], t0: float, t1: float) -> list[float]:
    """Instance-seconds per tier of a piecewise-constant instances-per-tier timeline."""
    acc = [0.0] * len(start_counts)
    prev_t, prev = t0, list(start_counts)
    for t, c, *_ in timeline:
        for j, x in enumerate(prev):
            acc[j] += x * (t - prev_t)
        prev_t, prev = t, list(c)
    for j, x in enumerate(prev):
        acc[j] += x * (t1 - prev_t)
    return acc


def run_probed(reqs, tiers, n_eng, *, kv_blocks=4000, view_interval=0.0, drain_s=300.0,
               **router_kw):
    engines = [make_scheduler("dynamic-chunk", toy_model(kv_blocks=kv_blocks))
               for _ in range(n_eng)]
    rt = make_router("polyserve", tiers=tiers, **router_kw)
    assert isinstance(rt, PolyServe)
    probe = Probe(rt, engines)
    res = simulate(reqs, engines, router=rt, view_interval=view_interval, drain_s=drain_s)
    check_result(res, reqs, rt, probe, n_eng, router_kw.get("initial") or {})
    return res, rt, probe


def check_result(res, reqs, rt: PolyServe, probe: Probe, n_eng: int, initial: dict) -> None:
    # every request ended exactly once (simulate raises otherwise), as FINISHED or UNFINISHED
    assert len(res.requests) == len(reqs)
    assert all(r.status in (Status.FINISHED, Status.UNFINISHED) for r in res.requests)
    if res.drained:
        assert all(r.status == Status.FINISHED for r in res.requests)
    assert not rt.has_pending() or not res.drained
    for r in res.requests:
        if r.status == Status.FINISHED:
            assert r.generated == r.output_len
    assert {r.id for r in probe.offered} == {r.id for r in reqs}  # each offered once
    # server-seconds
    fleet = res.extra["fleet"]
    names = [t.name for t in rt.tiers]
    per = fleet["server_seconds_per_tier"]
    assert list(per) == names
    assert sum(per.values()) == pytest.approx(fleet["server_seconds"], abs=1e-9)
    assert probe.end_at is not None and probe.end_at >= res.end_time - 1e-12
    t0 = reqs[0].arrival
    span = probe.end_at - t0
    assert all(0.0 <= v <= n_eng * span + 1e-9 for v in per.values())
    assert fleet["server_seconds"] <= n_eng * span + 1e-9  # one tier at a time per instance
    start = [initial.get(n, 0) for n in names]
    want = integral(rt.fleet.timeline, start, t0, probe.end_at)
    assert [per[n] for n in names] == pytest.approx(want, abs=1e-9)
    # the same integral from the counts seen after each router call (no joins happen elsewhere)
    assert [per[n] for n in names] == pytest.approx(
        integral([(t, c) for t, c in probe.counts], start, t0, probe.end_at), abs=1e-9)
    if hasattr(rt.fleet, "instance_seconds"):  # the fleet's own membership-change record
        assert rt.fleet.instance_seconds(t0, probe.end_at) == pytest.approx(
            fleet["server_seconds"], abs=1e-9)
    for n in names:
        assert fleet["instances_per_tier"][n] == fleet["scale_ups"][n] - fleet["scale_downs"][n]
        assert fleet["scale_ups"][n] >= initial.get(n, 0)
    assert sum(fleet["instances_per_tier"].values()) <= n_eng
    assert sum(fleet["pending"].values()) == sum(
        1 for r in res.requests if r.status == Status.UNFINISHED and r.instance < 0)


@st.composite
def scenario(draw):
    n_tiers = draw(st.integers(2, 3))
    tpots = sorted(draw(st.lists(st.sampled_from([0.012, 0.02, 0.035, 0.06, 0.1, 0.25]),
                                 min_size=n_tiers, max_size=n_tiers, unique=True)))
    names = ["gold", "silver", "bronze"][:n_tiers]
    tiers = [(n, t, draw(st.floats(1.0, 100.0))) for n, t in zip(names, tpots)]
    n = draw(st.integers(1, 24))
    gaps = draw(st.lists(st.floats(0.0, 0.25), min_size=n, max_size=n))
    rows = draw(st.lists(st.tuples(st.integers(0, n_tiers - 1), st.integers(1, 2500),
                                   st.integers(1, 80), st.floats(0.02, 2.0)),
                         min_size=n, max_size=n))
    t = 0.0
    reqs = []
    for i, (gap, (tier, prompt, out, ttft)) in enumerate(zip(gaps, rows)):
        t += gap
        reqs.append(Request(id=i, arrival=t, prompt_len=prompt, output_len=out, ttft_slo=ttft,
                            tpot_slo=tpots[tier], priority=tier, cls=names[tier]))
    n_eng = draw(st.integers(2, 6))
    initial = draw(st.one_of(st.just(None), st.fixed_dictionaries(
        {names[0]: st.integers(0, 1), names[-1]: st.integers(0, 1)})))
    kw = dict(
        check_period_s=draw(st.sampled_from([0.05, 0.2, 1.0])),
        empty_checks=draw(st.integers(1, 3)),
        scale_up_delay_s=draw(st.sampled_from([0.0, 0.0, 0.05, 0.5])),
        min_chunk=draw(st.sampled_from([1, 32, 128])),
        margin=draw(st.sampled_from([0.9, 1.0])),
        initial=initial,
        kv_blocks=draw(st.sampled_from([300, 4000])),  # 300 blocks: 4,800 tokens, KV pressure
        view_interval=draw(st.sampled_from([0.0, 0.0, 0.05])),
        drain_s=draw(st.sampled_from([0.05, 1.0, 300.0])),
    )
    return reqs, tiers, n_eng, kw


@settings(max_examples=150, deadline=None)
@given(sc=scenario())
def test_polyserve_simulation_invariants(sc) -> None:
    reqs, tiers, n_eng, kw = sc
    _, _, probe = run_probed(reqs, tiers, n_eng, **kw)
    assert probe.calls >= len(reqs)


def burst(n: int, *, tiers=("a", "b"), tpots=(0.02, 0.1), prompt=1500, out=40, gap=0.01):
    return [Request(id=i, arrival=i * gap, prompt_len=prompt, output_len=out, ttft_slo=0.5,
                    tpot_slo=tpots[i % len(tiers)], priority=i % len(tiers),
                    cls=tiers[i % len(tiers)]) for i in range(n)]


def test_burst_scales_up_pends_and_scales_down() -> None:
    """A fixed scenario that reaches every rung: scale-ups, pending, scale-downs (checks above
    are not vacuous)."""
    tiers = [("a", 0.02, 40), ("b", 0.1, 40)]
    res, rt, probe = run_probed(burst(40), tiers, 3, kv_blocks=300, check_period_s=0.2,
                                scale_up_delay_s=0.05)
    fleet = res.extra["fleet"]
    assert res.drained and all(r.status == Status.FINISHED for r in res.requests)
    assert probe.max_pending > 0
    assert sum(fleet["scale_ups"].values()) >= 2 and fleet["scale_downs"] == fleet["scale_ups"]
    assert fleet["instances_per_tier"] == {"a": 0, "b": 0}
    assert all(r.instance >= 0 for r in res.requests)


def test_requests_pending_at_drain_end_are_unfinished() -> None:
    tiers = [("a", 0.02, 40), ("b", 0.1, 40)]
    res, rt, probe = run_probed(burst(30, gap=0.0), tiers, 2, kv_blocks=300, drain_s=0.05,
                                scale_up_delay_s=0.5)
    assert not res.drained
    left = [r for r in res.requests if r.status == Status.UNFINISHED]
    assert left and any(r.instance < 0 and r.generated == 0 for r in left)
    assert sum(res.extra["fleet"]["pending"].values()) > 0


def _dump(res: dict) -> str:
    """The result as JSON without the host-dependent wall time and the in-process objects
    (``keep_requests``: keys starting with an underscore)."""
    return json.dumps({k: v for k, v in res.items()
                       if k != "sim_wall_s" and not k.startswith("_")}, sort_keys=True)


def test_run_with_scale_up_delay_is_deterministic_with_fleet_stats() -> None:
    cfg = SimConfig(trace="azure-conv", rate=4.0, count=120, instances=3, router="polyserve",
                    classes="a:tpot=20ms,ttft=5x;b:tpot=60ms,ttft=5x",
                    router_args={"scale_up_delay_s": 2.0}, seed=1)
    a, b = run(cfg, keep_requests=True), run(cfg)
    reqs = a["_requests"]
    assert _dump(a) == _dump(b)
    assert a["policy"] == "dynamic-chunk" and a["router"] == "polyserve"
    assert a["config"]["router_args"] == {"scale_up_delay_s": 2.0}
    fleet = a["fleet"]
    for key in ("scale_ups", "scale_downs", "server_seconds_per_tier", "instances_per_tier",
                "pending"):
        assert set(fleet[key]) == {"a", "b"}, key
    assert all(isinstance(v, int) and v >= 0 for v in fleet["scale_ups"].values())
    assert all(isinstance(v, int) and v >= 0 for v in fleet["scale_downs"].values())
    assert sum(fleet["scale_ups"].values()) >= 1
    for n in ("a", "b"):
        assert fleet["instances_per_tier"][n] == fleet["scale_ups"][n] - fleet["scale_downs"][n]
    assert a["server_seconds"] == fleet["server_seconds"]
    assert sum(fleet["server_seconds_per_tier"].values()) == pytest.approx(a["server_seconds"])
    assert a["drained"] and a["finished"] == a["requests"] == 120
    # the first request found an empty fleet: it waited the whole start-up delay
    first = min(reqs, key=lambda r: (r.arrival, r.id))
    assert first.ttft() >= 2.0
    c = run(cfg.model_copy(update={"router_args": {}}), keep_requests=True)
    first = min(c["_requests"], key=lambda r: (r.arrival, r.id))
    assert first.ttft() < 2.0
