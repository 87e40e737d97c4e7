"""Policy x rate grids run in parallel processes, written as CSV + a TDG/attainment plot.

Worker processes (not threads) because the simulator is pure Python and CPU-bound; each grid
point is independent and deterministic, so results do not depend on the number of workers or
their completion order (rows are sorted before writing).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from ..sim.run import SimConfig, run

CSV_FIELDS = [
    "policy", "router", "instances", "rate", "requests", "finished", "unfinished", "rejected",
    "tdg_ratio", "slo_attainment", "goodput_rps", "ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99",
    "e2e_p99", "max_wait_s", "preemptions", "prefix_hit_rate", "sim_wall_s",
]
# KV block management (results' "kv" section, engine/offload.py), one column each
KV_FIELDS = ["preemption_mode", "preemptions_offload", "preemptions_recompute",
             "recomputed_tokens", "blocks_offloaded", "blocks_reloaded", "copy_wait_s"]
PER_CLASS = ("tdg_ratio", "slo_attainment", "ttft_p99", "max_wait_s", "rejected")


def _run_point(cfg: dict) -> dict:
    # a python-mode dump, not JSON: JSON turns inf (e.g. policy_args tau_s) into null
    return run(SimConfig.model_validate(cfg))


def label(r: dict) -> str:
    """How a grid point's series is named: the policy, plus the router when there are several."""
    router = r.get("router")
    return r["policy"] if router in (None, "single") else f"{router}+{r['policy']}"


def run_grid(
    base: SimConfig,
    policies: Sequence[str],
    rates: Sequence[float],
    *,
    routers: Sequence[str | None] = (None,),
    workers: int | None = None,
    on_done: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Run every (router, policy, rate) point; results sorted by (router, policy, rate) order."""
    cfgs = [
        base.model_copy(update={"policy": p, "rate": float(r), "router": rt})
        for rt in routers for p in policies for r in rates
    ]
    for c in cfgs:  # validate every point before starting any work
        SimConfig.model_validate(c.model_dump())
    workers = workers or min(len(cfgs), os.cpu_count() or 1)
    results: list[dict] = []
    if workers <= 1:
        for c in cfgs:
            results.append(run(c))
            if on_done:
                on_done(results[-1])
    else:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            futs = [ex.submit(_run_point, c.model_dump()) for c in cfgs]
            for f in as_completed(futs):
                results.append(f.result())
                if on_done:
                    on_done(results[-1])
    p_order = {p: i for i, p in enumerate(policies)}
    r_order = {rt: i for i, rt in enumerate(routers)}
    results.sort(key=lambda r: (r_order.get(r["config"]["router"], 0), p_order[r["policy"]],
                                r["config"]["rate"]))
    return results


def per_class_fields(results: Sequence[dict]) -> list[str]:
    names: list[str] = []
    for r in results:
        for c in r["per_class"]:
            if c not in names:
                names.append(c)
    return [f"{c}_{m}" for c in names for m in PER_CLASS]


def write_csv(results: Sequence[dict], path: Path) -> None:
    extra = per_class_fields(results)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_FIELDS + KV_FIELDS + extra)
        for r in results:
            row: list[Any] = [r["config"]["rate"] if k == "rate" else r.get(k) for k in CSV_FIELDS]
            row += [r.get("kv", {}).get(k) for k in KV_FIELDS]
            for name in extra:
                cls, _, metric = name.partition("_")
                # class names may contain '_': split on the known metric suffixes instead
                for m in PER_CLASS:
                    if name.endswith("_" + m):
                        cls, metric = name[: -len(m) - 1], m
                row.append(r["per_class"].get(cls, {}).get(metric))
            w.writerow(row)


def plot(results: Sequence[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    series = list(dict.fromkeys(label(r) for r in results))
    for p in series:
        pts = [r for r in results if label(r) == p]
        rates = [r["config"]["rate"] for r in pts]
        style = dict(marker="o", lw=2.2) if "slide" in p else dict(marker=".", lw=1.2)
        axes[0].plot(rates, [r["tdg_ratio"] for r in pts], label=p, **style)
        axes[1].plot(rates, [r["slo_attainment"] for r in pts], label=p, **style)
        # the tail panel: what each point's gain costs in TTFT p99 (one marker per rate)
        tail = [(r["ttft_p99"], r["tdg_ratio"]) for r in pts if r.get("ttft_p99") is not None]
        if tail:
            axes[2].plot(*zip(*tail), label=p, **style)
    for ax, name in zip(axes[:2], ("TDG ratio", "SLO attainment")):
        ax.set_xlabel("request rate (req/s)")
        ax.set_ylabel(name)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[2].set_xscale("log")
    axes[2].set_xlabel("TTFT p99 (s, log)")
    axes[2].set_ylabel("TDG ratio")
    axes[2].set_ylim(0, 1.02)
    axes[2].grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
