"""dynamic-chunk (PolyServe's engine side): iteration sized to the tightest TPOT, chunks sized by
the latency model, decodes first, prefills by first-token slack."""

from __future__ import annotations

import math

import pytest
from tests.conftest import random_requests, toy_model

from proserve.core.request import Request
from proserve.engine import make_scheduler


def R(i, arrival=0.0, prompt=100, out=10, ttft=1.0, tpot=0.05):
    return Request(id=i, arrival=arrival, prompt_len=prompt, output_len=out, ttft_slo=ttft,
                   tpot_slo=tpot, weight=1.0, priority=0, cls="high")


def batch(out) -> list[tuple[int, int]]:
    return [(r.id, q) for r, q in zip(out.reqs, out.num_tokens)]


def step(eng, now):
    out = eng.schedule(now)
    eng.update_from_output(out, now + out.duration)
    return out


@pytest.mark.parametrize("small_queue", [48, 0])
def test_chunk_fills_what_the_tightest_tpot_leaves_after_the_decodes(small_queue: int) -> None:
    m = toy_model()
    eng = make_scheduler("dynamic-chunk", m, small_queue=small_queue)
    d = R(0, prompt=64, out=50, tpot=0.03)
    eng.add_request(d, 0.0)
    step(eng, 0.0)  # d is decode-stage now
    long = R(1, arrival=0.01, prompt=20000, tpot=0.05)
    eng.add_request(long, 0.01)
    out = eng.schedule(0.02)
    budget = 0.9 * 0.03  # the tightest TPOT on board (the decode's), times the margin
    left = budget - m.c0 - m.decode_time(d.computed + 1)
    q = m.max_chunk(left, 0, 20000)
    assert batch(out) == [(0, 1), (1, q)] and 50 < q < 20000
    assert out.duration <= budget + 1e-12


def test_chunks_shrink_as_the_prompts_context_grows() -> None:
    m = toy_model()
    eng = make_scheduler("dynamic-chunk", m)
    d = R(0, prompt=64, out=400, tpot=0.05)
    eng.add_request(d, 0.0)
    step(eng, 0.0)
    long = R(1, prompt=60000, out=2, tpot=0.05, ttft=100.0)
    eng.add_request(long, 0.0)
    now, chunks = 0.01, []
    while long.generated == 0:
        out = step(eng, now)
        chunks += [q for r, q in zip(out.reqs, out.num_tokens) if r is long]
        now += out.duration
    assert sum(chunks) == 60000 and len(chunks) > 3
    assert all(a > b for a, b in zip(chunks[:-2], chunks[1:-1]))  # the last one is the rest


def test_prefills_go_by_first_token_slack_not_arrival() -> None:
    m = toy_model()
    eng = make_scheduler("dynamic-chunk", m)
    relaxed = R(0, arrival=0.0, prompt=200, ttft=5.0)
    urgent = R(1, arrival=0.1, prompt=200, ttft=0.2)
    for r in (relaxed, urgent):
        eng.add_request(r, r.arrival)
    order, budget = eng.ordered(0.1)
    assert [r.id for r in order] == [1, 0]
    assert budget == math.inf  # nothing decoding: no TPOT to protect, only the caps


def test_both_paths_agree_step_by_step() -> None:
    m = toy_model()
    engines = [make_scheduler("dynamic-chunk", m, small_queue=q) for q in (10**9, 0)]
    copies = [random_requests(4, 200, rate=300.0, ttft=0.2, tpot=0.03) for _ in engines]
    for e, reqs in zip(engines, copies):
        for r in reqs:
            e.add_request(r, r.arrival)
    now = max(r.arrival for r in copies[0])
    for _ in range(40):
        outs = [e.schedule(now) for e in engines]
        assert batch(outs[0]) == batch(outs[1])
        for e, o in zip(engines, outs):
            e.update_from_output(o, now + o.duration)
        now += outs[0].duration


def test_bad_margin_is_an_error() -> None:
    for margin in (0, 1.5):
        with pytest.raises(ValueError):
            make_scheduler("dynamic-chunk", toy_model(), margin=margin)
