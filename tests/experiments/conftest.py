"""Fixtures for ``proserve report``: sweep result directories in ``proserve sweep``'s format,
filled from small real simulations (and real goodput searches), and a headless Chromium.

The writer here is deliberately independent of ``experiments/sweep.py``: it writes the
documented format (sweep.yaml, results.csv/.parquet, points/<hash>.json, meta.json) so the
report is tested against the format, not against one implementation of it.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from proserve.sim.run import SimConfig, run

SIM_METRICS = [
    "requests", "finished", "unfinished", "rejected", "tdg_ratio", "slo_attainment",
    "ttft_attainment", "deadline_attainment", "goodput_rps", "ttft_p50", "ttft_p90", "ttft_p99",
    "tpot_p50", "tpot_p90", "tpot_p99", "e2e_p50", "e2e_p90", "e2e_p99", "max_wait_s",
    "preemptions", "prefix_hit_rate", "server_seconds",
]
GOODPUT_METRICS = ["goodput_rps", "goodput_per_instance", "optimal_goodput_per_instance",
                   "fraction_of_optimal", "attainment", "server_seconds", "first_failing_rps"]
CLASS_METRICS = ["tdg_ratio", "slo_attainment", "ttft_attainment", "ttft_p99", "max_wait_s",
                 "rejected"]
TWO_TIERS = "high:w=2,share=0.5,ttft=2s,tpot=40ms;low:w=1,share=0.5,ttft=5s,tpot=100ms"


def point_config(base: dict[str, Any], coords: dict[str, Any]) -> SimConfig:
    """``base`` with a grid point's coordinates; ``a.b`` keys set a nested dict entry."""
    cfg = json.loads(json.dumps(base))
    for k, v in coords.items():
        head, dot, tail = k.partition(".")
        if dot:
            cfg.setdefault(head, {})[tail] = v
        else:
            cfg[k] = v
    return SimConfig(**cfg)


def simulate_point(cfg: SimConfig) -> dict[str, Any]:
    res = run(cfg, keep_requests=True)
    router = res.pop("_router")
    res.pop("_requests")
    fleet = getattr(router, "fleet", None)
    if fleet is not None and getattr(fleet, "timeline", None):
        res["autoscale_timeline"] = {
            "t": [t for t, _, _ in fleet.timeline],
            "instances": [list(c) for _, c, _ in fleet.timeline],
            "pending": [list(p) for _, _, p in fleet.timeline],
            "tiers": list(fleet.tier_names),
        }
    return res


def goodput_point(cfg: SimConfig) -> dict[str, Any]:
    from proserve.experiments.goodput import search

    return search(cfg, guess=20.0 * cfg.instances, rel_tol=0.25, workers=1)


def row_of(name: str, kind: str, h: str, coords: dict[str, Any], cfg: SimConfig,
           res: dict[str, Any]) -> dict[str, Any]:
    """One results.csv row, as the format describes it."""
    coords = {k: json.dumps(v, sort_keys=True, separators=(",", ":"))
              if isinstance(v, (dict, list)) else v for k, v in coords.items()}
    row: dict[str, Any] = {"name": name, "kind": kind, "hash": h, **coords,
                           "seed": cfg.seed, "trace": cfg.trace, "profile": cfg.profile,
                           "instances": cfg.instances}
    for m in SIM_METRICS if kind == "simulate" else GOODPUT_METRICS:
        row[m] = res.get(m)
    if kind == "simulate":
        for k, v in sorted(res.get("kv", {}).items()):
            if isinstance(v, (int, float, str)) or v is None:
                row[f"kv.{k}"] = v
    for cls, m in res.get("per_class", {}).items():
        for k in CLASS_METRICS:
            if k in m:
                row[f"class.{cls}.{k}"] = m[k]
    return row


def write_sweep(root: Path, name: str, kind: str, base: dict[str, Any],
                grid: dict[str, list[Any]], zips: list[dict[str, list[Any]]] = ()) -> Path:
    """Run every point for real and write the sweep's directory under ``root/name``: the
    product of the grid's lists and of the zip groups (lists varied together)."""
    d = root / name
    (d / "points").mkdir(parents=True)
    (d / "sweep.yaml").write_text(yaml.safe_dump(
        {"name": name, "kind": kind, "base": base, "grid": grid, "zip": list(zips)},
        sort_keys=False))
    rows = []
    keys = list(grid)
    axes = [[dict(zip(keys, c)) for c in itertools.product(*(grid[k] for k in keys))]]
    axes += [[{k: v[i] for k, v in g.items()} for i in range(len(next(iter(g.values()))))]
             for g in zips]
    for parts in itertools.product(*axes):
        coords = {k: v for part in parts for k, v in part.items()}
        cfg = point_config(base, coords)
        h = hashlib.sha256(json.dumps([kind, cfg.model_dump()], sort_keys=True,
                                      default=str).encode()).hexdigest()[:16]
        res = simulate_point(cfg) if kind == "simulate" else goodput_point(cfg)
        res["sweep"] = {"name": name, "kind": kind, "hash": h, "coords": coords}
        (d / "points" / f"{h}.json").write_text(json.dumps(res, default=str))
        rows.append(row_of(name, kind, h, coords, cfg, res))
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    with (d / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:  # typed columns where pyarrow can infer them, else text (both are read back)
        table = pa.Table.from_pylist([{c: r.get(c) for c in cols} for r in rows])
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        table = pa.Table.from_pylist(
            [{c: (None if r.get(c) is None else str(r[c])) for c in cols} for r in rows])
    pq.write_table(table, d / "results.parquet")
    from proserve import __version__
    from proserve.workload.builtin import BUILTINS, builtin_path

    traces = sorted({r["trace"] for r in rows})
    meta = {
        "proserve_version": __version__, "code_hash": "0" * 12, "git_commit": "test-fixture",
        "traces": [{"name": t, "path": str(builtin_path(t)),
                    "sha256": hashlib.sha256(builtin_path(t).read_bytes()).hexdigest(),
                    "source": BUILTINS[t].description} for t in traces],
        "started": "2025-01-01T00:00:00Z", "finished": "2025-01-01T00:00:10Z",
        "points": len(rows), "computed": len(rows), "cached": 0, "backend": "local",
    }
    (d / "meta.json").write_text(json.dumps(meta, indent=1))
    return d


# name -> (kind, base, grid, figure suffixes the report must draw for it[, zip groups])
SWEEPS: dict[str, tuple] = {
    "main": ("simulate", {"trace": "azure-conv", "duration": 20},
             {"policy": ["slide-bounded", "vllm-fcfs"], "rate": [10, 25, 40], "seed": [0, 1]},
             {"tdg-attainment-vs-rate", "class-attainment-vs-rate", "tdg-vs-ttft-p99",
              "bars-per-series"}),
    "knobs": ("simulate", {"trace": "azure-conv", "duration": 10, "rate": 20, "policy": "slide",
                           "kv_blocks": 1200},  # KV this small makes it preempt
              {"policy_args.lam": [0.1, 1.0], "w_p": [1, 4],
               "preemption": ["recompute", "full"]},
              {"param-policy-args-lam", "weight-w-p", "bars-per-series", "block-management",
               "tdg-vs-ttft-p99"}),
    "fleet": ("simulate", {"trace": "azure-conv", "duration": 15, "instances": 6,
                           "classes": TWO_TIERS},
              {"router": ["polyserve", "round-robin"], "rate": [30, 60]},
              {"tdg-attainment-vs-rate", "class-attainment-vs-rate", "tdg-vs-ttft-p99",
               "bars-per-series", "router-comparison", "autoscale-timeline"}),
    # two traces (a row of panels each) and a parameter with a non-numeric value (inf)
    "traces": ("simulate", {"duration": 10, "policy": "slide"},
               {"trace": ["azure-conv", "azure-code"], "rate": [10, 20],
                "policy_args.tau_s": [1.0, "inf"]},
               {"tdg-attainment-vs-rate", "class-attainment-vs-rate", "tdg-vs-ttft-p99",
                "param-policy-args-tau-s", "bars-per-series"}),
    # nothing but the seed varies: a table, no figure
    "seeds": ("simulate", {"trace": "azure-conv", "duration": 5, "rate": 5},
              {"seed": [0, 1, 2]}, set()),
    # a whole-mapping parameter, and kv_blocks zipped to the rate (no series of its own)
    "zipped": ("simulate", {"trace": "azure-conv", "duration": 5, "policy": "slide"},
               {"policy_args": [{}, {"lam": 0.5}]},
               {"tdg-attainment-vs-rate", "class-attainment-vs-rate", "tdg-vs-ttft-p99",
                "param-policy-args", "bars-per-series"},
               [{"rate": [10, 30], "kv_blocks": [5000, 3000]}]),
    "capacity": ("goodput", {"trace": "azure-conv", "duration": 6},
                 {"instances": [1, 2], "seed": [0, 1]}, {"goodput-vs-instances"}),
}
ALL_SUFFIXES = {"tdg-attainment-vs-rate", "class-attainment-vs-rate", "tdg-vs-ttft-p99",
                "weight-w-p", "param-policy-args-lam", "param-policy-args-tau-s",
                "param-policy-args",
                "bars-per-series", "router-comparison", "block-management",
                "goodput-vs-instances", "autoscale-timeline"}


@pytest.fixture(scope="session")
def sweeps_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A parent directory holding the four sweeps of :data:`SWEEPS` (real simulations)."""
    root = tmp_path_factory.mktemp("sweeps")
    for name, (kind, base, grid, _, *zips) in SWEEPS.items():
        write_sweep(root / ("goodput" if kind == "goodput" else "sim"), name, kind, base, grid,
                    zips[0] if zips else ())
    return root


@pytest.fixture(scope="session")
def expected_figures() -> dict[str, set[str]]:
    return {name: spec[3] for name, spec in SWEEPS.items()}


def chromium_binary() -> str:
    """Debian's Chromium, installed with apt-get (as root) if missing; otherwise the calling
    test skips locally and fails in CI, naming why (tests/conftest.py: apt_binary)."""
    from tests.conftest import apt_binary

    return apt_binary("chromium", lambda: "/usr/bin/chromium"
                      if os.path.exists("/usr/bin/chromium") else None)
