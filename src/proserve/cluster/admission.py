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
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ..core.request import Request

#: A request predicted past this many TTFT SLOs after its queue timeout is refused.
LATE_FACTOR = 10.0


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

    def __post_init__(self) -> None:
        if self.queue_timeout_s < 0:
            raise ValueError(f"queue_timeout_s must be >= 0, got {self.queue_timeout_s}")
        if not 0 <= self.yield_share < 1:
            raise ValueError(f"yield_share must be in [0, 1), got {self.yield_share}")


def decide(r: Request, predicted_s: float, now: float, waited_s: float,
           settings: ClassAdmission, late_factor: float = LATE_FACTOR) -> Decision:
    """What to do with ``r`` whose first token is predicted ``predicted_s`` from ``now``
    (stretched by ``1 / (1 - settings.yield_share)`` first: the module docstring says why)."""
    if settings.yield_share:
        predicted_s /= 1.0 - settings.yield_share
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
