"""Latency layer: how long an iteration takes and how much KV fits, for every consumer.

``LatencyModel`` is the ProServe form (fit with NNLS); ``roofline`` derives profiles from an
architecture and a GPU when no measurement exists; ``profiles`` loads and saves named profiles.
"""

from proserve.latency.model import (
    COEFF_NAMES,
    LatencyModel,
    ProfilePoint,
    fit_error,
    read_points_csv,
    write_points_csv,
)
from proserve.latency.profiles import (
    SHIPPED_SPECS,
    ProfileSpec,
    list_profiles,
    load_profile,
    profile_filename,
    save_profile,
)
from proserve.latency.roofline import (
    DEFAULT_EFFICIENCY,
    H100_SXM,
    LLAMA31_8B,
    QWEN2_7B,
    QWEN3_32B,
    Efficiency,
    GPUSpec,
    ModelConfig,
    batch_seconds,
    build_profile,
    decode_seconds,
    kv_blocks,
    prefill_seconds,
    roofline_points,
)

__all__ = [
    "COEFF_NAMES",
    "DEFAULT_EFFICIENCY",
    "H100_SXM",
    "LLAMA31_8B",
    "QWEN2_7B",
    "QWEN3_32B",
    "SHIPPED_SPECS",
    "Efficiency",
    "GPUSpec",
    "LatencyModel",
    "ModelConfig",
    "ProfilePoint",
    "ProfileSpec",
    "batch_seconds",
    "build_profile",
    "decode_seconds",
    "fit_error",
    "kv_blocks",
    "list_profiles",
    "load_profile",
    "prefill_seconds",
    "profile_filename",
    "read_points_csv",
    "roofline_points",
    "save_profile",
    "write_points_csv",
]
