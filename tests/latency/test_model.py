"""LatencyModel: NNLS fitting, prediction semantics, max_chunk, CSV points I/O."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proserve.latency.model import (
    COEFF_NAMES,
    LatencyModel,
    ProfilePoint,
    fit_error,
    read_points_csv,
    write_points_csv,
)

# Roughly an 8B model on one H100 (seconds): c0 = weight streaming + overhead, c2 = per-token
# GEMM time, d2 = KV read per context token.
TRUE = LatencyModel(c0=6e-3, c1=5e-10, c2=2.4e-5, c3=1e-9, c4=5e-8, d1=8e-6, d2=5e-8)


def grid_points(model: LatencyModel) -> list[ProfilePoint]:
    """Exact points of ``model`` on a reference-like grid (halving q, block-step p)."""
    pts = [ProfilePoint("prefill", q, p, 1, 0.0) for q in (2048 >> i for i in range(8))
           for p in (0, 512, 1024, 2048, 4096)]
    pts += [ProfilePoint("decode", 1, L, b, 0.0) for L in (2, 256, 1024, 2048, 4096)
            for b in (1, 2, 4, 8, 16, 32, 64)]
    return [ProfilePoint(p.kind, p.q, p.p, p.batch, model.predict_point(p)) for p in pts]


def test_fit_recovers_exact_coefficients() -> None:
    fitted = LatencyModel.fit(grid_points(TRUE))
    for k in COEFF_NAMES:
        assert getattr(fitted, k) == pytest.approx(getattr(TRUE, k), rel=1e-6, abs=1e-15), k
    assert fit_error(fitted, grid_points(TRUE))["mape"] < 1e-9


def test_fit_with_noise_stays_close() -> None:
    rng = np.random.default_rng(0)
    pts = [ProfilePoint(p.kind, p.q, p.p, p.batch, p.seconds * (1 + rng.normal(0, 0.01)))
           for p in grid_points(TRUE)]
    fitted = LatencyModel.fit(pts)
    # the coefficients that carry most of the time are recovered to a few percent
    for k in ("c0", "c2", "d2"):
        assert getattr(fitted, k) == pytest.approx(getattr(TRUE, k), rel=0.05), k
    assert fit_error(fitted, pts)["mape"] < 0.02
    # and predictions of the noise-free truth stay within noise level
    assert fit_error(fitted, grid_points(TRUE))["mape"] < 0.02


def test_fit_never_returns_negative_coefficients() -> None:
    # prefill time that *falls* with the prefix: unconstrained least squares wants c3 < 0
    pre = [ProfilePoint("prefill", q, p, 1, 0.01 + 1e-5 * q - 5e-10 * q * p)
           for q in (16, 64, 256, 1024, 2048) for p in (0, 1024, 4096)]
    dec = [ProfilePoint("decode", 1, L, b, 0.006 + b * (2e-5 - 1e-9 * L))
           for L in (2, 1024, 4096) for b in (1, 8, 64)]
    a = np.array([[1.0, p.q**2, p.q, p.q * p.p, p.p] for p in pre])
    y = np.array([p.seconds for p in pre])
    unconstrained = np.linalg.lstsq(a / y[:, None], np.ones_like(y), rcond=None)[0]
    assert unconstrained.min() < 0  # the data really does push a coefficient negative
    fitted = LatencyModel.fit(pre + dec)
    assert all(v >= 0 for v in fitted.coeffs().values())


def test_fit_needs_enough_points() -> None:
    with pytest.raises(ValueError, match="need >= 5 prefill"):
        LatencyModel.fit(grid_points(TRUE)[:3])


def test_seq_time_decode_versus_prefill() -> None:
    m = TRUE
    # one token on a non-empty context is a decode step at context p + 1
    assert m.seq_time(1, 100) == pytest.approx(m.d1 + m.d2 * 101)
    # one token on an empty context is a (tiny) prefill, not a decode
    assert m.seq_time(1, 0) == pytest.approx(m.prefill_time(1, 0))
    # several tokens are a prefill chunk whatever the context
    assert m.seq_time(64, 100) == pytest.approx(m.prefill_time(64, 100))
    # c0 is counted once per batch, not per sequence
    items = [(1, 100), (1, 200), (64, 0)]
    assert m.batch_time(items) == pytest.approx(m.c0 + sum(m.seq_time(q, p) for q, p in items))
    assert m.unloaded_ttft(512) == pytest.approx(m.c0 + m.prefill_time(512))
    assert m.unloaded_tpot(512) == pytest.approx(m.c0 + m.decode_time(512))


def brute_max_chunk(m: LatencyModel, budget: float, p: int, q_max: int) -> int:
    best = 0
    for q in range(1, q_max + 1):
        if m.prefill_time(q, p) <= budget:
            best = q
    return best


coef = st.floats(min_value=0.0, max_value=1e-6)


@settings(max_examples=200, deadline=None)
@given(
    c1=st.one_of(st.just(0.0), st.floats(min_value=1e-12, max_value=1e-8)),
    c2=st.floats(min_value=1e-7, max_value=1e-4),  # every token costs something
    c3=st.one_of(st.just(0.0), st.floats(min_value=1e-12, max_value=1e-8)),
    c4=st.one_of(st.just(0.0), coef),
    p=st.integers(min_value=0, max_value=8192),
    budget=st.floats(min_value=1e-6, max_value=0.2),
    q_max=st.integers(min_value=0, max_value=600),
)
def test_max_chunk_matches_brute_force(
    c1: float, c2: float, c3: float, c4: float, p: int, budget: float, q_max: int,
) -> None:
    m = LatencyModel(c0=0.005, c1=c1, c2=c2, c3=c3, c4=c4, d1=1e-5, d2=1e-8)
    assert m.max_chunk(budget, p, q_max) == brute_max_chunk(m, budget, p, q_max)


def test_max_chunk_edges() -> None:
    assert TRUE.max_chunk(float("inf"), 100, 777) == 777  # no budget: take everything allowed
    assert TRUE.max_chunk(1.0, 100, 0) == 0
    assert TRUE.max_chunk(TRUE.c4 * 100, 100, 50) == 0  # budget spent on the prefix alone


def test_max_chunk_at_exact_boundaries() -> None:
    m = TRUE
    misses = [(k, p) for k in range(1, 2000) for p in (0, 7, 1000)
              if m.max_chunk(m.prefill_time(k, p), p, 10**6) < k]
    assert misses == []


# ---------------------------------------------------------------------- CSV points
def test_points_csv_round_trip(tmp_path: Path) -> None:
    pts = grid_points(TRUE)
    path = tmp_path / "pts.csv"
    write_points_csv(path, pts)
    back = read_points_csv(path)
    assert [(p.kind, p.q, p.p, p.batch) for p in back] == [(p.kind, p.q, p.p, p.batch)
                                                           for p in pts]
    assert [p.seconds for p in back] == pytest.approx([p.seconds for p in pts], rel=1e-8)


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ("prefil,16,0,1,0.01", "kind"),
        ("prefill,sixteen,0,1,0.01", "invalid literal"),
        ("prefill,16,0,1,-0.01", "seconds positive"),
        ("decode,1,100,4,", "float"),
    ],
)
def test_read_points_csv_names_file_and_line(tmp_path: Path, row: str, problem: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("kind,q,p,batch,seconds\nprefill,16,0,1,0.01\ndecode,1,2,1,0.006\n"
                    f"{row}\n")
    with pytest.raises(ValueError, match=problem) as e:
        read_points_csv(path)
    assert f"{path}:4:" in str(e.value)


def test_read_points_csv_bad_header(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("kind,q,p,seconds\nprefill,16,0,0.01\n")
    with pytest.raises(ValueError, match="header") as e:
        read_points_csv(path)
    assert str(path) in str(e.value)
