"""Issue 13 speed criterion: the azure-conv hour with prefix caching on takes at most 1.5x the
time it takes without the block manager.

Runs, side by side and alternating (this machine is noisy), the azure-conv hour under
`slide-bounded`:

* ``old``: the code before the prefix-caching block manager (a git worktree of ``--base``);
* ``new``: this tree, no prefixes (prefix caching on, nothing to cache: the default path);
* ``new+prefix``: this tree with ``--shared-prefix 512`` (every request of a class starts with the
  same 512-token system prompt), prefix caching on;
* ``new+prefix, off``: the same workload with ``--no-prefix-caching``.

Times are the child process's user+system CPU seconds (less sensitive to other load than wall
time); the median of ``--repeat`` runs each, and the ratios to ``old``.

    python benchmarks/prefix_speed.py --base 89ae280 --out docs/results/prefix_speed.txt
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import loadavg, table

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["simulate", "--trace", "azure-conv", "--policy", "slide-bounded", "-q"]


def cpu_run(src: Path, extra: list[str]) -> float:
    """CPU seconds of one `proserve simulate` run with ``src`` first on the path."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "PYTHONPATH": str(src)}
    subprocess.run([sys.executable, "-m", "proserve.cli", *ARGS, *extra], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="89ae280", help="commit before the block manager")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-f", "--detach", str(old),
                        a.base], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            setups = {
                "old": (old / "src", []),
                "new": (ROOT / "src", []),
                "new+prefix": (ROOT / "src", ["--shared-prefix", "512"]),
                "new+prefix, off": (ROOT / "src", ["--shared-prefix", "512",
                                                   "--no-prefix-caching"]),
            }
            times: dict[str, list[float]] = {k: [] for k in setups}
            for _ in range(a.repeat):
                for name, (src, extra) in setups.items():
                    times[name].append(cpu_run(src, extra))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)],
                           check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    med = {k: statistics.median(v) for k, v in times.items()}
    lines = [f"# host load {loadavg()}; base {a.base}; {a.repeat} runs each, CPU seconds"]
    rows = [[k, f"{med[k]:.2f}", f"{min(v):.2f}", f"{max(v):.2f}", f"{med[k] / med['old']:.2f}"]
            for k, v in times.items()]
    print(lines[0])
    table(["setup", "median s", "min s", "max s", "vs old"], rows)
    if a.out:
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            print(lines[0])
            table(["setup", "median s", "min s", "max s", "vs old"], rows)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(buf.getvalue())


if __name__ == "__main__":
    main()
