"""TDG at the exact deadlines, and TDG of a simulated run whose token times are known by hand."""

from __future__ import annotations

import pytest

from proserve.core.metrics import summarize
from proserve.core.request import Request, Status
from proserve.engine import make_scheduler
from proserve.latency.model import LatencyModel
from proserve.sim.simulator import simulate


def test_a_decode_token_exactly_at_its_deadline_is_late() -> None:
    """Deadlines (binary-exact numbers): token i by 1.0 + (i - 1) * 0.25. Token 2 at exactly
    1.25 and token 4 at exactly 1.75 miss (on time means strictly before); token 3 at 1.4375
    makes its 1.5."""
    r = Request(id=0, arrival=0.0, prompt_len=10, output_len=4, ttft_slo=1.0, tpot_slo=0.25,
                weight=2.0)
    for t in (0.5, 1.25, 1.4375, 1.75):
        r.emit_token(t)
    assert r.first_on_time is True and r.decode_on_time == 1
    assert r.gain() == 2.0 * (1 + 1) and r.max_gain() == 2.0 * (1 + 3)


def test_simulated_tdg_matches_hand_computed_token_times() -> None:
    """One request alone on an engine with c0 = 5 ms, 0.1 ms per prefill token, 1 ms per decode
    step: a 10-token prompt takes 6 ms, each decode step 6 ms, so tokens come at 6, 12 and 18 ms.
    With TTFT SLO 10 ms and TPOT SLO 3.5 ms the deadlines are 10, 13.5 and 17 ms: tokens 1 and 2
    on time, token 3 late. TDG ratio (weights 1) = (1 + 1) / (1 + 2)."""
    m = LatencyModel(c0=0.005, c1=0.0, c2=1e-4, c3=0.0, c4=0.0, d1=1e-3, d2=0.0,
                     kv_blocks=100, block_size=16)
    eng = make_scheduler("vllm-fcfs", m, max_num_batched_tokens=8192, max_num_seqs=8)
    r = Request(id=0, arrival=0.0, prompt_len=10, output_len=3, ttft_slo=0.010,
                tpot_slo=0.0035, weight=1.0, cls="c")
    simulate([r], [eng], drain_s=10.0)
    assert r.status == Status.FINISHED
    assert (r.first_token_time, r.last_token_time) == (pytest.approx(0.006), pytest.approx(0.018))
    assert r.first_on_time is True and r.decode_on_time == 1
    s = summarize([r], 1.0, 1.0, ["c"])
    assert s["tdg_ratio"] == pytest.approx(2 / 3)
    assert s["per_class"]["c"]["tdg_ratio"] == pytest.approx(2 / 3)
    assert not r.slo_met()  # mean TPOT 6 ms > 3.5 ms
