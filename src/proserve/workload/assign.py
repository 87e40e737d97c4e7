"""Turn a :class:`Trace` into :class:`~proserve.core.request.Request` objects.

This is where priority classes meet requests: each request gets a class (drawn by the class
shares at its position in the trace, or fixed by its tenant), the class's weight and rank, and
SLOs resolved against the latency model's *unloaded* latency for that request's own lengths.
Relative SLOs must be resolved here, per request, because "5x the unloaded TTFT" of a 100-token
prompt and of a 30k-token prompt differ by two orders of magnitude.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from proserve.core.classes import PriorityClass, SpecError, tpot_context
from proserve.core.request import Prefix, Request
from proserve.latency.model import LatencyModel
from proserve.workload.traces import Trace


def share_matrix(classes: Sequence[PriorityClass], frac: np.ndarray) -> np.ndarray:
    """Normalised class probabilities, shape ``(len(frac), len(classes))``.

    Vectorised :meth:`PriorityClass.share_at` (piecewise linear over evenly spaced points). Where
    every class's share is 0 the classes are drawn uniformly, rather than failing mid-trace.
    """
    frac = np.clip(np.asarray(frac, dtype=np.float64), 0.0, 1.0)
    cols = []
    for c in classes:
        s = np.asarray(c.share, dtype=np.float64)
        cols.append(np.full(frac.shape, s[0]) if s.size == 1
                    else np.interp(frac, np.linspace(0.0, 1.0, s.size), s))
    m = np.stack(cols, axis=-1) if cols else np.zeros((frac.size, 0))
    tot = m.sum(axis=-1, keepdims=True)
    return np.where(tot > 0, m / np.where(tot > 0, tot, 1.0), 1.0 / max(len(classes), 1))


def relative_position(arrival: np.ndarray) -> np.ndarray:
    """Each request's position in ``[0, 1]`` of the trace: by time, or by index if the trace
    has no time extent (a single instant)."""
    n = arrival.size
    span = float(arrival[-1] - arrival[0]) if n else 0.0
    if span > 0:
        return (arrival - arrival[0]) / span
    return np.arange(n) / max(n - 1, 1)


def tenant_rule(
    trace: Trace, classes: Sequence[PriorityClass], rule: str
) -> dict[str, str]:
    """Map tenants to classes by a named rule, heaviest tenants to the most important class.

    * ``"volume"``: tenants sorted by request count (descending) fill the classes in rank order,
      each class taking tenants until its cumulative request fraction reaches the class's mean
      share (shares normalised). A class is never left empty while tenants remain to give.
    * ``"top:F"``: the top fraction ``F`` of tenants by request count (at least one) go to the
      first class, all others to the last.
    """
    if trace.tenant is None:
        raise ValueError(f"trace {trace.name!r} has no tenants; a tenant rule needs them")
    names, counts = np.unique(trace.tenant, return_counts=True)
    order = np.lexsort((names, -counts))  # heaviest first, name breaks ties
    names, counts = names[order], counts[order]
    if rule.startswith("top:"):
        try:
            f = float(rule[4:])
        except ValueError:
            raise SpecError(f"bad tenant rule {rule!r}: expected e.g. 'top:0.2'") from None
        if not 0 < f <= 1:
            raise SpecError(f"bad tenant rule {rule!r}: fraction must be in (0, 1]")
        k = max(1, int(round(f * names.size)))
        return {str(t): (classes[0].name if i < k else classes[-1].name)
                for i, t in enumerate(names)}
    if rule != "volume":
        raise SpecError(f"unknown tenant rule {rule!r}: use 'volume' or 'top:F'")
    share = np.array([float(np.mean(c.share)) for c in classes])
    share = share / share.sum() if share.sum() > 0 else np.full(len(classes), 1 / len(classes))
    target = np.cumsum(share) * counts.sum()
    out: dict[str, str] = {}
    done, k, in_k = 0, 0, 0
    for i, (t, cnt) in enumerate(zip(names, counts, strict=True)):
        left = names.size - i  # tenants still to place, this one included
        # move on once the class has a tenant and its quota is met, or when the remaining
        # tenants are only just enough to give every later class one
        if k < len(classes) - 1 and in_k > 0 and (
            done >= target[k] - 1e-9 or left <= len(classes) - 1 - k
        ):
            k, in_k = k + 1, 0
        out[str(t)] = classes[k].name
        done += int(cnt)
        in_k += 1
    return out


def clamp_lengths(
    prompt: np.ndarray, output: np.ndarray, max_model_len: int | None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Fit ``prompt + output`` into ``max_model_len`` by truncating the prompt (the usual way a
    serving front end handles over-long context); if the output alone does not fit, keep a
    1-token prompt and cut the output too. Returns the new arrays and how many rows changed."""
    if max_model_len is None:
        return prompt, output, 0
    if max_model_len < 2:
        raise ValueError(f"max_model_len must be >= 2, got {max_model_len}")
    over = prompt + output > max_model_len
    out = np.minimum(output, max_model_len - 1)
    p = np.where(over, np.maximum(max_model_len - out, 1), prompt)
    return p, out, int(over.sum())


def build_requests(
    trace: Trace, classes: Sequence[PriorityClass], model: LatencyModel,
    rng: np.random.Generator, id_offset: int = 0, *,
    tenant_classes: Mapping[str, str] | str | None = None, max_model_len: int | None = None,
    stats: dict[str, Any] | None = None, shared_prefix_tokens: int = 0,
) -> list[Request]:
    """Build requests from a timestamped trace, sorted by arrival with ids ``id_offset + i``.

    Class assignment: by default each request is drawn independently with probability equal to
    the normalised class shares at its relative time in the trace. With ``tenant_classes`` (a
    ``{tenant: class}`` mapping or a :func:`tenant_rule` name) tenants are pinned to classes;
    tenants absent from a mapping fall back to the share draw. SLOs:
    ``ttft = cls.ttft.resolve(unloaded_ttft(prompt))``,
    ``tpot = cls.tpot.resolve(unloaded_tpot(prompt + output // 2))`` (the mean context of the
    decode phase). ``stats``, if given, receives class counts and the number of length clamps.

    Prefix identity (for prefix caching): a trace with ``prefix_ids`` (Mooncake's ``hash_ids``)
    gives each request a :class:`Prefix` of its own ids. Otherwise ``shared_prefix_tokens = S``
    gives every request of a tenant (its class, when the trace has no tenants) the same
    S-token system prompt at the start of its prompt: the prompt's length is unchanged (a
    system prompt is part of what the trace counts), its first ``min(S, prompt_len)`` tokens
    are that tenant's system prompt and the rest is unique. All requests of a tenant share one
    ``Prefix(("system:<tenant>",), S)`` object.
    """
    if not classes:
        raise ValueError("need at least one priority class")
    if shared_prefix_tokens < 0:
        raise ValueError(f"shared_prefix_tokens must be >= 0, got {shared_prefix_tokens}")
    if shared_prefix_tokens and trace.prefix_ids is not None:
        raise ValueError(f"trace {trace.name!r} carries its own prefix ids (hash_ids): "
                         "a shared system prompt would contradict them")
    n = len(trace)
    by_name = {c.name: i for i, c in enumerate(classes)}
    u = rng.random(n)  # always drawn, so tenant pinning does not shift later random streams
    probs = share_matrix(classes, relative_position(trace.arrival))
    cls_idx = np.minimum((u[:, None] >= np.cumsum(probs, axis=1)).sum(axis=1), len(classes) - 1)
    pinned = 0
    pinned_mask = np.zeros(n, dtype=bool)
    if tenant_classes is not None:
        mapping = (tenant_rule(trace, classes, tenant_classes)
                   if isinstance(tenant_classes, str) else dict(tenant_classes))
        bad = sorted({v for v in mapping.values() if v not in by_name})
        if bad:
            raise SpecError(f"tenant_classes names unknown class(es) {bad}; "
                            f"classes are {list(by_name)}")
        if trace.tenant is None:
            raise ValueError(f"trace {trace.name!r} has no tenants to map to classes")
        for tenant, cname in mapping.items():
            sel = trace.tenant == tenant
            cls_idx[sel] = by_name[cname]
            pinned_mask |= sel
            pinned += int(sel.sum())

    prompt, output, clamps = clamp_lengths(trace.prompt_len, trace.output_len, max_model_len)
    # unloaded latencies are per distinct length: far fewer calls than requests
    up, inv_p = np.unique(prompt, return_inverse=True)
    ttft0 = np.array([model.unloaded_ttft(int(q)) for q in up])[inv_p]
    ctx = tpot_context(prompt, output)  # works elementwise on arrays
    uc, inv_c = np.unique(ctx, return_inverse=True)
    tpot0 = np.array([model.unloaded_tpot(int(c)) for c in uc])[inv_c]

    redrawn, unattainable = redraw_unattainable(classes, cls_idx, probs, u, ttft0, tpot0,
                                                ~pinned_mask)

    tenants = trace.tenant
    ids_col, id_block = trace.prefix_ids, trace.prefix_block
    shared: dict[str, Prefix] = {}
    out: list[Request] = []
    for i in range(n):
        c = classes[int(cls_idx[i])]
        tenant = str(tenants[i]) if tenants is not None else c.name
        prefix: Prefix | None = None
        if ids_col is not None:
            ids = ids_col[i]
            prefix = Prefix(ids, id_block) if ids else None
        elif shared_prefix_tokens:
            prefix = shared.get(tenant)
            if prefix is None:
                prefix = shared[tenant] = Prefix((f"system:{tenant}",), shared_prefix_tokens)
        out.append(Request(
            id=id_offset + i,
            arrival=float(trace.arrival[i]),
            prompt_len=int(prompt[i]),
            output_len=int(output[i]),
            ttft_slo=c.ttft.resolve(float(ttft0[i])),
            tpot_slo=c.tpot.resolve(float(tpot0[i])),
            weight=c.weight,
            priority=c.rank,
            cls=c.name,
            tenant=tenant,
            prefix=prefix,
        ))
    if stats is not None:
        counts = np.bincount(cls_idx, minlength=len(classes))
        stats["class_counts"] = {c.name: int(k) for c, k in zip(classes, counts, strict=True)}
        stats["max_model_len_clamps"] = clamps
        stats["tenant_pinned"] = pinned
        stats["slo_redrawn"] = redrawn
        stats["slo_unattainable"] = unattainable
    return out


def redraw_unattainable(classes: Sequence[PriorityClass], cls_idx: np.ndarray,
                        probs: np.ndarray, u: np.ndarray, ttft0: np.ndarray,
                        tpot0: np.ndarray, movable: np.ndarray) -> tuple[int, int]:
    """Give a request a class only if an idle instance could meet its SLOs (PolyServe's rule):
    a request whose drawn class has an absolute TTFT or TPOT SLO under its own unloaded latency
    is re-drawn among the classes it can attain, by their shares, reusing its uniform draw ``u``
    (so no other random stream shifts). Relative SLOs (``5x``) are always attainable. A request
    no class can serve keeps its draw, and so does one pinned to its class by its tenant
    (``movable`` False). Changes ``cls_idx`` in place; returns (re-drawn, left unattainable)."""
    n, k = cls_idx.size, len(classes)
    if n == 0 or all(c.ttft.relative and c.tpot.relative for c in classes):
        return 0, 0
    ok = np.empty((n, k), dtype=bool)
    for j, c in enumerate(classes):
        ttft = np.maximum(c.ttft.value * ttft0, c.ttft.floor) if c.ttft.relative else c.ttft.value
        tpot = np.maximum(c.tpot.value * tpot0, c.tpot.floor) if c.tpot.relative else c.tpot.value
        ok[:, j] = (ttft0 <= ttft) & (tpot0 <= tpot)
    bad = ~ok[np.arange(n), cls_idx]
    fixable = bad & ok.any(axis=1) & movable
    if fixable.any():
        p = np.where(ok[fixable], probs[fixable], 0.0)
        tot = p.sum(axis=1, keepdims=True)
        # classes with share 0 everywhere possible: fall back to uniform over the attainable
        p = np.where(tot > 0, p / np.where(tot > 0, tot, 1.0), ok[fixable] / ok[fixable].sum(
            axis=1, keepdims=True))
        cls_idx[fixable] = np.minimum((u[fixable, None] >= np.cumsum(p, axis=1)).sum(axis=1),
                                      k - 1)
        # a rounding edge may land on an unattainable column: take the first attainable one
        still = ~ok[np.flatnonzero(fixable), cls_idx[fixable]]
        if still.any():
            rows = np.flatnonzero(fixable)[still]
            cls_idx[rows] = np.argmax(ok[rows], axis=1)
    return int(fixable.sum()), int((bad & ~fixable).sum())
