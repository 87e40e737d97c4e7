"""Prefix-cache hit rate vs KV capacity on ``mooncake-synthetic`` (issue 13's acceptance plot).

Setup: every request of the trace (3,993), its own prompt/output lengths and Mooncake
``hash_ids``, one engine instance (llama3.1-8b@h100, slide-bounded, prefix caching on), no
latency noise, at a low mean rate (``--rate``, default 0.01 req/s), in two orders:

* ``trace``: the trace's own order and timestamps, time-scaled to the rate (conversation turns
  follow each other as recorded, so a bounded cache still holds the previous turn);
* ``shuffled``: a seeded random order (``--synthetic-arrivals``) with evenly spaced arrivals
  (gamma, cv 0.01), i.e. no locality beyond what the ids share.

At this rate a request is served (nearly) alone, so it finds in the cache exactly the blocks
earlier requests cached and eviction has left; with an unbounded cache that is the exact offline
count from ``hash_ids``, which the script computes apart from the engine
(``experiments.prefix_vllm.offline_hits``: a set of every earlier request's block keys, leading
whole 16-token blocks, at most prompt - 1 tokens; no refcounts, no eviction) and prints next to
it. (Unbounded, the count does not depend on the order: with prefix-chained ids every block but
a key's first occurrence is a hit.)

``prefix_hit_rate`` = prompt tokens found in the cache at each request's first scheduling /
prompt tokens of the requests scheduled. Output: a table on stdout, the raw results in
``docs/results/prefix_hit_rate.json`` and the plot ``docs/results/prefix_hit_rate.png``.

Run:  python benchmarks/prefix_hit_rate.py                     (whole trace, ~5 min)
      python benchmarks/prefix_hit_rate.py --count 500 --kv-blocks 10000000,60000,20000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from _common import loadavg, table  # benchmarks/_common.py
from proserve.experiments.prefix_vllm import offline_hits
from proserve.sim.run import SimConfig, run

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "results"
UNBOUNDED = 10_000_000  # blocks: more than the whole trace's prompts (~3.8M blocks)
DEFAULT_KV = [UNBOUNDED, 1_000_000, 300_000, 100_000, 27_507, 15_000]  # 27,507: the profile's


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kv-blocks", default=",".join(map(str, DEFAULT_KV)),
                    help="comma-separated KV capacities (blocks of 16 tokens)")
    ap.add_argument("--rate", type=float, default=0.01)
    ap.add_argument("--count", type=int, default=None, help="first N requests (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--orders", default="trace,shuffled", help="trace and/or shuffled")
    ap.add_argument("--out", type=Path, default=OUT / "prefix_hit_rate.json")
    args = ap.parse_args()
    sizes = [int(x) for x in args.kv_blocks.split(",") if x.strip()]
    base = dict(trace="mooncake-synthetic", rate=args.rate, count=args.count, seed=args.seed,
                latency_noise=0.0)
    variants = {"trace": {}, "shuffled": dict(synthetic_arrivals=True, arrival="gamma", cv=0.01)}
    orders = [o.strip() for o in args.orders.split(",") if o.strip()]
    series = {o: one_order({**base, **variants[o]}, sizes, o) for o in orders}
    out = {"setup": {**base, "profile": "llama3.1-8b@h100", "policy": "slide-bounded",
                     "block_size": 16, "orders": {o: variants[o] for o in orders},
                     "command": "python benchmarks/prefix_hit_rate.py"},
           "series": series, "loadavg": loadavg()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    plot(series, args.out.with_suffix(".png"), args.rate)
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


def one_order(cfg: dict[str, Any], sizes: list[int], order: str) -> dict[str, Any]:
    points = []
    offline = None
    for kv in sizes:
        t0 = time.perf_counter()
        res = run(SimConfig(**cfg, kv_blocks=kv), keep_requests=True)
        wall = time.perf_counter() - t0
        reqs = res.pop("_requests")
        res.pop("_router", None)
        if offline is None:
            hit, total = offline_hits(reqs, 16)
            offline = {"hit_tokens": hit, "prompt_tokens": total, "hit_rate": hit / total}
        inst = res["per_instance"][0]
        points.append({
            "kv_blocks": kv, "prefix_hit_rate": res["prefix_hit_rate"],
            "prefix_cached_tokens": res["prefix_cached_tokens"],
            "prefix_evictions": inst["prefix_evictions"],
            # every lookup, recomputes after preemption included (vLLM's counter)
            "engine_hit_tokens": inst["prefix_hit_tokens"],
            "requests": res["requests"], "finished": res["finished"],
            "rejected": res["rejected"], "preemptions": res["preemptions"],
            "ttft_p50_s": res["ttft_p50"], "steps": res["steps"], "wall_s": round(wall, 2),
        })
        print(f"{order} order, kv_blocks={kv}: hit rate {100 * res['prefix_hit_rate']:.2f}% "
              f"({wall:.1f} s wall)", flush=True)
    assert offline is not None
    print(f"\n{order} order")
    table(["kv blocks", "KV tokens", "hit rate", "cached tokens", "evictions", "TTFT p50 ms"],
          [[f"{p['kv_blocks']:,}", f"{16 * p['kv_blocks']:,}",
            f"{100 * p['prefix_hit_rate']:.2f}%", f"{p['prefix_cached_tokens']:,}",
            f"{p['prefix_evictions']:,}", f"{1000 * p['ttft_p50_s']:.0f}"] for p in points])
    print(f"offline exact count (unbounded cache): {100 * offline['hit_rate']:.2f}% "
          f"({offline['hit_tokens']:,} of {offline['prompt_tokens']:,} prompt tokens)\n")
    return {"offline": offline, "points": points}


def plot(series: dict[str, Any], png: Path, rate: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    labels = {"trace": "simulated, trace order", "shuffled": "simulated, shuffled order"}
    for order, s in series.items():
        pts = s["points"]
        ax.plot([16 * p["kv_blocks"] for p in pts], [100 * p["prefix_hit_rate"] for p in pts],
                "o-", label=labels[order])
    first = next(iter(series.values()))
    # one line when the orders agree (all requests run: the unbounded count is order-free)
    counts = {round(s["offline"]["hit_rate"], 12): o for o, s in series.items()}
    for rate_, order in counts.items():
        ax.axhline(100 * rate_, color="gray", ls="--", label="offline exact count, unbounded"
                   " cache" + (f" ({order})" if len(counts) > 1 else ""))
    ax.set_xscale("log")
    ax.set_xlabel("KV cache capacity (tokens, log scale)")
    ax.set_ylabel("prefix hit rate (% of prompt tokens)")
    n = first["points"][0]["requests"]
    ax.set_title(f"mooncake-synthetic, {n} requests, {rate:g} req/s, one instance")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(png, dpi=120)


if __name__ == "__main__":
    main()
