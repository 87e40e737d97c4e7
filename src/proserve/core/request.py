"""The request: the one hot object shared by every layer.

A request is a slots dataclass rather than a dict or pydantic model because the engine touches it
on every iteration (millions of times in an hour-long simulation); slots make attribute access
cheap and keep memory for a 19k-request trace small.

Token accounting follows vLLM v1: a request has ``prompt_len + generated`` tokens, of which
``computed`` have KV. A step schedules some of the *pending* tokens (``num_tokens - computed``);
when a step makes every token computed, the engine samples one new output token. A fresh request
therefore prefills its prompt and emits token 1; afterwards each decode step computes one pending
token and emits the next. Recompute preemption sets ``computed`` back to 0, so a resumed request
prefills prompt + generated tokens before it emits its next token, exactly as vLLM does.

Prefix identity (for prefix caching, :mod:`proserve.engine.kv`): ``prefix`` is an optional
:class:`Prefix`, the prompt's chain of prefix-chained block ids (Mooncake's ``hash_ids``, or a
shared system prompt's id). Equal ids at the same position imply equal prompt tokens up to the end
of that chunk, so an engine derives a cache key per engine block without per-token data.

Metrics are kept online as counters (first-token time, last-token time, tokens on time), so no
per-token Python objects exist unless a caller asks for token traces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any


@dataclass(frozen=True, slots=True)
class Prefix:
    """A prompt's identity for prefix caching: prefix-chained ids of ``block``-token chunks.

    ``ids[i]`` names chunk ``i`` (tokens ``[i * block, (i + 1) * block)``) *and* everything
    before it, as Mooncake's ``hash_ids`` do (each id is a hash of its parent id and its chunk's
    tokens, block 512). So two prompts whose chunk ``i`` has the same id share their first
    ``(i + 1) * block`` tokens (or, for a last partial chunk, the same tokens up to the prompt's
    end, since the id hashes the chunk's content). ``ids`` may cover only a leading part of the
    prompt (e.g. a shared system prompt); the rest has no identity and is never shared.

    An engine with block size ``bs`` keys its block ``j`` (tokens ``[j * bs, (j + 1) * bs)``)
    as ``(ids[((j + 1) * bs - 1) // block], j)``: the id of the chunk holding the block's last
    token, which by the chaining covers the whole block and all before it, plus ``j`` to tell
    apart the engine blocks inside one chunk (:func:`block_keys`). Block ``j`` has a key only
    if it is a full prompt block and that chunk has an id. One object can be shared by many
    requests (every request of a class with the same system prompt).
    """

    ids: tuple
    block: int

    def __post_init__(self) -> None:
        if self.block <= 0:
            raise ValueError("Prefix.block must be positive")

    def num_keyed(self, prompt_len: int, bs: int) -> int:
        """How many leading engine blocks of size ``bs`` of a ``prompt_len`` prompt have keys."""
        return min(prompt_len, len(self.ids) * self.block) // bs

    def key(self, j: int, bs: int) -> tuple:
        """Cache key of engine block ``j`` (block size ``bs``); see the class docstring."""
        return (self.ids[((j + 1) * bs - 1) // self.block], j)


def block_keys(prefix: Prefix, prompt_len: int, bs: int) -> list[tuple]:
    """The cache keys of a prompt's keyed engine blocks, in order."""
    ids, blk = prefix.ids, prefix.block
    return [(ids[((j + 1) * bs - 1) // blk], j) for j in range(prefix.num_keyed(prompt_len, bs))]


class Status(IntEnum):
    """Life cycle of a request inside one engine (or the simulator around it)."""

    WAITING = 0  # queued, holds no KV
    RUNNING = 1  # admitted, may hold KV
    FINISHED = 2  # emitted all output tokens
    REJECTED = 3  # can never be served (e.g. prompt larger than the whole KV cache)
    UNFINISHED = 4  # still in the system when the simulation's drain time ran out


@dataclass(slots=True, eq=False)
class Request:
    """One inference request with its priority class, weight, SLOs and online metrics.

    Identity semantics (``eq=False``): two requests are the same only if they are the same object,
    which is what queues and sets of requests need.
    """

    id: int
    arrival: float  # seconds
    prompt_len: int
    output_len: int
    ttft_slo: float  # seconds, measured from arrival
    tpot_slo: float  # seconds per output token after the first
    weight: float = 1.0  # priority weight w(r): the request's business value
    priority: int = 0  # class rank, 0 = most important (vLLM convention: lower = more urgent)
    cls: str = "default"  # priority class name, for per-class metrics
    tenant: str = "default"
    prefix: Prefix | None = None  # prompt identity for prefix caching (None: nothing shared)

    # --- engine state (mutated by the engine scheduler) ---
    status: Status = Status.WAITING
    computed: int = 0  # tokens whose KV is computed
    generated: int = 0  # output tokens emitted so far
    blocks: int = 0  # KV blocks held (its block table's length, shared blocks included)
    cached_blocks: int = 0  # leading blocks of the table that are prefix-cache entries (shared)
    # KV blocks of this request held in host memory (engine/offload.py): while it runs, backup
    # copies of its leading full blocks (eager backup); while it waits after an offload
    # preemption, its whole KV (``computed`` tokens), reloaded when it is scheduled again
    host_blocks: int = 0
    preemptions: int = 0
    instance: int = -1  # which engine instance serves it (set by the cluster)
    # Disaggregated serving: on a prefill instance the request ends its stay there when its first
    # token is out (the KV then moves to a decode instance).
    prefill_only: bool = False

    # --- online metrics ---
    first_token_time: float = -1.0
    last_token_time: float = -1.0
    finish_time: float = -1.0
    first_on_time: bool = False  # token 1 met its deadline (TTFT SLO)
    decode_on_time: int = 0  # tokens i > 1 that met deadline TTFT_SLO + (i - 1) * TPOT_SLO
    # prompt tokens found in the prefix cache when the request was first scheduled (its
    # prefill skipped them); recompute hits after a preemption are not counted here
    cached_tokens: int = 0
    token_times: list[float] | None = field(default=None, repr=False)  # opt-in trace
    # the host engine's own object for this request (the vLLM plug-in's vLLM Request), so the
    # order our ranker returns maps back to it without a lookup; proserve's engine never reads it
    handle: Any = field(default=None, repr=False)

    # ------------------------------------------------------------------ derived state
    @property
    def num_tokens(self) -> int:
        """Tokens the request currently has (prompt + emitted output)."""
        return self.prompt_len + self.generated

    @property
    def pending(self) -> int:
        """Tokens that still need KV before the next output token can be sampled."""
        return self.prompt_len + self.generated - self.computed

    @property
    def in_prefill(self) -> bool:
        """True while the next step would be a (possibly chunked or recomputed) prefill."""
        return self.generated == 0 or self.prompt_len + self.generated - self.computed > 1

    @property
    def done(self) -> bool:
        return self.status >= Status.FINISHED

    def next_deadline(self) -> float:
        """Absolute time by which the next output token must be out (strict TDG form)."""
        return self.arrival + self.ttft_slo + self.generated * self.tpot_slo

    # ------------------------------------------------------------------ events
    def emit_token(self, t: float) -> None:
        """Record one output token produced at time ``t`` and update the online metrics."""
        self.generated += 1
        i = self.generated
        if i == 1:
            self.first_token_time = t
            self.first_on_time = t - self.arrival < self.ttft_slo
        elif t - self.arrival < self.ttft_slo + (i - 1) * self.tpot_slo:
            self.decode_on_time += 1
        self.last_token_time = t
        if self.token_times is not None:
            self.token_times.append(t)

    def reset_metrics(self) -> None:
        """Forget all engine state and metrics (used when a workload is replayed)."""
        self.status = Status.WAITING
        self.computed = self.generated = self.blocks = self.preemptions = 0
        self.cached_blocks = self.cached_tokens = self.host_blocks = 0
        self.instance = -1
        self.first_token_time = self.last_token_time = self.finish_time = -1.0
        self.first_on_time = False
        self.decode_on_time = 0
        if self.token_times is not None:
            self.token_times = []

    # ------------------------------------------------------------------ metrics
    def ttft(self) -> float:
        return self.first_token_time - self.arrival if self.generated else float("nan")

    def tpot(self) -> float:
        """Mean time per output token after the first: (t_last - t_first) / (n_out - 1)."""
        if self.generated < 2:
            return float("nan")
        return (self.last_token_time - self.first_token_time) / (self.generated - 1)

    def e2e(self) -> float:
        return self.finish_time - self.arrival if self.status == Status.FINISHED else float("nan")

    def slo_met(self) -> bool:
        """Request-level SLO: finished, TTFT < TTFT SLO and mean TPOT < TPOT SLO."""
        if self.status != Status.FINISHED:
            return False
        if not self.first_token_time - self.arrival < self.ttft_slo:
            return False
        return self.generated < 2 or self.tpot() < self.tpot_slo

    def gain(self, w_p: float = 1.0, w_d: float = 1.0) -> float:
        """Token-level deadline-aware gain (TDG) earned so far."""
        return self.weight * (w_p * self.first_on_time + w_d * self.decode_on_time)

    def max_gain(self, w_p: float = 1.0, w_d: float = 1.0) -> float:
        """Gain if every output token met its deadline."""
        return self.weight * (w_p + w_d * max(self.output_len - 1, 0))
