"""Multi-turn sessions (workload/sessions.py): prompts carry their history, ids are chained."""

from __future__ import annotations

import numpy as np
import pytest
from tests.conftest import toy_model

from proserve.core.request import Prefix
from proserve.engine import make_scheduler
from proserve.experiments.prefix_vllm import copy_requests, offline_hit_rate
from proserve.sim.simulator import simulate
from proserve.workload import make_workload
from proserve.workload.sessions import multi_turn
from proserve.workload.traces import Trace


def _trace(n: int, prompt: int = 100, out: int = 20) -> Trace:
    return Trace(np.arange(n, dtype=float), [prompt] * n, [out] * n, name="t")


def test_turns_resend_their_history_and_share_its_chunk_ids() -> None:
    t = multi_turn(_trace(6), 3, chunk=64)  # 2 sessions: requests 0,2,4 and 1,3,5
    assert list(t.prompt_len) == [100, 100, 220, 220, 340, 340]
    a, b, c = (Prefix(t.prefix_ids[i], 64) for i in (0, 2, 4))
    # turn 2 keeps turn 1's one full chunk (tokens 0-63); turn 3 keeps turn 2's three
    assert b.ids[:1] == a.ids[:1] and b.ids[1] != a.ids[1]
    assert c.ids[:3] == b.ids[:3] and c.ids[3] not in b.ids
    assert not set(t.prefix_ids[1]) & set(a.ids)  # another session shares nothing
    assert t.meta["multi_turn"]["sessions"] == 2
    assert list(t.arrival) == list(range(6))  # arrivals and order unchanged


def test_a_turn_that_would_not_fit_starts_a_new_conversation() -> None:
    t = multi_turn(_trace(4), 4, max_model_len=300, chunk=16)
    assert list(t.prompt_len) == [100, 220, 100, 220]
    assert t.meta["multi_turn"]["history_resets"] == 1
    assert not set(t.prefix_ids[2]) & set(t.prefix_ids[1])


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="turns must be >= 1"):
        multi_turn(_trace(3), 0)
    with pytest.raises(ValueError, match="choose one prefix generator"):
        make_workload("sharegpt", rate=1.0, count=5, model=toy_model(), seed=0, multi_turn=2,
                      shared_prefix_tokens=64)
    with pytest.raises(ValueError, match="own prefix ids"):
        make_workload("mooncake-synthetic", count=5, model=toy_model(), seed=0, multi_turn=2)


def test_simulated_hits_equal_the_offline_count_with_an_unbounded_cache() -> None:
    reqs, info = make_workload("sharegpt", rate=0.05, count=60, model=toy_model(), seed=1,
                               multi_turn=5, max_model_len=8192)
    assert info["prefixes"].startswith("multi-turn sessions (5 turns")
    off = offline_hit_rate(reqs)
    assert off > 0.3  # histories dominate the prompts
    eng = make_scheduler("vllm-fcfs", toy_model(kv_blocks=200_000))
    res = simulate(copy_requests(reqs), [eng], drain_s=1e5)
    cached = sum(r.cached_tokens for r in res.requests)
    assert cached == pytest.approx(off * sum(r.prompt_len for r in reqs))
