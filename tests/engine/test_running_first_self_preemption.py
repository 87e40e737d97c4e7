"""vLLM v1's priority policy when the request that needs KV is itself the worst-priority one."""

from __future__ import annotations

from proserve.core.request import Request, Status
from proserve.engine import make_scheduler
from proserve.latency.model import LatencyModel
from proserve.sim.simulator import simulate


def _low_then_high():
    """12 KV blocks of 16 tokens. low (priority 1, 95-token prompt, 6 blocks) starts alone; high
    (priority 0, 81 tokens, 6 blocks) is admitted next step, filling the KV. The step after, low
    (first in the running list) needs a 7th block for token 97: the worst-priority running
    request is low itself, so it preempts itself (as vLLM does) and the step schedules nothing
    else. A correct engine then serves high and resumes low later: both finish."""
    m = LatencyModel(c0=0.005, c1=0.0, c2=1e-4, c3=0.0, c4=0.0, d1=1e-3, d2=0.0, kv_blocks=12,
                     block_size=16)
    eng = make_scheduler("vllm-priority", m, max_num_batched_tokens=8192, max_num_seqs=8)
    low = Request(0, 0.0, 95, 20, 1.0, 0.1, 1.0, priority=1, cls="low")
    high = Request(1, 0.001, 81, 20, 1.0, 0.1, 2.0, priority=0, cls="high")
    simulate([low, high], [eng], drain_s=10.0)
    return low, high


def test_worst_priority_request_preempting_itself_does_not_stall_the_engine() -> None:
    low, high = _low_then_high()
    assert (low.status, high.status) == (Status.FINISHED, Status.FINISHED)
    assert low.preemptions == 1 and high.preemptions == 0
