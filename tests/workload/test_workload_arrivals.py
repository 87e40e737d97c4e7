"""Arrival processes (rate, cv) and trace time transformations (rescale, truncate, window)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proserve.workload import Trace, gamma_arrivals, poisson_arrivals, rescale, truncate, window


def gaps_cv(a: np.ndarray) -> float:
    g = np.diff(a)
    return float(g.std() / g.mean())


def test_poisson_rate_and_cv() -> None:
    rng = np.random.default_rng(7)
    a = poisson_arrivals(20.0, rng, n=200_000)
    assert a[0] == 0.0 and np.all(np.diff(a) >= 0)
    assert (a.size - 1) / a[-1] == pytest.approx(20.0, rel=0.01)
    assert gaps_cv(a) == pytest.approx(1.0, abs=0.02)
    b = poisson_arrivals(20.0, rng, duration=5_000.0)
    assert b.max() < 5_000 and np.all(np.diff(b) >= 0)
    assert b.size / 5_000 == pytest.approx(20.0, rel=0.01)
    assert gaps_cv(b) == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("cv", [0.5, 1.0, 2.0, 4.0])
def test_gamma_rate_and_cv(cv: float) -> None:
    rng = np.random.default_rng(11)
    a = gamma_arrivals(8.0, cv, rng, n=200_000)
    assert (a.size - 1) / a[-1] == pytest.approx(8.0, rel=0.03)
    assert gaps_cv(a) == pytest.approx(cv, rel=0.05)
    # stationary start: the count over a duration is unbiased even for bursty processes
    counts = [gamma_arrivals(8.0, cv, rng, duration=50.0).size for _ in range(400)]
    assert np.mean(counts) == pytest.approx(400.0, rel=0.05)


def test_gamma_cv_zero_is_deterministic() -> None:
    a = gamma_arrivals(4.0, 0.0, np.random.default_rng(0), n=5)
    assert a.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_arrivals_arguments() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="exactly one"):
        poisson_arrivals(1.0, rng)
    with pytest.raises(ValueError, match="exactly one"):
        gamma_arrivals(1.0, 1.0, rng, n=3, duration=3.0)
    with pytest.raises(ValueError, match="rate"):
        poisson_arrivals(0.0, rng, n=3)
    with pytest.raises(ValueError, match="cv"):
        gamma_arrivals(1.0, -1.0, rng, n=3)
    assert poisson_arrivals(1.0, rng, n=0).size == 0


def test_same_seed_same_arrivals() -> None:
    a = gamma_arrivals(3.0, 2.0, np.random.default_rng(5), duration=100.0)
    b = gamma_arrivals(3.0, 2.0, np.random.default_rng(5), duration=100.0)
    assert np.array_equal(a, b)


def make_trace(arrival: list[float]) -> Trace:
    n = len(arrival)
    return Trace(np.asarray(arrival), np.arange(1, n + 1), np.full(n, 2), name="t")


def test_rescale_math() -> None:
    tr = make_trace([0.0, 1.0, 3.0, 4.0])  # 3 gaps over 4 s: 0.75 req/s
    assert tr.mean_rate == pytest.approx(0.75)
    fast = rescale(tr, 3.0)
    assert fast.arrival.tolist() == pytest.approx([0.0, 0.25, 0.75, 1.0])
    assert fast.mean_rate == pytest.approx(3.0)
    assert fast.prompt_len.tolist() == tr.prompt_len.tolist()
    assert fast.meta["time_scale"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="no timestamps"):
        rescale(Trace(np.zeros(3), [1, 1, 1], [1, 1, 1], has_timestamps=False), 1.0)


@settings(max_examples=50, deadline=None)
@given(
    gaps=st.lists(st.floats(0.0, 10.0), min_size=2, max_size=50).filter(lambda g: sum(g) > 1e-3),
    rate=st.floats(0.01, 1000.0),
)
def test_rescale_hits_rate_and_keeps_order(gaps: list[float], rate: float) -> None:
    tr = make_trace(list(np.concatenate([[0.0], np.cumsum(gaps)])))
    out = rescale(tr, rate)
    assert out.mean_rate == pytest.approx(rate, rel=1e-9)
    assert np.all(np.diff(out.arrival) >= 0)
    # gap ratios are preserved: same burstiness
    scale = out.span / tr.span
    assert np.allclose(out.arrival, tr.arrival * scale)


def test_truncate_and_window() -> None:
    tr = make_trace([0.0, 1.0, 2.0, 3.0, 4.0])
    assert len(truncate(tr, duration=2.0)) == 2  # [0, 2) holds arrivals 0 and 1
    assert len(truncate(tr, count=3)) == 3
    assert len(truncate(tr, duration=10.0, count=4)) == 4
    assert len(truncate(tr, duration=2.5, count=4)) == 3
    assert truncate(tr) is tr
    w = window(tr, start=1.5, duration=2.0)
    assert w.arrival.tolist() == [0.0, 1.0]  # arrivals 2 and 3, rebased
    assert w.prompt_len.tolist() == [3, 4]
    with pytest.raises(ValueError, match="no requests"):
        window(tr, start=10.0)
