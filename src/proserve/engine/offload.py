"""Preemption that offloads KV to host memory instead of recomputing it (ProServe section 3).

vLLM today *recomputes* a preempted request: its KV is dropped and its prompt and generated tokens
are prefilled again when it resumes. Priority scheduling preempts often, so ProServe keeps the KV
in host memory instead, and hides the copies under compute. This module holds the parts that are
not the block books (those are :class:`~proserve.engine.kv.BlockManager`'s host tier):

* :class:`TransferModel`: how long copying ``n`` blocks between device and host takes,
  ``t = a * n + b`` (the paper's form), from the profile's host link and KV bytes per token;
* :class:`PreemptionMode`: which of the paper's mechanisms are on; :data:`PREEMPTION_MODES` names
  the combinations ``--preemption`` accepts;
* :func:`step_seconds`: how long a step takes once its copies are accounted for.

The modes (cumulative, as the paper's ablation adds them):

``recompute``
    vLLM's behaviour: drop the KV; the request prefills prompt + generated tokens again.
``offload-sync``
    Copy the victim's KV device->host when it is preempted and back host->device when it is
    scheduled again, both on the critical path: the step takes compute + copy-out + copy-in.
``offload-async``
    Device->host copies run on a copy stream that overlaps compute (the step takes
    max(compute, copy-out) + copy-in: the freed blocks are written by this step's compute only once
    their copy is out, so a copy longer than the compute still delays the step).
``full``
    ProServe's whole design:

    * async offload, as above;
    * **pipelined reload**: host->device copies go layer group by layer group and each group's
      compute waits only for its own layers: with ``G`` groups, copy ``C`` and compute ``E``,
      the step takes ``C/G + (G-1) * max(C/G, E/G) + E/G`` instead of ``C + E``;
    * **adaptive copy budget**: if the step's reloads would take longer than its compute (the
      copy would not hide), reloads are dropped starting from the lowest-priority request in the
      batch (those requests recompute instead) until the rest hides. The paper binary-searches a
      partial count for the last one; we drop whole requests, because a partially reloaded
      request would wait holding device blocks that no policy's victim choice can reclaim. The
      paper also caps the copy at what fits the latency budget ``B`` when ``E_min >= B``; our
      policies' budget already bounds ``E``, so hiding under ``E`` is that cap.
    * **priority-aware eager backup**: after each step's batch is formed, the device->host link
      time the step leaves idle (its compute minus the step's offload copies) backs up full
      blocks of running requests, lowest priority first, so that evicting them later copies only
      the blocks written since. Only requests below the highest priority present are backed up
      (the paper: "low-priority requests are backed up more eagerly"; its thresholds are not
      published, ours is "any block of a request that is not of the top priority"). A request
      keeps its host copy when it is reloaded, so a second eviction is free too.

``full-nobudget`` and ``full-nobackup`` are ``full`` without the copy budget or without the eager
backup, for the ablation.

Every offload needs host room: ``--host-kv-blocks`` (a count, or ``4x`` for a factor of the device
blocks; default 4x when a mode offloads). A victim whose KV does not fit on host is recomputed,
as vLLM's offloading connector falls back to recompute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..latency.model import LatencyModel

# ProServe's reference copy-time profile (a 7B model, 128-token blocks): 0.48 ms/block + 0.24 ms.
# Used only for profiles that name neither their model nor their GPU.
_REF_S_PER_TOKEN = 0.48e-3 / 128
_REF_S_PER_COPY = 0.24e-3
# PCIe Gen5 x16: 64 GB/s per direction nominal; pinned-memory cudaMemcpyAsync reaches ~80% of it
# (NVIDIA's bandwidthTest on H100 SXM reports ~50-55 GB/s host<->device).
DEFAULT_HOST_LINK_BYTES_S = 64e9
DEFAULT_HOST_LINK_EFFICIENCY = 0.8
# one batched copy per direction per step (vLLM v1's offloading connector submits each step's
# transfers as one job): a kernel launch plus a stream synchronisation, ~20 us
DEFAULT_S_PER_COPY = 20e-6
DEFAULT_LAYER_GROUPS = 4
DEFAULT_HOST_FACTOR = 4.0


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
    prov = (f"host link {link / 1e9:.0f} GB/s per direction per GPU x "
            f"{DEFAULT_HOST_LINK_EFFICIENCY} efficiency (PCIe Gen5 x16 pinned-memory copies); "
            f"{kv_bytes_per_token} KV bytes/token from the model config over {tp} GPU(s); "
            f"{DEFAULT_S_PER_COPY * 1e6:.0f} us per batched copy (one launch + sync per "
            "direction per step)")
    if as_args:
        return {"s_per_block": s_block, "s_per_copy": DEFAULT_S_PER_COPY, "source": prov}
    return {"host_link_bandwidth": link, "link_efficiency": DEFAULT_HOST_LINK_EFFICIENCY,
            "kv_bytes_per_token": kv_bytes_per_token, "tensor_parallel": tp,
            "s_per_block": s_block, "s_per_copy": DEFAULT_S_PER_COPY, "provenance": prov}


@dataclass(frozen=True, slots=True)
class PreemptionMode:
    """Which parts of ProServe's block management are on (see the module docstring)."""

    name: str
    offload: bool = False  # keep a victim's KV on host (else recompute)
    async_out: bool = False  # device->host copies overlap compute
    pipelined: bool = False  # host->device reload by layer group
    copy_budget: bool = False  # drop reloads that would not hide under compute
    eager_backup: bool = False  # back up low-priority blocks in idle link time


PREEMPTION_MODES: dict[str, PreemptionMode] = {m.name: m for m in (
    PreemptionMode("recompute"),
    PreemptionMode("offload-sync", offload=True),
    PreemptionMode("offload-async", offload=True, async_out=True),
    PreemptionMode("full", True, True, True, True, True),
    PreemptionMode("full-nobudget", True, True, True, False, True),
    PreemptionMode("full-nobackup", True, True, True, True, False),
)}


def preemption_mode(name: str) -> PreemptionMode:
    try:
        return PREEMPTION_MODES[name]
    except KeyError:
        raise ValueError(f"unknown preemption mode {name!r}; choose one of "
                         f"{', '.join(PREEMPTION_MODES)}") from None


def host_blocks_for(spec: int | float | str | None, device_blocks: int, mode: PreemptionMode
                    ) -> int:
    """Host KV capacity from ``--host-kv-blocks``: a count, ``"4x"`` (a factor of the device
    blocks), or None (4x the device blocks when the mode offloads, else 0)."""
    if spec is None:
        return int(DEFAULT_HOST_FACTOR * device_blocks) if mode.offload else 0
    if isinstance(spec, str):
        s = spec.strip().lower()
        try:
            if s.endswith("x"):
                f = float(s[:-1])
                if f < 0:
                    raise ValueError
                return int(f * device_blocks)
            spec = int(s)
        except ValueError:
            raise ValueError(f"bad host KV size {spec!r}: a block count (e.g. 100000) or a "
                             "factor of the device blocks (e.g. 4x)") from None
    if spec < 0:
        raise ValueError("host KV blocks must be >= 0")
    return int(spec)


def pipelined(compute: float, copy: float, groups: int) -> float:
    """A two-stage pipeline of ``groups`` layer groups: copy of group g, then its compute."""
    if copy <= 0:
        return compute
    c, e = copy / groups, compute / groups
    return c + (groups - 1) * max(c, e) + e


def step_seconds(mode: PreemptionMode, tm: TransferModel, compute: float, blocks_out: int,
                 blocks_in: int, backup_blocks: int = 0, groups: int = DEFAULT_LAYER_GROUPS
                 ) -> float:
    """A step's wall time given its compute time and the blocks it copies each way (offloads of
    this step's victims; reloads). Eager backups (``backup_blocks``) never delay a step: they
    are sized to the device->host link time the *predicted* step leaves idle, and nothing waits
    for them (a backup still in flight when the step ends simply finishes during the next)."""
    out_s = tm.seconds(blocks_out)
    in_s = tm.seconds(blocks_in)
    if not mode.async_out:
        return compute + out_s + in_s
    if not mode.pipelined:
        return max(compute, out_s) + in_s
    return max(pipelined(compute, in_s, groups), out_s)
