"""How long KV copies between GPU and host memory take: ``t = a * n + b`` (ProServe section 3).

A latency model like the step model, so it lives in the latency layer: every profile carries a
``transfer`` section (written by ``scripts/make_profiles.py`` from the model's KV bytes per token
and the GPU's host link), and :meth:`TransferModel.from_profile` reads it, derives it for profiles
that name their model and GPU but predate the section, or falls back to the ProServe paper's
reference numbers. The engine's preemption modes (engine/offload.py) use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .model import LatencyModel

# ProServe's reference copy-time profile (a 7B model, 128-token blocks): 0.48 ms/block + 0.24 ms.
# Used only for profiles that name neither their model nor their GPU.
_REF_S_PER_TOKEN = 0.48e-3 / 128
_REF_S_PER_COPY = 0.24e-3
# PCIe Gen5 x16: 64 GB/s per direction nominal. Assumed, not measured here (no GPU is lent to
# this project): pinned-memory copies reach 80% of it. A profile measured on a GPU should carry
# its own transfer section.
DEFAULT_HOST_LINK_BYTES_S = 64e9
DEFAULT_HOST_LINK_EFFICIENCY = 0.8
# one batched copy per direction per step (vLLM v1's offloading connector submits each step's
# transfers as one job): a kernel launch plus a stream synchronisation, assumed 20 us
DEFAULT_S_PER_COPY = 20e-6

@dataclass(frozen=True, slots=True)
class TransferModel:
    """``seconds(n) = s_per_block * n + s_per_copy`` for one batched copy of ``n`` blocks in one
    direction (host link per GPU; tensor-parallel GPUs copy their shards in parallel)."""

    s_per_block: float
    s_per_copy: float
    source: str = ""

    def seconds(self, blocks: int) -> float:
        return self.s_per_block * blocks + self.s_per_copy if blocks > 0 else 0.0

    def blocks_within(self, seconds: float) -> int:
        """The most blocks one copy moves in ``seconds``."""
        if seconds <= self.s_per_copy or self.s_per_block <= 0:
            return 0 if self.s_per_block > 0 else (1 << 40)
        return int((seconds - self.s_per_copy) / self.s_per_block)

    @classmethod
    def from_profile(cls, model: LatencyModel) -> TransferModel:
        """The profile's ``transfer`` section, else derived from its model and GPU, else the
        ProServe paper's reference profile scaled to the block size."""
        meta: dict[str, Any] = model.meta if isinstance(model.meta, dict) else {}
        tr = meta.get("transfer")
        if isinstance(tr, dict) and "s_per_block" in tr:
            return cls(float(tr["s_per_block"]), float(tr.get("s_per_copy", DEFAULT_S_PER_COPY)),
                       str(tr.get("provenance", "profile transfer section")).strip())
        per_token = (meta.get("memory") or {}).get("kv_bytes_per_token")
        gpu = meta.get("gpu") if isinstance(meta.get("gpu"), dict) else None
        if per_token and gpu:
            return cls(**transfer_section(int(per_token), gpu, model.block_size, as_args=True))
        return cls(_REF_S_PER_TOKEN * model.block_size, _REF_S_PER_COPY,
                   "ProServe's reference copy-time profile (0.48 ms per 128-token block + "
                   "0.24 ms per copy), scaled to the block size: the profile names no GPU/model")


def transfer_section(kv_bytes_per_token: int, gpu: dict[str, Any], block_size: int, *,
                     as_args: bool = False) -> dict[str, Any]:
    """The ``transfer`` section a profile file carries (or :class:`TransferModel`'s arguments)."""
    link = float(gpu.get("host_link_bandwidth", DEFAULT_HOST_LINK_BYTES_S))
    tp = int(gpu.get("count", 1))
    block_bytes = kv_bytes_per_token * block_size / tp  # each GPU copies its own shard
    s_block = block_bytes / (link * DEFAULT_HOST_LINK_EFFICIENCY)
    prov = (f"assumed, not measured: host link {link / 1e9:.0f} GB/s per direction per GPU "
            f"(PCIe Gen5 x16 nominal) x {DEFAULT_HOST_LINK_EFFICIENCY} efficiency; "
            f"{kv_bytes_per_token} KV bytes/token from the model config over {tp} GPU(s); "
            f"{DEFAULT_S_PER_COPY * 1e6:.0f} us per batched copy (one launch + sync per "
            "direction per step)")
    if as_args:
        return {"s_per_block": s_block, "s_per_copy": DEFAULT_S_PER_COPY, "source": prov}
    return {"host_link_bandwidth": link, "link_efficiency": DEFAULT_HOST_LINK_EFFICIENCY,
            "kv_bytes_per_token": kv_bytes_per_token, "tensor_parallel": tp,
            "s_per_block": s_block, "s_per_copy": DEFAULT_S_PER_COPY, "provenance": prov}
