"""The offline (in-process vLLM) backend's timing logic, against a fake ``vllm`` on a fake clock.

No vLLM here: the fake ``LLM.generate`` advances a fake clock by what a call would cost, including
the one-off cost of a shape's first call that broke a CI run (every decode point came out
non-positive and the fit's decode terms collapsed to zero).
"""

from __future__ import annotations

import sys
import types

import pytest

from proserve.profiling import offline

STEP = 0.002  # one decode step of the fake engine
FIRST_CALL = 0.050  # one-off cost of a shape's first call


class _Clock:
    t = 0.0


def _fake_vllm(step: float) -> types.ModuleType:
    seen: set[tuple[int, int]] = set()

    class SamplingParams:
        def __init__(self, max_tokens: int, **_: object) -> None:
            self.max_tokens = max_tokens

    class LLM:
        def __init__(self, model: str, **_: object) -> None:
            cache = types.SimpleNamespace(num_gpu_blocks=100, block_size=16)
            self.llm_engine = types.SimpleNamespace(
                vllm_config=types.SimpleNamespace(cache_config=cache))

        def generate(self, prompts, sp, use_tqdm=False):
            shape = (len(prompts), len(prompts[0]["prompt_token_ids"]))
            cost = 0.010 + step * (sp.max_tokens - 1)
            if shape not in seen:
                seen.add(shape)
                cost += FIRST_CALL
            _Clock.t += cost

    mod = types.ModuleType("vllm")
    mod.LLM, mod.SamplingParams, mod.__version__ = LLM, SamplingParams, "fake"
    return mod


@pytest.fixture
def fake(monkeypatch):
    def make(step: float) -> offline.OfflineBackend:
        monkeypatch.setitem(sys.modules, "vllm", _fake_vllm(step))
        monkeypatch.setattr(offline.time, "perf_counter", lambda: _Clock.t)
        return offline.OfflineBackend("m", repeats=1, decode_tokens=8)
    return make


def test_decode_step_measured_despite_first_call_cost(fake) -> None:
    b = fake(STEP)
    assert b.time_decode(2, 64) == pytest.approx(STEP)
    assert b.kv_capacity() == (100, 16)


def test_decode_without_measurable_time_is_an_error_not_a_clamp(fake) -> None:
    b = fake(0.0)
    with pytest.raises(RuntimeError, match="--decode-tokens"):
        b.time_decode(1, 32)
