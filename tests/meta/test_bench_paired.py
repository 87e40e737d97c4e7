"""benchmarks/vllm_plugin_compare.py's paired per-round table and its sign test."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
compare = pytest.importorskip("vllm_plugin_compare")


def _run(tdg: float, high: float) -> dict:
    return {"tdg_ratio": tdg, "per_class": {"high": {"ttft_attainment": high}}}


def test_sign_test_matches_the_binomial_tail() -> None:
    assert compare.sign_test(0, 0) == 1.0
    assert compare.sign_test(5, 0) == pytest.approx(2 / 32)
    assert compare.sign_test(0, 5) == pytest.approx(2 / 32)
    assert compare.sign_test(3, 2) == 1.0
    # 9 of 10: 2 * (C(10,0) + C(10,1)) / 2^10
    assert compare.sign_test(9, 1) == pytest.approx(2 * 11 / 1024)
    assert compare.sign_test(7, 3) == pytest.approx(
        min(1.0, 2 * sum(math.comb(10, i) for i in range(4)) / 1024))


def test_paired_differences_are_taken_within_a_round() -> None:
    # The reference is slow in round 2 (the host was): the plug-in is ahead in every round by
    # 2 points, though its worst run is below the reference's best: only pairing shows it.
    results = {
        "vllm priority": [_run(0.80, 0.20), _run(0.40, 0.10), _run(0.70, 0.30)],
        "plug-in": [_run(0.82, 0.50), _run(0.42, 0.40), _run(0.72, 0.30)],
    }
    rows = compare.paired(results, "vllm priority")
    assert len(rows) == 1
    name, tdg, ahead, p, high = rows[0]
    assert name == "plug-in"
    assert tdg == "+2.0 [+2.0 to +2.0]"
    assert ahead == "3/3"
    assert p == f"{2 / 8:.3f}"
    assert high == "+30.0 [+0.0 to +30.0]"


def test_ties_count_as_neither_and_rounds_are_matched_up_to_the_shorter() -> None:
    results = {"a": [_run(0.5, 0.5), _run(0.5, 0.5), _run(0.5, 0.5)],
               "b": [_run(0.5, 0.5), _run(0.4, 0.5)]}
    (row,) = compare.paired(results, "a")
    assert row[2] == "0/2" and row[3] == "1.000"
    assert row[1].startswith("-5.0 [-10.0 to +0.0]")


def test_unknown_reference_is_an_error_naming_the_variants() -> None:
    results = {"a": [_run(0.5, 0.5)] * 2, "b": [_run(0.5, 0.5)] * 2}
    with pytest.raises(SystemExit, match="'c' is not one of the variants"):
        compare.print_paired(results, "c")


def test_simulated_rows_report_churn_drain_and_tails() -> None:
    import argparse

    root = Path(__file__).resolve().parents[2]
    a = argparse.Namespace(rate=30.0, seconds=4.0, seed=1, ttft=1.0, tpot=0.1, max_num_seqs=4,
                           simulate=str(root / "docs/results/vllm-cpu-tiny.yaml"),
                           plugin_policies="slide-bounded", vllm_slots_only=True)
    name, rows = compare.simulated_rows(a)
    assert name.startswith("vllm-cpu-tiny")
    by = {r[0]: r for r in rows}
    # --vllm-slots-only: the plug-in's policy only with vLLM's meaning of max_num_seqs
    assert list(by) == ["sim vllm fcfs", "sim vllm priority",
                        "sim plug-in slide-bounded, vLLM slots"]
    for r in rows:
        tdg, preempt, drained, p99, longest = (float(r[1]), int(r[5]), float(r[6]),
                                               float(r[7]), float(r[8]))
        assert 0 <= tdg <= 100
        assert drained >= a.seconds * 0.9  # the last arrival is near the end of the window
        assert longest >= p99 > 0
        if r[0].startswith("sim vllm"):
            assert preempt == 0  # vLLM's policies preempt only for KV, which never binds here
    # 4 slots at 30 req/s are overloaded: the plug-in's tail preemption displaces requests
    assert int(by["sim plug-in slide-bounded, vLLM slots"][5]) > 0


def test_failed_requests_are_counted_from_bench_s_per_kind_errors() -> None:
    # proserve bench reports errors by kind; a run with some once crashed the table (int + dict)
    assert compare.error_count({"connection_error": 2, "http_500": 1}) == 3
    assert compare.error_count({}) == 0 and compare.error_count(None) == 0
    assert compare.error_count(4) == 4
