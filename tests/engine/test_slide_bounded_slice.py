"""slide-bounded's late slice is bounded by a share of the step's tokens as well as its time: where
the token cap binds first (a small model on a fast engine), the time bound alone let late work
take the whole step, first-come first-served."""

from __future__ import annotations

from tests.conftest import toy_model

from proserve.core.request import Request
from proserve.engine import make_scheduler


def _req(i: int, arrival: float, ttft: float, prompt: int = 1500) -> Request:
    return Request(id=i, arrival=arrival, prompt_len=prompt, output_len=4, ttft_slo=ttft,
                   tpot_slo=0.1)


def test_late_slice_takes_at_most_its_share_of_the_token_cap() -> None:
    pol = make_scheduler("slide-bounded", toy_model(), max_num_batched_tokens=2048)
    late = [_req(i, arrival=-100.0, ttft=1.0) for i in range(20)]  # ~99 s late: full share
    # urgent (its slack is under the queue's drain time, ~0.68 s) but feasible with 0.5 s of
    # slack: the step's latency budget is 0.5 s, so a time bound alone would be ~0.12 s, room
    # for ~6,000 tokens on this model: far past the cap
    fresh = _req(100, arrival=0.0, ttft=0.5)
    fresh.weight = 10.0  # the gain order puts it first among urgent prefills
    for r in (*late, fresh):
        assert pol.add_request(r, 0.0)
    out = pol.schedule(0.0)
    assert pol.last_share == 0.25
    first_fresh = next(i for i, r in enumerate(out.reqs) if r is fresh)
    slice_tokens = sum(out.num_tokens[:first_fresh])
    assert all(r in late for r in out.reqs[:first_fresh])
    assert 0 < slice_tokens <= 0.25 * 2048  # the slice: at most a quarter of the token cap
    late_work, limit_s, limit_tokens = pol.ranker.late_work(0.0, 0.5)
    assert limit_tokens == 512 and limit_s > 0.1  # the time bound would not have bound


def test_late_work_holds_at_most_its_share_of_the_sequence_slots() -> None:
    pol = make_scheduler("slide-bounded", toy_model(), max_num_seqs=8)  # share 0.25: 2 slots
    late = [_req(i, arrival=-100.0 + i, ttft=1.0, prompt=100) for i in range(6)]
    for r in late:
        assert pol.add_request(r, 0.0)
    work, _, _ = pol.ranker.late_work(0.0, 1.0)
    assert work == late[:2]  # nothing late holds a slot yet: two may start
    late[0].computed = 50  # the two oldest now hold KV, still prefilling past their deadline
    late[1].computed = 50
    pol.table.refresh_many(late[:2])
    work, _, _ = pol.ranker.late_work(0.0, 1.0)
    assert work == late[:2]  # they go on; no new late request starts while they hold slots
    late[1].computed = 0  # preempted: its slot is free again, the next oldest may start
    pol.table.refresh_many([late[1]])
    work, _, _ = pol.ranker.late_work(0.0, 1.0)
    assert work == [late[0], late[1]]


def test_on_slot_bound_engines_the_slice_offers_one_request_a_step_within_its_share() -> None:
    """vLLM's slots (resident_seqs): the slice's room is a share of the recent admissions, not
    of the held slots; it offers at most one new late request a step, and none once the slice
    got its share of the admissions the table saw."""
    pol = make_scheduler("slide-bounded", toy_model(), max_num_seqs=8, resident_seqs=True)
    late = [_req(i, arrival=-100.0 + i, ttft=1.0, prompt=100) for i in range(6)]
    for r in late:
        assert pol.add_request(r, 0.0)
    work, _, _ = pol.ranker.late_work(0.0, 1.0)
    assert work == late[:1]  # no admission seen yet: room for one, the oldest
    late[0].computed = 50  # admitted (as vLLM would, from the order's head): counted as offered
    pol.table.refresh_many([late[0]])
    assert list(pol._admits) == [True]
    work, _, _ = pol.ranker.late_work(0.0, 1.0)
    assert work == late[:1]  # 1 of 1 admissions went to the slice: over its 25%, none new
    fresh = [_req(100 + i, arrival=0.0, ttft=5.0, prompt=100) for i in range(3)]
    for r in fresh:  # three admissions the gain order made
        assert pol.add_request(r, 0.0)
        r.computed = 10
    pol.table.refresh_many(fresh)
    pol.table.refresh_many(fresh)  # a request is admitted once, however often it is refreshed
    assert list(pol._admits) == [True, False, False, False]
    work, _, _ = pol.ranker.late_work(0.0, 1.0)
    assert work == late[:2]  # 1 of 4 + 1 is under the share: the next oldest is offered
    late[0].computed = 0  # preempted, then re-admitted from the slice: a second admission
    pol.table.refresh_many([late[0]])
    work, _, _ = pol.ranker.late_work(0.0, 1.0)
    assert work == late[:1]  # the oldest again, without KV now
    late[0].computed = 50
    pol.table.refresh_many([late[0]])
    assert list(pol._admits) == [True, False, False, False, True]


def test_on_slot_bound_engines_the_slice_admits_about_its_share_of_requests() -> None:
    """Over a sustained overload of late work, the slice's admissions stay near its share."""
    from proserve.sim.simulator import simulate

    pol = make_scheduler("slide-bounded", toy_model(), max_num_seqs=4, resident_seqs=True)
    reqs = [Request(id=i, arrival=i * 0.01, prompt_len=200, output_len=30, ttft_slo=0.3,
                    tpot_slo=0.5, weight=1.0 + (i % 2)) for i in range(600)]
    offered: list[bool] = []
    admitted = pol._admitted

    def spy(rs):
        offered.extend(r.id in pol._offered for r in rs)
        admitted(rs)

    pol.table.on_admit = spy
    simulate(reqs, [pol])
    assert all(r.finish_time >= 0 for r in reqs)
    assert len(offered) >= 600
    assert 0.05 < sum(offered) / len(offered) <= 0.25 + 1 / 32
