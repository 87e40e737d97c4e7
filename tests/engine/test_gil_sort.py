"""The GIL-holding sort the vLLM plug-in uses (UnifiedQueueScheduler.lexsort) orders exactly as
numpy's lexsort, and a policy ranks identically in both modes."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import toy_model

from proserve.core.request import Request
from proserve.engine import make_scheduler


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.sampled_from([-1.5, 0.0, 0.25, 3.0]),
                          st.integers(0, 3)), min_size=0, max_size=60))
def test_python_lexsort_equals_numpy(rows) -> None:
    pol = make_scheduler("slide", toy_model())
    group = np.array([r[0] for r in rows], dtype=np.int64)
    key = np.array([r[1] for r in rows], dtype=float)
    arrival = np.array([float(r[2]) for r in rows])
    rid = np.arange(len(rows), dtype=np.int64)[::-1].copy()  # unique, the last tie-break
    keys = (rid, arrival, key, group)
    pol.hold_gil = True
    assert pol.lexsort(keys).tolist() == np.lexsort(keys).tolist()


def test_policies_rank_the_same_holding_the_gil() -> None:
    m = toy_model()
    for name in ("slide", "slide-bounded", "edf", "fairbatching", "dynamic-chunk"):
        orders = []
        for hold in (False, True):
            pol = make_scheduler(name, m)
            ranker = pol.ranker
            if hold:
                ranker.hold_gil()
            for i in range(200):  # beyond small_queue: the numpy path
                ranker.add(Request(id=i, arrival=float(i % 7), prompt_len=100 + i % 5,
                                   output_len=10, ttft_slo=1.0, tpot_slo=0.1,
                                   weight=1.0 + i % 3))
            order, budget = ranker.ordered(3.0)
            late, limit, tokens = ranker.late_work(3.0, budget)
            orders.append(([r.id for r in order], budget, [r.id for r in late], limit, tokens))
        assert orders[0] == orders[1], name
