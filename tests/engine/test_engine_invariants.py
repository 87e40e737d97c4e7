"""Every policy keeps the engine invariants on random workloads, including memory-tight ones."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import random_requests, toy_model

from proserve.core.request import Status
from proserve.engine import make_scheduler, policy_names
from proserve.engine.base import BaseScheduler, SchedulerOutput
from proserve.sim.simulator import simulate

POLICIES = policy_names()


class CheckedScheduler:
    """Wraps a scheduler and checks every batch it forms against the caps and the KV."""

    def __init__(self, inner: BaseScheduler) -> None:
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def schedule(self, now: float) -> SchedulerOutput:
        inner = self.inner
        out = inner.schedule(now)
        assert len(out.reqs) == len({id(r) for r in out.reqs}), "request scheduled twice"
        assert len(out.reqs) <= inner.max_num_seqs
        assert sum(out.num_tokens) <= max(inner.max_num_batched_tokens, 1)
        assert out.prefill_tokens + out.decodes == sum(out.num_tokens)
        for r, q in zip(out.reqs, out.num_tokens):
            assert 1 <= q <= r.pending, (r.id, q, r.pending)
            assert r.blocks * inner.kv.block_size >= r.computed + q, "KV not allocated"
            assert r.status == Status.RUNNING
        for v in out.preempted:
            assert v.blocks == 0 and v.computed == 0
            assert all(v is not r for r in out.reqs)
        expect = inner.model.batch_time(zip(out.num_tokens, (r.computed for r in out.reqs)))
        assert abs(out.duration - expect) < 1e-9 if out.reqs else True
        assert 0 <= inner.kv.free <= inner.kv.total
        inner.kv.check(inner.requests())
        return out


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    policy=st.sampled_from(POLICIES),
    seed=st.integers(0, 10_000),
    n=st.integers(1, 60),
    rate=st.floats(1.0, 80.0),
    kv_blocks=st.sampled_from([160, 400, 4000]),
    tokens=st.sampled_from([64, 512, 8192]),
)
def test_policy_invariants(policy, seed, n, rate, kv_blocks, tokens) -> None:
    m = toy_model(kv_blocks=kv_blocks)
    reqs = random_requests(seed, n, rate, max_prompt=1200, max_out=120)
    eng = make_scheduler(policy, m, max_num_batched_tokens=tokens, max_num_seqs=16,
                         check_invariants=True)
    res = simulate(reqs, [CheckedScheduler(eng)], drain_s=1e6, check_every=1)
    kv_tokens = kv_blocks * 16
    for r in res.requests:
        if r.prompt_len + r.output_len > kv_tokens:
            assert r.status == Status.REJECTED
            continue
        assert r.status == Status.FINISHED, (policy, r)
        assert r.generated == r.output_len
        assert r.arrival <= r.first_token_time <= r.last_token_time == r.finish_time
        assert r.blocks == 0
    assert eng.kv.free == eng.kv.total


def test_all_policies_complete_same_workload_and_conserve_tokens() -> None:
    reqs0 = random_requests(7, 300, 40.0)
    for policy in POLICIES:
        reqs = [r.__class__(r.id, r.arrival, r.prompt_len, r.output_len, r.ttft_slo, r.tpot_slo,
                            r.weight, r.priority, r.cls, r.tenant) for r in reqs0]
        eng = make_scheduler(policy, toy_model(kv_blocks=600))
        res = simulate(reqs, [eng], drain_s=1e6, check_every=50)
        assert all(r.status == Status.FINISHED for r in res.requests), policy
        assert eng.tokens_emitted == sum(r.output_len for r in reqs0), policy
