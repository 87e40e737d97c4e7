"""Admission: serve a request now, let it wait for capacity, or refuse it (429).

One decision, used by the gateway (wall-clock time, real backends) and by the simulator
(``proserve simulate --admission``), so both decide the same way for the same state:

* **on time**: the request's predicted first token on the instance the router chose
  (:func:`proserve.cluster.view.predicted_ttft`) lands before its TTFT SLO -> admit. For a
  class with a ``yield_share`` the prediction is first stretched by ``1 / (1 - yield_share)``
  (below);
* **late, sheddable class** -> refuse at once (``capacity_shed``, 429 + Retry-After): the caller
  would rather retry elsewhere or later than wait;
* **late, no queue timeout** (``queue_timeout_s = 0``, not sheddable) -> admit late: nothing to
  wait for;
* **late, waited less than the class's ``queue_timeout_s``** -> wait, and ask again when capacity
  frees (a request finishes) or the timeout passes;
* **late after the timeout** -> admit late, unless the prediction is past ``late_factor`` times
  the TTFT SLO (``queue_timeout``, 429): the backends are hopelessly behind, and an explicit
  refusal beats a response nobody will wait for.

No clock and no I/O: the caller passes ``now`` and how long the request has waited.

``yield_share`` (per class, 0 by default: off): the share of the engine that heavier classes are
expected to take while a request of this class waits. The prediction counts the work queued
*now*; work of heavier classes that arrives while the request waits overtakes it too (our
priority and SlideBatching engines serve heavier work first), and in a priority queue that
stretches a lower class's wait by ``1 / (1 - rho)``, ``rho`` the heavier classes' utilisation
(Cobham's formula for non-preemptive priority queues). Without it a sheddable class is admitted
whenever the queue looks short, and the admitted work then takes the engine from the protected
classes: in the simulator at 1.5x overload (azure-conv 37.5 req/s, sharegpt 12 req/s) the high
class attained 72.1% and 54.2% with the low class sheddable, against 90.5% and 99.5% with no
low traffic at all (docs/BENCHMARKS.md section 11). It is the operator's statement of how much of
the engine the protected traffic uses, not an estimate the code makes: a share measured from
arrivals needs each request's engine time, which batching makes depend on everything else in
the batch. Being a constant it also sheds where the heavier classes use less than it says: at
light load it refuses work that would have been on time (azure-conv at 12 req/s: the low class
from 99.3% to 81.2% at 0.75), so it is worth setting for the load it describes.

``yield_target`` (per class, off by default): instead of a constant, a share that follows what
the heavier classes get. Rather than estimate their utilisation (above: batching makes a
request's engine time unknowable in advance), :class:`AdaptiveShare` watches the outcome the
share exists to protect: whether each request of a heavier class meets its SLO. A miss raises
the share by ``step``, as soon as it is known (a late first token, a refusal), or when the
request ends (a mean TPOT over its SLO); a request that ends within its SLO lowers it by ``step *
(1 - target) / target``. The share therefore settles where the heavier classes miss their SLO a
``1 - target`` fraction of the time (a stochastic-approximation quantile tracker: no clock, no
window, no estimate of load), falls to 0 while they all meet it (light load sheds nothing for
their sake) and rises to :data:`MAX_ADAPTIVE_SHARE` when even that cannot keep them on time.
Misses count as soon as they are known so that the share rises within a TTFT of trouble, not
an end-to-end latency later. A first version counted first tokens only (on time or late): it
held the heavier class's first tokens but not its decodes (with ``sarathi-priority``, whose
large steps miss TPOT, the high class attained 13.5-56% at targets 0.9-0.98 on azure-conv at
37.5 req/s).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from ..core.request import Request

#: A request predicted past this many TTFT SLOs after its queue timeout is refused.
LATE_FACTOR = 10.0
#: How far one SLO miss of a heavier class raises an adaptive share.
YIELD_STEP = 0.02
#: The most an adaptive share rises to: a 20x stretch, which still admits a sheddable request
#: onto an engine with nothing queued ahead of it.
MAX_ADAPTIVE_SHARE = 0.95


class Decision(str, Enum):
    ADMIT = "admit"
    WAIT = "wait"
    SHED = "capacity_shed"  # sheddable class, late: 429 at once
    TIMEOUT = "queue_timeout"  # waited its class's timeout and still hopelessly late: 429


@dataclass(frozen=True, slots=True)
class ClassAdmission:
    """One class's admission settings (the gateway's ``class_settings``)."""

    queue_timeout_s: float = 5.0
    sheddable: bool = False
    yield_share: float = 0.0  # share of the engine heavier classes take while it waits
    # adaptive share: the heavier classes should meet their SLO this often (None: the
    # constant yield_share; with a target, yield_share is the share it starts from)
    yield_target: float | None = None

    def __post_init__(self) -> None:
        if self.queue_timeout_s < 0:
            raise ValueError(f"queue_timeout_s must be >= 0, got {self.queue_timeout_s}")
        if not 0 <= self.yield_share < 1:
            raise ValueError(f"yield_share must be in [0, 1), got {self.yield_share}")
        if self.yield_target is not None and not 0 < self.yield_target < 1:
            raise ValueError(f"yield_target must be in (0, 1), got {self.yield_target}")
        if self.yield_target is not None and self.yield_share > MAX_ADAPTIVE_SHARE:
            raise ValueError(f"an adaptive yield_share starts at most at {MAX_ADAPTIVE_SHARE}")


def decide(r: Request, predicted_s: float, now: float, waited_s: float,
           settings: ClassAdmission, late_factor: float = LATE_FACTOR,
           share: float | None = None) -> Decision:
    """What to do with ``r`` whose first token is predicted ``predicted_s`` from ``now``
    (stretched by ``1 / (1 - share)`` first, ``share`` by default the class's constant
    ``yield_share``: the module docstring says why)."""
    if share is None:
        share = settings.yield_share
    if share:
        predicted_s /= 1.0 - share
    ttft = now + predicted_s - r.arrival
    if ttft < r.ttft_slo:
        return Decision.ADMIT
    if settings.sheddable:
        return Decision.SHED
    if settings.queue_timeout_s == 0:
        return Decision.ADMIT
    if waited_s < settings.queue_timeout_s:
        return Decision.WAIT
    return Decision.ADMIT if ttft < late_factor * r.ttft_slo else Decision.TIMEOUT


@dataclass(slots=True)
class AdaptiveShare:
    """A class's yield share that follows its heavier classes' SLO outcomes (``yield_target``;
    the module docstring says why and how it settles)."""

    target: float
    priority: int  # the class's rank: outcomes of classes ranked before it count
    share: float = 0.0
    step: float = YIELD_STEP
    late: int = 0  # heavier requests seen to miss their SLO (or refused)
    on_time: int = 0  # heavier requests that ended within their SLO

    def observe(self, on_time: bool) -> None:
        if on_time:
            self.on_time += 1
            self.share = max(0.0, self.share - self.step * (1.0 - self.target) / self.target)
        else:
            self.late += 1
            self.share = min(MAX_ADAPTIVE_SHARE, self.share + self.step)


@dataclass(slots=True)
class Admission:
    """The admission state of one pool of instances: each class's settings and, for classes
    with a ``yield_target``, their adaptive share. The gateway keeps one per served model, the
    simulator one per run; both call :meth:`decide` and report each request's first token to
    :meth:`first_token` and its end to :meth:`finished`."""

    rules: Mapping[str, ClassAdmission]
    priorities: Mapping[str, int]  # class -> rank (0: the most important)
    adaptive: dict[str, AdaptiveShare] = field(init=False)

    def __post_init__(self) -> None:
        missing = set(self.rules) - set(self.priorities)
        if missing:
            raise ValueError(f"no priority rank for classes {sorted(missing)}")
        self.adaptive = {c: AdaptiveShare(s.yield_target, self.priorities[c], s.yield_share)
                         for c, s in self.rules.items() if s.yield_target is not None}

    def share(self, cls: str) -> float:
        """The yield share class ``cls`` is judged with now."""
        a = self.adaptive.get(cls)
        return a.share if a is not None else self.rules[cls].yield_share

    def decide(self, r: Request, predicted_s: float, now: float, waited_s: float) -> Decision:
        """:func:`decide` with ``r``'s class settings and its current share. A heavier
        request refused counts against the adaptive shares of the classes below it."""
        d = decide(r, predicted_s, now, waited_s, self.rules[r.cls], share=self.share(r.cls))
        if self.adaptive and d in (Decision.SHED, Decision.TIMEOUT):
            self._observe(r.priority, False)
        return d

    def first_token(self, r: Request) -> None:
        """``r`` just produced its first token: a late one is a miss, counted now."""
        if self.adaptive and not r.first_on_time:
            self._observe(r.priority, False)

    def finished(self, r: Request) -> None:
        """``r`` completed (the caller's call: the engine finished it, or the gateway relayed
        its whole response, however many tokens that held). One whose first token was on time
        counts now: a hit if its mean TPOT was within its SLO too. One whose first token was
        late was counted then."""
        if self.adaptive and r.generated and r.first_on_time:
            self._observe(r.priority, r.generated < 2 or r.tpot() < r.tpot_slo)

    def _observe(self, priority: int, on_time: bool) -> None:
        for a in self.adaptive.values():
            if priority < a.priority:
                a.observe(on_time)
