"""Cut one day out of a ServeGen per-client directory (how ``servegen-m-small/`` was made).

The full ``language-m-small`` release covers 14 days (31 MB), too much to ship in a wheel. One day
keeps everything the loader needs (all 43 clients' 600 s windows and their 6-hour length PMFs)
in the same file format, so the shipped subset and a full download go through one code path.

Usage::

    python make_servegen_subset.py SRC_DIR DST_DIR --day 9

Rows of ``chunk-N-trace.csv`` with ``day*86400 <= start < (day+1)*86400`` are kept with their
start rebased to the day's midnight; ``chunk-N-dataset.json`` keeps the windows of that day,
rebased the same way, with the PMF strings copied verbatim. Clients without a dataset file stay
without one (the loader borrows a neighbour's). Run with the standard library only.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

DAY = 86_400


def subset(src: Path, dst: Path, day: int) -> None:
    lo, hi = day * DAY, (day + 1) * DAY
    dst.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.glob("chunk-*-trace.csv")):
        rows = []
        for line in p.read_text().splitlines():
            parts = line.split(",")
            t = int(float(parts[0]))
            if lo <= t < hi:
                rows.append(",".join([str(t - lo), *parts[1:]]))
        (dst / p.name).write_text("\n".join(rows) + "\n")
        ds = src / p.name.replace("-trace.csv", "-dataset.json")
        if ds.exists():
            raw = json.loads(ds.read_text())
            keep = {str(int(k) - lo): v for k, v in raw.items() if lo <= int(k) < hi}
            (dst / ds.name).write_text(json.dumps(keep, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--day", type=int, default=9, help="day index (0-based); 9 is the busiest")
    a = ap.parse_args()
    if not any(re.fullmatch(r"chunk-\d+-trace\.csv", p.name) for p in a.src.iterdir()):
        ap.error(f"{a.src} has no chunk-N-trace.csv files")
    subset(a.src, a.dst, a.day)


if __name__ == "__main__":
    main()
