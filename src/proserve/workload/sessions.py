"""Multi-turn sessions over a trace without prefix ids: each turn's prompt is its history.

Chat traffic resends the conversation so far with every turn; that history is what prefix caching
saves. Length-only and timestamped traces (ShareGPT, Azure, BurstGPT) carry no conversation
structure, so :func:`multi_turn` imposes one, keeping the trace's arrival times and its lengths as
each turn's *new* message and reply:

* the requests are dealt, in arrival order, into ``ceil(n / turns)`` sessions round-robin:
  request ``i`` is turn ``i // S`` of session ``i % S``, so consecutive turns of one session are
  ``S`` arrivals apart (a user reads the reply before writing again);
* turn k's prompt = turn k-1's prompt + turn k-1's reply + the trace's prompt length for this
  request (the new message); its reply is the trace's output length;
* prefix identity: the prompt is cut into ``chunk``-token pieces; a piece wholly inside the
  previous turn's prompt keeps that turn's id (the same tokens), every other piece gets a fresh
  id, so ids are prefix-chained as :class:`~proserve.core.request.Prefix` requires. Generated
  tokens are not keyed: engines here cache prompt blocks only (vLLM also caches the blocks of its
  own output, which the next turn resends; this understates hits by at most one reply);
* with ``max_model_len``, a turn whose prompt + reply would not fit starts a new conversation in
  that session (its history is dropped).

``chunk`` (default 64 tokens, four engine blocks) trades key memory (one id per chunk per request)
against granularity (a history's last partial chunk is not reused).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from .traces import Trace, _object_column

DEFAULT_CHUNK = 64


def multi_turn(trace: Trace, turns: int, *, max_model_len: int | None = None,
               chunk: int = DEFAULT_CHUNK) -> Trace:
    """``trace`` as ``turns``-turn sessions (module docstring); arrivals and order unchanged."""
    if turns < 1:
        raise ValueError(f"turns must be >= 1, got {turns}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if trace.prefix_ids is not None:
        raise ValueError(f"trace {trace.name!r} carries its own prefix ids (hash_ids): "
                         "multi-turn sessions would contradict them")
    n = len(trace)
    sessions = max(math.ceil(n / turns), 1)
    fresh = itertools.count(1)
    hist_len = [0] * sessions  # previous prompt + reply
    prev_prompt = [0] * sessions  # previous prompt's length
    prev_ids: list[tuple] = [()] * sessions
    prompt = np.empty(n, dtype=np.int64)
    ids_col: list[tuple] = []
    resets = 0
    for i in range(n):
        s = i % sessions
        new, out = int(trace.prompt_len[i]), int(trace.output_len[i])
        p = hist_len[s] + new
        if max_model_len is not None and hist_len[s] and p + out > max_model_len:
            resets += 1  # a new conversation in this session
            hist_len[s] = prev_prompt[s] = 0
            prev_ids[s] = ()
            p = new
        keep = min(prev_prompt[s] // chunk, len(prev_ids[s]))
        ids = prev_ids[s][:keep] + tuple(next(fresh) for _ in range(-(-p // chunk) - keep))
        prompt[i] = p
        ids_col.append(ids)
        prev_ids[s], prev_prompt[s], hist_len[s] = ids, p, p + out
    meta = {**trace.meta, "multi_turn": {"turns": turns, "sessions": sessions, "chunk": chunk,
                                         "history_resets": resets}}
    return Trace(trace.arrival.copy(), prompt, trace.output_len.copy(), trace.tenant,
                 name=trace.name, has_timestamps=trace.has_timestamps, meta=meta,
                 prefix_ids=_object_column(ids_col), prefix_block=chunk)
