"""`proserve profile --synthetic` end to end on CPU with a tiny config (CI runs this)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from tests.conftest import need
from typer.testing import CliRunner

from proserve.cli import app
from proserve.latency.model import LatencyModel, ProfilePoint, fit_error, read_points_csv
from proserve.latency.profiles import load_profile
from proserve.profiling import ProfileGrid, points_path, split_holdout


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
    assert m.meta["source"] == "measured" and "synthetic tiny-llama" in m.meta["backend"]
    # The reported errors are what the written model scores on the written points, split as the
    # profiler splits them (holdout 0.25, seed 0): the report cannot be made up.
    points = read_points_csv(points_path(out))
    assert len(points) == m.meta["points"] == ProfileGrid(512, 256, 4).size()
    train, test = split_holdout(points, 0.25, 0)
    for split, pts in (("held_out", test), ("train", train)):
        rep, real = m.meta["fit_error"][split], fit_error(m, pts)
        assert rep["n"] == real["n"] == len(pts) > 0
        assert rep["mape"] == pytest.approx(real["mape"], rel=1e-6)
        assert rep["p90_ape"] == pytest.approx(real["p90_ape"], rel=1e-6)
    # Timings on a shared CPU are noisy, so no absolute bound; but the fit must explain the
    # shape: on the held-out points it beats the best shape-blind predictor, each kind's
    # training median (measured here: fit 6-12% mean error, median 31-37%).
    med = {k: statistics.median(p.seconds for p in train if p.kind == k)
           for k in ("prefill", "decode")}
    blind = statistics.mean(abs(med[p.kind] - p.seconds) / p.seconds for p in test)
    assert m.meta["fit_error"]["held_out"]["mape"] < blind
    # a real model: prefilling 256 tokens costs more than 16
    assert m.prefill_time(256) > m.prefill_time(16)
    # each sequence added to a decode batch adds its decode step (d1 + d2 * context) to c0
    one, four = m.batch_time([(1, 256)]), m.batch_time([(1, 256)] * 4)
    assert one == pytest.approx(m.c0 + m.d1 + m.d2 * 257)
    assert four - one == pytest.approx(3 * (m.d1 + m.d2 * 257))
    # KV capacity: 0.5 GiB / (2 layers x 2 x 64 dims x 4 bytes x 16 tokens)
    assert m.kv_blocks == int(0.5 * 1024**3 // (2 * 2 * 64 * 4 * 16))
    # ... and the simulator runs on it
    sim = tmp_path / "r.json"
    res = invoke("simulate", "--profile", str(out), "--trace", "azure-conv", "--rate", "2",
                 "--count", "20", "--quiet", "--out", str(sim))
    assert res.exit_code == 0, res.output
    assert json.loads(sim.read_text())["finished"] == 20


# A known latency model with every term non-zero (c5 included), in seconds.
TRUE = LatencyModel(c0=4e-4, c1=1e-8, c2=3e-6, c3=6e-9, c4=2e-7, d1=5e-5, d2=4e-8, c5=1e-4,
                    kv_blocks=1, block_size=16)


class KnownModelBackend:
    """Stands in for the PyTorch model behind ``--synthetic``: every shape takes exactly what
    ``TRUE`` predicts, so the whole CLI path (grid, measure, split, fit, write) can be checked
    against known coefficients."""

    def __init__(self, cfg, **kw) -> None:
        self.description = f"known model standing in for {cfg.name}"

    def time_prefill(self, q: int, p: int) -> float:
        return TRUE.predict_point(ProfilePoint("prefill", q, p, 1, 1.0))

    def time_decode(self, batch: int, context: int) -> float:
        return TRUE.predict_point(ProfilePoint("decode", 1, context, batch, 1.0))

    def kv_capacity(self) -> tuple[int, int]:
        return 1234, 16

    def close(self) -> None:
        pass


def test_synthetic_cli_recovers_a_known_model(tmp_path: Path, monkeypatch) -> None:
    from proserve.profiling import synthetic

    monkeypatch.setattr(synthetic, "SyntheticLlama", KnownModelBackend)
    out = tmp_path / "known.yaml"
    res = invoke("profile", "--synthetic", "--model", "tiny", "--out", str(out), "--max-len",
                 "2048", "--max-chunk", "512", "--max-batch", "8")
    assert res.exit_code == 0, res.output
    m = load_profile(out)
    assert "known model standing in for" in m.meta["backend"]
    assert (m.kv_blocks, m.block_size) == (1234, 16)
    # noiseless points of the model's own form: NNLS recovers every coefficient ...
    for k in ("c0", "c1", "c2", "c3", "c4", "c5", "d1", "d2"):
        assert getattr(m, k) == pytest.approx(getattr(TRUE, k), rel=1e-4), k
    # ... and predicts the held-out points exactly (float rounding only)
    err = m.meta["fit_error"]["held_out"]
    _, test = split_holdout(read_points_csv(points_path(out)), 0.25, 0)
    assert err["n"] == len(test) > 0
    assert err["mape"] < 1e-6 and err["p90_ape"] < 1e-6


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
