"""Engine tier: which tokens of which requests run in the next iteration of one instance."""

# the built-in policies register themselves on import (each imports .base itself)
from . import policies  # noqa: F401
from .base import (
    BaseScheduler,
    EngineScheduler,
    SchedulerOutput,
    make_scheduler,
    policy_names,
    policy_spec,
    register_policy,
)
from .kv import BlockManager

__all__ = [
    "BaseScheduler", "BlockManager", "EngineScheduler", "SchedulerOutput", "make_scheduler",
    "policy_names", "policy_spec", "register_policy",
]
