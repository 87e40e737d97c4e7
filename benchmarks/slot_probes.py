"""Probes of ``slide-bounded`` on a slot-bound engine (vLLM's meaning of ``max_num_seqs``).

Not policies: each probe changes one mechanism of the plug-in's policy in the simulator, to see
which one costs gain or tail where sequence slots, not step time, are scarce (the vLLM plug-in's
workloads of ``vllm_plugin_compare.py``; docs/BENCHMARKS.md section 15):

* ``displace-once``: the tail preemption displaces a request at most once (its KV is recomputed
  at most once), instead of whenever a higher-class request without KV waits;
* ``slice-own``: the late slice's sequence-slot quota counts only the requests the slice itself
  admitted, instead of every resident request whose first token was late (those the gain order
  admitted too, which otherwise use up the quota the oldest requests need);
* ``late-behind``: a waiting request that can no longer make its first-token deadline is ordered
  after every request that can, oldest first (instead of by gain density among URGENT).

    python benchmarks/slot_probes.py [--seconds 20] [--tpot 0.1]
        [--probes displace-once,slice-own,late-behind]

Prints, per workload, vLLM priority, ``slide-bounded`` (its late slice a share of admissions),
``slide-bounded`` with ``late_slots=held`` (its first rule: a share of the held slots) and
``slide-nostarve`` (all with vLLM's slot semantics, as the plug-in runs them) and each probe:
TDG, high-class TTFT-SLO attainment, preemptions, when the backlog is drained, TTFT p99 and the
longest wait.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import table
from proserve.core.metrics import summarize
from proserve.engine import make_scheduler
from proserve.engine.slide_bounded import SlideBounded
from proserve.latency.profiles import load_profile
from proserve.sim.simulator import simulate
from vllm_plugin_compare import CLASSES, CPU_MAX_BATCHED_TOKENS, churn_and_tail, workload

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = ((60.0, 16, 0), (30.0, 4, 0), (45.0, 8, 1))  # vllm_plugin_compare.py's three


class DisplaceOnce(SlideBounded):
    """Tail preemption displaces only requests never displaced before."""

    @staticmethod
    def may_displace(victim, best) -> bool:
        return victim.priority > best.priority and victim.preemptions == 0


class SliceOwn(SlideBounded):
    """The late slice's slot quota counts only the requests the slice admitted (a probe of the
    held-slot quota, ``late_slots="held"``)."""

    def __init__(self, model, **kw) -> None:
        super().__init__(model, late_slots="held", **kw)
        self.admitted: dict[int, object] = {}

    def _late_holding(self, now, slots, small) -> int:
        self.admitted = {k: r for k, r in self.admitted.items() if r.blocks > 0}
        return len(self.admitted)

    def _walk(self, order, budget, out, tok_cap=None) -> None:
        n0 = len(out.reqs)
        fresh = {id(r) for r in order if not r.blocks}
        super()._walk(order, budget, out, tok_cap)
        if tok_cap is not None:  # the late slice's walk (the gain-ordered walk passes None)
            for r in out.reqs[n0:]:
                if id(r) in fresh:
                    self.admitted[id(r)] = r


class LateBehind(SlideBounded):
    """Waiting requests past their first-token deadline go after all others, oldest first.
    (The short-queue Python path everywhere: the probe overrides its per-row key only.)"""

    def __init__(self, model, **kw) -> None:
        super().__init__(model, small_queue=10**9, **kw)

    def row_key(self, r, t_hat, rem, urgent):
        if r.in_prefill and not r.blocks and rem < t_hat + self.model.c0:
            return 5, r.arrival
        return super().row_key(r, t_hat, rem, urgent)


PROBES = {"displace-once": DisplaceOnce, "slice-own": SliceOwn, "late-behind": LateBehind}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--tpot", type=float, default=0.1,
                    help="every request's TPOT SLO in seconds (vllm_plugin_compare.py's --tpot)")
    ap.add_argument("--probes", default=",".join(PROBES))
    ap.add_argument("--profile", default=str(ROOT / "docs/results/vllm-cpu-tiny.yaml"))
    a = ap.parse_args()
    m = load_profile(a.profile)
    kw = {"max_num_batched_tokens": CPU_MAX_BATCHED_TOKENS}
    probes = [p for p in a.probes.split(",") if p]
    unknown = [p for p in probes if p not in PROBES]
    if unknown:
        raise SystemExit(f"--probes: unknown probe(s) {unknown}; known: {', '.join(PROBES)}")

    def named(policy: str, **extra):
        return lambda seqs: make_scheduler(policy, m, max_num_seqs=seqs, **kw, **extra)

    def probe(cls):
        return lambda seqs: cls(m, max_num_seqs=seqs, resident_seqs=True, **kw)

    variants = {"vllm priority": named("vllm-priority"),
                "slide-bounded": named("slide-bounded", resident_seqs=True),
                "slide-bounded late_slots=held": named("slide-bounded", resident_seqs=True,
                                                       late_slots="held"),
                "slide-nostarve": named("slide-nostarve", resident_seqs=True)}
    variants.update({f"slide-bounded {p}": probe(PROBES[p]) for p in probes})
    for rate, seqs, seed in WORKLOADS:
        rows = []
        for name, make in variants.items():
            reqs = workload(rate, a.seconds, seed, 1.0, a.tpot)
            eng = make(seqs)
            simulate(reqs, [eng], ingress_s=float(m.meta.get("request_overhead_s", 0.0)))
            s = summarize(reqs, 1.0, 1.0, list(CLASSES))
            rows.append([name, f"{100 * s['tdg_ratio']:.1f}",
                         f"{100 * s['per_class']['high']['ttft_attainment']:.1f}",
                         *churn_and_tail(reqs, eng, s)])
        print(f"simulated, profile {m.name}, vLLM slots, --max-num-seqs {seqs}, {rate:g} req/s "
              f"for {a.seconds:g} s, seed {seed}, TPOT SLO {1000 * a.tpot:g} ms", flush=True)
        table(["policy", "TDG %", "high TTFT-SLO %", "preemptions", "drained s", "TTFT p99 s",
               "longest wait s"], rows)


if __name__ == "__main__":
    main()
