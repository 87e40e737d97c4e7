"""`proserve sweep`: config validation, grid expansion, the per-point cache (resume after a kill,
extending a grid, what the key covers), the tables against the points' JSON, Ray = processes,
goodput points and PolyServe's auto-scaling timeline. Points are tiny (20 simulated seconds at
2-4 req/s, ~0.1 s each)."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.conftest import need
from typer.testing import CliRunner

from proserve.cli import app
from proserve.experiments import sweep as sw
from proserve.experiments.sweep import SweepConfig, SweepError, expand, run_sweep
from proserve.workload.builtin import builtin_path

BASE: dict[str, Any] = {"trace": "sharegpt", "duration": 20, "seed": 0,
                        "profile": "llama3.1-8b@h100"}
GRID: dict[str, Any] = {"policy": ["sarathi-priority", "slide-bounded"], "rate": [2, 4]}


def config(grid: dict[str, Any] | None = None, name: str = "t", **kw: Any) -> SweepConfig:
    return SweepConfig.parse({"name": name, "base": {**BASE, **kw.pop("base", {})},
                              "grid": GRID if grid is None else grid, **kw})


def host_free(doc: dict) -> dict:
    """A point's JSON without the one host-dependent number."""
    return {k: v for k, v in doc.items() if k != "sim_wall_s"}


def invoke(*args: str):
    return CliRunner().invoke(app, ["sweep", *args])


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> sw.SweepResult:
    """The 4-point GRID run once, in this process."""
    return run_sweep(config(), tmp_path_factory.mktemp("clean") / "out", workers=1)


# ------------------------------------------------------------------------- validation
@pytest.mark.parametrize("raw, want", [
    ({"base": {"kv-blok": 5}}, ["base", "'kv-blok'", "kv_blocks"]),
    ({"grid": {"polcy": ["slide"]}}, ["grid", "'polcy'", "policy"]),
    ({"grids": {}}, ["unknown top-level key 'grids'", "did you mean grid"]),
    ({"grid": {"rate": 5}}, ["grid.rate", "expected a list", "[5]"]),
    ({"grid": {"rate": []}}, ["grid.rate", "empty"]),
    ({"grid": {"kv-blocks": [1], "kv_blocks": [2]}}, ["same option", "kv_blocks"]),
    ({"base": {"threshold": 0.5}}, ["'threshold'", "kind: goodput"]),
    ({"kind": "goodput", "base": {"rate": 3}}, ["goodput", "guess"]),
    ({"base": {"workers": 3}}, ["not an option of a point"]),
    ({"kind": "bisect"}, ["kind", "simulate or goodput"]),
    ({"grid": {"rate.x": [1]}}, ["only policy_args.KEY and router_args.KEY"]),
    ({"zip": {"rate": [1, 2], "seed": [1]}}, ["zip", "equal lengths", "rate: 2", "seed: 1"]),
    ({"name": "../up"}, ["name"]),
])
def test_config_errors_name_the_key(raw: dict, want: list[str]) -> None:
    with pytest.raises(SweepError) as e:
        SweepConfig.parse({"name": "t", **raw})
    for w in want:
        assert w in str(e.value), (w, str(e.value))


def test_every_point_is_validated_before_anything_runs() -> None:
    with pytest.raises(SweepError) as e:
        expand(config({"policy": ["slide-bounded", "no-such-policy"], "rate": [2]}))
    msg = str(e.value)
    assert "point 2 of 2 (policy=no-such-policy rate=2)" in msg and "policy" in msg
    assert "unknown" in msg  # the registry's message, listing the known policies
    with pytest.raises(SweepError, match=r"point 1 of 1 \(rate=-1\): rate: .*greater than 0"):
        expand(config({"rate": [-1]}))
    # checks a run would make only once started: policy parameters, trace files, pools
    with pytest.raises(SweepError, match=r"policy_args.bogus=1.*unexpected keyword.*bogus"):
        expand(config({"policy_args.bogus": [1]}, base={"rate": 2}))
    with pytest.raises(SweepError, match=r"trace=/no/such.csv.*no such file"):
        expand(config({"trace": ["/no/such.csv"]}, base={"rate": 2}))
    with pytest.raises(SweepError, match="disaggregated mode needs"):
        expand(config({"mode": ["disaggregated"]}, base={"rate": 2}))
    with pytest.raises(SweepError, match="same configuration as point 1"):
        expand(config({"rate": [2, 2.0]}))


def test_cli_config_error_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text("name: t\nbase: {kv-blok: 5}\n")
    res = invoke(str(cfg), "--out", str(tmp_path / "out"))
    assert res.exit_code == 2 and "kv-blok" in res.output and "kv_blocks" in res.output
    assert not (tmp_path / "out").exists()
    res = invoke(str(tmp_path / "missing.yaml"))
    assert res.exit_code == 2 and "no such file" in res.output


def test_long_names_map_to_simconfig_fields() -> None:
    c = config({}, base={"rate": 2, "kv-blocks": 5000, "shared-prefix": 64, "drain": 100,
                         "view-interval": 5, "kv-link-gbs": 25, "queue-timeout": 2,
                         "policy-arg": ["lam=0.5", "tau-s=inf"], "router_arg": {"alpha": 0.8},
                         "shed": "low", "w-p": 2})
    assert c.base == {**BASE, "rate": 2, "kv_blocks": 5000, "shared_prefix_tokens": 64,
                      "drain_s": 100, "view_interval_ms": 5, "kv_link_gbytes_s": 25,
                      "queue_timeout_s": 2, "policy_args": {"lam": 0.5, "tau_s": float("inf")},
                      "router_args": {"alpha": 0.8}, "shed_classes": ["low"], "w_p": 2}
    (p,) = expand(c)
    assert p.sim.policy_args == {"lam": 0.5, "tau_s": float("inf")}
    assert SweepConfig.parse(c.model_dump()) == c  # a normalised config reads back the same


# ------------------------------------------------------------------------- expansion
def test_expansion_order_is_nested_loops_then_zip_groups() -> None:
    c = config({"policy": ["sarathi-priority", "slide-bounded"], "rate": [2, 3, 4]},
               zip={"seed": [0, 1], "count": [10, 20]})
    pts = expand(c)
    assert len(pts) == 12 == len({p.hash for p in pts})
    assert [p.index for p in pts] == list(range(12))
    want = [(pol, r, s, n) for pol in ("sarathi-priority", "slide-bounded") for r in (2, 3, 4)
            for s, n in ((0, 10), (1, 20))]
    assert [(p.sim.policy, p.sim.rate, p.sim.seed, p.sim.count) for p in pts] == want
    assert pts[1].coords == {"policy": "sarathi-priority", "rate": 2, "seed": 1, "count": 20}
    assert pts[1].label == "policy=sarathi-priority rate=2 seed=1 count=20"
    assert len(expand(config({}, base={"rate": 2}))) == 1  # no grid: the base is one point


def test_dotted_keys_set_one_entry_of_policy_args() -> None:
    c = config({"policy_args.lam": [0.5, 0.9], "policy-arg.tau-s": [1.0, "inf"]},
               base={"rate": 2, "policy": "slide", "policy_args": {"eps_frac": 0.5, "lam": 0.1}})
    pts = expand(c)
    assert list(c.grid) == ["policy_args.lam", "policy_args.tau_s"]
    assert [p.sim.policy_args for p in pts] == [
        {"eps_frac": 0.5, "lam": lam, "tau_s": tau}
        for lam in (0.5, 0.9) for tau in (1.0, float("inf"))]
    assert pts[3].coords == {"policy_args.lam": 0.9, "policy_args.tau_s": "inf"}


# ------------------------------------------------------------------------- outputs
def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _same(cell: Any, value: Any) -> bool:
    """A CSV cell (text) or Parquet value against the JSON number it came from."""
    if isinstance(cell, str):
        return cell == ("" if value is None else str(value))
    return cell == value


def test_sweep_writes_tables_equal_to_the_points_json(clean: sw.SweepResult) -> None:
    out = clean.out
    assert (clean.total, clean.computed, clean.cached, clean.failed) == (4, 4, 0, [])
    for f in ("sweep.yaml", "results.csv", "results.parquet", "meta.json"):
        assert (out / f).is_file(), f
    assert yaml.safe_load((out / "sweep.yaml").read_text()) == config().model_dump()
    docs = [json.loads((out / "points" / f"{p.hash}.json").read_text()) for p in clean.points]
    assert sorted(f.name for f in (out / "points").iterdir()) == sorted(
        f"{p.hash}.json" for p in clean.points)
    for p, d in zip(clean.points, docs):
        assert d["sweep"] == {"name": "t", "kind": "simulate", "hash": p.hash,
                              "coords": p.coords}
        assert d["policy"] == p.sim.policy and d["config"]["rate"] == p.sim.rate
        assert "sim_wall_s" in d and "_router" not in d and "autoscale_timeline" not in d
    import pyarrow.parquet as pq

    rows_csv = _read_csv(out / "results.csv")
    rows_pq = pq.read_table(out / "results.parquet").to_pylist()
    assert list(rows_csv[0]) == list(rows_pq[0]) == sw.columns(clean.rows)
    cols = list(rows_csv[0])
    assert cols[:5] == ["name", "kind", "hash", "policy", "rate"]
    for c in ("seed", "trace", "profile", "instances", "tdg_ratio", "slo_attainment",
              "ttft_p99", "tpot_p99", "e2e_p99", "server_seconds", "kv.preemption_mode",
              "kv.recomputed_tokens", "class.high.tdg_ratio", "class.low.ttft_p99",
              "class.low.rejected"):
        assert c in cols, c
    assert "sim_wall_s" not in cols
    for p, d, rc, rp in zip(clean.points, docs, rows_csv, rows_pq):  # grid order
        assert rc["hash"] == rp["hash"] == p.hash
        assert (rp["policy"], rp["rate"], rp["seed"], rp["trace"]) == (
            p.sim.policy, p.coords["rate"], 0, "sharegpt")
        for m in sw.SIM_METRICS:
            assert _same(rc[m], d[m]) and _same(rp[m], d[m]), m
        for k, v in d["kv"].items():
            if v is not None and not isinstance(v, dict):
                assert _same(rc[f"kv.{k}"], v) and _same(rp[f"kv.{k}"], v), k
        for cls, cm in d["per_class"].items():
            for m in sw.SIM_CLASS_METRICS:
                key = f"class.{cls}.{m}"
                assert _same(rc[key], cm[m]) and _same(rp[key], cm[m]), key
    meta = json.loads((out / "meta.json").read_text())
    assert meta["points"] == {"total": 4, "computed": 4, "cached": 0, "failed": 0}
    assert meta["code_hash"] == sw.code_hash() and meta["proserve_version"]
    assert meta["backend"]["kind"] == "processes" and meta["started_utc"] <= meta["finished_utc"]
    (t,) = meta["traces"]
    assert t["trace"] == "sharegpt" and len(t["sha256"]) == 64 and t["builtin"]
    assert "sarathi-serve" in t["attribution"]["source"] and t["attribution"]["licence"]


def _write_cfg(path: Path, grid: dict, name: str = "t", **base: Any) -> Path:
    path.write_text(yaml.safe_dump({"name": name, "base": {**BASE, **base}, "grid": grid}))
    return path


def test_killed_sweep_resumes_without_recomputing(tmp_path: Path) -> None:
    # 8 points of ~0.2 s each in one process: the kill lands after the first is written
    grid = {"policy": ["sarathi-priority", "slide-bounded", "vllm-priority", "edf"],
            "rate": [3, 4]}
    cfg = _write_cfg(tmp_path / "s.yaml", grid, duration=45)
    out = tmp_path / "out"
    pts = out / "points"
    proc = subprocess.Popen([sys.executable, "-m", "proserve.cli", "sweep", str(cfg), "--out",
                             str(out), "--workers", "1", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if pts.is_dir() and any(pts.glob("*.json")):
                break
            time.sleep(0.005)
    finally:
        proc.kill()
        proc.wait()
    done = {f: f.stat().st_mtime_ns for f in pts.glob("*.json")}
    assert 1 <= len(done) < 8, f"{len(done)} of 8 points were written before the kill"
    assert not (out / "results.csv").exists()
    for f in done:  # written atomically: every file that exists is whole
        assert json.loads(f.read_text())["sweep"]["hash"] == f.stem

    # the subprocess hashed the code on disk when it started: so does this process, now (the
    # checkout may have been edited since this process first hashed it)
    sw.code_hash.cache_clear()
    res = invoke(str(cfg), "--out", str(out), "--workers", "1", "--quiet")
    assert res.exit_code == 0, res.output
    assert f"8 points: {8 - len(done)} computed, {len(done)} from the cache" in res.output
    assert {f: f.stat().st_mtime_ns for f in done} == done  # not rewritten
    assert not list(pts.glob(".*.tmp"))

    ref = run_sweep(sw.load_config(cfg), tmp_path / "ref", workers=1)
    assert (out / "results.csv").read_bytes() == (tmp_path / "ref" / "results.csv").read_bytes()
    for p in ref.points:
        got = json.loads((pts / f"{p.hash}.json").read_text())
        assert host_free(got) == host_free(ref.docs[p.hash])
    again = invoke(str(cfg), "--out", str(out), "--quiet")
    assert "8 points: 0 computed, 8 from the cache" in again.output


def test_extending_the_grid_computes_only_new_points(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = run_sweep(config({"policy": ["sarathi-priority", "slide-bounded"], "rate": [2]}),
                      out, workers=1)
    seen: list[tuple[str, bool]] = []
    res = run_sweep(config({"policy": ["sarathi-priority", "slide-bounded"], "rate": [2, 3]}),
                    out, workers=1, on_done=lambda p, d, cached: seen.append((p.label, cached)))
    assert (res.total, res.computed, res.cached) == (4, 2, 2)
    assert sorted(lbl for lbl, cached in seen if not cached) == [
        "policy=sarathi-priority rate=3", "policy=slide-bounded rate=3"]
    assert [r["rate"] for r in res.rows] == [2, 3, 2, 3]  # grid order, not run order
    for p in first.points:
        assert res.docs[p.hash] == first.docs[p.hash]  # the very same JSON, not recomputed
    # a new grid dimension whose value is the base's: same points, coordinates updated
    res2 = run_sweep(config({"policy": ["sarathi-priority", "slide-bounded"], "rate": [2, 3],
                             "seed": [0]}), out, workers=1)
    assert (res2.computed, res2.cached) == (0, 4)
    d = json.loads((out / "points" / f"{first.points[0].hash}.json").read_text())
    assert d["sweep"]["coords"] == {"policy": "sarathi-priority", "rate": 2, "seed": 0}


def test_the_key_covers_base_options_kind_and_trace_content(tmp_path: Path) -> None:
    hashes = [p.hash for p in expand(config())]
    assert [p.hash for p in expand(config())] == hashes  # stable
    assert not set(hashes) & {p.hash for p in expand(config(base={"drain": 100}))}
    assert not set(hashes) & {p.hash for p in expand(config(base={"seed": 1}))}
    assert [p.hash for p in expand(config(name="other"))] == hashes  # the name is not in it
    # a copy of a built-in trace: its bytes are in the key
    trace = tmp_path / "lengths.csv"
    shutil.copyfile(builtin_path("sharegpt"), trace)
    c = config({"rate": [2]}, base={"trace": str(trace)})
    out = tmp_path / "out"
    first = run_sweep(c, out, workers=1)
    assert (first.computed, first.cached) == (1, 0)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["traces"][0]["path"] == str(trace) and not meta["traces"][0]["builtin"]
    assert (run_sweep(c, out, workers=1).cached) == 1
    lines = trace.read_text().splitlines(keepends=True)
    trace.write_text("".join(lines[:-200]))  # same name, other content
    again = run_sweep(c, out, workers=1)
    assert (again.computed, again.cached) == (1, 0)
    assert again.points[0].hash != first.points[0].hash
    assert meta["traces"][0]["sha256"] != json.loads(
        (out / "meta.json").read_text())["traces"][0]["sha256"]


def test_cli_limit_dry_run_and_stale_tmp_files(tmp_path: Path) -> None:
    cfg = _write_cfg(tmp_path / "s.yaml", GRID)
    out = tmp_path / "out"
    res = invoke(str(cfg), "--out", str(out), "--limit", "2", "--workers", "1")
    assert res.exit_code == 0, res.output
    assert "2 points: 2 computed, 0 from the cache" in res.output
    assert [r["rate"] for r in _read_csv(out / "results.csv")] == ["2", "4"]  # the first two
    stale = out / "points" / f".x.json~{socket.gethostname()}~999999999.tmp"  # a dead process
    stale.write_text("{")
    res = invoke(str(cfg), "--out", str(out), "--dry-run")
    assert res.exit_code == 0 and "4 points: 2 to compute, 2 from the cache" in res.output
    assert len(list((out / "points").glob("*.json"))) == 2 and stale.exists()  # wrote nothing
    res = invoke(str(cfg), "--out", str(out), "--workers", "1", "--quiet")
    assert "4 points: 2 computed, 2 from the cache" in res.output and not stale.exists()
    assert invoke(str(cfg), "--workers", "0").exit_code == 2


def test_a_shared_cache_dir_serves_other_sweeps(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    a = run_sweep(config(name="a", grid={"rate": [2]}), tmp_path / "a", cache_dir=cache,
                  workers=1)
    b = run_sweep(config(name="b", grid={"rate": [2]}), tmp_path / "b", cache_dir=cache,
                  workers=1)
    assert (a.computed, b.computed, b.cached) == (1, 0, 1)
    h = a.points[0].hash
    assert (cache / f"{h}.json").is_file()
    assert json.loads((tmp_path / "b" / "points" / f"{h}.json").read_text())["sweep"][
        "name"] == "b"


def test_a_failing_point_is_recorded_and_the_others_kept(monkeypatch, tmp_path: Path) -> None:
    real = sw.compute_point

    def flaky(kind: str, sim: dict, goodput: dict | None):
        if sim["rate"] == 4:
            raise RuntimeError("boom")
        return real(kind, sim, goodput)

    monkeypatch.setattr(sw, "compute_point", flaky)
    res = run_sweep(config({"rate": [2, 4]}), tmp_path / "out", workers=1)
    assert res.computed == 1 and [(p.label, m) for p, m in res.failed] == [
        ("rate=4", "RuntimeError: boom")]
    assert len(res.rows) == 1
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["points"]["failed"] == 1 and meta["failed"][0]["error"] == "RuntimeError: boom"


# ------------------------------------------------------------------------- backends, kinds
def test_ray_local_gives_the_numbers_of_local_processes(tmp_path: Path) -> None:
    need(importlib.util.find_spec("ray"), "ray is not installed: pip install 'proserve[ray]'")
    c = config({"policy": ["sarathi-priority", "slide-bounded"], "rate": [3]})
    for attempt in range(2):
        # Ray's workers hash the code on disk when they start; hash it afresh here too. If the
        # checkout is edited meanwhile (a shared working tree), the sweep rightly refuses their
        # results as other code: try once more
        sw.code_hash.cache_clear()
        local = run_sweep(c, tmp_path / f"local{attempt}", workers=2)
        ray = run_sweep(c, tmp_path / f"ray{attempt}", workers=2, ray="local")
        if not any("other proserve code" in m for _, m in ray.failed):
            break
    assert (local.computed, ray.computed) == (2, 2), ray.failed
    meta = json.loads((ray.out / "meta.json").read_text())
    assert meta["backend"]["kind"] == "ray" and meta["backend"]["cluster_cpus"] == 2
    assert (ray.out / "results.csv").read_bytes() == (local.out / "results.csv").read_bytes()
    for p in local.points:
        assert host_free(ray.docs[p.hash]) == host_free(local.docs[p.hash])


def test_missing_ray_is_a_clear_error(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(SweepError, match=r"pip install 'proserve\[ray\]'"):
        run_sweep(config({"rate": [2]}), tmp_path / "out", ray="local")
    assert not (tmp_path / "out").exists()  # refused before anything was written
    cfg = _write_cfg(tmp_path / "s.yaml", {"rate": [2]})
    res = invoke(str(cfg), "--out", str(tmp_path / "out"), "--ray", "local")
    assert res.exit_code == 2 and "pip install 'proserve[ray]'" in res.output


def test_a_goodput_sweep_point(tmp_path: Path) -> None:
    c = SweepConfig.parse({"name": "g", "kind": "goodput",
                           "base": {"trace": "sharegpt", "duration": 20, "count": 40,
                                    "guess": 4, "rel-tol": 0.5}})
    (p,) = expand(c)
    assert p.sim.rate == 4 and p.goodput is not None and p.goodput.rel_tol == 0.5
    res = run_sweep(c, tmp_path / "out", workers=1)
    (d,) = res.docs.values()
    assert d["sweep"]["kind"] == "goodput" and d["goodput_rps"] > 0 and d["points"]
    (row,) = _read_csv(tmp_path / "out" / "results.csv")
    for m in sw.GOODPUT_METRICS:
        assert _same(row[m], d[m]), m
    assert row["kind"] == "goodput" and "rate" not in row


def test_polyserve_points_keep_the_autoscaling_timeline(tmp_path: Path) -> None:
    c = config({"router_args.scale_up_delay_s": [0]},
               base={"trace": "azure-conv", "synthetic_arrivals": True, "rate": 4,
                     "instances": 2, "router": "polyserve",
                     "classes": "t20:tpot=20ms,ttft=5x,share=0.5;t60:tpot=60ms,ttft=5x,share=0.5"})
    (d,) = run_sweep(c, tmp_path / "out", workers=1).docs.values()
    tl = d["autoscale_timeline"]
    assert tl["tiers"] == ["t20", "t60"] and len(tl["t"]) == len(tl["instances"]) == len(
        tl["pending"]) == tl["samples"] > 0
    assert all(len(x) == 2 for x in tl["instances"])

    class Fleet:
        tier_names = ["a"]
        timeline = [(float(i), [i], [0]) for i in range(5001)]

    class Router:
        fleet = Fleet()

    small = sw.autoscale_timeline(Router())
    assert small["samples"] == 5001 and len(small["t"]) == 2000
    assert small["t"][0] == 0.0 and small["t"][-1] == 5000.0 and small["t"] == sorted(small["t"])
    assert sw.autoscale_timeline(object()) is None


def test_several_configs_run_in_turn_each_into_its_own_directory(tmp_path: Path) -> None:
    a = _write_cfg(tmp_path / "a.yaml", {"policy": ["slide-bounded"], "rate": [2]}, name="a")
    b = _write_cfg(tmp_path / "b.yaml", {"policy": ["slide-bounded"], "rate": [2, 4]}, name="b")
    out = tmp_path / "set"
    res = invoke(str(a), str(b), "--out", str(out), "--workers", "1", "--quiet")
    assert res.exit_code == 0, res.output
    assert "2 sweeps, 3 points: 3 computed, 0 from the cache" in res.output
    assert len(_read_csv(out / "a" / "results.csv")) == 1
    assert len(_read_csv(out / "b" / "results.csv")) == 2
    res = invoke(str(a), str(b), "--out", str(out), "--workers", "1", "--quiet")
    assert "2 sweeps, 3 points: 0 computed, 3 from the cache" in res.output
    # two configs with one name would write into one directory: refused before anything runs
    c = _write_cfg(tmp_path / "c.yaml", {"policy": ["slide"], "rate": [2]}, name="a")
    res = invoke(str(a), str(c), "--out", str(tmp_path / "dup"))
    assert res.exit_code == 2 and "named a" in res.output and not (tmp_path / "dup").exists()
