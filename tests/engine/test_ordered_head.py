"""``ordered_head``: the head of a policy's order (plus where some given requests stand) is
exactly the whole order restricted to those rows, for every unified-queue policy, with ties,
NaN-free and NaN keys, and in both sort modes (the GIL-holding one the vLLM plug-in uses)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import toy_model

from proserve.core.request import Request
from proserve.engine import make_scheduler
from proserve.engine.deadline import head_rows
from proserve.integrations.vllm.queue import RankedWaitingQueue

POLICIES = ("slide", "slide-bounded", "slide-nostarve", "edf", "fairbatching", "dynamic-chunk")


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from([-1.0, 0.0, 0.5, 2.0, np.nan]),
                          st.integers(0, 2)), min_size=1, max_size=80),
       st.integers(1, 90))
def test_head_rows_is_a_prefix_of_lexsort(rows, k) -> None:
    keys = (np.arange(len(rows), dtype=np.int64)[::-1].copy(),
            np.array([float(r[2]) for r in rows]),
            np.array([r[1] for r in rows], dtype=float),
            np.array([r[0] for r in rows], dtype=np.int64))
    full = np.lexsort(keys).tolist()
    got = head_rows(keys, k)
    if got is None:  # only when the boundary value is NaN
        assert any(np.isnan(r[1]) for r in rows)
        return
    got = set(got.tolist())
    assert len(got) >= min(k, len(rows))
    assert got == set(full[:len(got)])  # a prefix of the order, at least k long


def _fill(name: str, n: int, seed: int, hold: bool = False):
    rng = np.random.default_rng(seed)
    pol = make_scheduler(name, toy_model())
    ranker = pol.ranker
    if hold:
        ranker.hold_gil()
    reqs = []
    for i in range(n):
        r = Request(id=i, arrival=float(rng.integers(0, 20)) / 4,
                    prompt_len=int(rng.choice([50, 100, 400])), output_len=20,
                    ttft_slo=float(rng.choice([0.5, 2.0])), tpot_slo=float(rng.choice([0.05, 0.2])),
                    weight=float(rng.choice([1.0, 4.0])))
        if rng.random() < 0.4:  # some decoding, some part-prefilled: every group appears
            r.computed = r.prompt_len
            r.generated = int(rng.integers(1, 10))
            r.computed += r.generated - 1
        elif rng.random() < 0.2:
            r.computed = r.prompt_len // 2
        ranker.add(r)
        reqs.append(r)
    return ranker, reqs


@pytest.mark.parametrize("name", POLICIES)
@pytest.mark.parametrize("hold", [False, True])
@pytest.mark.parametrize("n", [30, 300, 700])
def test_ordered_head_is_the_order_restricted(name, hold, n) -> None:
    for seed in range(3):
        ranker, reqs = _fill(name, n, seed, hold)
        now = 4.0
        full, budget = ranker.ordered(now)
        rng = np.random.default_rng(100 + seed)
        must = [reqs[i] for i in rng.choice(n, size=min(16, n), replace=False)]
        for k in (1, 17, 48, n + 5):
            head, b = ranker.ordered_head(now, k, must)
            want = {id(r) for r in full[:k]} | {id(r) for r in must}
            assert [r.id for r in head] == [r.id for r in full if id(r) in want], (name, k)
            assert b == budget


def test_queue_asks_for_the_whole_order_once_the_head_runs_out() -> None:
    class R:
        def __init__(self, i: int) -> None:
            self.request_id, self.arrival_time = f"r{i}", float(i)

    reqs = [R(i) for i in range(6)]
    q = RankedWaitingQueue()
    for r in reqs:
        q.add_request(r)
    whole = [reqs[i] for i in (4, 2, 5, 0, 3, 1)]
    calls = []
    q.set_order(whole[:2], lambda: calls.append(1) or whole)
    popped = [q.pop_request() for _ in range(6)]
    assert popped == whole and calls == [1] and q.extended == 1
    assert not q
