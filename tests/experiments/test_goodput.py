"""proserve goodput: the k-section search and the fluid bound."""

from __future__ import annotations

import pytest
from tests.conftest import toy_model

from proserve.core.request import Request
from proserve.experiments import goodput
from proserve.sim.run import SimConfig


def test_request_cost_is_prefill_plus_decodes_at_the_largest_batch_within_tpot() -> None:
    m = toy_model()  # c0 5 ms, decode 0.1 ms + 1e-8 per context token, 4000 blocks of 16
    r = Request(0, 0.0, prompt_len=1000, output_len=201, ttft_slo=1.0, tpot_slo=0.025,
                weight=1.0)
    per_seq = m.d1 + m.d2 * (1000 + 100.5)
    b = int((0.025 - m.c0) // per_seq)  # the TPOT bound: 199 sequences; KV holds 53
    b = min(b, m.kv_tokens // 1201)
    assert b == 53
    want = goodput.min_prefill_s(m, 1000) + 200 * (m.c0 + b * per_seq) / b
    assert goodput.min_prefill_s(m, 1000) <= m.prefill_time(1000)
    assert goodput.request_cost_s(m, r) == pytest.approx(want)
    tight = Request(1, 0.0, 10, 5, 1.0, tpot_slo=0.001, weight=1.0)  # under c0: one at a time
    assert goodput.request_cost_s(m, tight) == pytest.approx(
        goodput.min_prefill_s(m, 10) + 4 * (m.c0 + m.d1 + m.d2 * 12.5))


@pytest.mark.parametrize("guess", [0.3, 40.0])
def test_search_brackets_and_narrows_to_the_threshold(monkeypatch, guess: float) -> None:
    seen = []

    def fake_point(cfg: dict) -> dict:
        rate = SimConfig.model_validate(cfg).rate
        seen.append(rate)
        att = 1.0 if rate <= 5.0 else 0.5
        return {"deadline_attainment": att, "tdg_ratio": att, "ttft_p99": 1.0,
                "sim_end_s": 100.0, "per_class": {"high": {"deadline_attainment": att}},
                "config": {"rate": rate}}

    monkeypatch.setattr(goodput, "_point", fake_point)
    base = SimConfig(trace="sharegpt", count=50, instances=2)
    res = goodput.search(base, threshold=0.9, guess=guess, workers=1, rel_tol=0.01)
    assert res["goodput_rps"] <= 5.0 < res["first_failing_rps"]
    assert res["first_failing_rps"] - res["goodput_rps"] <= 0.01 * res["goodput_rps"]
    assert res["goodput_per_instance"] == pytest.approx(res["goodput_rps"] / 2)
    assert res["server_seconds"] == 200.0
    assert len(seen) == len(set(seen)) == len(res["points"])  # no rate simulated twice
    assert 0 < res["fraction_of_optimal"] == pytest.approx(
        res["goodput_per_instance"] / res["optimal_goodput_per_instance"])


def test_bad_threshold_is_an_error() -> None:
    with pytest.raises(ValueError):
        goodput.search(SimConfig(trace="sharegpt", count=10), threshold=1.5, workers=1)


def test_deadline_attainment_needs_every_token_on_time() -> None:
    from proserve.core.metrics import summarize
    from proserve.core.request import Status

    def req(i: int, times: list[float]) -> Request:
        r = Request(i, 0.0, 10, 3, ttft_slo=1.0, tpot_slo=0.1, weight=1.0)
        for t in times:
            r.emit_token(t)
        r.status = Status.FINISHED
        return r

    ok = req(0, [0.5, 0.6, 1.15])  # deadlines 1.0, 1.1, 1.2: all met
    late = req(1, [0.5, 0.6, 1.25])  # the third misses 1.2
    s = summarize([ok, late])
    assert s["deadline_attainment"] == 0.5
    assert summarize([ok])["deadline_attainment"] == 1.0
