"""The plug-in's waiting queue: vLLM's RequestQueue interface served in a given ranking."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proserve.integrations.vllm.queue import RankedWaitingQueue


@dataclass(eq=False)
class Req:  # the two attributes the queue reads from a vLLM Request
    request_id: str
    arrival_time: float = field(default=0.0)


def test_serves_the_ranking_skips_departed_and_rewinds_on_prepend() -> None:
    a, b, c, d = (Req(x, t) for x, t in zip("abcd", (4.0, 3.0, 2.0, 1.0)))
    q = RankedWaitingQueue()
    for r in (a, b, c):
        q.add_request(r)
    q.set_order([c, a, b])
    assert q.peek_request() is c and len(q) == 3 and c in q
    q.remove_request(a)
    assert q.pop_request() is c and q.pop_request() is b
    q.prepend_request(c)  # popped this step, put back: keeps its rank
    q.add_request(d)  # arrived since the ranking: after the ranked ones
    assert list(q) == [c, d]
    assert q.pop_request() is c and q.pop_request() is d
    assert not q
    with pytest.raises(IndexError):
        q.peek_request()


@given(st.lists(st.floats(0, 100), min_size=1, max_size=30), st.randoms())
@settings(max_examples=100, deadline=None)
def test_pops_everything_exactly_once_in_rank_then_arrival_order(arrivals, rnd) -> None:
    reqs = [Req(str(i), t) for i, t in enumerate(arrivals)]
    q = RankedWaitingQueue()
    ranked = reqs[: len(reqs) // 2]
    for r in ranked:
        q.add_request(r)
    rnd.shuffle(ranked)
    q.set_order(list(ranked))
    late = reqs[len(reqs) // 2:]
    q.prepend_requests(late)  # not ranked yet
    gone = set(rnd.sample(reqs, len(reqs) // 4))
    q.remove_requests(gone)
    out = [q.pop_request() for _ in range(len(q))]
    expect = [r for r in ranked if r not in gone] + sorted(
        (r for r in late if r not in gone), key=lambda r: (r.arrival_time, r.request_id))
    assert out == expect
