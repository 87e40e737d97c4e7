"""Issue 12: a run whose tier mix flips mid-trace; PolyServe's auto-scaling must follow it.

azure-conv lengths, Poisson arrivals, 4 TPOT tiers. The tight tier t20 has 70% of the traffic in
the first half and 10% in the second; the loose tier t60 the reverse (t30, t40: 10% each
throughout); the flip is a ramp over ~11% of the trace (piecewise-linear class shares). Fleet of
16, `polyserve` (instant scale-up, and again with a 5 s scale-up delay).

Writes the timeline plot (instances per tier and pending depth over time) and prints, per run,
the mean instances of each tier in the first and last thirds, attainment and p99s.

    python benchmarks/polyserve_autoscale.py --out docs/results/polyserve_autoscale
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import loadavg, table
from proserve.sim.run import SimConfig, run

FLIP = "0.7|0.7|0.7|0.7|0.7|0.1|0.1|0.1|0.1|0.1"
FLOP = "0.1|0.1|0.1|0.1|0.1|0.7|0.7|0.7|0.7|0.7"
CLASSES = (f"t20:tpot=20ms,ttft=5x,share={FLIP};t30:tpot=30ms,ttft=5x,share=0.1;"
           f"t40:tpot=40ms,ttft=5x,share=0.1;t60:tpot=60ms,ttft=5x,share={FLOP}")


def one(rate: float, duration: float, delay: float) -> tuple[dict, list]:
    cfg = SimConfig(trace="azure-conv", synthetic_arrivals=True, rate=rate, duration=duration,
                    classes=CLASSES, instances=16, router="polyserve",
                    router_args={"scale_up_delay_s": delay}, seed=0)
    res = run(cfg, keep_requests=True)
    router = res.pop("_router")
    res.pop("_requests")
    return res, list(router.fleet.timeline)


def thirds(timeline: list, duration: float, tiers: list[str]) -> list[str]:
    """Mean instances per tier over the first and last thirds of the arrivals (samples)."""
    out = []
    for lo, hi in ((0.0, duration / 3), (2 * duration / 3, duration)):
        pts = [c for t, c, _ in timeline if lo <= t < hi]
        out.append(" / ".join(f"{sum(p[i] for p in pts) / max(len(pts), 1):.1f}"
                              for i in range(len(tiers))))
    return out


def plot(runs: dict[str, list], tiers: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(runs), figsize=(6 * len(runs), 6), sharex=True,
                             squeeze=False)
    for j, (name, tl) in enumerate(runs.items()):
        ts = [t for t, _, _ in tl]
        for i, tier in enumerate(tiers):
            axes[0][j].step(ts, [c[i] for _, c, _ in tl], where="post", label=tier)
            axes[1][j].step(ts, [p[i] if p else 0 for _, _, p in tl], where="post", label=tier)
        axes[0][j].set_title(f"polyserve, {name}")
        axes[0][j].set_ylabel("instances in tier")
        axes[1][j].set_ylabel("pending requests")
        axes[1][j].set_xlabel("simulated time (s)")
        axes[0][j].legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/results/polyserve_autoscale"))
    ap.add_argument("--rate", type=float, default=150.0)
    ap.add_argument("--duration", type=float, default=120.0)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    print(f"# host load {loadavg()}")
    tiers = ["t20", "t30", "t40", "t60"]
    rows, runs, dump = [], {}, {}
    for delay in (0.0, 5.0):
        res, tl = one(a.rate, a.duration, delay)
        name = f"scale-up delay {delay:g}s"
        runs[name] = tl
        first, last = thirds(tl, a.duration, tiers)
        rows.append([name, first, last, f"{100 * res['deadline_attainment']:.1f}%",
                     f"{res['ttft_p99']:.2f}", f"{1000 * res['tpot_p99']:.0f}",
                     f"{res['fleet']['mean_instances']:.1f}",
                     " ".join(f"{k}+{v}" for k, v in res["fleet"]["scale_ups"].items())])
        dump[name] = {"summary": {k: res[k] for k in ("deadline_attainment", "ttft_p99",
                                                     "tpot_p99", "server_seconds")},
                      "fleet": res["fleet"], "timeline": tl}
    table(["run", "instances t20/t30/t40/t60, first third", "last third", "deadline att",
           "TTFT p99 s", "TPOT p99 ms", "mean inst", "scale-ups"], rows)
    plot(runs, tiers, a.out / "timeline.png")
    (a.out / "timeline.json").write_text(json.dumps(dump, indent=1) + "\n")
    print(f"wrote {a.out / 'timeline.png'} and {a.out / 'timeline.json'}")


if __name__ == "__main__":
    main()
