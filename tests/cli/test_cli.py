"""CLI smoke tests and bad-input handling (clear message, exit code 2, nothing written)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from typer.testing import CliRunner

from proserve.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_simulate_writes_required_json_keys(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    res = invoke("simulate", "--trace", "azure-conv", "--rate", "6", "--count", "200",
                 "--policy", "slide", "--seed", "1", "--out", str(out))
    assert res.exit_code == 0, res.output
    d = json.loads(out.read_text())
    for k in ("policy", "requests", "finished", "tdg_ratio", "slo_attainment", "goodput_rps",
              "ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99", "preemptions", "per_class",
              "sim_wall_s"):
        assert k in d, k
    assert d["requests"] == 200 and set(d["per_class"]) == {"high", "low"}
    assert "TDG ratio" in res.output  # the summary table was printed


def test_simulate_reproducible_is_byte_identical(tmp_path: Path) -> None:
    args = ["simulate", "--trace", "sharegpt", "--rate", "4", "--count", "150", "--seed", "9",
            "--classes", "a:w=4,share=0.3;b:w=2;c:w=1", "--reproducible", "--quiet"]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert invoke(*args, "--out", str(a)).exit_code == 0
    assert invoke(*args, "--out", str(b)).exit_code == 0
    assert a.read_bytes() == b.read_bytes()
    assert set(json.loads(a.read_text())["per_class"]) == {"a", "b", "c"}


def test_policy_arg_values_parse_to_typed_values() -> None:
    from proserve.cli import _policy_args

    assert _policy_args(["tau_s=inf", "lam=0.8", "min-chunk=64", "order=deadline",
                         "x=true"]) == {"tau_s": math.inf, "lam": 0.8, "min_chunk": 64,
                                        "order": "deadline", "x": True}
    assert isinstance(_policy_args(["min_chunk=64"])["min_chunk"], int)


def test_policy_arg_and_kv_blocks(tmp_path: Path) -> None:
    """--policy-arg reaches the engine: ``slide`` with ``tau_s=inf`` runs exactly like the
    registered ``slide-nostarve`` (tau_s = inf), and unlike ``slide`` with ``tau_s=1``, on a
    workload overloaded enough (rate 40 on 900 KV blocks) for the starvation guard to act."""
    def sim(name: str, *args: str) -> dict:
        out = tmp_path / f"{name}.json"
        res = invoke("simulate", "--trace", "azure-conv", "--rate", "40", "--count", "300",
                     "--policy-arg", "lam=0.8", *args, "--kv-blocks", "900", "--reproducible",
                     "--quiet", "--out", str(out))
        assert res.exit_code == 0, res.output
        return json.loads(out.read_text())

    inf = sim("inf", "--policy", "slide", "--policy-arg", "tau_s=inf",
              "--policy-arg", "deadline_mode=strict")
    nostarve = sim("nostarve", "--policy", "slide-nostarve", "--policy-arg",
                   "deadline_mode=strict")
    guard = sim("guard", "--policy", "slide", "--policy-arg", "tau_s=1",
                "--policy-arg", "deadline_mode=strict")
    assert inf["kv_blocks"] == 900
    assert inf["config"]["policy_args"] == {"lam": 0.8, "tau_s": "inf",  # JSON re-runnable
                                            "deadline_mode": "strict"}
    assert guard["config"]["policy_args"]["tau_s"] == 1

    def outcome(d: dict) -> dict:
        return {k: v for k, v in d.items() if k not in ("policy", "config")}

    assert outcome(inf) == outcome(nostarve)
    assert outcome(inf)["tdg_ratio"] != outcome(guard)["tdg_ratio"]


def test_compare_writes_csv_plot_json(tmp_path: Path) -> None:
    res = invoke("compare", "--policies", "vllm-fcfs,slide", "--rates", "2,20", "--trace",
                 "azure-conv", "--count", "120", "--workers", "1", "--out", str(tmp_path))
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [(r["policy"], float(r["rate"])) for r in rows] == [
        ("vllm-fcfs", 2.0), ("vllm-fcfs", 20.0), ("slide", 2.0), ("slide", 20.0)]
    assert "high_tdg_ratio" in rows[0]
    assert (tmp_path / "plot.png").stat().st_size > 1000
    assert len(json.loads((tmp_path / "results.json").read_text())) == 4


def test_listing_commands() -> None:
    for cmd, word in (("policies", "slide"), ("profiles", "llama3.1-8b@h100"),
                      ("traces", "azure-conv"), ("routers", "go")):
        res = invoke(cmd)
        assert res.exit_code == 0 and word in res.output


def test_bad_inputs_fail_clearly(tmp_path: Path) -> None:
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                       "2023-11-16 18:15:46.6805900,374,44\n"
                       "2023-11-16 18:15:47.0000000,abc,44\n")
    out = tmp_path / "never.json"
    cases = [
        (["--policy", "nope"], "unknown policy"),
        (["--classes", "hi:w=-1"], "weight"),
        (["--profile", "no-such-gpu"], "no-such-gpu"),
        (["--trace", str(tmp_path / "missing.csv")], "missing.csv"),
        (["--trace", str(bad_csv)], "line 3"),
        (["--rate", "-1"], "rate"),
        (["--policy-arg", "lam"], "key=value"),
        (["--policy-arg", "bogus=1"], "bogus"),
        (["--trace", "sharegpt"], "rate"),  # length-only trace needs a rate
    ]
    for extra, word in cases:
        res = invoke("simulate", "--count", "20", "--quiet", "--out", str(out), *extra)
        assert res.exit_code == 2, (extra, res.output)
        assert word in res.output, (extra, res.output)
        assert not out.exists()
    res = invoke("compare", "--rates", "1,x", "--out", str(tmp_path / "c"))
    assert res.exit_code == 2 and "--rates" in res.output
    for extra, word in [(["--router", "nope"], "unknown router"),
                        (["--mode", "disaggregated"], "prefill-instances"),
                        (["--mode", "sideways"], "mode"),
                        (["--router-arg", "alpha"], "key=value"),
                        (["--router", "go", "--instances", "2", "--router-arg", "alpha=7"],
                         "alpha")]:
        res = invoke("simulate", "--count", "20", "--quiet", "--out", str(out), *extra)
        assert res.exit_code == 2, (extra, res.output)
        assert word in res.output, (extra, res.output)
        assert not out.exists()


def test_compare_with_router_grid_and_disaggregated(tmp_path: Path) -> None:
    res = invoke("compare", "--policies", "slide", "--routers", "min-load,go", "--rates", "20",
                 "--instances", "2", "--count", "150", "--workers", "1", "--out", str(tmp_path))
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [(r["router"], r["instances"]) for r in rows] == [("min-load", "2"), ("go", "2")]
    assert "go+slide" in res.output
    out = tmp_path / "pd.json"
    res = invoke("simulate", "--mode", "disaggregated", "--prefill-instances", "1",
                 "--decode-instances", "2", "--router", "go", "--count", "100", "--rate", "10",
                 "--quiet", "--out", str(out))
    assert res.exit_code == 0, res.output
    d = json.loads(out.read_text())
    assert d["mode"] == "disaggregated" and d["instances"] == 3 and d["finished"] == 100


def test_fit_writes_profile_usable_by_simulate(tmp_path: Path) -> None:
    from proserve.latency.model import LatencyModel, ProfilePoint, write_points_csv

    true = LatencyModel(c0=0.004, c1=1e-9, c2=2e-5, c3=1e-9, c4=1e-8, d1=1e-5, d2=5e-8)
    pts = [ProfilePoint("prefill", q, p, 1, true.predict_point(ProfilePoint("prefill", q, p, 1, 1)))
           for q in (16, 64, 256, 1024, 4096) for p in (0, 512, 2048)]
    pts += [ProfilePoint("decode", 1, L, b, true.predict_point(ProfilePoint("decode", 1, L, b, 1)))
            for L in (128, 1024, 4096) for b in (1, 8, 64)]
    csv_path, prof = tmp_path / "pts.csv", tmp_path / "p.yaml"
    write_points_csv(csv_path, pts)
    res = invoke("fit", str(csv_path), "--kv-blocks", "5000", "--out", str(prof), "--name", "t")
    assert res.exit_code == 0, res.output
    assert "held-out error: mean 0.0%" in res.output  # exact data: exact fit
    out = tmp_path / "r.json"
    res = invoke("simulate", "--profile", str(prof), "--trace", "azure-conv", "--rate", "3",
                 "--count", "30", "--quiet", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["kv_blocks"] == 5000
    bad = tmp_path / "bad.csv"
    bad.write_text("kind,q,p,batch,seconds\nprefill,10,0,1,0.1\nwarp,1,1,1,1\n")
    res = invoke("fit", str(bad), "--kv-blocks", "10", "--out", str(tmp_path / "z.yaml"))
    assert res.exit_code == 2 and "bad.csv:3" in res.output and "warp" in res.output


def test_servegen_tenants_mapped_to_classes(tmp_path: Path) -> None:
    out = tmp_path / "sg.json"
    res = invoke("simulate", "--trace", "servegen-m-small", "--rate", "10", "--duration", "60",
                 "--classes", "high:w=4,share=0.3;mid:w=2,share=0.3;low:w=1,share=0.4",
                 "--tenant-classes", "volume", "--quiet", "--out", str(out))
    assert res.exit_code == 0, res.output
    d = json.loads(out.read_text())
    assert set(d["per_class"]) == {"high", "mid", "low"}
    assert d["workload"]["tenant_pinned"] == d["requests"] > 0  # every request via its tenant
    res = invoke("simulate", "--trace", "azure-conv", "--count", "10", "--tenant-classes",
                 "volume", "--quiet")
    assert res.exit_code == 2 and "no tenants" in res.output
    res = invoke("simulate", "--trace", "servegen-m-small", "--rate", "5", "--duration", "10",
                 "--tenant-classes", "client-1", "--quiet")
    assert res.exit_code == 2 and "tenant rule" in res.output


def test_preemption_mode_flags_report_the_kv_moved(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    res = invoke("simulate", "--trace", "azure-conv", "--rate", "12", "--duration", "20",
                 "--kv-blocks", "3000", "--policy", "slide", "--preemption", "full",
                 "--host-kv-blocks", "2x", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "preemption full:" in res.output and "offloaded" in res.output
    kv = json.loads(out.read_text())["kv"]
    assert kv["preemption_mode"] == "full" and kv["host_kv_blocks"] == 6000
    assert kv["preemptions_offload"] > 0
    bad = invoke("simulate", "--trace", "azure-conv", "--count", "5", "--preemption", "swap")
    assert bad.exit_code != 0 and "unknown preemption mode 'swap'" in bad.output
    bad = invoke("simulate", "--trace", "azure-conv", "--count", "5", "--preemption", "full",
                 "--host-kv-blocks", "lots")
    assert bad.exit_code != 0 and "bad host KV size" in bad.output
