"""Preemption that offloads KV to host memory instead of recomputing it (ProServe section 3).

vLLM today *recomputes* a preempted request: its KV is dropped and its prompt and generated tokens
are prefilled again when it resumes. Priority scheduling preempts often, so ProServe keeps the KV
in host memory instead, and hides the copies under compute. This module holds the parts that are
not the block books (those are :class:`~proserve.engine.kv.BlockManager`'s host tier):

* :class:`~proserve.latency.transfer.TransferModel` (latency layer): how long copying ``n``
  blocks between device and host takes, ``t = a * n + b`` (the paper's form), from the profile's
  host link and KV bytes per token;
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

from ..latency.transfer import TransferModel

__all__ = ["PREEMPTION_MODES", "PreemptionMode", "TransferModel", "host_blocks_for",
           "pipelined", "preemption_mode", "step_seconds"]

DEFAULT_LAYER_GROUPS = 4
DEFAULT_HOST_FACTOR = 4.0


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
