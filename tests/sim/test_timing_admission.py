"""Issue 11: prediction error in the simulator (truth profile, seeded noise) and admission
control shared with the gateway."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from tests.conftest import random_requests, toy_model

from proserve.cluster.admission import (
    MAX_ADAPTIVE_SHARE,
    AdaptiveShare,
    Admission,
    ClassAdmission,
    Decision,
    decide,
)
from proserve.core.metrics import summarize
from proserve.core.request import Request, Status
from proserve.engine import make_scheduler
from proserve.engine.base import SchedulerOutput
from proserve.latency.model import LatencyModel
from proserve.sim.run import SimConfig, run
from proserve.sim.simulator import simulate
from proserve.sim.timing import StepTimer


def R(i, arrival=0.0, prompt=100, out=10, ttft=1.0, tpot=0.05, w=1.0, cls="low"):
    return Request(id=i, arrival=arrival, prompt_len=prompt, output_len=out, ttft_slo=ttft,
                   tpot_slo=tpot, weight=w, priority=0 if cls == "high" else 1, cls=cls)


# ---------------------------------------------------------------- StepTimer
def test_noise_is_seeded_per_instance_with_the_requested_mean_and_cv() -> None:
    m = toy_model()
    out = SchedulerOutput(duration=0.01)
    a, b = StepTimer(m, None, 0.05, seed=3), StepTimer(m, None, 0.05, seed=3)
    xa = np.array([a(0, out) for _ in range(20000)]) / 0.01
    xb = np.array([b(0, out) for _ in range(20000)]) / 0.01
    assert np.array_equal(xa, xb)  # same seed, same instance: the same factors
    other = np.array([b(1, out) for _ in range(100)]) / 0.01
    assert not np.array_equal(other, xa[:100])  # instances have their own streams
    assert abs(xa.mean() - 1) < 0.005 and abs(xa.std() / xa.mean() - 0.05) < 0.005
    assert xa.min() > 0
    # interleaving instances does not change an instance's sequence
    c = StepTimer(m, None, 0.05, seed=3)
    mixed = []
    for _ in range(50):
        mixed.append(c(0, out) / 0.01)
        c(1, out)
    assert np.allclose(mixed, xa[:50])


def test_truth_profile_times_the_batch_the_policy_formed() -> None:
    plan = toy_model()
    truth = LatencyModel(c0=0.01, c1=0.0, c2=4e-5, c3=0.0, c4=0.0, d1=3e-4, d2=0.0,
                         kv_blocks=4000, block_size=16)
    eng = make_scheduler("vllm-fcfs", plan)
    a, b = R(0, prompt=300), R(1, prompt=50)
    eng.add_request(a, 0.0)
    eng.add_request(b, 0.0)
    out = eng.schedule(0.0)
    timer = StepTimer(plan, truth, 0.0)
    assert not timer.identity and StepTimer(plan, None, 0.0).identity
    # 2 fresh prefills: c0 + 4e-5 per token on the truth model, whatever the plan predicted
    assert timer(0, out) == pytest.approx(0.01 + 4e-5 * 350)
    assert out.duration == pytest.approx(plan.batch_time([(300, 0), (50, 0)]))
    with pytest.raises(ValueError):
        StepTimer(plan, None, -0.1)


def test_noise_changes_results_but_a_seed_reproduces_them_byte_for_byte() -> None:
    def res(noise: float, seed: int = 0) -> str:
        r = run(SimConfig(trace="sharegpt", rate=7.5, count=400, latency_noise=noise,
                          seed=seed))
        r["sim_wall_s"] = 0.0
        return json.dumps(r, sort_keys=True)

    a, b = res(0.05), res(0.05)
    assert a == b
    assert res(0.0) != a and res(0.10) != a
    d = json.loads(a)
    assert d["latency_noise"] == 0.05 and d["truth_profile"] == "llama3.1-8b@h100"
    assert d["engine_caps"]["max_num_seqs"] == 1024


# ---------------------------------------------------------------- admission rule
def test_admission_decision_table() -> None:
    r = R(0, arrival=0.0, ttft=1.0)
    wait5, shed = ClassAdmission(5.0, False), ClassAdmission(5.0, True)
    none = ClassAdmission(0.0, False)
    assert decide(r, 0.5, 0.2, 0.0, wait5) is Decision.ADMIT  # 0.7 < 1.0
    assert decide(r, 0.9, 0.2, 0.0, wait5) is Decision.WAIT  # 1.1 >= 1.0
    assert decide(r, 0.9, 0.2, 0.0, shed) is Decision.SHED
    assert decide(r, 0.9, 0.2, 0.0, none) is Decision.ADMIT  # nothing to wait for
    assert decide(r, 0.9, 4.9, 4.9, wait5) is Decision.WAIT
    assert decide(r, 0.9, 5.0, 5.0, wait5) is Decision.ADMIT  # 5.9 < 10 x 1.0: serve late
    assert decide(r, 5.0, 5.0, 5.0, wait5) is Decision.TIMEOUT  # 10.0: hopelessly late


def test_yield_share_stretches_the_prediction_before_it_is_judged() -> None:
    r = R(0, arrival=0.0, ttft=1.0)
    # predicted first token 0.6 s from now: on time as predicted, late once stretched by
    # 1 / (1 - 0.5) = 2 (heavier work arriving meanwhile overtakes it)
    assert decide(r, 0.6, 0.0, 0.0, ClassAdmission(5.0, True)) is Decision.ADMIT
    assert decide(r, 0.6, 0.0, 0.0, ClassAdmission(5.0, True, 0.5)) is Decision.SHED
    assert decide(r, 0.6, 0.0, 0.0, ClassAdmission(5.0, False, 0.5)) is Decision.WAIT
    assert decide(r, 0.4, 0.0, 0.0, ClassAdmission(5.0, True, 0.5)) is Decision.ADMIT  # 0.8
    for bad in (-0.1, 1.0, 2.0):
        with pytest.raises(ValueError, match="yield_share"):
            ClassAdmission(5.0, True, bad)
    with pytest.raises(ValueError, match="queue_timeout_s"):
        ClassAdmission(-1.0, True)


# ---------------------------------------------------------------- admission in the simulator
def _adm(rules: dict[str, ClassAdmission]) -> Admission:
    return Admission(rules, {"high": 0, "low": 1})


def _overload(seed: int = 5) -> list[Request]:
    reqs = random_requests(seed, 1200, rate=80.0, ttft=0.3, tpot=0.05)
    return reqs


def test_simulated_admission_sheds_only_what_it_must_and_ends_everything() -> None:
    m = toy_model()
    rules = {"high": ClassAdmission(2.0, False), "low": ClassAdmission(2.0, True)}
    reqs = _overload()
    res = simulate(reqs, [make_scheduler("slide-bounded", m)],
                   admission=_adm(rules), drain_s=600)
    s = summarize(reqs, class_order=["high", "low"])
    low, high = s["per_class"]["low"], s["per_class"]["high"]
    assert low["rejected"] > 0  # overloaded: the sheddable class is refused when late
    refused = [r for r in reqs if r.status == Status.REJECTED]
    assert all(r.generated == 0 and r.gain() == 0 for r in refused)
    assert all(r.finish_time >= r.arrival for r in refused)
    assert s["rejected"] == len(refused) == low["rejected"] + high["rejected"]
    # refusals count against attainment: the overall rate includes them as misses
    met = sum(r.slo_met() for r in reqs)
    assert s["slo_attainment"] == pytest.approx(met / len(reqs))
    assert res.drained
    # every request ended exactly once (the simulator checks it) in a final state
    assert {r.status for r in reqs} <= {Status.FINISHED, Status.REJECTED}
    # without admission nothing is refused, and the high class does worse
    base = _overload()
    simulate(base, [make_scheduler("slide-bounded", m)], drain_s=600)
    sb = summarize(base, class_order=["high", "low"])
    assert sb["rejected"] == 0
    assert high["ttft_p99"] < sb["per_class"]["high"]["ttft_p99"]


def test_yield_share_protects_the_heavier_class_from_admitted_sheddable_work() -> None:
    """Under overload, a sheddable class admitted on the queue as it is now takes the engine
    from the heavier class once admitted; judged with the heavier class's share, fewer of its
    requests are admitted and the heavier class attains more."""
    m = toy_model()

    def attained(share: float) -> tuple[float, int]:
        rules = {"high": ClassAdmission(2.0, False), "low": ClassAdmission(2.0, True, share)}
        reqs = _overload()
        simulate(reqs, [make_scheduler("slide-bounded", m)],
                 admission=_adm(rules), drain_s=600)
        s = summarize(reqs, class_order=["high", "low"])
        return s["per_class"]["high"]["slo_attainment"], s["per_class"]["low"]["rejected"]

    high0, shed0 = attained(0.0)
    high9, shed9 = attained(0.9)
    assert shed9 > shed0
    assert high9 > high0
    assert attained(0.9) == (high9, shed9)  # deterministic


def test_an_adaptive_share_settles_where_heavier_first_tokens_meet_the_target() -> None:
    """The tracker's fixed point: with late first tokens at rate p it drifts by
    p * step - (1 - p) * step * (1 - target) / target, which is 0 exactly at p = 1 - target."""
    a = AdaptiveShare(target=0.9, priority=1, share=0.5)
    for _ in range(9):  # 9 on time and 1 late: exactly the target: back where it started
        a.observe(True)
    a.observe(False)
    assert a.share == pytest.approx(0.5)
    for _ in range(1000):  # all late: up to the cap, no further
        a.observe(False)
    assert a.share == MAX_ADAPTIVE_SHARE
    for _ in range(10000):  # all on time: down to 0 (light load sheds nothing for them)
        a.observe(True)
    assert a.share == 0.0
    assert (a.late, a.on_time) == (1001, 10009)


def test_admission_feeds_only_heavier_classes_outcomes_into_a_share() -> None:
    adm = Admission({"high": ClassAdmission(5.0, False),
                     "low": ClassAdmission(5.0, True, 0.0, yield_target=0.95)},
                    {"high": 0, "low": 1})
    hi, lo = R(0, cls="high"), R(1, cls="low")
    hi.emit_token(2.0)  # first token 2 s after arrival, SLO 1 s: late
    adm.first_token(hi)
    assert adm.share("low") == pytest.approx(0.02)
    lo.emit_token(5.0)  # the low class's own outcomes do not move its share
    adm.first_token(lo)
    assert adm.share("low") == pytest.approx(0.02)
    assert adm.share("high") == 0.0
    # a heavier request refused counts as late; a refused low one does not
    assert adm.decide(R(2, cls="high", arrival=0.0), 50.0, 5.0, 5.0) is Decision.TIMEOUT
    assert adm.share("low") == pytest.approx(0.04)
    assert adm.decide(R(3, arrival=0.0), 5.0, 0.0, 0.0) is Decision.SHED
    assert adm.share("low") == pytest.approx(0.04)
    # the share is the one the low class is judged with: 0.6 s stretched by 1/(1 - s)
    a = adm.adaptive["low"]
    a.share = 0.5
    assert adm.decide(R(4, arrival=0.0), 0.6, 0.0, 0.0) is Decision.SHED
    a.share = 0.0
    assert adm.decide(R(5, arrival=0.0), 0.6, 0.0, 0.0) is Decision.ADMIT
    with pytest.raises(ValueError, match="yield_target"):
        ClassAdmission(5.0, True, yield_target=1.0)
    with pytest.raises(ValueError, match="at most"):
        ClassAdmission(5.0, True, 0.99, yield_target=0.9)
    with pytest.raises(ValueError, match="rank"):
        Admission({"gold": ClassAdmission()}, {"high": 0})


def test_an_adaptive_share_sheds_under_overload_and_nothing_at_light_load() -> None:
    """In the simulator: under overload the adaptive share rises and protects the heavier
    class about as a high constant share does; at light load it stays at 0, where a constant
    share refuses work that would have been on time."""
    m = toy_model()

    def point(reqs, rule: ClassAdmission) -> tuple[float, int, float]:
        adm = _adm({"high": ClassAdmission(2.0, False), "low": rule})
        simulate(reqs, [make_scheduler("slide-bounded", m)], admission=adm, drain_s=600)
        s = summarize(reqs, class_order=["high", "low"])
        return (s["per_class"]["high"]["slo_attainment"], s["per_class"]["low"]["rejected"],
                adm.share("low"))

    plain = point(_overload(), ClassAdmission(2.0, True))
    auto = point(_overload(), ClassAdmission(2.0, True, yield_target=0.95))
    assert auto[0] > plain[0] and auto[1] > plain[1]
    assert auto == point(_overload(), ClassAdmission(2.0, True, yield_target=0.95))

    def light() -> list[Request]:
        return random_requests(5, 300, rate=4.0, ttft=0.3, tpot=0.05)

    fixed = point(light(), ClassAdmission(2.0, True, 0.9))
    auto_light = point(light(), ClassAdmission(2.0, True, yield_target=0.95))
    none_light = point(light(), ClassAdmission(2.0, True))
    assert fixed[1] > none_light[1]  # the constant share refuses for nothing
    assert auto_light[1] == none_light[1] and auto_light[2] == 0.0


def test_simulate_reports_what_an_adaptive_share_did() -> None:
    """Every heavier request that ended or was refused counted exactly once."""
    res = run(SimConfig(trace="sharegpt", rate=12, count=300, admission=True,
                        shed_classes=["low"], yield_target=0.95), keep_requests=True)
    a = res["adaptive_shares"]["low"]
    high = [r for r in res["_requests"] if r.cls == "high"]
    counted = [r for r in high if r.status in (Status.FINISHED, Status.REJECTED)]
    assert a["heavier_misses"] + a["heavier_hits"] == len(counted) > 0
    assert a["heavier_misses"] == sum(not r.slo_met() for r in counted)
    assert 0 <= a["final_share"] <= MAX_ADAPTIVE_SHARE and a["target"] == 0.95
    assert "adaptive_shares" not in run(SimConfig(trace="sharegpt", rate=12, count=50))


def test_yield_share_needs_admission_and_shed_classes() -> None:
    with pytest.raises(ValueError, match="yield_share"):
        run(SimConfig(trace="sharegpt", rate=5, count=10, yield_share=0.5))
    with pytest.raises(ValueError, match="yield_share"):
        run(SimConfig(trace="sharegpt", rate=5, count=10, admission=True, yield_share=0.5))
    with pytest.raises(ValueError):
        SimConfig(trace="sharegpt", rate=5, count=10, yield_share=1.0)
    with pytest.raises(ValueError, match="yield_target"):
        run(SimConfig(trace="sharegpt", rate=5, count=10, admission=True, yield_target=0.9))


@pytest.mark.parametrize("ttft, served", [(0.2, True), (0.05, False)])
def test_a_waiting_request_is_decided_again_when_its_timeout_passes(ttft: float,
                                                                     served: bool) -> None:
    """One instance busy with a long prefill (0.69 s); a request predicted late waits (not
    sheddable); at its 0.5 s timeout it is served late if predicted under 10x its TTFT SLO,
    else refused right then."""
    m = toy_model()
    blocker = R(0, arrival=0.0, prompt=20000, out=1, ttft=100.0)
    late = R(1, arrival=0.01, prompt=100, out=2, ttft=ttft, cls="high")  # same weight
    rules = {c: ClassAdmission(0.5, False) for c in ("low", "high")}
    simulate([blocker, late], [make_scheduler("vllm-fcfs", m)],
             admission=_adm(rules))
    assert blocker.status == Status.FINISHED
    if served:  # predicted first token ~1.1 s from arrival < 10 x 0.2 s
        assert late.status == Status.FINISHED and late.ttft() > late.ttft_slo
    else:  # ~1.1 s >= 10 x 0.05 s: refused when its timeout passed, not before, not after
        assert late.status == Status.REJECTED and late.generated == 0
        assert late.finish_time == pytest.approx(late.arrival + 0.5)


def test_admission_cli_config_errors() -> None:
    with pytest.raises(ValueError, match="shed"):
        run(SimConfig(trace="sharegpt", rate=5, count=10, admission=True,
                      shed_classes=["gold"]))


def test_predicted_ttft_counts_only_work_a_priority_engine_serves_first() -> None:
    from proserve.cluster.view import predicted_ttft, view_of, work_time
    from proserve.engine.base import PrefillItem

    m = toy_model()
    eng = make_scheduler("slide-bounded", m)
    eng.add_request(R(0, prompt=2000, w=1.0), 0.0)  # light queued work
    v = view_of(eng, 0, 0.0)
    own = work_time(m.prefill_time(100), m.c0)
    both = work_time(m.prefill_time(2000), m.c0) + own
    assert predicted_ttft(v, 100) == pytest.approx(both)  # FCFS: behind everything
    assert predicted_ttft(v, 100, weight=1.0) == pytest.approx(both)  # same weight: behind it
    assert predicted_ttft(v, 100, weight=2.0) == pytest.approx(own)  # heavier: overtakes it
    # work of unknown priority (no SLO: a gateway's padding) always counts
    v.load.prefill.append(PrefillItem(2000, 0, 1.0, 0.0, math.inf, math.inf, 0))
    assert predicted_ttft(v, 100, weight=2.0) == pytest.approx(both)


@pytest.mark.parametrize("policy, skips", [("vllm-fcfs", False), ("sarathi-fcfs", False),
                                           ("edf", False), ("slide-deadline-only", False),
                                           ("vllm-priority", True), ("slide", True)])
def test_only_value_ordered_engines_let_a_heavier_request_skip_the_queue(policy: str,
                                                                          skips: bool) -> None:
    from proserve.cluster.view import predicted_ttft, view_of, work_time

    m = toy_model()
    eng = make_scheduler(policy, m)
    eng.add_request(R(0, prompt=2000, w=1.0), 0.0)
    v = view_of(eng, 0, 0.0)
    own = work_time(m.prefill_time(100), m.c0)
    both = work_time(m.prefill_time(2000), m.c0) + own
    assert predicted_ttft(v, 100, weight=2.0) == pytest.approx(own if skips else both)
