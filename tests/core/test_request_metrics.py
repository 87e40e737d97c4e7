"""Gain, attainment and aggregate metrics on hand-computed cases."""

from __future__ import annotations

import math

import pytest

from proserve.core.classes import SpecError, parse_classes
from proserve.core.metrics import summarize
from proserve.core.request import Request, Status


def _req(**kw) -> Request:
    base = dict(id=0, arrival=0.0, prompt_len=10, output_len=4, ttft_slo=1.0, tpot_slo=0.1)
    base.update(kw)
    return Request(**base)


def _finish(r: Request, times: list[float]) -> Request:
    for t in times:
        r.emit_token(t)
    r.status = Status.FINISHED
    r.finish_time = times[-1]
    return r


def test_token_deadlines_hand_computed() -> None:
    # deadlines: token1 < 1.0, token2 < 1.1, token3 < 1.2, token4 < 1.3
    r = _finish(_req(weight=2.0), [0.5, 0.55, 1.25, 1.29])
    assert r.first_on_time is True
    assert r.decode_on_time == 2  # token 3 at 1.25 misses 1.2
    assert r.gain() == pytest.approx(2.0 * (1 + 2))
    assert r.max_gain() == pytest.approx(2.0 * (1 + 3))
    assert r.gain(w_p=3.0, w_d=0.5) == pytest.approx(2.0 * (3 + 0.5 * 2))
    assert r.ttft() == pytest.approx(0.5)
    assert r.tpot() == pytest.approx((1.29 - 0.5) / 3)
    assert not r.slo_met()  # mean TPOT 0.263 > 0.1


def test_deadline_is_strict_less_than() -> None:
    r = _finish(_req(output_len=2), [1.0, 1.05])  # TTFT exactly at the SLO: missed
    assert r.first_on_time is False
    assert r.decode_on_time == 1  # 1.05 < 1.1
    assert not r.slo_met()


def test_fixed_deadlines_miss_a_token_that_mean_tpot_forgives() -> None:
    # token 3 at 1.21 misses its deadline 1.2, but mean TPOT (1.22 - 0.95) / 3 = 0.09 < 0.1
    r = _finish(_req(output_len=4, tpot_slo=0.1), [0.95, 1.0, 1.21, 1.22])
    assert r.first_on_time and r.decode_on_time == 2
    assert r.slo_met()


def test_single_token_request_and_unfinished() -> None:
    r = _finish(_req(output_len=1), [0.2])
    assert math.isnan(r.tpot()) and r.slo_met()
    u = _req(output_len=5)
    u.emit_token(0.1)
    u.status = Status.UNFINISHED
    assert not u.slo_met()
    assert u.gain() == 1.0 and u.max_gain() == 5.0


def test_summarize_overall_and_per_class() -> None:
    a = _finish(_req(id=0, weight=2.0, cls="high"), [0.5, 0.55, 0.6, 0.65])  # all on time
    b = _finish(_req(id=1, weight=1.0, cls="low", arrival=1.0), [3.0, 3.1, 3.2, 3.3])  # all late
    c = _req(id=2, cls="low", arrival=2.0)
    c.status = Status.REJECTED
    s = summarize([a, b, c], class_order=["high", "low"])
    assert s["requests"] == 3 and s["finished"] == 2 and s["rejected"] == 1
    assert s["unfinished"] == 0
    assert s["tdg_ratio"] == pytest.approx(8.0 / (8.0 + 4.0 + 4.0))
    assert s["slo_attainment"] == pytest.approx(1 / 3)
    assert s["goodput_rps"] == pytest.approx(1 / 3.3)  # one good request over 0 .. 3.3 s
    assert s["per_class"]["high"]["tdg_ratio"] == pytest.approx(1.0)
    assert s["per_class"]["low"]["tdg_ratio"] == 0.0
    assert s["per_class"]["high"]["goodput_rps"] + s["per_class"]["low"]["goodput_rps"] == (
        pytest.approx(s["goodput_rps"]))
    assert s["ttft_p50"] == pytest.approx((0.5 + 2.0) / 2)
    assert s["token_deadline_attainment"] == pytest.approx(4 / 12)
    assert s["ttft_attainment"] == pytest.approx(1 / 3)  # a's first token only
    assert s["per_class"]["low"]["ttft_attainment"] == 0.0


def test_parse_classes_default_and_errors() -> None:
    cs = parse_classes(None)
    assert [(c.name, c.weight, c.rank) for c in cs] == [("high", 2.0, 0), ("low", 1.0, 1)]
    assert cs[0].ttft.resolve(0.01) == pytest.approx(0.25)  # 5x 10 ms is under the 250 ms floor
    assert cs[0].ttft.resolve(0.1) == pytest.approx(0.5)
    c = parse_classes("a:w=3,ttft=500ms,tpot=0.05s,share=0.9|0.1;b:share=0.1|0.9")
    assert c[0].ttft.resolve(123.0) == 0.5 and c[0].tpot.resolve(9.0) == 0.05
    assert c[0].share_at(0.0) == pytest.approx(0.9) and c[0].share_at(0.5) == pytest.approx(0.5)
    for bad, word in [("a:w=0", "weight"), ("a:ttft=fast", "ttft"), ("a:zzz=1", "unknown"),
                      ("a;a", "twice"), ("a:share=0;b:share=0", "zero"), ("a b:w=1", "name"),
                      ("a:w", "key=value")]:
        with pytest.raises(SpecError, match=word):
            parse_classes(bad)
