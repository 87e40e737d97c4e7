"""The incremental head index (engine/head_index.py) answers ``ordered_head`` and slide-bounded's
late slice exactly as the numpy path does, step after step, while requests arrive, start
running, progress, get preempted back to waiting and finish."""

from __future__ import annotations

import numpy as np
import pytest
from tests.conftest import toy_model

from proserve.core.request import Request
from proserve.engine import make_scheduler


def _twins(name: str, small_queue: int):
    """The same policy twice: one answering from the index, one from numpy."""
    a = make_scheduler(name, toy_model(), small_queue=small_queue)
    b = make_scheduler(name, toy_model(), small_queue=small_queue)
    assert a.ranker.incremental() and a.head_index is not None
    return a, b


def _request(i: int, rng: np.random.Generator, now: float) -> Request:
    return Request(id=i, arrival=now - float(rng.integers(0, 40)) / 8,
                   prompt_len=int(rng.choice([30, 100, 400, 1500])),
                   output_len=int(rng.integers(2, 30)),
                   ttft_slo=float(rng.choice([0.25, 0.5, 2.0])),
                   tpot_slo=float(rng.choice([0.05, 0.2])),
                   weight=float(rng.choice([1.0, 4.0])))


def _progress(r: Request, rng: np.random.Generator, now: float) -> None:
    """One engine step of a running request: a prefill chunk, or a decode token."""
    left = r.prompt_len + r.generated - r.computed
    if left > 1:
        r.computed += min(left, int(rng.choice([16, 64, 512])))
        if r.computed == r.prompt_len + r.generated and r.generated == 0:
            r.generated, r.first_token_time = 1, now
    else:
        r.computed += 1
        r.generated += 1


@pytest.mark.parametrize("name", ["slide-bounded", "slide-nostarve", "slide"])
@pytest.mark.parametrize("seed", range(4))
def test_index_head_equals_the_numpy_head_step_after_step(name, seed) -> None:
    rng = np.random.default_rng(seed)
    a, b = _twins(name, small_queue=6)
    live: list[Request] = []
    running: list[Request] = []
    now, n, checked_late = 10.0, 0, 0
    for _step in range(120):
        now += float(rng.choice([0.01, 0.05, 0.3]))
        for _ in range(int(rng.integers(0, 6))):  # arrivals
            r = _request(n, rng, now)
            n += 1
            a.table.add(r)
            b.table.add(r)
            live.append(r)
        # the engine's running set changes: some start, some are preempted back to waiting
        waiting = [r for r in live if r not in running]
        for r in rng.permutation(len(waiting))[:int(rng.integers(0, 4))]:
            if len(running) < 12:
                running.append(waiting[r])
        if running and rng.random() < 0.2:
            v = running.pop(int(rng.integers(0, len(running))))
            v.computed = 0  # recompute: back to waiting in prefill stage
            a.table.refresh(v)
            b.table.refresh(v)
        k = int(rng.choice([1, 4, 16, 40]))
        ha, ba = a.ordered_head(now, k, running)
        hb, bb = b.ordered_head(now, k, running)
        assert [r.id for r in ha] == [r.id for r in hb], (_step, k)
        assert ba == bb
        if name == "slide-bounded":
            la = a.late_work(now, ba)
            lb = b.late_work(now, bb)
            assert [r.id for r in la[0]] == [r.id for r in lb[0]] and la[1:] == lb[1:]
            checked_late += bool(la[0])
        # the step runs: running requests progress, finished ones leave
        for r in running:
            _progress(r, rng, now)
        a.table.refresh_many(running)
        b.table.refresh_many(running)
        for r in [r for r in running if r.generated >= r.output_len]:
            running.remove(r)
            live.remove(r)
            a.table.remove(r)
            b.table.remove(r)
    assert len(a.table) > 40  # the queue grew past the small-queue path
    if name == "slide-bounded":
        assert checked_late > 10  # the late slice had work on many steps


def test_index_is_refused_for_an_ablation_order() -> None:
    p = make_scheduler("slide-deadline-only", toy_model())
    assert p.ranker.incremental() is False and p.head_index is None


def test_an_index_out_of_step_is_logged_rebuilt_and_the_step_served(caplog) -> None:
    rng = np.random.default_rng(7)
    a, b = _twins("slide-bounded", small_queue=6)
    for i in range(60):
        r = _request(i, rng, 10.0)
        a.table.add(r)
        b.table.add(r)
    a.ordered_head(10.0, 8)
    victim = a.head_index.by_dl.pop(0)  # corrupt it: a row the index no longer lists
    a.table.refresh(a.table._reqs[victim[3]])  # its next sync must unindex it: out of step
    with caplog.at_level("ERROR"):
        head, budget = a.ordered_head(10.5, 8)
    want, want_budget = b.ordered_head(10.5, 8)
    assert [r.id for r in head] == [r.id for r in want] and budget == want_budget
    la, lb = a.late_work(10.5, budget), b.late_work(10.5, want_budget)  # the same step's slice
    assert [r.id for r in la[0]] == [r.id for r in lb[0]] and la[0]
    assert a.index_rebuilds == 1 and "rebuilt" in caplog.text
    assert [r.id for r in a.ordered_head(11.0, 8)[0]] == [r.id for r in b.ordered_head(11.0, 8)[0]]
