"""SlideBatching decisions on small hand-built states, with hand-derived expected outcomes.

What makes ``slide-nostarve`` (tau_s = inf) and ``deadline_mode="anchored"`` differ from ``slide``,
the URGENT/NORMAL boundary and the density order, and which request tail preemption picks.

Every scheduler here is built with explicit ``deadline_mode``, ``tau_s``, ``lam``, ``eps_frac``,
token and sequence caps, so the tests keep meaning the same thing if a default changes. Each
ordering test runs both order paths: the plain-Python one (short queues) and the numpy one
(``small_queue=0`` forces it).
"""

from __future__ import annotations

import math

import pytest

from proserve.core.request import Request, Status
from proserve.engine import make_scheduler
from proserve.latency.model import LatencyModel
from proserve.sim.simulator import simulate

# Round numbers: c0 = 5 ms per iteration, 0.1 ms per prefill token, 1 ms per decode step, nothing
# else. A fresh prefill of P tokens costs t_hat = P * 1e-4 s; a decode step t_hat = 1e-3 s.
C0, PER_TOKEN, DECODE = 0.005, 1e-4, 1e-3
PATHS = [pytest.param(48, id="python-path"), pytest.param(0, id="numpy-path")]


def model(kv_blocks: int = 100_000) -> LatencyModel:
    return LatencyModel(c0=C0, c1=0.0, c2=PER_TOKEN, c3=0.0, c4=0.0, d1=DECODE, d2=0.0,
                        kv_blocks=kv_blocks, block_size=16, name="round")


def slide(policy: str = "slide", *, small_queue: int = 48, kv_blocks: int = 100_000, **kw):
    params = dict(deadline_mode="strict", tau_s=1.0, lam=1.0, eps_frac=0.65, min_chunk=50,
                  max_num_batched_tokens=8192, max_num_seqs=256, small_queue=small_queue)
    params.update(kw)
    return make_scheduler(policy, model(kv_blocks), **params)


def R(i: int, arrival: float = 0.0, prompt: int = 100, out: int = 50, w: float = 1.0,
      ttft: float = 1.0, tpot: float = 0.05) -> Request:
    return Request(id=i, arrival=arrival, prompt_len=prompt, output_len=out, ttft_slo=ttft,
                   tpot_slo=tpot, weight=w, priority=0, cls="c")


def ids(reqs) -> list[int]:
    return [r.id for r in reqs]


# ---------------------------------------------------------------- URGENT / NORMAL and density
@pytest.mark.parametrize("small_queue", PATHS)
def test_urgent_by_density_before_normal_by_deadline(small_queue: int) -> None:
    """Three fresh prefills at now = 0 (remain = TTFT SLO):

    u1: 2000 tokens, t_hat 0.2,  remain 0.30, density 1/0.2 = 5
    u2:  100 tokens, t_hat 0.01, remain 0.35, density 1/0.01 = 100
    n:   100 tokens, t_hat 0.01, remain 5.0
    Budget B = min feasible remain = 0.30 (u1: 0.30 >= 0.2 + c0). Phi = 0.22 * 0.3 / 0.295.
    With lam = 2 the boundary is 0.4475: u1 and u2 URGENT (u2 first: denser), n NORMAL.
    Plain EDF would give [u1, u2, n]; everything-by-density would give [u2, n, u1].
    """
    eng = slide(lam=2.0, small_queue=small_queue)
    u1, u2, n = R(0, prompt=2000, ttft=0.30), R(1, prompt=100, ttft=0.35), R(2, ttft=5.0)
    for r in (n, u1, u2):
        eng.add_request(r, 0.0)
    order, budget = eng.ordered(0.0)
    assert budget == pytest.approx(0.30)
    assert eng.last_phi == pytest.approx(0.22 * 0.30 / 0.295)
    assert eng.last_urgent == 2
    assert ids(order) == [1, 0, 2]
    # lam = 1: boundary 0.2237 < 0.30: nothing is urgent and the order is EDF
    eng = slide(lam=1.0, small_queue=small_queue)
    for r in (n, u1, u2):
        eng.add_request(r, 0.0)
    order, _ = eng.ordered(0.0)
    assert eng.last_urgent == 0 and ids(order) == [0, 1, 2]


@pytest.mark.parametrize("small_queue", PATHS)
def test_density_weighs_value_against_cost(small_queue: int) -> None:
    """All urgent (order='density'): key weight / t_hat. a: 3 / 0.05 = 60; b: 1 / 0.01 = 100;
    c: 8 / 0.2 = 40. Denser first: [b, a, c], whatever the deadlines (c has the earliest)."""
    eng = slide(order="density", small_queue=small_queue)
    a = R(0, prompt=500, w=3.0, ttft=2.0)
    b = R(1, prompt=100, w=1.0, ttft=3.0)
    c = R(2, prompt=2000, w=8.0, ttft=1.0)
    for r in (a, b, c):
        eng.add_request(r, 0.0)
    order, _ = eng.ordered(0.0)
    assert eng.last_urgent == 3 and ids(order) == [1, 0, 2]


# ---------------------------------------------------------------- starvation guard (tau_s)
def _starvation_state(eng):
    """late: arrived 2 s ago, TTFT SLO 0.5, 8000 tokens (t_hat 0.8, density 1.25): remain -1.5,
    i.e. 3 TTFT SLOs late. fresh: 100 tokens, weight 2 (t_hat 0.01, density 200), remain 0.5.
    B = 0.5 (only fresh is feasible); Phi = 0.81 * 0.5 / 0.495 = 0.818 > 0.5: both URGENT."""
    late = R(0, arrival=-2.0, prompt=8000, ttft=0.5)
    fresh = R(1, arrival=0.0, prompt=100, w=2.0, ttft=0.5)
    for r in (late, fresh):
        eng.add_request(r, 0.0)
    order, _ = eng.ordered(0.0)
    assert eng.last_urgent == 2
    return ids(order)


@pytest.mark.parametrize("small_queue", PATHS)
@pytest.mark.parametrize(("tau_s", "expect"), [
    (1.0, [0, 1]),       # -1.5 < -0.5: STARVED, goes first
    (2.9, [0, 1]),       # -1.5 < -1.45: still STARVED
    (3.0, [1, 0]),       # -1.5 < -1.5 is false: not starved, density order
    (math.inf, [1, 0]),  # no guard
])
def test_starvation_guard_threshold(tau_s: float, expect: list[int], small_queue: int) -> None:
    assert _starvation_state(slide(tau_s=tau_s, small_queue=small_queue)) == expect


@pytest.mark.parametrize("small_queue", PATHS)
def test_slide_nostarve_is_slide_without_the_guard(small_queue: int) -> None:
    """The registered ``slide-nostarve`` sets tau_s = inf; everything else is ``slide``."""
    kw = dict(deadline_mode="strict", lam=1.0, eps_frac=0.65, min_chunk=50,
              max_num_batched_tokens=8192, max_num_seqs=256, small_queue=small_queue)
    nostarve = make_scheduler("slide-nostarve", model(), **kw)
    assert nostarve.tau_s == math.inf
    assert _starvation_state(nostarve) == [1, 0]
    assert _starvation_state(make_scheduler("slide", model(), tau_s=1.0, **kw)) == [0, 1]
    # and the batch follows the order: the starved request's chunk leads under the guard
    eng = slide(tau_s=1.0, small_queue=small_queue)
    _starvation_state(eng)
    assert ids(eng.schedule(0.0).reqs)[0] == 0
    eng = make_scheduler("slide-nostarve", model(), **kw)
    _starvation_state(eng)
    assert ids(eng.schedule(0.0).reqs)[0] == 1


# ---------------------------------------------------------------- anchored decode deadlines
@pytest.mark.parametrize("small_queue", PATHS)
def test_anchored_deadline_changes_order_and_budget(small_queue: int) -> None:
    """d: 10-token prompt, first token at t1 = c0 + 10 * 1e-4 = 0.006 (TTFT SLO 1.0, TPOT SLO
    0.05). Its next deadline: strict 0 + 1.0 + 1 * 0.05 = 1.05; anchored t1 + 0.05 = 0.056.
    e: fresh 1000-token prefill (t_hat 0.1) with TTFT SLO 0.5.

    strict:   B = min feasible remain = 0.5 (e); Phi = 0.101 * 0.5 / 0.495 = 0.102: nothing
              urgent; EDF [e (0.5), d (1.044)]; the budget holds all of e: [(e, 1000), (d, 1)].
    anchored: d's remain 0.05 is feasible (>= 0.001 + c0): B = 0.05; Phi = 0.101 * 0.05 / 0.045
              = 0.112 > 0.05: d URGENT, e NORMAL: [d, e]; the batch is c0 + d's step + the e chunk
              that fits the 0.044 s left: 440 tokens.
    """
    t1 = C0 + 10 * PER_TOKEN
    got = {}
    for mode in ("strict", "anchored"):
        eng = slide(deadline_mode=mode, small_queue=small_queue)
        d = R(0, prompt=10, out=100, ttft=1.0, tpot=0.05)
        eng.add_request(d, 0.0)
        out = eng.schedule(0.0)
        eng.update_from_output(out, out.duration)
        assert d.generated == 1 and d.first_token_time == pytest.approx(t1)
        e = R(1, arrival=t1, prompt=1000, ttft=0.5)
        eng.add_request(e, t1)
        order, budget = eng.ordered(t1)
        out = eng.schedule(t1)
        got[mode] = (ids(order), budget, eng.last_urgent,
                     [(r.id, q) for r, q in zip(out.reqs, out.num_tokens)])
    assert got["strict"][:3] == ([1, 0], pytest.approx(0.5), 0)
    assert got["strict"][3] == [(1, 1000), (0, 1)]
    assert got["anchored"][:3] == ([0, 1], pytest.approx(0.05), 1)
    assert got["anchored"][3] == [(0, 1), (1, 440)]


def test_anchored_deadline_follows_the_actual_first_token() -> None:
    """Anchored decode deadlines move with the first token; strict ones do not. Two decodes with
    the same arrival and SLOs; x got its first token 0.3 s later than y. Strict: same deadline
    (tie -> lower id, x first). Anchored: y's deadline is 0.3 s earlier, so y goes first."""
    for mode, expect in (("strict", [0, 1]), ("anchored", [1, 0])):
        eng = slide(deadline_mode=mode)
        x, y = R(0, prompt=10, ttft=2.0), R(1, prompt=10, ttft=2.0)
        for r, t in ((x, 0.3), (y, 0.0)):  # fake a finished prefill + first token at time t
            eng.add_request(r, 0.0)
            r.computed, r.status = 10, Status.RUNNING
            eng.kv.allocate(r, 11)
            r.emit_token(t)
            eng.table.refresh(r)
        order, _ = eng.ordered(0.31)
        assert ids(order) == expect, mode


# ---------------------------------------------------------------- tail preemption
def _fill_kv(eng, reqs) -> None:
    """Prefill every request in one step: 96-token prompts fill 6 blocks of 16 each."""
    for r in reqs:
        eng.add_request(r, 0.0)
    out = eng.schedule(0.0)
    assert sorted(ids(out.reqs)) == sorted(ids(reqs)) and not out.preempted
    eng.update_from_output(out, out.duration)
    assert eng.kv.free == 0 and all(r.generated == 1 and r.blocks == 6 for r in reqs)


@pytest.mark.parametrize("small_queue", PATHS)
def test_tail_preemption_takes_the_worst_ranked_not_the_newest(small_queue: int) -> None:
    """KV of 18 blocks holds three 96-token requests exactly. Next step each decode needs a 7th
    block. Order (light load: EDF) is a (deadline 1.05), b (2.05), c (3.05); c is the *oldest*
    request with the lowest id, so vLLM's newest-first rule would pick a. SlideBatching preempts
    from the tail of its order: c, freeing 6 blocks; a and b then decode."""
    eng = slide(kv_blocks=18, small_queue=small_queue)
    c = R(0, arrival=0.0, prompt=96, ttft=3.0)
    b = R(1, arrival=0.0, prompt=96, ttft=2.0)
    a = R(2, arrival=0.0, prompt=96, ttft=1.0)
    _fill_kv(eng, [a, b, c])
    now = a.first_token_time
    assert ids(eng.ordered(now)[0]) == [2, 1, 0]
    out = eng.schedule(now)
    assert ids(out.preempted) == [0]
    assert [(r.id, q) for r, q in zip(out.reqs, out.num_tokens)] == [(2, 1), (1, 1)]
    assert c.computed == 0 and c.blocks == 0 and c.preemptions == 1
    assert c.status == Status.WAITING and eng.kv.free == 6 - 2  # a and b took one block each
    assert eng.num_preemptions == 1


@pytest.mark.parametrize("small_queue", PATHS)
def test_tail_preemption_follows_density_rank_when_urgent(small_queue: int) -> None:
    """Everything urgent (order='density'): decodes ranked by weight / t_hat, t_hat equal, so by
    weight: hi (3), mid (2), lo (1). lo has the *earliest* deadline, so an EDF tail would pick
    hi; the density tail picks lo."""
    eng = slide(order="density", kv_blocks=18, small_queue=small_queue)
    lo = R(0, prompt=96, w=1.0, ttft=0.5)
    mid = R(1, prompt=96, w=2.0, ttft=1.0)
    hi = R(2, prompt=96, w=3.0, ttft=2.0)
    _fill_kv(eng, [lo, mid, hi])
    out = eng.schedule(hi.first_token_time)
    assert ids(out.preempted) == [0]
    assert [(r.id, q) for r, q in zip(out.reqs, out.num_tokens)] == [(2, 1), (1, 1)]


def test_head_never_preempts_itself_or_requests_ahead_of_it() -> None:
    """Victims come only from behind the request that needs KV. Two requests fill KV exactly;
    the head decodes into its 7th block by preempting the tail. Next step the preempted request
    (recomputing 97 tokens: 7 blocks) finds only 5 free blocks and nothing ranked behind it, so
    it waits: it may not preempt the head, which keeps decoding alone."""
    eng = slide(kv_blocks=12)
    a, b = R(0, prompt=96, ttft=1.0), R(1, prompt=96, ttft=2.0)
    _fill_kv(eng, [a, b])
    out = eng.schedule(a.first_token_time)
    assert ids(out.preempted) == [1] and ids(out.reqs) == [0]
    eng.update_from_output(out, a.first_token_time + out.duration)
    assert a.blocks == 7 and b.blocks == 0
    out = eng.schedule(a.last_token_time)
    assert ids(out.reqs) == [0] and not out.preempted and a.blocks == 7


# ---------------------------------------------------------------- known bug: anchored livelock
def _two_late_requests(mode: str):
    """Two 128-token prompts at t = 0 with a 1 ms TTFT SLO (every first token is late), 12 KV
    blocks (192 tokens: one prompt and a half), 64 tokens per step, EDF order (nothing urgent).

    By hand: steps 1-2 prefill A (8 blocks) and emit its first token; step 3 B (strict deadline
    1 ms) goes ahead of A's decode and takes the last 4 blocks; step 4 B preempts A (the tail)
    and emits its first token. Strict deadlines then stay put (A and B tie at 51 ms; A by id),
    so A recomputes, decodes and progresses, one token per preemption cycle at worst. Anchored:
    recomputing A has its strict deadline (51 ms), ahead of decode-stage B's anchored one
    (B's first token + 50 ms); A's recompute ends at pending = 1 (128 of 129 tokens), making
    A decode-stage with the anchored deadline (A's first token + 50 ms = 61 ms), now behind B,
    which the same step preempted; B then recomputes ahead of A and preempts it before it
    decodes; and so on: neither emits another token.
    """
    m = LatencyModel(c0=C0, c1=0.0, c2=PER_TOKEN, c3=0.0, c4=0.0, d1=DECODE, d2=0.0,
                     kv_blocks=12, block_size=16)
    eng = make_scheduler("slide", m, order="deadline", deadline_mode=mode, tau_s=1.0, lam=1.0,
                         eps_frac=0.65, min_chunk=50, max_num_batched_tokens=64,
                         max_num_seqs=16)
    reqs = [Request(i, 0.0, 128, 50, 0.001, 0.05, 1.0) for i in range(2)]
    # serially: 2 x (2 chunks + 50 decode steps) = 2 x (2 x 11.4 ms + 50 x 6 ms) = 0.65 s;
    # 20 s of drain is 30 times that
    simulate(reqs, [eng], drain_s=20.0)
    return reqs


def test_strict_deadlines_finish_two_late_requests_on_tight_kv() -> None:
    assert [(r.status, r.generated) for r in _two_late_requests("strict")] == [
        (Status.FINISHED, 50), (Status.FINISHED, 50)]


def test_anchored_deadlines_finish_two_late_requests_on_tight_kv() -> None:
    assert [(r.status, r.generated) for r in _two_late_requests("anchored")] == [
        (Status.FINISHED, 50), (Status.FINISHED, 50)]
