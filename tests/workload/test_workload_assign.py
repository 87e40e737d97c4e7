"""Class assignment, SLO resolution, tenants and length clamps."""

from __future__ import annotations

import numpy as np
import pytest

from proserve.core.classes import SpecError, parse_classes
from proserve.latency.model import LatencyModel
from proserve.workload import (
    Trace,
    build_requests,
    clamp_lengths,
    share_matrix,
    tenant_rule,
)

MODEL = LatencyModel(c0=6e-3, c1=5e-10, c2=2.4e-5, c3=1e-9, c4=5e-8, d1=8e-6, d2=5e-8)


def uniform_trace(n: int, tenant: list[str] | None = None) -> Trace:
    return Trace(np.linspace(0.0, 100.0, n), np.full(n, 1000), np.full(n, 200),
                 None if tenant is None else np.asarray(tenant), name="u")


def test_default_classes_are_half_and_half() -> None:
    stats: dict = {}
    reqs = build_requests(uniform_trace(20_000), parse_classes(), MODEL,
                          np.random.default_rng(0), stats=stats)
    high = sum(r.cls == "high" for r in reqs)
    assert high / len(reqs) == pytest.approx(0.5, abs=0.015)
    assert stats["class_counts"] == {"high": high, "low": len(reqs) - high}
    r = next(r for r in reqs if r.cls == "high")
    assert (r.weight, r.priority, r.tenant) == (2.0, 0, "high")
    r = next(r for r in reqs if r.cls == "low")
    assert (r.weight, r.priority, r.tenant) == (1.0, 1, "low")


def test_time_varying_share() -> None:
    classes = parse_classes("a:share=0.9|0.1;b:share=0.1|0.9")
    reqs = build_requests(uniform_trace(20_000), classes, MODEL, np.random.default_rng(1))
    first = [r.cls for r in reqs[:2000]]
    last = [r.cls for r in reqs[-2000:]]
    assert first.count("a") / 2000 > 0.8
    assert last.count("a") / 2000 < 0.2
    mid = [r.cls for r in reqs[9000:11000]]
    assert mid.count("a") / 2000 == pytest.approx(0.5, abs=0.05)


def test_share_matrix_matches_share_at_and_normalises() -> None:
    classes = parse_classes("a:share=2|0|1;b:share=1")
    frac = np.linspace(0, 1, 41)
    m = share_matrix(classes, frac)
    for i, f in enumerate(frac):
        raw = np.array([c.share_at(float(f)) for c in classes])
        assert m[i] == pytest.approx(raw / raw.sum())
    zero = share_matrix(parse_classes("a:share=1|0;b:share=0|0"), np.array([1.0]))
    assert zero[0].tolist() == [0.5, 0.5]  # all-zero point: uniform, not a crash


def test_slo_resolution() -> None:
    classes = parse_classes(
        "rel:ttft=5x,tpot=3x,share=1;abs:ttft=500ms,tpot=0.05s,share=0;"
        "floor:ttft=2x,tpot=2x,ttft_min=10,tpot_min=1,share=0"
    )
    tr = Trace(np.array([0.0, 1.0]), [4000, 10], [100, 7])
    reqs = build_requests(tr, classes[:1], MODEL, np.random.default_rng(0))
    r = reqs[0]
    assert r.ttft_slo == pytest.approx(max(5 * MODEL.unloaded_ttft(4000), 0.25))
    assert r.tpot_slo == pytest.approx(max(3 * MODEL.unloaded_tpot(4000 + 50), 0.025))
    # short prompt: the relative rule falls below the default floor
    assert reqs[1].ttft_slo == pytest.approx(0.25)
    assert reqs[1].tpot_slo == pytest.approx(0.025)
    ab = build_requests(tr, [classes[1]], MODEL, np.random.default_rng(0))
    assert [(r.ttft_slo, r.tpot_slo) for r in ab] == [(0.5, 0.05), (0.5, 0.05)]
    fl = build_requests(tr, [classes[2]], MODEL, np.random.default_rng(0))
    assert [(r.ttft_slo, r.tpot_slo) for r in fl] == [(10.0, 1.0), (10.0, 1.0)]


def test_ids_sorted_and_offset() -> None:
    tr = uniform_trace(50)
    reqs = build_requests(tr, parse_classes(), MODEL, np.random.default_rng(0), id_offset=100)
    assert [r.id for r in reqs] == list(range(100, 150))
    assert all(a.arrival <= b.arrival for a, b in zip(reqs, reqs[1:], strict=False))


def test_tenant_mapping_and_rules() -> None:
    tenants = ["big"] * 60 + ["mid"] * 30 + ["small"] * 10
    tr = uniform_trace(100, tenants)
    classes = parse_classes()
    reqs = build_requests(tr, classes, MODEL, np.random.default_rng(0),
                          tenant_classes={"big": "low", "mid": "high", "small": "high"})
    assert all((r.cls == "low") == (r.tenant == "big") for r in reqs)
    assert tenant_rule(tr, classes, "volume") == {"big": "high", "mid": "low", "small": "low"}
    assert tenant_rule(tr, classes, "top:0.67") == {"big": "high", "mid": "high",
                                                    "small": "low"}
    three = parse_classes("a:share=0.2;b:share=0.2;c:share=0.6")
    assert tenant_rule(tr, three, "volume") == {"big": "a", "mid": "b", "small": "c"}
    with pytest.raises(SpecError, match="unknown class"):
        build_requests(tr, classes, MODEL, np.random.default_rng(0),
                       tenant_classes={"big": "gold"})
    with pytest.raises(SpecError, match="unknown tenant rule"):
        tenant_rule(tr, classes, "random")
    with pytest.raises(ValueError, match="no tenants"):
        tenant_rule(uniform_trace(3), classes, "volume")


def test_max_model_len_clamp() -> None:
    p, o, k = clamp_lengths(np.array([100, 5000, 10, 3]), np.array([10, 100, 9000, 2]), 4096)
    assert p.tolist() == [100, 3996, 1, 3]
    assert o.tolist() == [10, 100, 4095, 2]
    assert k == 2
    assert np.all(p + o <= 4096)
    tr = Trace(np.array([0.0, 1.0]), [5000, 20], [100, 5])
    stats: dict = {}
    reqs = build_requests(tr, parse_classes(), MODEL, np.random.default_rng(0),
                          max_model_len=2048, stats=stats)
    assert reqs[0].prompt_len == 1948 and stats["max_model_len_clamps"] == 1
