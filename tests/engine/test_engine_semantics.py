"""Policy-specific semantics: vLLM v1, Sarathi, VTC, EDF/FairBatching and SlideBatching."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import toy_model

from proserve.core.request import Request, Status
from proserve.engine import make_scheduler, policy_names
from proserve.engine.kv import BlockManager, KVCapacityError


def R(i, arrival=0.0, prompt=100, out=10, prio=1, w=1.0, ttft=1.0, tpot=0.05, cls=None):
    return Request(id=i, arrival=arrival, prompt_len=prompt, output_len=out, ttft_slo=ttft,
                   tpot_slo=tpot, weight=w, priority=prio,
                   cls=cls or ("high" if prio == 0 else "low"))


def step(eng, now):
    out = eng.schedule(now)
    eng.update_from_output(out, now + out.duration)
    return out


# ---------------------------------------------------------------- KV manager
def test_block_manager_accounting() -> None:
    kv = BlockManager(10, 16)
    r = R(0)
    assert kv.allocate(r, 17) and r.blocks == 2 and kv.free == 8
    assert kv.allocate(r, 32) and r.blocks == 2  # still fits in 2 blocks
    assert not kv.allocate(r, 16 * 11) and r.blocks == 2  # no partial allocation
    kv.release(r)
    assert kv.free == 10 and r.blocks == 0
    r.blocks = 3
    with pytest.raises(KVCapacityError):
        kv.release(r)


# ---------------------------------------------------------------- vLLM v1
def test_vllm_chunked_prefill_and_token_budget() -> None:
    eng = make_scheduler("vllm-fcfs", toy_model(), max_num_batched_tokens=256)
    a, b = R(0, prompt=600), R(1, prompt=100)
    eng.add_request(a, 0.0)
    eng.add_request(b, 0.0)
    out = step(eng, 0.0)
    assert [(r.id, q) for r, q in zip(out.reqs, out.num_tokens)] == [(0, 256)]
    out = step(eng, 1.0)
    assert [(r.id, q) for r, q in zip(out.reqs, out.num_tokens)] == [(0, 256)]
    out = step(eng, 2.0)  # a finishes its prompt (88 left), b admitted with the remaining budget
    assert [(r.id, q) for r, q in zip(out.reqs, out.num_tokens)] == [(0, 88), (1, 100)]
    assert a.generated == 1 and b.generated == 1


def test_vllm_priority_waiting_never_preempts_running() -> None:
    # KV for exactly one request: a low-priority request runs, a high-priority one waits (#40004)
    eng = make_scheduler("vllm-priority", toy_model(kv_blocks=8))
    low = R(0, prompt=100, out=20, prio=1)
    eng.add_request(low, 0.0)
    step(eng, 0.0)
    high = R(1, arrival=0.01, prompt=100, out=20, prio=0)
    eng.add_request(high, 0.01)
    for k in range(5):
        out = step(eng, 0.1 + k)
        assert high not in out.reqs and not out.preempted
    assert low.status == Status.RUNNING and high.status == Status.WAITING


def test_vllm_fcfs_preempts_newest_and_priority_preempts_worst() -> None:
    for policy, victim_id in (("vllm-fcfs", 2), ("vllm-priority", 1)):
        eng = make_scheduler(policy, toy_model(kv_blocks=21))  # 336 tokens
        reqs = [R(0, 0.0, prompt=96, out=200, prio=0), R(1, 0.001, prompt=96, out=200, prio=2),
                R(2, 0.002, prompt=96, out=200, prio=1)]
        for r in reqs:
            eng.add_request(r, r.arrival)
        pre = []
        t = 0.0
        while not pre and t < 50:
            out = step(eng, t)
            pre = out.preempted
            t += 0.1
        assert [v.id for v in pre] == [victim_id], policy
        v = pre[0]
        assert v.computed == 0 and v.blocks == 0 and v.preemptions == 1


def test_sarathi_schedules_decodes_before_prefills() -> None:
    eng = make_scheduler("sarathi-fcfs", toy_model(), max_num_batched_tokens=64)
    a = R(0, prompt=10, out=50)
    eng.add_request(a, 0.0)
    step(eng, 0.0)  # a prefilled, now decoding
    b = R(1, arrival=0.5, prompt=500)
    eng.add_request(b, 0.5)
    out = step(eng, 0.5)
    assert out.reqs[0] is a and out.num_tokens == [1, 63]


def test_vtc_admits_least_served_class() -> None:
    eng = make_scheduler("vtc", toy_model(), max_num_seqs=1)
    a2, b1 = R(0, 0.0, cls="a"), R(1, 0.1, cls="b")
    eng.add_request(a2, 0.0)
    eng.add_request(b1, 0.1)
    # b was lifted to a's counter when it became backlogged (no credit for idling)
    assert eng.waiting.counters["b"] == eng.waiting.counters["a"]
    # class "a" has since been served a lot: the later "b" request jumps ahead of "a"
    eng.waiting.counters.update({"a": 1e6, "b": 0.0})
    out = step(eng, 0.2)
    assert out.reqs == [b1]
    assert eng.waiting.counters["b"] == pytest.approx(100.0)  # 100 prefill tokens, weight 1


# ---------------------------------------------------------------- deadline-ordered
def test_edf_orders_by_next_deadline() -> None:
    eng = make_scheduler("edf", toy_model(), max_num_seqs=1)
    late, soon = R(0, 0.0, ttft=5.0), R(1, 0.0, ttft=0.5)
    eng.add_request(late, 0.0)
    eng.add_request(soon, 0.0)
    assert step(eng, 0.0).reqs == [soon]


def test_fairbatching_near_deadline_decodes_first_then_prefills() -> None:
    eng = make_scheduler("fairbatching", toy_model())
    near = R(0, 0.0, prompt=10, out=50, tpot=0.05, ttft=0.02)
    far = R(1, 0.0, prompt=10, out=50, tpot=0.05, ttft=10.0)
    for r in (near, far):
        eng.add_request(r, 0.0)
    step(eng, 0.0)  # both prefilled
    fresh = R(2, 0.01, prompt=300, ttft=0.4)
    eng.add_request(fresh, 0.01)
    order, _ = eng.ordered(0.03)  # near: slack 0.04 < 1.0 * TPOT SLO; far: slack ~10 s
    assert order == [near, fresh, far]


# ---------------------------------------------------------------- SlideBatching
def test_slide_light_load_is_edf_and_budget_is_min_feasible_remain() -> None:
    m = toy_model()
    eng = make_scheduler("slide", m)
    a, b = R(0, 0.0, prompt=100, ttft=2.0), R(1, 0.0, prompt=100, ttft=1.0)
    eng.add_request(a, 0.0)
    eng.add_request(b, 0.0)
    order, budget = eng.ordered(0.0)
    assert eng.last_urgent == 0 and order == [b, a]  # nothing urgent: EDF
    assert budget == pytest.approx(1.0)  # min remain of feasible requests


def test_slide_overload_orders_urgent_by_density_and_starved_first() -> None:
    m = toy_model()
    eng = make_scheduler("slide", m, tau_s=1.0)
    cheap_low = R(0, 0.0, prompt=100, w=1.0, ttft=0.5)
    pricey_high = R(1, 0.0, prompt=2000, w=2.0, ttft=0.5)
    cheap_high = R(2, 0.0, prompt=100, w=2.0, ttft=0.5)
    starved = R(3, -2.0, prompt=3000, w=1.0, ttft=0.5)  # 2 s late: > tau_s * TTFT SLO
    for r in (cheap_low, pricey_high, cheap_high, starved):
        eng.add_request(r, 0.0)
    order, _ = eng.ordered(0.45)  # everything urgent: remain < Phi
    assert eng.last_urgent == 4
    assert order == [starved, cheap_high, cheap_low, pricey_high]


def test_slide_batch_respects_latency_budget_with_fractional_prefill() -> None:
    m = toy_model()
    eng = make_scheduler("slide", m, min_chunk=50)
    # a decode with a tight deadline sets B; a long fresh prefill gets only the chunk that fits
    d = R(0, 0.0, prompt=10, out=100, tpot=0.05, ttft=0.02)
    eng.add_request(d, 0.0)
    step(eng, 0.0)
    p = R(1, 0.0, prompt=8000, ttft=50.0)
    eng.add_request(p, 0.0)
    now = d.first_token_time
    out = eng.schedule(now)
    budget = eng.last_budget
    assert math.isfinite(budget)
    assert out.reqs[0] is d and out.reqs[1] is p
    assert out.duration <= budget + 1e-12
    assert 50 <= out.num_tokens[1] < 8000
    # one more token would have passed the budget
    q = out.num_tokens[1]
    assert m.c0 + m.seq_time(1, d.computed) + m.prefill_time(q + 1, 0) > budget


def test_slide_ablations_differ_in_order() -> None:
    ablations = {"slide-deadline-only", "slide-density-only", "slide-token-budget"}
    assert ablations <= set(policy_names())
    eng = make_scheduler("slide-deadline-only", toy_model())
    assert eng.order == "deadline"
    assert make_scheduler("slide-token-budget", toy_model()).use_latency_budget is False


def test_unknown_policy_and_bad_parameter() -> None:
    with pytest.raises(ValueError, match="available"):
        make_scheduler("nope", toy_model())
    with pytest.raises(ValueError, match="bad parameter"):
        make_scheduler("slide", toy_model(), bogus=1)
    with pytest.raises(ValueError, match="deadline_mode"):
        make_scheduler("slide", toy_model(), deadline_mode="x")


# ---------------------------------------------------------------- numpy vs Python paths
@settings(max_examples=40, deadline=None)
@given(policy=st.sampled_from(["slide", "slide-density-only", "slide-deadline-only", "edf",
                               "fairbatching"]),
       seed=st.integers(0, 10_000), n=st.integers(1, 120), now=st.floats(0.0, 20.0),
       anchored=st.booleans())
def test_small_and_numpy_paths_agree(policy, seed, n, now, anchored) -> None:
    rng = np.random.default_rng(seed)
    kw = {"deadline_mode": "anchored"} if anchored and policy.startswith("slide") else {}
    eng = make_scheduler(policy, toy_model(kv_blocks=10**6), **kw)
    for i in range(n):
        r = R(i, float(rng.uniform(0, 10)), prompt=int(rng.integers(1, 3000)),
              out=int(rng.integers(2, 300)), w=float(rng.choice([1.0, 2.0, 4.0])),
              ttft=float(rng.uniform(0.05, 2)), tpot=float(rng.uniform(0.01, 0.1)))
        eng.add_request(r, r.arrival)
        state = rng.integers(0, 3)
        if state:  # partly prefilled or decoding
            r.computed = int(rng.integers(1, r.prompt_len + 1))
            if state == 2:
                r.computed = r.prompt_len
                r.emit_token(r.arrival + float(rng.uniform(0, 1)))
            eng.kv.allocate(r, r.computed)
            eng.table.refresh(r)
    small, b1 = eng.plan_small(now)
    slots = eng.table.active_slots()
    order, b2 = eng.plan(now, slots)
    big = eng.table.requests_at(slots[order])
    assert [r.id for r in small] == [r.id for r in big]
    assert b1 == b2
