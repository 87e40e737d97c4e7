"""Plots shared by commands: per-class latency distributions of a measured or simulated run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..core.request import Request


def plot_latency_cdfs(requests: Sequence[Request], path: Path, title: str) -> None:
    """TTFT and TPOT CDFs per priority class, with each class's median SLO marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    classes = list(dict.fromkeys(r.cls for r in sorted(requests, key=lambda r: r.priority)))
    for cls in classes:
        mine = [r for r in requests if r.cls == cls]
        for ax, vals, slo in (
            (axes[0], [r.ttft() for r in mine if r.generated], [r.ttft_slo for r in mine]),
            (axes[1], [r.tpot() for r in mine if r.generated > 1], [r.tpot_slo for r in mine]),
        ):
            v = np.sort(np.asarray(vals, float) * 1000)
            if v.size:
                line = ax.plot(v, np.arange(1, v.size + 1) / v.size, label=cls)[0]
                ax.axvline(1000 * float(np.median(slo)), color=line.get_color(), ls=":", lw=1)
    for ax, name in zip(axes, ("TTFT (ms)", "TPOT (ms)")):
        ax.set_xlabel(name + "; dotted: median SLO")
        ax.set_ylabel("fraction of requests")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
