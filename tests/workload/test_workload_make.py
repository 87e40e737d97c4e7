"""make_workload: the CLI's entry point — rules per trace kind, determinism, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from proserve.latency.model import LatencyModel
from proserve.workload import load_trace, make_workload

MODEL = LatencyModel(c0=6e-3, c1=5e-10, c2=2.4e-5, c3=1e-9, c4=5e-8, d1=8e-6, d2=5e-8)


def fields(reqs: list) -> list[tuple]:
    return [(r.id, r.arrival, r.prompt_len, r.output_len, r.ttft_slo, r.tpot_slo, r.weight,
             r.priority, r.cls, r.tenant) for r in reqs]


@pytest.mark.parametrize(
    "kw",
    [dict(trace="azure-conv", rate=8.0, duration=120.0),
     dict(trace="sharegpt", rate=4.0, count=300, arrival="gamma", cv=2.0),
     dict(trace="servegen-m-small", rate=15.0, duration=60.0, start=72_000.0,
          tenant_classes="volume")],
)
def test_same_seed_same_workload(kw: dict) -> None:
    a, da = make_workload(model=MODEL, seed=42, **kw)
    b, db = make_workload(model=MODEL, seed=42, **kw)
    c, _ = make_workload(model=MODEL, seed=43, **kw)
    assert fields(a) == fields(b) and da == db
    assert fields(a) != fields(c)
    json.dumps(da)  # the description is JSON-ready


def test_timestamped_trace_scaled_to_rate() -> None:
    reqs, d = make_workload("azure-conv", rate=10.0, duration=300.0, model=MODEL, seed=0)
    assert d["rate"] == pytest.approx(10.0, rel=1e-6)  # calibrated on the prefix used
    assert d["n"] == 3000 and reqs[-1].arrival < 300.0
    assert d["native_rate"] < 10.0 and d["format"] == "azure"
    assert [r.id for r in reqs] == list(range(len(reqs)))
    # same requests in the same order as the file: only the clock changed
    tr = load_trace("azure-conv")
    assert [r.prompt_len for r in reqs[:50]] == tr.prompt_len[:50].tolist()
    native, d2 = make_workload("azure-conv", count=100, model=MODEL, seed=0)
    assert d2["n"] == 100 and native[-1].arrival == pytest.approx(tr.arrival[99])


def test_trace_exhausted_is_reported() -> None:
    _, d = make_workload("azure-code", rate=100.0, duration=600.0, model=MODEL, seed=0)
    assert d["trace_exhausted"] and d["n"] == 8819


def test_length_trace_needs_rate_and_gets_arrivals() -> None:
    with pytest.raises(ValueError, match="no timestamps: give a rate"):
        make_workload("sharegpt", count=10, model=MODEL, seed=0)
    reqs, d = make_workload("sharegpt", rate=50.0, duration=200.0, model=MODEL, seed=0)
    assert d["rate"] == pytest.approx(50.0, rel=0.05)
    assert reqs[-1].arrival < 200.0 and d["arrivals"] == "poisson"
    reqs, d = make_workload("arxiv-lengths", rate=2.0, count=40_000, model=MODEL, seed=0)
    assert d["n"] == 40_000  # more than the 28,257 rows: rows are cycled
    with pytest.raises(ValueError, match="cv applies to gamma"):
        make_workload("sharegpt", rate=1.0, count=5, cv=2.0, model=MODEL, seed=0)


def test_servegen_rate_rescales_clients() -> None:
    reqs, d = make_workload("servegen-m-small", rate=20.0, duration=300.0, start=72_000.0,
                            model=MODEL, seed=1)
    assert d["rate"] == pytest.approx(20.0, rel=0.15)
    assert d["native_rate"] > 1000.0
    assert d["tenants"] > 5 and all(r.tenant.startswith("client-") for r in reqs)
    reqs, d = make_workload("servegen-m-small", rate=20.0, count=500, model=MODEL, seed=1)
    assert d["n"] == 500
    with pytest.raises(ValueError, match="outside"):
        make_workload("servegen-m-small", rate=1.0, count=5, start=90_000.0, model=MODEL, seed=0)


def test_classes_and_clamp_in_description() -> None:
    reqs, d = make_workload("mooncake-synthetic", classes="gold:w=3,share=0.2;rest:share=0.8",
                            max_model_len=32_768, model=MODEL, seed=0)
    assert set(d["classes"]) == {"gold", "rest"}
    assert d["classes"]["gold"] / d["n"] == pytest.approx(0.2, abs=0.03)
    assert d["max_model_len_clamps"] > 0
    assert max(r.prompt_len + r.output_len for r in reqs) <= 32_768
    assert np.mean([r.weight for r in reqs if r.cls == "gold"]) == 3.0
