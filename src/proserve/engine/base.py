"""The engine-scheduler protocol, its shared mechanics, and the policy registry.

Shape copied from vLLM v1 (``vllm/v1/core/sched/``): the scheduler owns its queues and its KV
block manager; ``schedule(now)`` returns a plain :class:`SchedulerOutput`; after the step has run,
``update_from_output(out, now)`` advances token counts, emits tokens and retires finished requests.
No clock and no I/O live here: the caller passes ``now``, which is what lets one policy object run
in the simulator (virtual time), the emulator (wall time) and inside vLLM.

Every policy subclasses :class:`BaseScheduler`, which implements the parts that are not policy:
admission checks, KV allocation, recompute preemption and token accounting. A policy supplies
queue handling (``_enqueue``, ``_on_preempted``, ``_on_finished``) and ``schedule``.

Prefix caching (``prefix_caching=True``, the default as in vLLM; it only acts on requests that
carry a :class:`~proserve.core.request.Prefix`): when a policy is about to schedule a request that
holds no KV, it matches the request's cached prefix (:meth:`BlockManager.match_prefix`) *before*
sizing its chunk, so the chunk and its predicted cost cover only uncached tokens (context = the
cached tokens); if it takes the request, :meth:`BaseScheduler._prefix_hit` acquires the matched
blocks (``computed`` starts after them) before allocating the rest, and
:meth:`BaseScheduler._undo_hit` gives them back should that allocation fail. After each step
:meth:`update_from_output` caches the prompt blocks the step completed
(:meth:`BlockManager.commit`).

Preemption (``preemption=``, engine/offload.py): ``recompute`` drops a victim's KV as vLLM does;
the offload modes keep it on host (``host_kv_blocks``) and reload it when the victim is scheduled
again. Policies do not change: a victim keeps ``computed``, so the walk sizes its next chunk from
there, and :meth:`BlockManager.allocate` notices the reload. :meth:`schedule` (the policy's
:meth:`_schedule` plus :meth:`_plan_copies`) then applies the copy budget and the eager backup,
and records the step's copies in the output; :meth:`step_seconds` turns compute time into the
step's wall time with those copies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, Protocol, runtime_checkable

from ..core.registry import Registry, Spec
from ..core.request import Request, Status
from ..latency.model import LatencyModel
from .kv import BlockManager
from .offload import (
    DEFAULT_LAYER_GROUPS,
    TransferModel,
    host_blocks_for,
    preemption_mode,
    step_seconds,
)

# Fallback caps when the profile names no device (vLLM's OpenAI-server token budget on a large
# GPU, its smaller sequence cap); profiles that name their GPU get vLLM's own per-hardware values
# from :func:`vllm_batch_defaults`.
DEFAULT_MAX_BATCHED_TOKENS = 8192
DEFAULT_MAX_SEQS = 256
_GIB = 1024**3


def vllm_batch_defaults(model: LatencyModel) -> tuple[int, int, str]:
    """``(max_num_batched_tokens, max_num_seqs, source)`` that vLLM's OpenAI server would use on
    the profile's device.

    Source: vLLM ``EngineArgs.get_batch_defaults`` (vllm/engine/arg_utils.py, v0.9-0.32): a GPU
    with >= 70 GiB that is not an A100 (H100, H200, MI300x) gets 8192 tokens and 1024 sequences
    for the OpenAI server; other GPUs 2048 and 256; vLLM's CPU backend 2048 and 128 per
    tensor-parallel rank. A profile without device information keeps (8192, 256).
    """
    gpu = model.meta.get("gpu") if isinstance(model.meta, dict) else None
    backend = str(model.meta.get("backend", "")).lower() if isinstance(model.meta, dict) else ""
    if isinstance(gpu, dict) and gpu.get("mem_bytes"):
        name = str(gpu.get("name", "")).lower()
        if float(gpu["mem_bytes"]) >= 70 * _GIB and "a100" not in name:
            return 8192, 1024, f"vLLM get_batch_defaults: {gpu.get('name')} (>= 70 GiB, not A100)"
        return 2048, 256, f"vLLM get_batch_defaults: {gpu.get('name')} (other GPU)"
    if "cpu" in backend or str(model.meta.get("device", "")).lower() == "cpu":
        tp = int(gpu.get("count", 1)) if isinstance(gpu, dict) else 1
        return 2048 * tp, 128 * tp, "vLLM get_batch_defaults: CPU backend"
    return DEFAULT_MAX_BATCHED_TOKENS, DEFAULT_MAX_SEQS, "no device in the profile: fallback"


@dataclass(slots=True)
class SchedulerOutput:
    """What to run in one iteration: ``num_tokens[i]`` tokens of ``reqs[i]``.

    ``duration`` is the latency model's prediction for the batch (c0 + per-sequence terms),
    computed while the batch was formed; the simulator uses it as the step time.
    """

    reqs: list[Request] = field(default_factory=list)
    num_tokens: list[int] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
    # filled by update_from_output: disaggregated prefills done here, to be moved to their decode
    # instance (not finished, so not in its return value)
    handed_off: list[Request] = field(default_factory=list)
    duration: float = 0.0
    prefill_tokens: int = 0
    decodes: int = 0
    # KV copies this step (engine/offload.py): blocks offloaded to host by this step's
    # preemptions, reloaded from host, and backed up eagerly
    blocks_out: int = 0
    blocks_in: int = 0
    backup_blocks: int = 0

    @property
    def empty(self) -> bool:
        return not self.reqs

    @property
    def total_tokens(self) -> int:
        return self.prefill_tokens + self.decodes


class PrefillItem(NamedTuple):
    """One prefill-stage request as a router sees it (an engine's queue, a gateway's record, a
    router's own dispatch): small, immutable and cheap to copy into a view; read by field
    name."""

    pending: int  # tokens still to compute before the next output token
    computed: int  # tokens whose KV is computed (the context the prefill runs on)
    weight: float
    arrival: float
    ttft_slo: float
    tpot_slo: float
    generated: int  # > 0: a request resuming after preemption, or a decode-stage arrival

    @property
    def deadline(self) -> float:
        """When its next token is due: arrival + TTFT SLO + generated x TPOT SLO."""
        return self.arrival + self.ttft_slo + self.generated * self.tpot_slo


@dataclass(slots=True)
class EngineLoad:
    """An engine's load at one moment (see :meth:`BaseScheduler.load`)."""

    prefill: list[PrefillItem]
    decodes: int
    decode_context: int  # sum of decode-stage context lengths
    free_blocks: int
    total_blocks: int
    received: int = -1  # requests the engine had been given (-1: unknown to the source)
    min_decode_tpot: float = float("inf")  # tightest TPOT SLO among decode-stage requests
    # does the engine serve more valuable (heavier) work first? Then queued lighter work does not
    # delay a new heavier request (cluster.view.predicted_ttft). Sources that cannot tell (a
    # gateway's backends, which receive each request's priority) assume it does.
    orders_by_value: bool = True
    # Per decode-stage request, its context (computed + 1) and tokens generated so far, in the
    # same order: what PolyServe's admission test plays forward (KV growth until each resident
    # reaches its expected length). Empty where the source cannot tell (a gateway's backends);
    # users then fall back to ``decodes`` sequences of mean context ``decode_context / decodes``.
    decode_ctx: list[int] = field(default_factory=list)
    decode_gen: list[int] = field(default_factory=list)


@runtime_checkable
class EngineScheduler(Protocol):
    """What the simulator, the emulator and the vLLM plug-in need from a policy."""

    name: str
    model: LatencyModel
    kv: BlockManager

    def add_request(self, req: Request, now: float) -> bool: ...
    def schedule(self, now: float) -> SchedulerOutput: ...
    def update_from_output(self, out: SchedulerOutput, now: float) -> list[Request]: ...
    def has_unfinished(self) -> bool: ...
    def requests(self) -> Iterable[Request]: ...
    def load(self, decode_rows: bool = False) -> EngineLoad: ...


class BaseScheduler:
    """Shared mechanics; subclasses implement the policy."""

    name: ClassVar[str] = "base"

    def __init__(
        self,
        model: LatencyModel,
        *,
        max_num_batched_tokens: int = DEFAULT_MAX_BATCHED_TOKENS,
        max_num_seqs: int = DEFAULT_MAX_SEQS,
        check_invariants: bool = False,
        prefix_caching: bool = True,
        preemption: str = "recompute",
        host_kv_blocks: int | str | None = None,
        layer_groups: int = DEFAULT_LAYER_GROUPS,
    ) -> None:
        if max_num_batched_tokens <= 0 or max_num_seqs <= 0:
            raise ValueError("max_num_batched_tokens and max_num_seqs must be positive")
        if layer_groups < 1:
            raise ValueError("layer_groups must be >= 1")
        self.model = model
        self.mode = preemption_mode(preemption)
        self.kv = BlockManager(model.kv_blocks, model.block_size, prefix_caching=prefix_caching,
                               host_blocks=host_blocks_for(host_kv_blocks, model.kv_blocks,
                                                           self.mode))
        self.transfer = TransferModel.from_profile(model) if self.mode.offload else None
        self.layer_groups = layer_groups
        # adaptive copy budget: blocks this step may reload (policies with a latency budget set
        # it from that budget each walk; others: what the longest possible batch hides)
        self._max_copy = 0 if self.transfer is None else self.transfer.blocks_within(
            model.c0 + model.prefill_time(max_num_batched_tokens))
        self._copy_cap = self._max_copy
        self._copy_used = 0
        # preemption and copy counters (metrics; engine/offload.py)
        self.preempt_offload = 0  # victims whose KV went to host
        self.preempt_recompute = 0  # victims whose KV was dropped (recompute mode or host full)
        self.recomputed_tokens = 0  # computed KV thrown away (to be computed again)
        self.blocks_out = self.blocks_in = self.backup_blocks = 0
        self.reload_trims = 0  # reloads the copy budget cut short (the rest recomputes)
        self.copy_wait_s = 0.0  # step time spent waiting on copies beyond compute
        # ids of requests that arrived with computed KV (a disaggregated decode instance): for
        # check(), which otherwise takes KV held nowhere for lost KV
        self._arrived_with_kv: set[int] = set()
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs
        self.check_invariants = check_invariants
        self.num_preemptions = 0
        self.num_finished = 0
        self.num_handed_off = 0  # disaggregated prefills passed on to a decode instance
        self.tokens_emitted = 0  # for the simulator's token-conservation check
        self.num_received = 0  # add_request calls: lets a router tell what a view includes
        self.orders_by_value = False  # policies that serve heavier work first set it
        # prefix caching is on and some request with prefix identity has arrived: until then
        # (and always for length-only traces) the hot loops skip every prefix-cache test
        self.prefix_active = False

    # ------------------------------------------------------------------ policy hooks
    def _enqueue(self, req: Request, now: float) -> None:
        raise NotImplementedError

    def _on_preempted(self, req: Request) -> None:
        """Put a request that just lost its KV back where the policy wants it."""
        raise NotImplementedError

    def _on_finished(self, req: Request) -> None:
        raise NotImplementedError

    def requests(self) -> Iterable[Request]:
        """Every unfinished request this engine holds (waiting or running)."""
        raise NotImplementedError

    def _schedule(self, now: float) -> SchedulerOutput:
        """The policy's batch decision (KV allocated, victims preempted)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ public API
    def schedule(self, now: float) -> SchedulerOutput:
        """The next iteration's batch: the policy's decision plus its KV copies."""
        if self.transfer is not None:
            self._copy_used = 0
            self._copy_cap = self._max_copy
        out = self._schedule(now)
        if self.transfer is not None:
            self._plan_copies(out)
        return out

    def step_seconds(self, compute: float, out: SchedulerOutput) -> float:
        """Wall time of a step whose compute takes ``compute`` seconds, its copies included
        (the caller times compute: the simulator's truth model, or the emulator's)."""
        if self.transfer is None or not (out.blocks_out or out.blocks_in or out.backup_blocks):
            return compute
        t = step_seconds(self.mode, self.transfer, compute, out.blocks_out, out.blocks_in,
                         out.backup_blocks, self.layer_groups)
        self.copy_wait_s += t - compute
        return t
    def add_request(self, req: Request, now: float) -> bool:
        """Queue ``req``; False (status REJECTED) if it could never fit in the KV cache."""
        self.num_received += 1
        if self.kv.blocks_needed(req, req.prompt_len + req.output_len) > self.kv.total:
            req.status = Status.REJECTED
            req.finish_time = now
            return False
        req.status = Status.WAITING
        if req.computed and not req.blocks and not req.host_blocks:
            self._arrived_with_kv.add(req.id)  # disaggregated: its KV is in transfer
        if req.prefix is not None and self.kv.caching:
            self.prefix_active = True
        self._enqueue(req, now)
        return True

    def has_unfinished(self) -> bool:
        return any(True for _ in self.requests())

    @property
    def num_unfinished(self) -> int:
        return sum(1 for _ in self.requests())

    def update_from_output(self, out: SchedulerOutput, now: float) -> list[Request]:
        """Apply a finished iteration at time ``now``: KV computed, tokens emitted, retirements."""
        finished: list[Request] = []
        kv = self.kv
        pc = self.prefix_active
        for r, q in zip(out.reqs, out.num_tokens):
            r.computed += q
            if pc and r.prefix is not None and r.computed - q < r.prompt_len:
                kv.commit(r)  # full prompt blocks computed this step become cached
            if r.computed == r.prompt_len + r.generated:
                if r.prefill_only and r.generated == 0 and r.output_len > 1:
                    # disaggregated prefill: the request leaves this instance (its KV moves to
                    # the decode instance, which emits the first token), but it is not finished
                    self._hand_off(r)
                    out.handed_off.append(r)
                    continue
                r.emit_token(now)
                self.tokens_emitted += 1
                if r.generated >= r.output_len:
                    self._finish(r, now)
                    finished.append(r)
        if self.check_invariants:
            self.check()
        return finished

    def abort_request(self, r: Request, now: float) -> bool:
        """Drop one unfinished request (e.g. its client went away); False if it is not held."""
        if r.status >= Status.FINISHED:
            return False
        self._free_kv(r)
        r.status = Status.UNFINISHED
        r.finish_time = now
        self._on_finished(r)
        return True

    def abort_all(self, now: float, status: Status = Status.UNFINISHED) -> list[Request]:
        """End every request still held (e.g. the simulation's drain time ran out)."""
        left = list(self.requests())
        for r in left:
            self._free_kv(r)
            r.status = status
            r.finish_time = now
            self._on_finished(r)
        return left

    def check(self) -> None:
        """Assert invariants: KV within capacity and balanced, token counts consistent."""
        reqs = list(self.requests())
        self.kv.check(reqs)
        for r in reqs:
            if not 0 <= r.computed <= r.prompt_len + r.generated:
                raise AssertionError(f"request {r.id}: computed={r.computed} out of range")
            if r.generated > r.output_len:
                raise AssertionError(f"request {r.id}: generated {r.generated} > {r.output_len}")
            # A waiting request with no blocks may have computed tokens: KV that arrived from a
            # prefill instance (disaggregated mode) waits in a transfer buffer until admitted.
            if r.blocks * self.kv.block_size < r.computed and not (
                    r.blocks == 0 and r.status == Status.WAITING):
                raise AssertionError(f"request {r.id}: KV blocks do not cover computed tokens")
            # a waiting request with computed KV and no blocks has it on host (offload), unless
            # it is a disaggregated arrival whose prompt KV is in the transfer buffer
            if r.blocks:
                self._arrived_with_kv.discard(r.id)
            elif r.computed and not r.host_blocks and r.id not in self._arrived_with_kv:
                raise AssertionError(f"request {r.id}: {r.computed} computed tokens neither on "
                                     "device nor on host")

    # ------------------------------------------------------------------ shared mechanics
    def _free_kv(self, r: Request) -> None:
        self.kv.release(r)
        if r.host_blocks:
            self.kv.drop_host(r)

    def _hand_off(self, r: Request) -> None:
        """A prefill-only request is done here: free its KV and drop it from the queues; its
        status stays WAITING (it waits for its KV transfer, then for its decode instance)."""
        self._free_kv(r)
        r.status = Status.WAITING
        r.prefill_only = False
        self.num_handed_off += 1
        self._on_finished(r)

    def _finish(self, r: Request, now: float) -> None:
        r.status = Status.FINISHED
        r.finish_time = now
        self._free_kv(r)
        if self._arrived_with_kv:
            self._arrived_with_kv.discard(r.id)
        self.num_finished += 1
        self._on_finished(r)

    def _preempt(self, r: Request, out: SchedulerOutput) -> None:
        """Preempt ``r``: offload its KV to host (offload modes, if host memory holds it), else
        drop it (recompute: it will prefill prompt + generated again)."""
        copied = self.kv.offload(r) if self.mode.offload and r.computed else -1
        if copied >= 0:
            out.blocks_out += copied
            self.preempt_offload += 1
        else:
            self._free_kv(r)
            self.recomputed_tokens += r.computed
            r.computed = 0
            self.preempt_recompute += 1
        r.preemptions += 1
        r.status = Status.WAITING
        self.num_preemptions += 1
        out.preempted.append(r)
        self._on_preempted(r)

    def _prefix_hit(self, r: Request, blocks: int) -> None:
        """Take the ``blocks`` cached leading blocks just matched for ``r`` (holds no KV,
        computed nothing), which the policy is about to schedule: they count as computed."""
        hit = self.kv.acquire_prefix(r, blocks)
        if r.preemptions == 0 and r.generated == 0:
            r.cached_tokens = hit  # the request's first scheduling: what its prefill skipped

    def _undo_hit(self, r: Request) -> None:
        """Give back a prefix hit of a request the policy did not schedule after all."""
        self.kv.release(r)
        r.computed = 0
        if r.preemptions == 0 and r.generated == 0:
            r.cached_tokens = 0

    def _allocate_or_preempt(
        self, r: Request, q: int, out: SchedulerOutput, victim: Callable[[], Request | None]
    ) -> bool:
        """Allocate KV for ``q`` more tokens of ``r``, preempting ``victim()`` until it fits.

        Returns False if ``r`` cannot be allocated (no victim left, or ``r`` itself was chosen).
        """
        tokens = r.computed + q
        while not self.kv.allocate(r, tokens):
            v = victim()
            if v is None:
                return False
            self._preempt(v, out)
            if v is r:
                return False
        return True

    def _remove_from_batch(self, out: SchedulerOutput, gone: list[Request]) -> None:
        """Take requests back out of this step's batch and recount its totals from the
        survivors (scheduling never changes ``computed`` of the requests it keeps). Rare
        (preemption of a scheduled request, a dropped reload), so O(batch) is fine."""
        ids = {id(v) for v in gone}
        if not any(id(r) in ids for r in out.reqs):
            return
        keep = [(r, q) for r, q in zip(out.reqs, out.num_tokens) if id(r) not in ids]
        m = self.model
        out.reqs = [r for r, _ in keep]
        out.num_tokens = [q for _, q in keep]
        out.duration = m.c0 + sum(m.seq_time(q, r.computed) for r, q in keep)
        out.decodes = sum(1 for r, q in keep if q == 1 and r.computed > 0)
        out.prefill_tokens = sum(q for r, q in keep) - out.decodes

    def _plan_copies(self, out: SchedulerOutput) -> None:
        """Charge this step's reloads (copy budget first) and schedule eager backups."""
        kv, mode, tm = self.kv, self.mode, self.transfer
        assert tm is not None
        # reloads still on device (one re-offloaded in the same step moved nothing), in the
        # order the policy took them: most valuable first
        rel = [r for r in kv.reloading if r.blocks > 0]
        kv.reloading.clear()
        if rel:
            blocks = sum(r.host_blocks for r in rel)
            out.blocks_in += blocks
            self.blocks_in += blocks
            for r in rel:
                if mode.eager_backup:
                    kv.keep_full_backup(r)  # a second eviction copies only what is new
                else:
                    kv.drop_host(r)
        self.blocks_out += out.blocks_out
        if mode.eager_backup and out.reqs:
            self._eager_backup(out)

    def _set_copy_budget(self, seconds: float) -> None:
        """The adaptive copy budget of a walk whose batch may take ``seconds``: the reloads that
        copy hides under (the authors' case 1, "E_min >= B": the blocks copyable within B)."""
        if self.transfer is not None and seconds < float("inf"):
            self._copy_cap = self.transfer.blocks_within(seconds)

    def _refresh(self, r: Request) -> None:
        """``r``'s computed tokens changed outside a step (policies that cache per-request
        predictions update them)."""

    def _trim_reload(self, r: Request, time_left: float = float("inf"),
                     first: bool = True) -> bool:
        """Copy budget (``full``): ``r`` is about to be reloaded from host. If its blocks fit
        what this step may still copy, it reloads them all. Otherwise (the authors'
        ``MixScheduler``) it reloads the leading blocks that fit and recomputes the rest in this
        step, which is only worth it if that recompute fits ``time_left``; if not, ``r`` is
        deferred (False: not scheduled this step, its KV untouched on host) unless it is the
        step's ``first`` item (a step must make progress)."""
        h = r.host_blocks
        left = self._copy_cap - self._copy_used
        if h <= left:
            self._copy_used += h
            return True
        k = max(left, 0)
        bs = self.kv.block_size
        new = min(r.computed, k * bs)
        pend = r.prompt_len + r.generated - new
        if not first and self.model.max_chunk(time_left, new, pend) < pend:
            return False
        self.recomputed_tokens += r.computed - new
        self.reload_trims += 1
        r.computed = new
        self.kv.host_free += h - k
        r.host_blocks = k
        self._copy_used += k
        self._refresh(r)
        return True

    def _eager_backup(self, out: SchedulerOutput) -> None:
        """Back up full blocks of this batch's lower-priority requests, lowest priority first,
        within the device->host link time the step leaves idle (see engine/offload.py)."""
        tm = self.transfer
        assert tm is not None
        spare = out.duration - tm.seconds(out.blocks_out)
        limit = tm.blocks_within(spare) if out.blocks_out == 0 else tm.blocks_within(
            spare + tm.s_per_copy)  # one batched copy: the overhead is paid once
        if limit <= 0 or self.kv.host_free <= 0:
            return
        top = min(r.priority for r in out.reqs)
        cands = [r for r in out.reqs if r.priority > top]
        if not cands:
            return
        cands.sort(key=lambda r: -r.priority)  # stable: the batch's tail first within a class
        done = 0
        for r in cands:
            done += self.kv.backup(r, limit - done)
            if done >= limit or self.kv.host_free <= 0:
                break
        out.backup_blocks += done
        self.backup_blocks += done

    def _add(self, out: SchedulerOutput, r: Request, q: int, cost: float) -> None:
        out.reqs.append(r)
        out.num_tokens.append(q)
        out.duration += cost
        if q == 1 and r.computed > 0:
            out.decodes += 1
        else:
            out.prefill_tokens += q
        r.status = Status.RUNNING

    def load(self, decode_rows: bool = False) -> EngineLoad:
        """What a router may know about this engine: its prefill queue and decode load.

        Prefill items are :class:`PrefillItem` s. ``decode_rows``: also list each decode's
        context and generated tokens (``EngineLoad.decode_ctx``/``decode_gen``), which only
        routers that play residents forward need (PolyServe's admission test); off by default
        because views are rebuilt on every routing decision.
        """
        prefill: list[PrefillItem] = []
        decodes = 0
        ctx = 0
        min_tpot = float("inf")
        dctx: list[int] = []
        dgen: list[int] = []
        for r in self.requests():
            pend = r.prompt_len + r.generated - r.computed
            if r.generated == 0 or pend > 1:
                prefill.append(PrefillItem(pend, r.computed, r.weight, r.arrival, r.ttft_slo,
                                           r.tpot_slo, r.generated))
            else:
                decodes += 1
                ctx += r.computed + 1
                if decode_rows:
                    dctx.append(r.computed + 1)
                    dgen.append(r.generated)
                if r.tpot_slo < min_tpot:
                    min_tpot = r.tpot_slo
        # free blocks include free-but-cached ones: they are evicted on demand
        return EngineLoad(prefill, decodes, ctx, self.kv.free, self.kv.total, self.num_received,
                          min_tpot, self.orders_by_value, dctx, dgen)

    def new_output(self) -> SchedulerOutput:
        return SchedulerOutput(duration=self.model.c0)

    def stats(self) -> dict[str, Any]:
        return {
            "policy": self.name,
            "kv_blocks": self.kv.total,
            "kv_usage": self.kv.usage,
            "preemptions": self.num_preemptions,
            "finished": self.num_finished,
            "prefix_caching": self.kv.caching,
            "prefix_hit_tokens": self.kv.hit_tokens,
            "prefix_evictions": self.kv.evictions,
            **self.preemption_stats(),
        }

    def preemption_stats(self) -> dict[str, Any]:
        """Preemptions by mode and KV moved (blocks each way, copy wait), for results JSON."""
        return {
            "preemption_mode": self.mode.name,
            "preemptions_offload": self.preempt_offload,
            "preemptions_recompute": self.preempt_recompute,
            "recomputed_tokens": self.recomputed_tokens,
            "blocks_offloaded": self.blocks_out,
            "blocks_reloaded": self.blocks_in,
            "blocks_backed_up": self.backup_blocks,
            "reloads_trimmed": self.reload_trims,
            "copy_wait_s": self.copy_wait_s,
            "host_kv_blocks": self.kv.host_total,
        }


# ---------------------------------------------------------------------- registry
# Built-in policies register themselves when the package is imported (engine/__init__.py imports
# engine/policies.py after this module): a base module never knows its subclasses.
POLICIES: Registry[BaseScheduler] = Registry("policy")
PolicySpec = Spec


def register_policy(name: str, cls: type[BaseScheduler], summary: str, **defaults: Any) -> None:
    """Register a scheduler class (with default keyword arguments) under a policy name."""
    POLICIES.register(name, cls, summary, **defaults)


def policy_names() -> list[str]:
    return POLICIES.names()


def policy_spec(name: str) -> Spec[BaseScheduler]:
    return POLICIES.spec(name)


def make_scheduler(name: str, model: LatencyModel, **params: Any) -> BaseScheduler:
    """Build a registered policy; ``params`` override its defaults (unknown ones are an error).

    The token and sequence caps default to vLLM's own for the profile's device
    (:func:`vllm_batch_defaults`) unless the policy's registration (e.g. Sarathi's fixed 2048
    budget) or ``params`` set them.
    """
    tokens, seqs, _ = vllm_batch_defaults(model)
    spec = policy_spec(name)
    caps = {k: v for k, v in (("max_num_batched_tokens", tokens), ("max_num_seqs", seqs))
            if k not in spec.defaults and k not in params}
    return POLICIES.make(name, model, **caps, **params)
