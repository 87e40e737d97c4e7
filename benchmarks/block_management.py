"""ProServe's block-management ablation (issue 13): missed gain per preemption mode.

Setup (memory-tight, as the paper's ablation): one llama3.1-8b@h100 instance whose KV cache is cut
to ``--kv-blocks`` (default 3,000 blocks = 48k tokens, ~11% of the profile's), two priority
classes (``high:w=2``, ``low:w=1``, half the requests each), the published policy ``slide``,
default latency noise, host memory 4x the device blocks, seeds 0-2 (TDG averaged). Every mode
runs the same requests at each rate:

* ``recompute`` (vLLM today), ``offload-sync``, ``offload-async``;
* ``full`` (ProServe: async offload + pipelined reload + adaptive copy budget + eager backup);
* ``full-nobudget`` and ``full-nobackup`` (``full`` without one part);
* ``full, no class guard``: ``full`` without our rule that a request without device KV preempts
  only lower classes (engine/deadline.py), to show what that rule is worth.

Missed gain = 1 - TDG ratio (the share of the achievable gain lost). The table normalises each
mode's missed gain by ``full``'s at the same rate (the paper reports "1.16x-6.2x more missed gain
without these"): above 1 = that mode loses more than ``full``. Also printed: preemptions
(offloaded/recomputed), blocks moved each way, reloads trimmed by the copy budget, time steps
waited on copies, TTFT p99.

Run:  python benchmarks/block_management.py                       (~2 min on 2 cores)
      python benchmarks/block_management.py --traces azure-conv --rates 12 --duration 60
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from _common import loadavg, table  # benchmarks/_common.py
from proserve.sim.run import SimConfig, run

ROOT = Path(__file__).resolve().parent.parent
CLASSES = "high:w=2,share=0.5;low:w=1,share=0.5"
VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    ("recompute", "recompute", {}),
    ("offload-sync", "offload-sync", {}),
    ("offload-async", "offload-async", {}),
    ("full", "full", {}),
    ("full-nobudget", "full-nobudget", {}),
    ("full-nobackup", "full-nobackup", {}),
    ("full, no class guard", "full", {"class_guard": False}),
]
# rates per trace: light, medium, heavy for the cut KV cache (chosen from a coarse sweep of the
# recompute baseline: where it is fine, where it starts thrashing, and past it)
RATES = {"azure-conv": [8.0, 12.0, 16.0], "sharegpt": [3.0, 4.5, 6.0]}


def point(args: tuple[str, float, str, str, dict[str, Any], int, float, int]) -> dict[str, Any]:
    trace, rate, label, mode, pargs, kv_blocks, duration, seed = args
    r = run(SimConfig(trace=trace, rate=rate, duration=duration, kv_blocks=kv_blocks,
                      policy="slide", classes=CLASSES, preemption=mode, policy_args=pargs,
                      seed=seed))
    k = r["kv"]
    return {"trace": trace, "rate": rate, "variant": label, "seed": seed, "tdg": r["tdg_ratio"],
            "attainment": r["slo_attainment"], "ttft_p99": r["ttft_p99"],
            "high_tdg": r["per_class"]["high"]["tdg_ratio"],
            **{x: k[x] for x in ("preemptions_offload", "preemptions_recompute",
                                 "recomputed_tokens", "blocks_offloaded", "blocks_reloaded",
                                 "blocks_backed_up", "reloads_trimmed", "copy_wait_s")}}


def mean_over_seeds(res: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """(trace, rate, variant) -> every numeric field averaged over the seeds."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in res:
        groups.setdefault((r["trace"], r["rate"], r["variant"]), []).append(r)
    out = {}
    for k, rs in groups.items():
        out[k] = {f: (sum(x[f] for x in rs) / len(rs) if isinstance(rs[0][f], int | float)
                      else rs[0][f]) for f in rs[0]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", default="azure-conv,sharegpt")
    ap.add_argument("--rates", default=None, help="comma-separated rates for every trace "
                    "(default: light/medium/heavy per trace, see RATES)")
    ap.add_argument("--kv-blocks", type=int, default=3000)
    ap.add_argument("--duration", type=float, default=120.0)
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; TDG is averaged")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "block_management.json")
    a = ap.parse_args()
    traces = [t.strip() for t in a.traces.split(",") if t.strip()]
    seeds = [int(x) for x in a.seeds.split(",") if x.strip()]
    jobs = []
    for t in traces:
        rates = [float(x) for x in a.rates.split(",")] if a.rates else RATES[t]
        for rate in rates:
            for label, mode, pargs in VARIANTS:
                for seed in seeds:
                    jobs.append((t, rate, label, mode, pargs, a.kv_blocks, a.duration, seed))
    t0 = time.time()
    print(f"{len(jobs)} runs on {a.workers} processes; load {loadavg()}", flush=True)
    with ProcessPoolExecutor(a.workers) as ex:
        res = list(ex.map(point, jobs))
    print(f"done in {time.time() - t0:.0f} s; load {loadavg()}\n")
    by = mean_over_seeds(res)
    labels = [v[0] for v in VARIANTS]
    for t in traces:
        rates = sorted({r["rate"] for r in res if r["trace"] == t})
        print(f"{t}: missed gain (1 - TDG) normalised by full's (>1: loses more than full); "
              f"mean TDG over seeds {seeds} in parentheses")
        rows = []
        for lab in labels:
            row: list[Any] = [lab]
            for rate in rates:
                m = 1 - by[(t, rate, lab)]["tdg"]
                f = 1 - by[(t, rate, "full")]["tdg"]
                ratio = m / f if f > 1e-9 else (1.0 if m < 1e-9 else float("inf"))
                row.append(f"{ratio:.2f}x ({100 * by[(t, rate, lab)]['tdg']:.1f}%)")
            rows.append(row)
        hdr = ["mode"] + [f"{r:g} req/s" for r in rates]
        table(hdr, rows)
        print()
        txt = a.out.with_name(f"{a.out.stem}_{t}.txt")
        with contextlib.redirect_stdout(io.StringIO()) as buf:
            table(hdr, rows)
        txt.write_text(buf.getvalue())
        print(f"{t}: preemptions offloaded/recomputed, blocks out/in/backed up, reloads trimmed, "
              "copy wait s, TTFT p99 s (means over the seeds)")
        rows = []
        for rate in rates:
            for lab in labels:
                x = by[(t, rate, lab)]
                rows.append([f"{rate:g} {lab}", f"{x['preemptions_offload']:.0f}/"
                             f"{x['preemptions_recompute']:.0f}",
                             f"{x['blocks_offloaded']:.0f}/{x['blocks_reloaded']:.0f}/"
                             f"{x['blocks_backed_up']:.0f}", f"{x['reloads_trimmed']:.0f}",
                             f"{x['copy_wait_s']:.2f}", f"{x['ttft_p99']:.1f}"])
        table(["rate mode", "preempt off/rec", "blocks out/in/backup", "trimmed", "copy wait",
               "TTFT p99"], rows)
        print()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"kv_blocks": a.kv_blocks, "duration": a.duration,
                                 "seeds": seeds, "classes": CLASSES, "results": res},
                                indent=1) + "\n")
    print(f"wrote {a.out} and its per-trace tables ({a.out.stem}_<trace>.txt)")


if __name__ == "__main__":
    main()
