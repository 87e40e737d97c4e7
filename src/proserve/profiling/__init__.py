"""``proserve profile``: measure iteration latency and fit the latency model every tier loads.

Three backends answer the same questions (see :class:`grid.ProfileBackend`):

- :mod:`.synthetic`: a random-weight Llama-shaped model in PyTorch (CPU, or CUDA where present);
- :mod:`.server`: a running vLLM server, through its OpenAI API and ``/metrics``;
- :mod:`.offline`: vLLM's in-process ``LLM`` API.

:func:`profile` measures the grid, fits with a held-out split, and writes a profile file (plus the
raw points as CSV beside it, so ``proserve fit`` can refit them) that the simulator, emulator,
gateway and vLLM plug-in all load by path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from ..latency.model import write_points_csv
from ..latency.profiles import save_profile
from .grid import FitReport, ProfileBackend, ProfileGrid, fit_report, measure, split_holdout

__all__ = ["FitReport", "ProfileBackend", "ProfileGrid", "fit_report", "measure", "profile",
           "split_holdout"]


def points_path(out: str | Path) -> Path:
    """Where the raw points of profile ``out`` are written: ``NAME.points.csv`` beside it."""
    out = Path(out)
    return out.with_name(out.name.rsplit(".", 1)[0] + ".points.csv")


def profile(backend: ProfileBackend, grid: ProfileGrid, out: str | Path, *, name: str,
            holdout: float = 0.25, seed: int = 0, command: str = "proserve profile",
            progress: Callable[[int, int, str], None] | None = None) -> FitReport:
    """Measure ``grid`` on ``backend``, fit, and write the profile to ``out``."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)  # fail before, not after, measuring
    points = measure(backend, grid, progress)
    blocks, block_size = backend.kv_capacity()
    rep = fit_report(points, holdout=holdout, seed=seed, kv_blocks=blocks,
                     block_size=block_size, name=name)
    rep.model.meta.update({
        "source": "measured",
        "backend": backend.description,
        "grid": asdict(grid),
        "points": len(points),
    })
    extra = getattr(backend, "overheads", None)
    if extra:  # latency beyond the engine's iterations: the simulator adds it per request
        rep.model.meta["request_overhead_s"] = float(sorted(extra)[len(extra) // 2])
    pts_file = points_path(out)
    write_points_csv(pts_file, points)
    e = rep.err_test
    save_profile(rep.model, out, provenance=(
        f"Measured by `{command}`: {backend.description}. {len(points)} grid points "
        f"(raw: {pts_file.name}); NNLS fit on {len(rep.train)}, held-out error on "
        f"{len(rep.test)}: mean {100 * e['mape']:.1f}%, p90 {100 * e['p90_ape']:.1f}%."))
    return rep
