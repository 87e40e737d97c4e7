"""How long a simulated step really takes: the *truth* latency, which policies do not see.

Policies and routers plan with their own latency model (``--profile``); a real engine's step then
takes what the hardware takes. :class:`StepTimer` makes the simulator do the same: the step's time
is the truth model's prediction for the batch the policy formed (``--truth-profile``; by default
the planning model) times seeded multiplicative noise (``--latency-noise CV``: a gamma factor
with mean 1 and coefficient of variation CV, always positive). The ProServe paper reports ~4.5%
mean error for its fitted model; our measured profiles show 2.4-6.7% held-out (docs/BENCHMARKS.md
section 10), hence the default CV of 0.05.

Determinism: each instance has its own generator seeded from (seed, instance), and draws once per
step of that instance; an instance's steps happen in a fixed order, so the factors do not depend
on how the event loop interleaves instances.
"""

from __future__ import annotations

import numpy as np

from ..engine.base import SchedulerOutput
from ..latency.model import LatencyModel

DEFAULT_LATENCY_NOISE = 0.05
_CHUNK = 4096  # factors drawn per generator call (a numpy call per step costs more than a step)


class StepTimer:
    """``timer(instance, out) -> seconds``: the truth duration of a formed batch."""

    def __init__(self, plan: LatencyModel, truth: LatencyModel | None = None,
                 noise_cv: float = 0.0, seed: int = 0) -> None:
        if noise_cv < 0 or noise_cv > 1:
            raise ValueError("latency noise CV must be in [0, 1]")
        self.plan = plan
        same = truth is None or truth.coeffs() == plan.coeffs()
        self.truth = None if same else truth
        self.cv = float(noise_cv)
        self.seed = int(seed)
        self._rngs: dict[int, np.random.Generator] = {}
        self._buf: dict[int, list[float]] = {}

    @property
    def identity(self) -> bool:
        """True when steps take exactly the planned time (no noise, truth = plan)."""
        return self.truth is None and self.cv == 0

    def _factor(self, k: int) -> float:
        buf = self._buf.get(k)
        if not buf:
            rng = self._rngs.get(k)
            if rng is None:
                rng = self._rngs[k] = np.random.default_rng([self.seed, 0x5EED, k])
            shape = 1.0 / (self.cv * self.cv)
            # reversed so pop() serves them in draw order
            buf = self._buf[k] = rng.gamma(shape, 1.0 / shape, _CHUNK).tolist()[::-1]
        return buf.pop()

    def __call__(self, k: int, out: SchedulerOutput) -> float:
        if self.truth is None:
            t = out.duration
        else:  # before update_from_output: r.computed is still the step's starting context
            m = self.truth
            t = m.c0 + sum(m.seq_time(q, r.computed) for r, q in zip(out.reqs, out.num_tokens))
        if self.cv > 0:
            t *= self._factor(k)
        return t
