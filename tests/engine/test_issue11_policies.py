"""Issue 11: slide-bounded's bounded late share, FairBatching/EDF budgets over feasible decodes
only, `slide` as published (anchored), and vLLM's per-device engine caps."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import random_requests, toy_model

from proserve.core.metrics import summarize
from proserve.core.request import Request
from proserve.engine import make_scheduler
from proserve.engine.base import vllm_batch_defaults
from proserve.latency.model import LatencyModel
from proserve.latency.profiles import load_profile
from proserve.sim.simulator import simulate


def R(i, arrival=0.0, prompt=100, out=10, w=1.0, ttft=1.0, tpot=0.05):
    return Request(id=i, arrival=arrival, prompt_len=prompt, output_len=out, ttft_slo=ttft,
                   tpot_slo=tpot, weight=w, priority=0 if w > 1 else 1,
                   cls="high" if w > 1 else "low")


def batch(out) -> list[tuple[int, int]]:
    return [(r.id, q) for r, q in zip(out.reqs, out.num_tokens)]


# ---------------------------------------------------------------- slide-bounded
def test_late_prefill_gets_exactly_its_slice_first_then_gain_order() -> None:
    m = toy_model()
    eng = make_scheduler("slide-bounded", m)
    late = R(0, arrival=0.0, prompt=4000, ttft=0.1)  # 9.9 s past its deadline at t=10
    fresh = R(1, arrival=9.95, prompt=100, w=2.0, ttft=0.2)  # feasible: sets the budget
    for r in (late, fresh):
        eng.add_request(r, r.arrival)
    now = 10.0
    _, budget = eng.ordered(now)
    assert budget == pytest.approx(fresh.arrival + fresh.ttft_slo - now)  # 0.15 s
    out = eng.schedule(now)
    # lateness 9.9 s >= late_horizon (4) x 0.1 s: the full share, 25% of the step's budget
    assert eng.last_share == pytest.approx(0.25)
    q = m.max_chunk(0.25 * (budget - m.c0), 0, 4000)
    assert 50 <= q < 4000
    assert batch(out) == [(0, q), (1, 100)]
    assert out.duration <= budget + 1e-12


def test_share_ramps_with_lateness_and_is_zero_without_late_work() -> None:
    m = toy_model()
    eng = make_scheduler("slide-bounded", m)
    late = R(0, arrival=0.0, prompt=400, ttft=0.1)
    eng.add_request(late, 0.0)
    eng.add_request(R(1, arrival=0.25, prompt=50, ttft=1.0), 0.25)
    eng.schedule(0.3)  # 0.2 s late = half of late_horizon x TTFT SLO
    assert eng.last_share == pytest.approx(0.25 * 0.2 / (4 * 0.1))
    eng2 = make_scheduler("slide-bounded", m)
    eng2.add_request(R(2, prompt=400, ttft=5.0), 0.0)
    eng2.schedule(0.0)
    assert eng2.last_share == 0.0


def test_without_late_work_it_is_slidebatching_without_the_guard() -> None:
    m = toy_model()
    reqs_a = random_requests(3, 40, rate=50.0, ttft=5.0, tpot=0.5)
    reqs_b = random_requests(3, 40, rate=50.0, ttft=5.0, tpot=0.5)
    a, b = make_scheduler("slide-bounded", m), make_scheduler("slide-nostarve", m)
    for ra, rb in zip(reqs_a, reqs_b):
        a.add_request(ra, ra.arrival)
        b.add_request(rb, rb.arrival)
    now = max(r.arrival for r in reqs_a)
    for _ in range(5):  # deadlines of 5 s: nothing is late in these steps
        oa, ob = a.schedule(now), b.schedule(now)
        assert batch(oa) == batch(ob) and a.last_share == 0.0
        a.update_from_output(oa, now + oa.duration)
        b.update_from_output(ob, now + ob.duration)
        now += oa.duration


def test_late_work_always_progresses_so_the_longest_wait_is_bounded() -> None:
    """Sustained overload: without a guard the least dense requests wait until load stops;
    the bounded share keeps serving them, so the longest wait is shorter."""
    m = toy_model()
    waits = {}
    for policy in ("slide-nostarve", "slide-bounded"):
        reqs = random_requests(11, 1500, rate=40.0, ttft=0.3, tpot=0.03)
        simulate(reqs, [make_scheduler(policy, m)], drain_s=600)
        waits[policy] = summarize(reqs)["max_wait_s"]
    assert waits["slide-bounded"] < 0.8 * waits["slide-nostarve"], waits


def test_max_wait_raises_the_share_to_what_the_late_work_needs_before_its_cap() -> None:
    """Two late prefills: the share is the largest (work of the k oldest) / (time to the k-th's
    cap) when that is above the smooth share; a request past its cap, or one that would need
    more than max_wait_share, is given up on (the smooth share only)."""
    m = toy_model()
    eng = make_scheduler("slide-bounded", m, max_wait_s=2.0)
    a = R(0, arrival=0.0, prompt=2000, ttft=0.1)
    b = R(1, arrival=0.5, prompt=3000, ttft=0.1)
    for r in (a, b):
        eng.add_request(r, r.arrival)
    now = 1.9
    wa, wb = m.prefill_time(2000), m.prefill_time(3000)
    need = max(wa / (2.0 - now), (wa + wb) / (2.5 - now))
    assert 0.25 < need < 0.9  # above the full smooth share, below the cap: the new bound acts
    eng.schedule(now)
    assert eng.last_share == pytest.approx(need)
    for arrival, cap_share in ((0.0, 0.9), (1.0, 0.6)):  # past its cap; needs 0.88 > 0.6
        e = make_scheduler("slide-bounded", m, max_wait_s=2.0 if arrival else 1.0,
                           max_wait_share=cap_share)
        e.add_request(R(2, arrival=arrival, prompt=2000, ttft=0.1), arrival)
        e.schedule(arrival + 1.95)
        assert e.last_share == pytest.approx(0.25)  # given up on: the smooth share
    eng3 = make_scheduler("slide-bounded", m)  # off by default
    for r in (R(0, arrival=0.0, prompt=2000, ttft=0.1), R(1, arrival=0.5, prompt=3000, ttft=0.1)):
        eng3.add_request(r, r.arrival)
    eng3.schedule(now)
    assert eng3.last_share == pytest.approx(0.25)


def test_max_wait_shortens_the_longest_wait_and_never_collapses_into_fcfs() -> None:
    """Overload just past capacity: the cap shortens the longest wait at a small cost in TDG.
    Far past it (no cap can be met): the requests it cannot save are given up on, so TDG stays
    near the uncapped policy's instead of collapsing (counting them gave 50% of it)."""
    m = toy_model()

    def run(rate, **kw):
        reqs = random_requests(5, 600, rate=rate, ttft=0.2, tpot=0.03)
        simulate(reqs, [make_scheduler("slide-bounded", m, **kw)], drain_s=600)
        return summarize(reqs)

    base, capped = run(30.0), run(30.0, max_wait_s=3.0)
    assert capped["max_wait_s"] < 0.85 * base["max_wait_s"], (capped, base)
    assert capped["tdg_ratio"] > base["tdg_ratio"] - 0.05
    base, capped = run(40.0), run(40.0, max_wait_s=1.5)
    assert capped["tdg_ratio"] > 0.85 * base["tdg_ratio"], (capped["tdg_ratio"], base["tdg_ratio"])


def test_bad_parameters_are_errors() -> None:
    for kw in ({"late_share": 1.0}, {"late_share": -0.1}, {"late_horizon": 0},
               {"max_wait_s": 0.0}, {"max_wait_s": 1.0, "max_wait_share": 1.0},
               {"late_share": 0.5, "max_wait_share": 0.4, "max_wait_s": 1.0}):
        with pytest.raises(ValueError):
            make_scheduler("slide-bounded", toy_model(), **kw)


# ---------------------------------------------------------------- published slide
def test_slide_is_the_published_form_anchored_and_guarded() -> None:
    s = make_scheduler("slide", toy_model())
    r = R(0, prompt=100, ttft=1.0, tpot=0.05)
    s.add_request(r, 0.0)
    out = s.schedule(0.0)
    s.update_from_output(out, 0.2)  # first token at 0.2, 0.8 s before its TTFT deadline
    assert s.tau_s == 1.0
    # anchored: the next deadline is first token + 1 TPOT, not arrival + TTFT + 1 TPOT
    assert s.table.deadline(r) == pytest.approx(0.2 + 0.05)
    strict = make_scheduler("slide", toy_model(), deadline_mode="strict")
    assert strict.table.deadline(r) == pytest.approx(1.0 + 0.05)


# ---------------------------------------------------------------- fair baselines
@pytest.mark.parametrize("policy", ["fairbatching", "edf"])
@pytest.mark.parametrize("small_queue", [48, 0])  # the Python and the numpy path
def test_budget_ignores_decodes_that_are_already_late(policy: str, small_queue: int) -> None:
    m = toy_model()
    eng = make_scheduler(policy, m, small_queue=small_queue)
    ok = R(0, prompt=100, ttft=1.0, tpot=0.05)
    doomed = R(1, prompt=100, ttft=0.01, tpot=0.001)
    for r in (ok, doomed):
        eng.add_request(r, 0.0)
    out = eng.schedule(0.0)
    eng.update_from_output(out, out.duration)
    assert ok.generated == 1 and doomed.generated == 1  # both decode-stage now
    now = 0.5
    _, budget = eng.ordered(now)
    # the late decode (deadline 0.011) cannot be saved; the budget is the feasible one's slack
    assert budget == pytest.approx(ok.arrival + ok.ttft_slo + ok.tpot_slo - now)


def test_budget_unbounded_when_no_decode_can_make_it() -> None:
    eng = make_scheduler("fairbatching", toy_model())
    r = R(0, prompt=100, ttft=0.01, tpot=0.001)
    eng.add_request(r, 0.0)
    out = eng.schedule(0.0)
    eng.update_from_output(out, out.duration)
    assert eng.ordered(1.0)[1] == math.inf


# ---------------------------------------------------------------- engine caps
def test_caps_follow_vllm_defaults_for_the_profiles_device() -> None:
    h100 = load_profile("llama3.1-8b@h100")
    assert vllm_batch_defaults(h100)[:2] == (8192, 1024)
    e = make_scheduler("slide-bounded", h100)
    assert (e.max_num_batched_tokens, e.max_num_seqs) == (8192, 1024)
    # a registration's own budget wins (Sarathi's fixed 2048), the device sets the rest
    s = make_scheduler("sarathi-priority", h100)
    assert (s.max_num_batched_tokens, s.max_num_seqs) == (2048, 1024)
    # explicit arguments win over both
    assert make_scheduler("slide", h100, max_num_seqs=7).max_num_seqs == 7

    def with_gpu(name: str, gib: float) -> LatencyModel:
        return LatencyModel(**{**h100.coeffs(), "kv_blocks": 100, "meta": {
            "gpu": {"name": name, "mem_bytes": int(gib * 1024**3)}}})

    assert vllm_batch_defaults(with_gpu("A100-SXM-80GB", 80))[:2] == (2048, 256)
    assert vllm_batch_defaults(with_gpu("L4", 24))[:2] == (2048, 256)
    assert vllm_batch_defaults(with_gpu("H200", 141))[:2] == (8192, 1024)
    cpu = LatencyModel(**{**h100.coeffs(), "meta": {"backend": "vLLM server on CPU"}})
    assert vllm_batch_defaults(cpu)[:2] == (2048, 128)
    assert vllm_batch_defaults(toy_model())[:2] == (8192, 256)  # no device: the fallback


def test_small_queue_and_numpy_paths_form_the_same_batches() -> None:
    """The Python path (short queues) and the numpy path must agree step for step, late
    slices included, on an overloaded queue."""
    m = toy_model()
    engines = [make_scheduler("slide-bounded", m, small_queue=q) for q in (10**9, 0)]
    copies = [random_requests(21, 300, rate=400.0, ttft=0.05, tpot=0.03) for _ in engines]
    for e, reqs in zip(engines, copies):
        for r in reqs:
            e.add_request(r, r.arrival)
    now = max(r.arrival for r in copies[0])
    shares = 0
    for _ in range(60):
        outs = [e.schedule(now) for e in engines]
        assert batch(outs[0]) == batch(outs[1])
        assert [r.id for r in outs[0].preempted] == [r.id for r in outs[1].preempted]
        assert engines[0].last_share == engines[1].last_share
        shares += engines[0].last_share > 0
        for e, o in zip(engines, outs):
            e.update_from_output(o, now + o.duration)
        now += outs[0].duration
    assert shares > 0  # the late slice was exercised


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 30.0), st.integers(1, 8000), st.floats(0.05, 5.0)),
                min_size=1, max_size=8),
       st.floats(0.5, 60.0), st.floats(0.3, 0.95), st.floats(0.0, 40.0))
def test_the_late_share_never_exceeds_its_bound(late, cap, cap_share, now) -> None:
    """Whatever the late work: 0 <= share <= max(late_share, max_wait_share), so at least
    1 - max_wait_share of every step stays in gain order (the policy cannot become FCFS)."""
    eng = make_scheduler("slide-bounded", toy_model(), max_wait_s=cap, max_wait_share=cap_share)
    reqs = sorted((R(i, arrival=a, prompt=p, ttft=t) for i, (a, p, t) in enumerate(late)),
                  key=lambda r: (r.arrival, r.id))
    share = eng._share(reqs, max(now, reqs[-1].arrival))
    assert 0.0 <= share <= max(eng.late_share, cap_share) + 1e-12


def test_a_large_late_share_needs_no_max_wait_share_when_the_cap_is_off() -> None:
    """max_wait_share is checked against late_share only when max_wait_s is set: late_share in
    [0.9, 1) was valid before max_wait_s existed and stays so."""
    eng = make_scheduler("slide-bounded", toy_model(), late_share=0.95)
    assert eng.late_share == 0.95 and eng.max_wait_s is None
