"""The measurement grid, the backend protocol and the fit-and-report step of ``proserve profile``.

Every backend (a PyTorch model with random weights, a running vLLM server, vLLM's offline
``LLM``) answers the same two questions: how long does one iteration take that prefills ``q``
new tokens of one sequence on ``p`` cached tokens, and how long does one decode iteration of
``batch`` sequences at context ``L`` take. The grid asks them on shapes spread geometrically
(x1.5 steps, so held-out points fall *between* training points rather than on them), the
answers become :class:`ProfilePoint` rows, and the same NNLS fit as the shipped profiles turns
them into a :class:`LatencyModel`. Held-out points are chosen per kind, so the fit always has
both prefill and decode rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..latency.model import LatencyModel, ProfilePoint, fit_error


class ProfileBackend(Protocol):
    """Something that can run one iteration of a given shape and say how long it took."""

    #: One line for the profile's provenance: what was measured, where.
    description: str

    def time_prefill(self, q: int, p: int) -> float:
        """Seconds for one iteration prefilling ``q`` new tokens on ``p`` cached tokens."""

    def time_decode(self, batch: int, context: int) -> float:
        """Seconds for one decode iteration of ``batch`` sequences at context ``context``."""

    def kv_capacity(self) -> tuple[int, int]:
        """``(kv_blocks, block_size)`` of the profiled deployment."""

    def close(self) -> None:
        """Release the model or connections."""


def random_tokens(rng: np.random.Generator, n: int) -> list[int]:
    """``n`` random token ids in [10, 1000): valid in any vocabulary of 1,000+ tokens, and
    different per request, so an engine's prefix cache serves nothing by accident."""
    return rng.integers(10, 1000, n).tolist()


def decode_prompt_len(context: int, new_tokens: int) -> int:
    """Prompt length that puts a decode run of ``new_tokens`` steps at mean context ``context``."""
    return max(context - new_tokens // 2, 1)


def _geometric(lo: int, hi: int, step: float = 1.5) -> list[int]:
    """Integers from ``lo`` to ``hi`` (both included) growing by ``step``, deduplicated."""
    out: list[int] = []
    x = float(lo)
    while x < hi:
        v = int(round(x))
        if not out or v > out[-1]:
            out.append(v)
        x *= step
    if not out or out[-1] != hi:
        out.append(hi)
    return out


@dataclass(frozen=True, slots=True)
class ProfileGrid:
    """Which shapes to measure.

    ``max_len`` bounds prompt + cached context (the server's ``--max-model-len``), ``max_chunk``
    the tokens of one prefill iteration (``--max-num-batched-tokens``: a longer prompt would be
    chunked into several iterations), ``max_batch`` the decode batch (``--max-num-seqs``).
    """

    max_len: int = 4096
    max_chunk: int = 2048
    max_batch: int = 64
    min_q: int = 16
    cached_prefill: bool = True  # False: prefills on an empty cache only (p = 0)

    def __post_init__(self) -> None:
        if self.max_len < 64 or self.max_chunk < self.min_q or self.max_batch < 1:
            raise ValueError("profile grid needs max_len >= 64, max_chunk >= 16, max_batch >= 1")

    def prefill_shapes(self) -> list[tuple[int, int]]:
        """(q, p): chunk sizes x cached prefixes (0 and three fractions of max_len)."""
        hi = min(self.max_chunk, self.max_len)
        qs = _geometric(max(1, min(self.min_q, hi // 4)), hi)  # >= 4 chunk sizes, even tiny
        ps = sorted({0, self.max_len // 8, self.max_len // 4, self.max_len // 2})
        if not self.cached_prefill:
            ps = [0]
        return [(q, p) for p in ps for q in qs if q + p <= self.max_len]

    def decode_shapes(self) -> list[tuple[int, int]]:
        """(batch, context): batch sizes x contexts from 32 tokens to most of max_len."""
        bs = _geometric(1, self.max_batch, 2.0 if self.max_batch > 64 else 1.5)
        ctx = _geometric(min(32, self.max_len // 8), self.max_len * 3 // 4, 2.0)
        return [(b, c) for b in bs for c in ctx]

    def size(self) -> int:
        return len(self.prefill_shapes()) + len(self.decode_shapes())


def measure(backend: ProfileBackend, grid: ProfileGrid,
            progress: Callable[[int, int, str], None] | None = None) -> list[ProfilePoint]:
    """Measure every grid shape once through ``backend`` (it repeats and takes medians itself).

    A backend whose cache works in blocks (``prefix_align``) gets cached prefixes rounded down
    to whole blocks, and the point records the prefix actually measured.
    """
    align = max(int(getattr(backend, "prefix_align", 1)), 1)
    pre = dict.fromkeys((q, p // align * align) for q, p in grid.prefill_shapes())
    shapes = [("prefill", q, p) for q, p in pre]
    shapes += [("decode", b, c) for b, c in grid.decode_shapes()]
    out: list[ProfilePoint] = []
    for i, (kind, a, b) in enumerate(shapes):
        if kind == "prefill":
            secs = backend.time_prefill(a, b)
            pt = ProfilePoint("prefill", q=a, p=b, batch=1, seconds=secs)
        else:
            secs = backend.time_decode(a, b)
            pt = ProfilePoint("decode", q=1, p=b, batch=a, seconds=secs)
        if not (math.isfinite(secs) and secs > 0):
            raise RuntimeError(f"{kind} {a}x{b}: backend returned a non-positive time {secs!r}")
        out.append(pt)
        if progress:
            progress(i + 1, len(shapes), f"{kind} {a}x{b}")
    return out


@dataclass(slots=True)
class FitReport:
    model: LatencyModel
    train: list[ProfilePoint]
    test: list[ProfilePoint]
    err_train: dict[str, float]
    err_test: dict[str, float]


def split_holdout(points: Sequence[ProfilePoint], holdout: float,
                  seed: int) -> tuple[list[ProfilePoint], list[ProfilePoint]]:
    """Hold out ``holdout`` of each kind's points, at random (seeded), never the whole kind."""
    if not 0 <= holdout < 1:
        raise ValueError("holdout must be in [0, 1)")
    rng = np.random.default_rng(seed)
    train: list[ProfilePoint] = []
    test: list[ProfilePoint] = []
    for kind, keep in (("prefill", 5), ("decode", 3)):
        pts = [p for p in points if p.kind == kind]
        n_test = min(int(round(holdout * len(pts))), max(len(pts) - keep, 0))
        idx = set(rng.permutation(len(pts))[:n_test].tolist())
        for i, p in enumerate(pts):
            (test if i in idx else train).append(p)
    return train, test


def fit_report(points: Sequence[ProfilePoint], *, holdout: float, seed: int, kv_blocks: int,
               block_size: int, name: str, prefill_overhead: bool = True) -> FitReport:
    """Fit on the training split; report mean and p90 absolute % error on both splits.

    With ``holdout == 0`` the held-out error is the training error (and says so by ``n``).
    """
    train, test = split_holdout(points, holdout, seed)
    model = LatencyModel.fit(train, kv_blocks=kv_blocks, block_size=block_size, name=name,
                             prefill_overhead=prefill_overhead)
    err_train = fit_error(model, train)
    err_test = fit_error(model, test) if test else err_train
    model.meta["fit_error"] = {"held_out": err_test, "train": err_train}
    return FitReport(model, train, test, err_train, err_test)
