"""`proserve profile --synthetic` end to end on CPU with a tiny config (CI runs this)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import need
from typer.testing import CliRunner

from proserve.cli import app
from proserve.latency.profiles import load_profile


@pytest.fixture(autouse=True)
def _torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError as e:
        need(False, f"torch (the `profile` extra; `make install` installs it) is missing: {e}")


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_synthetic_profile_on_cpu_is_loadable_and_reports_its_error(tmp_path: Path) -> None:
    out = tmp_path / "tiny.yaml"
    res = invoke("profile", "--synthetic", "--model", "tiny", "--device", "cpu", "--out", str(out),
                 "--max-len", "512", "--max-chunk", "256", "--max-batch", "4", "--repeats", "3",
                 "--kv-gib", "0.5", "--threads", "1")
    assert res.exit_code == 0, res.output
    assert "held-out error: mean" in res.output
    m = load_profile(out)
    err = m.meta["fit_error"]["held_out"]
    assert err["n"] > 0 and math_ok(err["mape"]) and math_ok(err["p90_ape"])
    assert m.meta["source"] == "measured" and "synthetic tiny-llama" in m.meta["backend"]
    # a real model: prefilling 256 tokens costs more than 16, a batch of 4 more than 1
    assert m.c0 + m.prefill_time(256) > m.c0 + m.prefill_time(16)
    assert m.batch_time([(1, 256)] * 4) >= m.batch_time([(1, 256)])
    # KV capacity: 0.5 GiB / (2 layers x 2 x 64 dims x 4 bytes x 16 tokens)
    assert m.kv_blocks == int(0.5 * 1024**3 // (2 * 2 * 64 * 4 * 16))
    # ... and the simulator runs on it
    sim = tmp_path / "r.json"
    res = invoke("simulate", "--profile", str(out), "--trace", "azure-conv", "--rate", "2",
                 "--count", "20", "--quiet", "--out", str(sim))
    assert res.exit_code == 0, res.output
    assert json.loads(sim.read_text())["finished"] == 20


def math_ok(x: float) -> bool:
    return x == x and 0 <= x < 10


def test_synthetic_model_config_from_hf_file(tmp_path: Path) -> None:
    cfg = tmp_path / "m" / "config.json"
    cfg.parent.mkdir()
    cfg.write_text(json.dumps({"model_type": "qwen2", "num_hidden_layers": 1, "hidden_size": 32,
                               "num_attention_heads": 4, "num_key_value_heads": 2,
                               "intermediate_size": 64, "vocab_size": 100}))
    out = tmp_path / "q.json"
    res = invoke("profile", "--synthetic", "--model-config", str(cfg), "--device", "cpu",
                 "--out", str(out), "--max-len", "256", "--max-chunk", "64", "--max-batch", "2",
                 "--repeats", "1")
    assert res.exit_code == 0, res.output
    m = load_profile(out)
    assert "synthetic m (1 layers, hidden 32, 4 heads, 2 KV heads" in m.meta["backend"]


@pytest.mark.parametrize("args, msg", [
    ((), "exactly one of"),
    (("--synthetic", "--server", "http://x"), "exactly one of"),
    (("--synthetic", "--model", "gpt-9"), "unknown --model"),
    (("--synthetic", "--max-len", "8"), "max_len"),
    (("--synthetic", "--holdout", "1.5"), "--holdout"),
    (("--server", "ftp://x"), "http(s) URL"),
    (("--server", "http://127.0.0.1:9"), "cannot reach"),
])
def test_profile_bad_input_is_a_clear_error(tmp_path: Path, args: tuple, msg: str) -> None:
    res = invoke("profile", "--out", str(tmp_path / "x.yaml"), *args)
    assert res.exit_code == 2 and msg in res.output, res.output


def test_model_config_that_is_not_a_decoder_is_rejected(tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "bert"}))
    res = invoke("profile", "--synthetic", "--model-config", str(cfg), "--out",
                 str(tmp_path / "x.yaml"))
    assert res.exit_code == 2 and "num_hidden_layers" in res.output
