"""Prefix-aware routing on ``mooncake-synthetic``: go vs prefix-affinity vs min-load (issue 13).

Setup: 8 co-located instances (llama3.1-8b@h100, ``slide-bounded`` engines, prefix caching on with
the profile's 27,507 KV blocks each), exact router views, the default latency noise, the trace's
own order and timestamps time-scaled to each mean rate (no Poisson arrivals: conversation turns
follow each other as recorded, which is the locality prefix routing can exploit). Rates: on the
first 1,500 requests min-load's TDG is 0.998 at 10 req/s, 0.991 at 14 and 0.53 at 18; on the
whole trace (the default) it is already 0.82 at 14.

Routers: ``go`` (GoRouting, prefix-aware by default: uncached prefill cost in its gain and
light/heavy test, the light prefix holder first), ``prefix-affinity`` (llm-d's default scorers:
3 x prefix overlap + 2 x load) and ``min-load``. Optional ``go-unaware`` (``--routers``) is go
with ``prefix_aware=False``.

Per rate and router: TDG ratio (``tdg_ratio``), deadline attainment, ``prefix_hit_rate`` (prompt
tokens served from cache / prompt tokens), TTFT p50/p99. The acceptance check (issue 13): go's TDG
>= prefix-affinity's and min-load's, and go's hit rate > min-load's, at each rate.

Output: the table on stdout and in ``docs/results/prefix_routing.txt``, raw results in
``docs/results/prefix_routing.json``.

Run:  python benchmarks/prefix_routing.py                       (whole trace, 3 rates, ~3 min)
      python benchmarks/prefix_routing.py --count 1500 --rates 14,18
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from pathlib import Path
from typing import Any

from _common import loadavg, table  # benchmarks/_common.py
from proserve.sim.run import SimConfig, run

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "results"
ROUTERS = {
    "go": ("go", {}),
    "prefix-affinity": ("prefix-affinity", {}),
    "min-load": ("min-load", {}),
    "go-unaware": ("go", {"prefix_aware": False}),
}
KEYS = ("tdg_ratio", "deadline_attainment", "prefix_hit_rate", "ttft_p50", "ttft_p99",
        "finished", "requests", "preemptions")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="14,16,18", help="comma-separated mean rates (req/s)")
    ap.add_argument("--routers", default="go,prefix-affinity,min-load")
    ap.add_argument("--count", type=int, default=None, help="first N requests (default: all)")
    ap.add_argument("--duration", type=float, default=None, help="seconds of trace (scaled)")
    ap.add_argument("--instances", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT / "prefix_routing.json")
    args = ap.parse_args()
    rates = [float(x) for x in args.rates.split(",") if x.strip()]
    names = [x.strip() for x in args.routers.split(",") if x.strip()]
    base = dict(trace="mooncake-synthetic", count=args.count, duration=args.duration,
                instances=args.instances, policy="slide-bounded", seed=args.seed)
    results: dict[str, dict[str, Any]] = {}
    for rate in rates:
        row: dict[str, Any] = {}
        for name in names:
            router, rargs = ROUTERS[name]
            t0 = time.perf_counter()
            res = run(SimConfig(**base, rate=rate, router=router, router_args=rargs))
            wall = time.perf_counter() - t0
            row[name] = {k: res[k] for k in KEYS} | {"wall_s": round(wall, 2)}
            print(f"rate {rate:g}, {name}: TDG {row[name]['tdg_ratio']:.4f}, hit "
                  f"{100 * row[name]['prefix_hit_rate']:.2f}% ({wall:.1f} s wall)", flush=True)
        results[f"{rate:g}"] = row

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        print(f"mooncake-synthetic, {args.instances} instances, slide-bounded, trace timestamps "
              f"scaled to the rate, count={args.count}, duration={args.duration}, "
              f"seed={args.seed}")
        rows = []
        for rate, row in results.items():
            for name, r in row.items():
                rows.append([rate, name, f"{r['tdg_ratio']:.4f}",
                             f"{100 * r['deadline_attainment']:.2f}%",
                             f"{100 * r['prefix_hit_rate']:.2f}%",
                             f"{1000 * r['ttft_p50']:.0f}", f"{1000 * r['ttft_p99']:.0f}",
                             f"{r['finished']}/{r['requests']}"])
        table(["rate", "router", "TDG ratio", "deadline att.", "prefix hit", "TTFT p50 ms",
               "TTFT p99 ms", "finished"], rows)
        checks = acceptance(results)
        for rate, c in checks.items():
            print(f"rate {rate}: " + ", ".join(f"{k} {'yes' if v else 'NO'}"
                                               for k, v in c.items()))
    text = buf.getvalue()
    print("\n" + text)
    out = {"setup": {**base, "rates": rates, "routers": {n: ROUTERS[n] for n in names},
                     "profile": "llama3.1-8b@h100", "view_interval_ms": 0,
                     "command": "python benchmarks/prefix_routing.py"},
           "results": results, "acceptance": checks, "loadavg": loadavg()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    args.out.with_suffix(".txt").write_text(text)
    print(f"wrote {args.out} and {args.out.with_suffix('.txt')}")


def acceptance(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, bool]]:
    """Issue 13: go's TDG >= prefix-affinity's and min-load's; go's hit rate > min-load's."""
    out = {}
    for rate, row in results.items():
        if "go" not in row:
            continue
        g = row["go"]
        c = {}
        for other in ("prefix-affinity", "min-load"):
            if other in row:
                c[f"TDG go >= {other}"] = g["tdg_ratio"] >= row[other]["tdg_ratio"]
        if "min-load" in row:
            c["hit go > min-load"] = g["prefix_hit_rate"] > row["min-load"]["prefix_hit_rate"]
        out[rate] = c
    return out


if __name__ == "__main__":
    main()
