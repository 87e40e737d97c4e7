"""``resident_seqs``: max_num_seqs as vLLM means it (requests holding KV), not one step's batch.

Why it exists: simulating the vLLM plug-in with our batch-cap meaning let SlideBatching pace
decodes to admit prefills, which vLLM cannot do (a running request keeps its slot while it sits
a step out); docs/BENCHMARKS.md section 15.
"""

from __future__ import annotations

import pytest
from tests.conftest import toy_model

from proserve.core.request import Request
from proserve.engine import make_scheduler


def R(i, arrival=0.0, prompt=100, out=40, prio=1, w=1.0, ttft=1.0, tpot=0.5):
    return Request(id=i, arrival=arrival, prompt_len=prompt, output_len=out, ttft_slo=ttft,
                   tpot_slo=tpot, weight=w, priority=prio, cls="high" if prio == 0 else "low")


def run(eng, reqs, steps=5000):
    """Drive ``eng`` to completion; the most requests holding KV at once."""
    now, most, i = 0.0, 0, 0
    for _ in range(steps):
        while i < len(reqs) and reqs[i].arrival <= now:
            eng.add_request(reqs[i], now)
            i += 1
        if i == len(reqs) and not eng.has_unfinished():
            return most
        out = eng.schedule(now)
        now += out.duration if out.reqs else 0.01
        eng.update_from_output(out, now)
        eng.check()  # KV books balance, the block manager's holder count included
        most = max(most, sum(1 for r in reqs[:i] if r.blocks > 0))
    raise AssertionError("did not finish")


@pytest.mark.parametrize("name", ["slide", "slide-bounded", "edf", "fairbatching"])
def test_requests_holding_kv_never_exceed_max_num_seqs(name) -> None:
    reqs = [R(k, arrival=0.02 * k, prompt=50 + 30 * (k % 5), tpot=0.05 + 0.1 * (k % 2))
            for k in range(40)]
    most = run(make_scheduler(name, toy_model(), max_num_seqs=3, resident_seqs=True), reqs)
    assert most <= 3
    assert all(r.generated == r.output_len for r in reqs)  # every request finished
    # the batch-cap meaning lets more requests hold KV than there are sequences per step
    reqs2 = [R(k, arrival=0.02 * k, prompt=50 + 30 * (k % 5), tpot=0.05 + 0.1 * (k % 2))
             for k in range(40)]
    assert run(make_scheduler(name, toy_model(), max_num_seqs=3), reqs2) > 3


def test_a_higher_class_displaces_the_tail_of_a_lower_one_when_slots_are_full() -> None:
    eng = make_scheduler("slide-bounded", toy_model(), max_num_seqs=2, resident_seqs=True)
    lows = [R(0, out=500), R(1, out=500)]
    for r in lows:
        eng.add_request(r, 0.0)
    out = eng.schedule(0.0)
    eng.update_from_output(out, out.duration)
    assert all(r.blocks > 0 for r in lows)
    hi = R(2, arrival=0.1, prio=0, w=4.0)
    eng.add_request(hi, 0.1)
    out = eng.schedule(0.1)
    assert hi in out.reqs and len(out.preempted) == 1 and out.preempted[0] in lows
    # a same-class newcomer waits instead: no slot, nobody lower to displace
    eng.update_from_output(out, 0.1 + out.duration)
    lo2 = R(3, arrival=0.2)
    eng.add_request(lo2, 0.2)
    out = eng.schedule(0.2)
    assert lo2 not in out.reqs and not out.preempted
