"""Roofline profiles, KV sizing, and the shipped profile files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from proserve.latency import (
    COEFF_NAMES,
    H100_SXM,
    LLAMA31_8B,
    QWEN2_7B,
    QWEN3_32B,
    SHIPPED_SPECS,
    LatencyModel,
    ModelConfig,
    ProfileSpec,
    batch_seconds,
    build_profile,
    decode_seconds,
    kv_blocks,
    list_profiles,
    load_profile,
    prefill_seconds,
    profile_filename,
    roofline_points,
    save_profile,
)
from proserve.latency.profiles import profile_name

GiB = 1024**3
TINY = ModelConfig(name="tiny", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2,
                   intermediate_size=128, vocab_size=1000)


# ---------------------------------------------------------------------- architecture arithmetic
@pytest.mark.parametrize(
    ("cfg", "params_b", "kv_per_token"),
    [
        (QWEN2_7B, 7.62, 2 * 28 * 4 * 128 * 2),  # public: 7.6B parameters
        (LLAMA31_8B, 8.03, 2 * 32 * 8 * 128 * 2),  # public: 8.03B
        (QWEN3_32B, 32.8, 2 * 64 * 8 * 128 * 2),  # public: 32.8B
    ],
)
def test_presets_match_public_sizes(cfg: ModelConfig, params_b: float, kv_per_token: int) -> None:
    assert cfg.param_count() / 1e9 == pytest.approx(params_b, rel=0.01)
    assert cfg.kv_bytes_per_token() == kv_per_token
    assert cfg.head_dim == 128


def test_tiny_config_hand_computed() -> None:
    assert TINY.head_dim == 16  # hidden / heads when not given
    # per layer: q 64*64 + k,v 2*64*32 + o 64*64 + MLP 3*64*128 + 2 norms of 64 = 36992
    assert TINY.layer_params() == 4096 + 4096 + 4096 + 24576 + 128
    assert TINY.param_count() == 2 * 36992 + 64 + 1000 * 64 * 2  # + final norm, embed, lm_head
    assert TINY.kv_bytes_per_token() == 2 * 2 * 2 * 16 * 2  # K,V x layers x kv heads x dim x bf16
    # causal attention of q=4 on p=10: pairs 4*10 + (1+2+3+4) = 50, 4 FLOPs per head-dim element
    assert TINY.attention_flops(4, 10) == 4 * 2 * 4 * 16 * 50
    assert TINY.prefill_flops(4, 10) == (2 * TINY.nonembed_params() * 4 + 4 * 2 * 4 * 16 * 50
                                         + 2 * 64 * 1000)
    # decode: every weight but the embedding once, plus each sequence's KV read and 1 write
    assert TINY.decode_bytes(3, 100) == (TINY.nonembed_params() + 64_000) * 2 + 3 * 102 * 256


def test_tied_embeddings_and_invalid_configs() -> None:
    tied = TINY.model_copy(update={"tie_word_embeddings": True})
    assert tied.param_count() == TINY.param_count() - 64_000
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        ModelConfig(name="x", num_layers=1, hidden_size=64, num_heads=4, num_kv_heads=3,
                    intermediate_size=1, vocab_size=1)
    with pytest.raises(ValueError):
        ModelConfig(name="x", num_layers=1, hidden_size=64, num_heads=4, num_kv_heads=2,
                    intermediate_size=1, vocab_size=1, dtype="int4")


def test_kv_bytes_per_token_under_tensor_parallelism() -> None:
    assert QWEN3_32B.kv_bytes_per_token(tp=4) == QWEN3_32B.kv_bytes_per_token() // 4
    # fewer KV heads than GPUs: vLLM replicates, each GPU still holds one head
    assert QWEN2_7B.kv_bytes_per_token(tp=8) == 2 * 28 * 1 * 128 * 2


# ---------------------------------------------------------------------- KV capacity
def test_kv_blocks_hand_computed() -> None:
    gpu = H100_SXM.model_copy(update={"mem_bytes": GiB})
    # 0.5 GiB usable - 404096 B of weights = 536466816 B; a block is 16 x 256 B = 4096 B
    assert kv_blocks(TINY, gpu, block_size=16, gpu_memory_utilization=0.5,
                     activation_reserve_bytes=0) == 536466816 // 4096
    # the reserve comes off the top
    assert kv_blocks(TINY, gpu, 16, 0.5, activation_reserve_bytes=4096 * 10) == (
        536466816 // 4096 - 10)


def test_kv_blocks_tensor_parallel_equals_pooled_memory() -> None:
    gpu4 = H100_SXM.model_copy(update={"count": 4})
    blocks = kv_blocks(QWEN3_32B, gpu4, 16, 0.9, activation_reserve_bytes=GiB)
    pooled = (4 * H100_SXM.mem_bytes * 0.9 - QWEN3_32B.weight_bytes() - 4 * GiB) // (
        16 * QWEN3_32B.kv_bytes_per_token())
    assert blocks == pytest.approx(pooled, abs=1)


def test_kv_blocks_model_too_big() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        # 122 GiB of fp32 weights > 0.9 x 79.6 GiB
        kv_blocks(QWEN3_32B.model_copy(update={"dtype": "fp32"}), H100_SXM)
    # in bf16 it fits, barely (61 GiB of weights), with a small KV cache
    assert 0 < kv_blocks(QWEN3_32B, H100_SXM) < kv_blocks(LLAMA31_8B, H100_SXM) // 4


# ---------------------------------------------------------------------- roofline timing
def test_prefill_time_grows_with_tokens_and_prefix() -> None:
    qs = [16 * 2**i for i in range(10)]
    for p in (0, 1024, 8192):
        ts = [prefill_seconds(LLAMA31_8B, H100_SXM, q, p) for q in qs]
        assert all(a < b for a, b in zip(ts, ts[1:], strict=False))
    for q in (16, 1024):
        ts = [prefill_seconds(LLAMA31_8B, H100_SXM, q, p) for p in (0, 512, 4096, 8192)]
        assert all(a < b for a, b in zip(ts, ts[1:], strict=False))


def test_decode_time_grows_with_batch_and_context() -> None:
    for ctx in (2, 1024, 8192):
        ts = [decode_seconds(LLAMA31_8B, H100_SXM, b, ctx) for b in (1, 4, 16, 64, 256)]
        assert all(a < b for a, b in zip(ts, ts[1:], strict=False))
    ts = [decode_seconds(LLAMA31_8B, H100_SXM, 8, c) for c in (2, 512, 2048, 8192)]
    assert all(a < b for a, b in zip(ts, ts[1:], strict=False))


def test_roofline_regimes() -> None:
    # batch-1 decode is weight streaming: within 30% of weights / bandwidth (+ overhead)
    stream = LLAMA31_8B.step_weight_bytes() / H100_SXM.mem_bandwidth
    assert stream < decode_seconds(LLAMA31_8B, H100_SXM, 1, 2) < 1.3 * stream + 2e-3
    # a long prefill is compute bound: within 2x of FLOPs at peak
    flops = LLAMA31_8B.prefill_flops(8192) / H100_SXM.peak_flops
    assert flops < prefill_seconds(LLAMA31_8B, H100_SXM, 8192) < 2 * flops
    # tensor parallelism speeds a compute-bound prefill up, though less than linearly
    one = prefill_seconds(QWEN2_7B, H100_SXM, 4096)
    four = prefill_seconds(QWEN2_7B, H100_SXM.model_copy(update={"count": 4}), 4096)
    assert one / 4 < four < one


def test_roofline_points_respect_limits() -> None:
    pts = roofline_points(LLAMA31_8B, H100_SXM, max_model_len=4096, kv_token_capacity=100_000)
    pre = [p for p in pts if p.kind == "prefill"]
    dec = [p for p in pts if p.kind == "decode"]
    assert pre and dec
    assert all(p.q + p.p <= 4096 for p in pre)
    assert all(p.batch * (p.p + 1) <= 100_000 for p in dec)
    assert all(p.seconds > 0 for p in pts)


def test_build_profile_records_provenance() -> None:
    m = build_profile(QWEN2_7B, H100_SXM, "q@h")
    assert m.name == "q@h" and m.block_size == 16
    assert m.kv_blocks == kv_blocks(QWEN2_7B, H100_SXM)
    assert {"model", "gpu", "efficiency", "memory", "fit_error", "sanity"} <= set(m.meta)
    assert ModelConfig.model_validate(m.meta["model"]) == QWEN2_7B
    assert m.meta["fit_error"]["mape"] < 0.12
    assert all(v >= 0 for v in m.coeffs().values())


# ---------------------------------------------------------------------- shipped profiles
SHIPPED = [s.name for s in SHIPPED_SPECS]


def test_list_profiles_is_the_shipped_set() -> None:
    assert list_profiles() == sorted(SHIPPED)
    assert profile_filename("llama3.1-8b@h100") == "llama3.1-8b__h100.yaml"
    assert profile_name("llama3.1-8b__h100.yaml") == "llama3.1-8b@h100"


@pytest.mark.parametrize("spec", SHIPPED_SPECS, ids=SHIPPED)
def test_shipped_profile_loads_and_is_plausible(spec: ProfileSpec) -> None:
    m = load_profile(spec.name)
    assert m.name == spec.name
    assert m.kv_blocks > 0 and m.block_size == 16
    assert m.kv_blocks == kv_blocks(spec.model, spec.gpu)
    assert m.meta["fit_error"]["mape"] < 0.12
    assert "scripts/make_profiles.py" in m.meta["provenance"]
    ttft = m.unloaded_ttft(1024)
    tpot1 = m.unloaded_tpot(1024)
    tpot64 = m.batch_time([(1, 1024)] * 64)
    assert 0.010 < ttft < 0.100  # 1k-token prefill on H100s: tens of ms
    assert 0.004 < tpot1 < 0.015  # weight streaming, ~5-10 ms
    assert tpot1 < tpot64 < 4 * tpot1  # batching decode is nearly free while memory bound


@pytest.mark.parametrize("spec", SHIPPED_SPECS, ids=SHIPPED)
def test_shipped_profile_is_up_to_date(spec: ProfileSpec) -> None:
    """The files match what make_profiles.py would write now (else: rerun the script)."""
    shipped = load_profile(spec.name)
    fresh = build_profile(spec.model, spec.gpu, spec.name)
    for k in COEFF_NAMES:
        assert getattr(shipped, k) == pytest.approx(getattr(fresh, k), rel=1e-6, abs=1e-15), k


def test_additive_fit_tracks_roofline_on_mixed_batches() -> None:
    """The fitted form charges weights once (c0) per batch, like the roofline: a mixed batch of
    decodes and one prefill chunk is predicted without systematic bias."""
    spec = SHIPPED_SPECS[1]
    m = load_profile(spec.name)
    errs = []
    for n_dec in (1, 8, 32, 128):
        for chunk in (128, 512, 2048):
            items = [(1, 500 + 37 * i) for i in range(n_dec)] + [(chunk, 0)]
            truth = batch_seconds(spec.model, spec.gpu, items)
            errs.append((m.batch_time(items) - truth) / truth)
    assert max(abs(e) for e in errs) < 0.35
    assert abs(sum(errs) / len(errs)) < 0.1


# ---------------------------------------------------------------------- loading and saving
def test_unknown_profile_lists_available() -> None:
    with pytest.raises(ValueError, match="unknown profile 'nope'") as e:
        load_profile("nope")
    for name in SHIPPED:
        assert name in str(e.value)


def test_missing_profile_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such profile file"):
        load_profile(tmp_path / "absent.yaml")


GOOD = {"name": "mine", "coefficients": dict.fromkeys(COEFF_NAMES, 1e-6), "kv_blocks": 100}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("name: [unclosed\n", "invalid YAML"),
        ("- just\n- a list\n", "must be a mapping"),
        (yaml.safe_dump({**GOOD, "coefficients": {"c0": 1.0}}), "missing coefficient"),
        (yaml.safe_dump({**GOOD, "coefficients": {**GOOD["coefficients"], "c3": -1.0}}),
         "c3 must be finite and >= 0"),
        (yaml.safe_dump({**GOOD, "coefficients": {**GOOD["coefficients"], "d2": "fast"}}),
         "d2 must be a number"),
        (yaml.safe_dump({**GOOD, "coefficients": {**GOOD["coefficients"], "c9": 1.0}}),
         "unknown coefficient"),
        (yaml.safe_dump({**GOOD, "kv_blocks": 0}), "kv_blocks"),
        (yaml.safe_dump({**GOOD, "model": {"name": "m", "num_layers": -1}}), "'model' section"),
    ],
)
def test_malformed_profile_names_file(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=problem) as e:
        load_profile(path)
    assert str(path) in str(e.value)


def test_malformed_json_profile_names_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON") as e:
        load_profile(str(path))
    assert str(path) in str(e.value)


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_save_load_round_trip(tmp_path: Path, suffix: str) -> None:
    m = build_profile(LLAMA31_8B, H100_SXM, "llama@test")
    path = save_profile(m, tmp_path / f"p{suffix}", "made by a test\nsecond line")
    back = load_profile(path)
    assert back.coeffs() == m.coeffs()
    assert (back.kv_blocks, back.block_size, back.name) == (m.kv_blocks, m.block_size, m.name)
    assert back.meta["provenance"] == "made by a test\nsecond line\n"
    assert back.meta["fit_error"] == m.meta["fit_error"]
    if suffix == ".yaml":
        assert "provenance: |" in path.read_text()  # readable literal block


def test_save_requires_provenance(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="provenance"):
        save_profile(LatencyModel(**dict.fromkeys(COEFF_NAMES, 0.0)), tmp_path / "x.yaml", " ")


def test_flat_to_dict_format_loads(tmp_path: Path) -> None:
    m = LatencyModel(c0=1e-3, c1=0, c2=1e-5, c3=0, c4=0, d1=1e-5, d2=1e-8, kv_blocks=7,
                     name="flat")
    path = tmp_path / "flat.json"
    path.write_text(json.dumps(m.to_dict()))
    back = load_profile(path)
    assert back.coeffs() == m.coeffs() and back.kv_blocks == 7 and back.name == "flat"
