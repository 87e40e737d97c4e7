"""`compare` across worker processes: the process-pool path gives the same results, in the same
order, as one process (compare.py promises results independent of the number of workers and of
their completion order), and the CLI writes the same JSON and CSV either way."""

from __future__ import annotations

import csv
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from typer.testing import CliRunner

from proserve.cli import app
from proserve.experiments import compare
from proserve.sim.run import SimConfig

BASE = dict(trace="azure-conv", count=80, seed=3,
            classes="high:w=2,share=0.5;low:w=1,share=0.5")


class RecordingPool(ProcessPoolExecutor):
    """The real process pool, recording that it was used and with how many workers."""

    used: list[int] = []

    def __init__(self, max_workers=None, **kw) -> None:
        RecordingPool.used.append(max_workers)
        super().__init__(max_workers=max_workers, **kw)


@pytest.fixture
def pool(monkeypatch):
    RecordingPool.used = []
    monkeypatch.setattr(compare, "ProcessPoolExecutor", RecordingPool)
    return RecordingPool


def host_free(results: list[dict]) -> list[dict]:
    """Results without ``sim_wall_s``, the one field that depends on the host (sim/run.py)."""
    out = []
    for r in results:
        r = dict(r)
        assert r.pop("sim_wall_s") >= 0
        out.append(r)
    return out


def grid(workers: int, **kw) -> tuple[list[dict], list[tuple]]:
    done: list[tuple] = []
    res = compare.run_grid(
        SimConfig(**{**BASE, **kw.pop("base", {})}), kw.pop("policies"), kw.pop("rates"),
        workers=workers, on_done=lambda r: done.append((r["policy"], r["config"]["rate"])), **kw)
    return res, done


def test_two_workers_give_byte_identical_results_in_grid_order(pool, monkeypatch) -> None:
    spec = dict(policies=["vllm-fcfs", "slide"], rates=[12.0, 3.0])
    one, done1 = grid(1, **spec)
    assert pool.used == []  # one worker: no pool
    # completion order reversed on purpose: the rows must still come out in grid order
    monkeypatch.setattr(compare, "as_completed", lambda futs: list(futs)[::-1])
    two, done2 = grid(2, **spec)
    assert pool.used == [2]
    order = [("vllm-fcfs", 3.0), ("vllm-fcfs", 12.0), ("slide", 3.0), ("slide", 12.0)]
    assert [(r["policy"], r["config"]["rate"]) for r in one] == order
    assert [(r["policy"], r["config"]["rate"]) for r in two] == order
    assert done1 == [("vllm-fcfs", 12.0), ("vllm-fcfs", 3.0), ("slide", 12.0), ("slide", 3.0)]
    assert done2 == done1[::-1]  # on_done follows completion, once per point
    a, b = host_free(one), host_free(two)
    assert json.dumps(a, indent=1).encode() == json.dumps(b, indent=1).encode()
    # each point ran its own workload (a grid of copies of one point would also be "identical"):
    # the two rates of a policy end at different simulated times
    assert a[0]["sim_end_s"] != a[1]["sim_end_s"] and a[2]["sim_end_s"] != a[3]["sim_end_s"]
    assert [r["policy"] for r in a] == [r["config"]["policy"] for r in a]


def test_router_grid_in_processes_matches_one_process(pool) -> None:
    spec = dict(policies=["slide"], rates=[40.0, 10.0], routers=["go", "min-load"],
                base=dict(instances=2))
    one, _ = grid(1, **spec)
    two, _ = grid(2, **spec)
    assert pool.used == [2]
    assert [(r["router"], r["config"]["rate"]) for r in two] == [
        ("go", 10.0), ("go", 40.0), ("min-load", 10.0), ("min-load", 40.0)]
    assert host_free(one) == host_free(two)
    assert all(len(r["per_instance"]) == 2 for r in two)


def _csv_without_wall(path: Path) -> list[dict]:
    rows = list(csv.DictReader(path.open()))
    for r in rows:
        assert float(r.pop("sim_wall_s")) >= 0
    return rows


def test_cli_compare_with_two_workers_writes_the_same_files(tmp_path: Path, pool) -> None:
    outs = {}
    for w in ("1", "2"):
        out = tmp_path / f"w{w}"
        res = CliRunner().invoke(app, [
            "compare", "--policies", "slide,vllm-fcfs", "--rates", "15,4", "--trace", "azure-conv",
            "--count", "60", "--seed", "4", "--workers", w, "--out", str(out)])
        assert res.exit_code == 0, res.output
        outs[w] = out
    assert pool.used == [2]
    js = {w: json.loads((o / "results.json").read_text()) for w, o in outs.items()}
    for results in js.values():
        for r in results:
            r["sim_wall_s"] = 0.0
    assert json.dumps(js["1"], indent=1) == json.dumps(js["2"], indent=1)
    assert [(r["policy"], r["config"]["rate"]) for r in js["2"]] == [
        ("slide", 4.0), ("slide", 15.0), ("vllm-fcfs", 4.0), ("vllm-fcfs", 15.0)]
    rows1, rows2 = (_csv_without_wall(o / "results.csv") for o in outs.values())
    assert rows1 == rows2 and len(rows1) == 4


def test_infinite_policy_args_survive_the_trip_to_worker_processes() -> None:
    # JSON would turn tau_s = inf into null; the workers get python-mode dumps
    from proserve.experiments.compare import _run_point

    cfg = SimConfig(trace="sharegpt", count=20, rate=2.0, policy="slide",
                    policy_args={"tau_s": float("inf")})
    res = _run_point(cfg.model_dump())
    assert float(res["config"]["policy_args"]["tau_s"]) == float("inf")  # not None
