"""``proserve profile --synthetic``: time a Llama-shaped model with random weights in PyTorch.

A GPU machine without vLLM (or without the weights) can still produce a real profile: the
iteration time of a dense decoder depends on its *shapes*, not on the values of its weights. The
model here does what one vLLM iteration does, layer by layer: RMSNorm, fused QKV projection
(with Qwen2's biases or Qwen3's per-head q/k norm where the config says so), rotary embedding,
writing the new K/V into a cache, scaled-dot-product attention over the cached context (GQA),
output projection, SwiGLU MLP, and the LM head on the last position of each sequence only (vLLM
computes logits for sampled positions only).

What it leaves out, and why the fit absorbs it: vLLM's paged-attention kernels, CUDA graphs and
its scheduler/sampler overhead per step. The constant part of those lands in ``c0``/``d1``; a
profile measured through ``proserve profile --server`` includes them for real.

torch is imported lazily: the rest of proserve does not need it (``pip install
'proserve[profile]'``).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from ..latency.roofline import ModelConfig

_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _torch():
    try:
        import torch
    except ImportError:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "proserve profile --synthetic needs PyTorch: pip install 'proserve[profile]' "
            "(on a CPU-only machine: pip install torch==2.13.0 first, which takes the CPU build)"
        ) from None
    return torch


class SyntheticLlama:
    """A random-weight Llama/Qwen-shaped decoder that times iterations of a given shape."""

    def __init__(self, cfg: ModelConfig, *, device: str = "auto", dtype: str | None = None,
                 repeats: int = 3, seed: int = 0, kv_gib: float = 4.0, block_size: int = 16,
                 gpu_memory_utilization: float = 0.9, threads: int | None = None) -> None:
        torch = _torch()
        if repeats < 1:
            raise ValueError("repeats must be >= 1")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"--device {device}: no CUDA device visible to PyTorch")
        # bf16 GEMMs on a CPU without AMX are emulated and slow; fp32 is what a CPU runs well.
        dtype = dtype or ("bf16" if device.startswith("cuda") else "fp32")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.cfg = cfg
        self.device = torch.device(device)
        self.dtype = getattr(torch, _DTYPES[dtype])
        self.dtype_name = dtype
        self.repeats = repeats
        self.block_size = block_size
        g = torch.Generator(device="cpu").manual_seed(seed)
        self._gen = g

        def w(*shape: int) -> Any:  # N(0, 0.02) like HF init; values do not matter for timing
            return (torch.randn(*shape, generator=g) * 0.02).to(self.device, self.dtype)

        h, qd, kvd, inter = cfg.hidden_size, cfg.q_dim, cfg.kv_dim, cfg.intermediate_size
        self.embed = w(cfg.vocab_size, h)
        self.lm_head = self.embed.T if cfg.tie_word_embeddings else w(h, cfg.vocab_size)
        self.layers = []
        for _ in range(cfg.num_layers):
            self.layers.append({
                "ln1": torch.ones(h, device=self.device, dtype=self.dtype),
                "wqkv": w(h, qd + 2 * kvd),
                "bqkv": w(qd + 2 * kvd) if cfg.qkv_bias else None,
                "qn": torch.ones(cfg.head_dim, device=self.device, dtype=self.dtype)
                if cfg.qk_norm else None,
                "kn": torch.ones(cfg.head_dim, device=self.device, dtype=self.dtype)
                if cfg.qk_norm else None,
                "wo": w(qd, h),
                "ln2": torch.ones(h, device=self.device, dtype=self.dtype),
                "wgu": w(h, 2 * inter),
                "wd": w(inter, h),
            })
        self.norm = torch.ones(h, device=self.device, dtype=self.dtype)
        half = cfg.head_dim // 2
        self.inv_freq = 1.0 / (500000.0 ** (torch.arange(half, device=self.device).float() / half))
        elem = torch.tensor([], dtype=self.dtype).element_size()
        self.kv_bytes_per_token = 2 * cfg.num_layers * cfg.kv_dim * elem
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            budget = total * gpu_memory_utilization - (total - free)
            name = torch.cuda.get_device_name(self.device)
        else:
            budget = kv_gib * 1024**3
            name = "CPU"
        self._kv_blocks = max(int(budget // (self.kv_bytes_per_token * block_size)), 1)
        self.description = (
            f"synthetic {cfg.name} ({cfg.num_layers} layers, hidden {h}, {cfg.num_heads} heads, "
            f"{cfg.num_kv_heads} KV heads, random weights) in PyTorch {torch.__version__}, "
            f"{dtype} on {name}; median of {repeats} timed runs after one warm-up"
        )

    # ------------------------------------------------------------------ the forward pass
    def _rms(self, x: Any, weight: Any) -> Any:
        torch = self.torch
        var = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(var + 1e-6)).to(x.dtype) * weight

    def _rope(self, x: Any, pos: Any) -> Any:
        torch = self.torch
        ang = pos[:, None].float() * self.inv_freq[None, :]  # T x hd/2
        cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    def _forward(self, ids: Any, caches: list[tuple[Any, Any]], start: int) -> Any:
        """One iteration: ``ids`` (B x T) new tokens at positions ``start..start+T-1``."""
        torch = self.torch
        f = torch.nn.functional
        cfg = self.cfg
        bsz, t = ids.shape
        nh, nkv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        pos = torch.arange(start, start + t, device=self.device)
        end = start + t
        mask = None
        if t > 1 and start > 0:  # chunked prefill: causal within the chunk, all of the prefix
            mask = (torch.arange(end, device=self.device)[None, :]
                    <= (pos[:, None]))
        x = self.embed[ids]
        for lyr, (kc, vc) in zip(self.layers, caches):
            hidden = self._rms(x, lyr["ln1"])
            qkv = hidden @ lyr["wqkv"]
            if lyr["bqkv"] is not None:
                qkv = qkv + lyr["bqkv"]
            q, k, v = qkv.split((nh * hd, nkv * hd, nkv * hd), dim=-1)
            q = q.view(bsz, t, nh, hd).transpose(1, 2)
            k = k.view(bsz, t, nkv, hd).transpose(1, 2)
            v = v.view(bsz, t, nkv, hd).transpose(1, 2)
            if lyr["qn"] is not None:
                q, k = self._rms(q, lyr["qn"]), self._rms(k, lyr["kn"])
            q, k = self._rope(q, pos), self._rope(k, pos)
            kc[:, :, start:end] = k
            vc[:, :, start:end] = v
            a = f.scaled_dot_product_attention(
                q, kc[:, :, :end], vc[:, :, :end], attn_mask=mask,
                is_causal=mask is None and t > 1, enable_gqa=nh != nkv)
            x = x + a.transpose(1, 2).reshape(bsz, t, nh * hd) @ lyr["wo"]
            hidden = self._rms(x, lyr["ln2"])
            gate, up = (hidden @ lyr["wgu"]).chunk(2, dim=-1)
            x = x + (f.silu(gate) * up) @ lyr["wd"]
        return self._rms(x[:, -1], self.norm) @ self.lm_head  # logits of sampled positions

    # ------------------------------------------------------------------ timing
    def _time(self, bsz: int, t: int, start: int) -> float:
        torch = self.torch
        cfg = self.cfg
        shape = (bsz, cfg.num_kv_heads, start + t, cfg.head_dim)
        caches = [(torch.randn(shape, generator=self._gen).to(self.device, self.dtype),
                   torch.randn(shape, generator=self._gen).to(self.device, self.dtype))
                  for _ in range(cfg.num_layers)]
        ids = torch.randint(0, cfg.vocab_size, (bsz, t), generator=self._gen).to(self.device)
        cuda = self.device.type == "cuda"
        times = []
        with torch.inference_mode():
            for i in range(self.repeats + 1):
                if cuda:
                    torch.cuda.synchronize(self.device)
                t0 = time.perf_counter()
                self._forward(ids, caches, start).argmax(-1)
                if cuda:
                    torch.cuda.synchronize(self.device)
                if i:  # the first run is a warm-up (allocator, kernel selection)
                    times.append(time.perf_counter() - t0)
        del caches
        return statistics.median(times)

    def time_prefill(self, q: int, p: int) -> float:
        return self._time(1, q, p)

    def time_decode(self, batch: int, context: int) -> float:
        return self._time(batch, 1, context - 1)

    def kv_capacity(self) -> tuple[int, int]:
        return self._kv_blocks, self.block_size

    def close(self) -> None:
        self.layers.clear()
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()
