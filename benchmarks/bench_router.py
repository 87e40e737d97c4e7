"""Router decision cost: microseconds per decision at 8, 32 and 128 instances, every router.

Load per instance (seeded): a prefill queue of 0-6 requests (prompts of 50-4,000 tokens, queued
up to 0.5 s ago) and 10-120 running decodes (prompts of 300-2,300 tokens, 1-300 tokens generated),
a quarter of the instances idle, KV usage 2-96%. It is held the way the gateway holds it: one
:class:`proserve.serve.gateway.Backend` per instance with those requests in flight, 16 such fleets
drawn and cycled through. One decision per simulated millisecond; each routes a new request
(50-4,000 prompt tokens, alternately high and low class) arriving at that moment. Four modes, each
with its own router object and the identical request stream:

* ``warm``: 16 sets of views built once and reused for every call, ``taken_at`` moved to the
  call's time. The router's per-view memo (GoRouting's queue rows) is warm after the first 16
  calls and its dispatch-record compensation is empty. Timed: ``route()``. (What this benchmark
  measured before it had modes; no gateway decision looks like this.)
* ``fresh``: new views built for every call (not timed), ``taken_at`` = now: the memo is cold and
  compensation empty, as in the gateway, which rebuilds every view per admission. Timed:
  ``route()``.
* ``gateway``: the gateway's whole decision (``Gateway._admit`` without the waiting):
  ``Backend.view(now)`` for every backend, ``route()``, and ``Gateway._predicted_ttft`` on the
  chosen view. Timed: all three; ``build_p50_us`` is the view building alone.
* ``stale``: views rebuilt every ``--view-interval-ms`` (a gateway or simulator that refreshes its
  views periodically, ``--view-interval`` in the simulator) and reused in between with
  ``taken_at`` in the past, so the router adds its own dispatches since the view (the
  compensation of :class:`proserve.cluster.base.BaseRouter`) to every decision. Timed:
  ``route()``; the rebuild is not.

The modes take turns in blocks of ``--block`` calls on the same fleets, so load from a busy
neighbour on the host lands on all of them alike; compare modes within one run.

gc stays enabled while timing; the fleets themselves are frozen out of the collector
(``gc.freeze``), so only what a decision allocates is collected.

    python benchmarks/bench_router.py [--instances 8,32,128] [--calls 2000] \\
        [--modes warm,fresh,gateway,stale] [--view-interval-ms 20] [--block 250] \\
        [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

from proserve.cluster.base import make_router, router_names
from proserve.core.request import Request
from proserve.latency.profiles import load_profile
from proserve.serve.gateway import Backend, Gateway

MODES = ("warm", "fresh", "gateway", "stale")
FLEETS = 16  # distinct fleet states cycled through


def make_fleet(n: int, rng: np.random.Generator, model) -> tuple[list[Backend], list[tuple]]:
    """``n`` backends with requests in flight, and (request, age) of every queued prefill."""
    backends, queued = [], []
    rid = 0
    for i in range(n):
        b = Backend(i, f"http://instance-{i}", "proserve", model)
        idle = rng.random() < 0.25
        for _ in range(0 if idle else int(rng.integers(0, 7))):
            hi = rng.random() < 0.5
            r = Request(rid, 0.0, int(rng.integers(50, 4000)), 200, 0.5, 0.03,
                        weight=2.0 if hi else 1.0, priority=0 if hi else 1,
                        cls="high" if hi else "low")
            queued.append((r, float(rng.uniform(0, 0.5))))
            b.inflight[rid] = r
            rid += 1
        for _ in range(0 if idle else int(rng.integers(10, 121))):
            r = Request(rid, 0.0, int(rng.integers(300, 2300)), 400, 0.5, 0.03)
            r.generated = int(rng.integers(1, 301))
            b.inflight[rid] = r
            rid += 1
        b.scraped_kv_usage = float(rng.uniform(0.02, 0.96))
        backends.append(b)
    return backends, queued


def rebase(queued: list[tuple], now: float) -> None:
    """Queued prefills arrived ``age`` seconds before ``now`` (so their deadlines stay ahead)."""
    for r, age in queued:
        r.arrival = now - age


class Runner:
    """One mode's router and state; ``run(k)`` makes its next ``k`` timed decisions."""

    def __init__(self, router: str, n: int, mode: str, seed: int, interval_s: float,
                 fleets: list) -> None:
        kw = {"shares": {"high": 1.0, "low": 1.0}} if router == "static-partition" else {}
        self.rt = make_router(router, seed=seed, **kw)
        if hasattr(self.rt, "set_instances"):
            self.rt.set_instances(n)
        self.mode, self.interval_s, self.fleets = mode, interval_s, fleets
        self.req_rng = np.random.default_rng(seed + 1)  # same request stream in every mode
        self.warm = []
        if mode == "warm":
            for backends, queued in fleets:
                rebase(queued, 0.0)
                self.warm.append([b.view(0.0) for b in backends])
        self.views: list | None = None
        self.refreshed, self.k, self.j = -1.0, 0, 0
        self.out: list[float] = []
        self.build: list[float] = []

    def run(self, calls: int) -> None:
        rt, fleets = self.rt, self.fleets
        for _ in range(calls):
            j = self.j
            self.j += 1
            now = 0.001 * (j + 1)
            hi = j % 2 == 0
            req = Request(10**7 + j, now, int(self.req_rng.integers(50, 4000)), 200, 0.5, 0.03,
                          weight=2.0 if hi else 1.0, priority=0 if hi else 1,
                          cls="high" if hi else "low")
            backends, queued = fleets[j % FLEETS]
            if self.mode == "warm":
                views = self.warm[j % FLEETS]
                for v in views:
                    v.taken_at = now  # refreshed: earlier dispatches are included
            elif self.mode == "fresh":
                rebase(queued, now)
                views = [b.view(now) for b in backends]
            elif self.mode == "gateway":
                rebase(queued, now)
                t0 = time.perf_counter()
                vmap = {b.index: b.view(now) for b in backends}
                t1 = time.perf_counter()
                i = rt.route(req, list(vmap.values()), now)
                Gateway._predicted_ttft(vmap[i], req)
                t2 = time.perf_counter()
                self.build.append((t1 - t0) * 1e6)
                self.out.append((t2 - t0) * 1e6)
                continue
            else:  # stale
                if self.views is None or now - self.refreshed >= self.interval_s - 1e-9:
                    backends, queued = fleets[self.k % FLEETS]
                    self.k += 1
                    rebase(queued, now)
                    self.views = [b.view(now) for b in backends]
                    self.refreshed = now
                views = self.views
            t0 = time.perf_counter()
            rt.route(req, views, now)
            self.out.append((time.perf_counter() - t0) * 1e6)


def bench(router: str, n: int, modes: list[str], calls: int, block: int, seed: int,
          interval_s: float) -> dict[str, Runner]:
    """Every mode on the same fleets, interleaved in blocks of ``block`` calls so that a busy
    neighbour on the host slows all modes alike."""
    model = load_profile("llama3.1-8b@h100")
    rng = np.random.default_rng(seed)
    fleets = [make_fleet(n, rng, model) for _ in range(FLEETS)]
    runners = {m: Runner(router, n, m, seed, interval_s, fleets) for m in modes}
    # the 16 fleets are this benchmark's fixtures (up to ~130k requests at 128 instances): keep
    # them out of the collector's full passes, which a gateway holding one fleet would not pay
    gc.collect()
    gc.freeze()
    try:
        done = 0
        while done < calls:
            k = min(block, calls - done)
            for m in modes:
                runners[m].run(k)
            done += k
    finally:
        gc.unfreeze()
    return runners


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--instances", default="8,32,128")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--block", type=int, default=250,
                    help="modes take turns in blocks of this many calls")
    ap.add_argument("--view-interval-ms", type=float, default=20.0,
                    help="stale mode: view refresh interval (decisions are 1 ms apart)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    sizes = [int(x) for x in a.instances.split(",")]
    modes = [m for m in a.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad:
        ap.error(f"unknown mode(s) {bad}; choose from {list(MODES)}")
    load_before = [round(x, 2) for x in os.getloadavg()]
    print(f"bench_router: us per decision, {a.calls} calls per cell, modes {modes}, stale views "
          f"refreshed every {a.view_interval_ms:g} ms, load average {load_before} "
          "(shared, noisy 2-core host)")
    rows = []
    for router in router_names():
        for n in sizes:
            runners = bench(router, n, modes, a.calls, a.block, a.seed,
                            a.view_interval_ms / 1000.0)
            for mode, rn in runners.items():
                row = {"mode": mode, "router": router, "instances": n,
                       "p50_us": statistics.median(rn.out),
                       "p90_us": float(np.percentile(rn.out, 90))}
                if rn.build:
                    row["build_p50_us"] = statistics.median(rn.build)
                rows.append(row)
    for mode in modes:
        print(f"\nmode {mode}")
        print(f"{'router':18s}" + "".join(f"{f'N={n} p50':>12s}{'p90':>9s}" for n in sizes))
        for router in router_names():
            line = f"{router:18s}"
            for n in sizes:
                r = next(x for x in rows if x["mode"] == mode and x["router"] == router
                         and x["instances"] == n)
                line += f"{r['p50_us']:12.1f}{r['p90_us']:9.1f}"
            print(line)
    def cell(mode, router, n):
        return next((r for r in rows if r["mode"] == mode and r["router"] == router
                     and r["instances"] == n), None)

    if "warm" in modes:
        print("\np50 relative to warm (same run)")
        for mode in modes:
            if mode == "warm":
                continue
            for router in router_names():
                print(f"{mode:8s}{router:18s}" + "".join(
                    f"{cell(mode, router, n)['p50_us'] / cell('warm', router, n)['p50_us']:9.2f}x"
                    for n in sizes))
    for mode in modes:
        go32 = cell(mode, "go", 32)
        if go32:
            print(f"target: go <= 100 us at 32 instances, {mode}: {go32['p50_us']:.1f} us "
                  f"({'ok' if go32['p50_us'] <= 100 else 'MISS'})")
    if a.json:
        host = {"python": platform.python_version(), "platform": platform.platform(),
                "cpus": os.cpu_count(), "loadavg_before": load_before,
                "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
        with open(a.json, "w") as f:
            json.dump({"benchmark": "bench_router", "command": " ".join(sys.argv),
                       "host": host, "settings": vars(a), "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
