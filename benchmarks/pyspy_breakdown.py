"""Where the plug-in's share of EngineCore time goes, from a py-spy raw file.

``vllm_plugin_compare.py --py-spy DIR`` writes one raw file per run and reports the plug-in's
share of EngineCore's busy samples (``plugin_share``: samples whose innermost proserve-or-vLLM
frame is proserve's). This script splits that share by the plug-in function the samples were in
(its own code and the numpy calls it makes) and counts, for comparison, the samples in vLLM's own
``schedule()`` when the plug-in calls it:

    python benchmarks/pyspy_breakdown.py docs/results/issue15/pyspy_seqs16_head.raw.gz
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from _common import table
from vllm_plugin_compare import plugin_frame, plugin_share, samples


def breakdown(raw: Path) -> tuple[int, int, Counter]:
    """(all samples, samples in vLLM's schedule() under the plug-in's, plug-in samples by the
    innermost proserve function)."""
    total = under = 0
    by_fn: Counter = Counter()
    for count, frames in samples(raw):
        total += count
        names = [f.split(" (")[0] for f in frames]
        if "ProServeScheduler.schedule" in names:
            i = names.index("ProServeScheduler.schedule")
            if i + 1 < len(names) and names[i + 1] == "Scheduler.schedule":
                under += count
        own = plugin_frame(frames)
        if own is not None:
            by_fn[own.split(" (")[0]] += count
    return total, under, by_fn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("raw", type=Path)
    ap.add_argument("--top", type=int, default=12)
    a = ap.parse_args()
    total, under, by_fn = breakdown(a.raw)
    ours = sum(by_fn.values())
    share = plugin_share(a.raw)
    assert share["samples"] == total and abs(share["plugin"] * total - ours) < 0.5
    print(f"{a.raw.name}: {total} EngineCore busy samples; plug-in's own {ours} "
          f"({100 * ours / total:.2f}%); vLLM's schedule() called by the plug-in {under} "
          f"(plug-in / vLLM schedule() {ours / under:.2f}x)")
    table(["plug-in function", "samples", "% of the plug-in's"],
          [[fn, n, f"{100 * n / ours:.1f}"] for fn, n in by_fn.most_common(a.top)])


if __name__ == "__main__":
    main()
