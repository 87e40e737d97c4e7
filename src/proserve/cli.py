"""The ``proserve`` command (typer + rich)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(
    add_completion=False, no_args_is_help=True,
    help="Multi-priority, SLO-aware LLM serving: simulate and compare scheduling policies.",
)
out_console = Console()
if not out_console.is_terminal:  # pipes and CI logs: do not squeeze the tables into 80 columns
    out_console = Console(width=140)
err = Console(stderr=True, soft_wrap=True)


def _fail(msg: str) -> None:
    err.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(2)


def _parse_value(v: str) -> Any:
    from .experiments.sweep import parse_scalar  # one parser for the CLI and sweep configs

    return parse_scalar(v)


def _policy_args(items: list[str] | None, flag: str = "--policy-arg") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for it in items or []:
        k, eq, v = it.partition("=")
        if not eq or not k.strip():
            _fail(f"{flag} expects key=value, got {it!r}")
        out[k.strip().replace("-", "_")] = _parse_value(v.strip())
    return out


def _config(**kw: Any):
    from .core.classes import SpecError
    from .sim.run import SimConfig

    try:
        return SimConfig(**kw)
    except ValidationError as e:
        msgs = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'config'}: {x['msg']}" for x in e.errors())
        _fail(msgs)
    except (SpecError, ValueError) as e:
        _fail(str(e))


def _fmt(v: Any, pct: bool = False, ms: bool = False) -> str:
    if v is None:
        return "-"
    if pct:
        return f"{100 * v:.1f}%"
    if ms:
        return f"{1000 * v:.0f}"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def summary_table(res: dict) -> Table:
    t = Table(title=f"{res['policy']} on {res['workload'].get('trace', '?')} "
                    f"({res['instances']} instance(s), {res.get('mode', 'colocated')}, "
                    f"router {res['router']}, profile {res['profile']})")
    for col in ("class", "requests", "finished", "rejected", "TDG ratio", "SLO attain",
                "goodput r/s", "TTFT p50/p99 ms", "TPOT p50/p99 ms", "E2E p99 s",
                "longest wait s", "preempt"):
        t.add_column(col, justify="right")
    # prefix caching: a column only when the workload has prefix identity (hash_ids, --shared-prefix)
    prefix = bool(res.get("workload", {}).get("prefixes"))
    if prefix:
        t.add_column("prefix hit", justify="right")
    rows = [("all", res)] + list(res["per_class"].items())
    for name, m in rows:
        t.add_row(
            name, str(m["requests"]), str(m["finished"]), str(m.get("rejected", 0)),
            _fmt(m["tdg_ratio"], pct=True), _fmt(m["slo_attainment"], pct=True),
            _fmt(m["goodput_rps"]),
            f"{_fmt(m['ttft_p50'], ms=True)}/{_fmt(m['ttft_p99'], ms=True)}",
            f"{_fmt(m['tpot_p50'], ms=True)}/{_fmt(m['tpot_p99'], ms=True)}",
            _fmt(m.get("e2e_p99")), _fmt(m.get("max_wait_s")), str(m["preemptions"]),
            *([_fmt(m.get("prefix_hit_rate"), pct=True)] if prefix else []),
        )
    return t


TraceOpt = typer.Option("azure-conv", "--trace", help="Trace file or built-in name (see `proserve traces`).")
RateOpt = typer.Option(None, "--rate", help="Target request rate (req/s); timestamped traces are time-scaled to it.")
DurOpt = typer.Option(None, "--duration", help="Truncate the workload to this many seconds.")
CountOpt = typer.Option(None, "--count", help="Truncate the workload to this many requests.")
ProfileOpt = typer.Option("llama3.1-8b@h100", "--profile", help="Latency profile name or file (see `proserve profiles`).")
ClassesOpt = typer.Option(None, "--classes", help="Priority classes, e.g. 'high:w=2,share=0.5;low:w=1,share=0.5' (the default).")
SeedOpt = typer.Option(0, "--seed", help="Seed for every random choice (same seed -> same result).")
KvOpt = typer.Option(None, "--kv-blocks", help="Override the profile's KV capacity in blocks.")
ArrOpt = typer.Option("poisson", "--arrival", help="Arrivals for length-only traces: poisson | gamma.")
CvOpt = typer.Option(1.0, "--cv", help="Coefficient of variation of gamma inter-arrival times.")
SynthOpt = typer.Option(False, "--synthetic-arrivals", help="Timestamped traces: keep only their lengths and draw --arrival (Poisson) arrivals at --rate, as PolyServe's evaluation does.")
SharedPrefixOpt = typer.Option(0, "--shared-prefix", help="Every request of a tenant (its class, if the trace has none) starts with the same system prompt of this many tokens (prompt lengths unchanged); for traces without prefix ids (Mooncake's hash_ids are always used).")
MultiTurnOpt = typer.Option(0, "--multi-turn", help="Deal the requests into sessions of this many turns whose prompts resend the conversation so far (each trace request is one turn's new message and reply); for traces without prefix ids.")
PrefixCacheOpt = typer.Option(True, "--prefix-caching/--no-prefix-caching", help="vLLM-style prefix caching of prompt blocks (on by default, as in vLLM); acts only on requests with prefix identity.")
PreemptOpt = typer.Option("recompute", "--preemption", help="What happens to a preempted request's KV: recompute (vLLM today) | offload-sync | offload-async | full (ProServe: async offload, pipelined reload, adaptive copy budget, eager backup) | full-nobudget | full-nobackup.")
HostKvOpt = typer.Option(None, "--host-kv-blocks", help="Host memory for offloaded KV: a block count or a factor of the device blocks ('4x', the default when offloading).")
DrainOpt = typer.Option(300.0, "--drain", help="Simulated seconds to keep serving after the last arrival.")
TenantOpt = typer.Option(None, "--tenant-classes", help="Map tenants (ServeGen clients) to classes: 'volume' (heaviest tenants to the first class, by share), 'top:0.2', or 'client-5=high,client-9=low'.")
RouterOpt = typer.Option(None, "--router", help="Router across instances (see `proserve routers`); default round-robin when instances > 1.")
RArgOpt = typer.Option(None, "--router-arg", help="Router parameter key=value (repeatable), e.g. alpha=0.8.")
MaxLenOpt = typer.Option(None, "--max-model-len", help="Cap each request's prompt + output at this many tokens (the server's --max-model-len).")
ViewOpt = typer.Option(0.0, "--view-interval", help="Milliseconds between router view refreshes (0: exact views).")
ModeOpt = typer.Option("colocated", "--mode", help="colocated | disaggregated (separate prefill and decode pools).")
PInstOpt = typer.Option(None, "--prefill-instances", help="Prefill pool size (disaggregated mode).")
DInstOpt = typer.Option(None, "--decode-instances", help="Decode pool size (disaggregated mode).")
LinkOpt = typer.Option(50.0, "--kv-link-gbs", help="KV transfer bandwidth prefill->decode in GB/s (disaggregated mode).")
PArgOpt = typer.Option(None, "--policy-arg", help="Policy parameter key=value (repeatable), e.g. lam=0.9.")
NoiseOpt = typer.Option(0.05, "--latency-noise", help="Prediction error: each step takes the truth latency times seeded gamma noise of this CV (0 = exact). Default 0.05, the measured profiles' error.")
TruthOpt = typer.Option(None, "--truth-profile", help="Profile the steps really take (default: --profile); policies and routers still plan with --profile.")


@app.command()
def simulate(
    trace: str = TraceOpt,
    rate: float | None = RateOpt,
    duration: float | None = DurOpt,
    count: int | None = CountOpt,
    policy: str | None = typer.Option(None, "--policy", help="Engine scheduler (see `proserve policies`). Default: slide-bounded (the recommended one), or the router's own engine (polyserve: dynamic-chunk; co-chunk: sarathi-fcfs)."),
    profile: str = ProfileOpt,
    seed: int = SeedOpt,
    classes: str | None = ClassesOpt,
    kv_blocks: int | None = KvOpt,
    arrival: str = ArrOpt,
    cv: float = CvOpt,
    synthetic_arrivals: bool = SynthOpt,
    shared_prefix: int = SharedPrefixOpt,
    multi_turn: int = MultiTurnOpt,
    prefix_caching: bool = PrefixCacheOpt,
    preemption: str = PreemptOpt,
    host_kv_blocks: str | None = HostKvOpt,
    drain: float = DrainOpt,
    policy_arg: list[str] | None = PArgOpt,
    tenant_classes: str | None = TenantOpt,
    instances: int = typer.Option(1, "--instances", help="Engine instances (co-located mode)."),
    router: str | None = RouterOpt,
    router_arg: list[str] | None = RArgOpt,
    view_interval: float = ViewOpt,
    mode: str = ModeOpt,
    prefill_instances: int | None = PInstOpt,
    decode_instances: int | None = DInstOpt,
    kv_link_gbs: float = LinkOpt,
    w_p: float = typer.Option(1.0, "--w-p", help="TDG weight of the first token."),
    w_d: float = typer.Option(1.0, "--w-d", help="TDG weight of each later token."),
    max_model_len: int | None = MaxLenOpt,
    latency_noise: float = NoiseOpt,
    truth_profile: str | None = TruthOpt,
    admission: bool = typer.Option(False, "--admission", help="Admission control as the gateway does it: a request predicted to miss its TTFT SLO waits up to --queue-timeout for capacity, then is served late or refused (429); --shed classes are refused at once."),
    queue_timeout: float = typer.Option(5.0, "--queue-timeout", help="With --admission: seconds a late request may wait for capacity (the gateway's default)."),
    shed: str | None = typer.Option(None, "--shed", help="With --admission: comma-separated sheddable classes (refused at once when predicted late)."),
    yield_share: float = typer.Option(0.0, "--yield-share", help="With --shed: the share of the engine heavier classes are expected to take while a sheddable request waits; its predicted TTFT is stretched by 1/(1-share) before it is judged (0: as predicted). See cluster/admission.py."),
    yield_target: float | None = typer.Option(None, "--yield-target", help="With --shed: an adaptive share instead of a constant one: it rises when a request of a heavier class misses its SLO (late first token, refusal, slow decode) and falls when one meets it, settling where they meet it this often (e.g. 0.95); --yield-share is then where it starts. See cluster/admission.py."),
    request_overhead_ms: float | None = typer.Option(None, "--request-overhead-ms", help="Fixed per-request latency outside the engine (API server, network), ms. Default: the profile's measured value (profiles from `proserve profile --server`), else 0."),
    out: Path | None = typer.Option(None, "--out", help="Write the full result as JSON here."),
    reproducible: bool = typer.Option(False, "--reproducible", help="Write sim_wall_s as 0 so identical runs give byte-identical JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or table."),
) -> None:
    """Replay a workload through simulated engine instances under one policy."""
    from .sim.run import run

    cfg = _config(
        trace=trace, rate=rate, duration=duration, count=count, policy=policy,
        policy_args=_policy_args(policy_arg), profile=profile, seed=seed, classes=classes,
        kv_blocks=kv_blocks, arrival=arrival, cv=cv, drain_s=drain, instances=instances,
        synthetic_arrivals=synthetic_arrivals,
        shared_prefix_tokens=shared_prefix, multi_turn=multi_turn,
        prefix_caching=prefix_caching,
        preemption=preemption, host_kv_blocks=host_kv_blocks,
        w_p=w_p, w_d=w_d, tenant_classes=tenant_classes, router=router,
        router_args=_policy_args(router_arg, "--router-arg"), view_interval_ms=view_interval,
        mode=mode, prefill_instances=prefill_instances, decode_instances=decode_instances,
        kv_link_gbytes_s=kv_link_gbs, request_overhead_ms=request_overhead_ms,
        max_model_len=max_model_len, latency_noise=latency_noise, truth_profile=truth_profile,
        admission=admission, queue_timeout_s=queue_timeout,
        shed_classes=[c.strip() for c in (shed or "").split(",") if c.strip()],
        yield_share=yield_share, yield_target=yield_target,
    )
    try:
        if quiet:
            res = run(cfg)
        else:
            with Progress(TextColumn("[bold]simulating"), BarColumn(), TextColumn("t={task.completed:.0f}s"),
                          TimeElapsedColumn(), console=err, transient=True) as prog:
                task = prog.add_task("sim", total=None)
                res = run(cfg, progress=lambda t: prog.update(task, completed=t))
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    if reproducible:
        res["sim_wall_s"] = 0.0
    if not quiet:
        out_console.print(summary_table(res))
        w = res["workload"]
        err.print(f"{res['requests']} requests, {res['steps']} engine steps, "
                  f"simulated {res['sim_end_s']:.1f}s in {res['sim_wall_s']:.2f}s wall"
                  + ("" if res["drained"] else f"; {res['unfinished']} unfinished at drain end")
                  + (f"; achieved rate {w.get('rate', 0):.2f} req/s" if w.get("rate") else ""))
        for c, a in (res.get("adaptive_shares") or {}).items():
            err.print(f"adaptive yield share of {c!r} (target {a['target']:g}): "
                      f"{a['final_share']:.3f} at the end; heavier classes' requests "
                      f"{a['heavier_misses']} missed, {a['heavier_hits']} met")
        k = res.get("kv") or {}
        if res.get("preemptions") or k.get("preemption_mode", "recompute") != "recompute":
            err.print(f"preemption {k.get('preemption_mode')}: "
                      f"{k.get('preemptions_offload', 0)} offloaded, "
                      f"{k.get('preemptions_recompute', 0)} recomputed "
                      f"({k.get('recomputed_tokens', 0)} tokens); KV blocks "
                      f"{k.get('blocks_offloaded', 0)} out / {k.get('blocks_reloaded', 0)} in / "
                      f"{k.get('blocks_backed_up', 0)} backed up; steps waited "
                      f"{k.get('copy_wait_s', 0.0):.2f} s on copies")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1, sort_keys=False) + "\n")
        if not quiet:
            err.print(f"wrote {out}")


@app.command()
def compare(
    policies: str = typer.Option("vllm-fcfs,vllm-priority,sarathi-fcfs,sarathi-priority,vtc,fairbatching,slide,slide-nostarve,slide-bounded",
                                 "--policies", help="Comma-separated policies."),
    rates: str = typer.Option(..., "--rates", help="Comma-separated request rates (req/s)."),
    trace: str = TraceOpt,
    duration: float | None = DurOpt,
    count: int | None = CountOpt,
    profile: str = ProfileOpt,
    seed: int = SeedOpt,
    classes: str | None = ClassesOpt,
    kv_blocks: int | None = KvOpt,
    arrival: str = ArrOpt,
    cv: float = CvOpt,
    synthetic_arrivals: bool = SynthOpt,
    shared_prefix: int = SharedPrefixOpt,
    multi_turn: int = MultiTurnOpt,
    prefix_caching: bool = PrefixCacheOpt,
    preemption: str = PreemptOpt,
    host_kv_blocks: str | None = HostKvOpt,
    drain: float = DrainOpt,
    tenant_classes: str | None = TenantOpt,
    instances: int = typer.Option(1, "--instances", help="Engine instances per run."),
    routers: str | None = typer.Option(None, "--routers", help="Comma-separated routers: the grid gets a router dimension."),
    view_interval: float = ViewOpt,
    mode: str = ModeOpt,
    prefill_instances: int | None = PInstOpt,
    decode_instances: int | None = DInstOpt,
    kv_link_gbs: float = LinkOpt,
    latency_noise: float = NoiseOpt,
    truth_profile: str | None = TruthOpt,
    workers: int | None = typer.Option(None, "--workers", help="Parallel processes (default: CPU count)."),
    out: Path = typer.Option(Path("compare-out"), "--out", help="Output directory for results.csv, plot.png, results.json."),
) -> None:
    """Run a policy x rate grid in parallel; write CSV, JSON and a plot of TDG ratio and attainment."""
    from .experiments.compare import label, plot, run_grid, write_csv

    pols = [p.strip() for p in policies.split(",") if p.strip()]
    try:
        rate_list = [float(r) for r in rates.split(",") if r.strip()]
    except ValueError:
        _fail(f"--rates must be comma-separated numbers, got {rates!r}")
    if not pols or not rate_list or any(r <= 0 for r in rate_list):
        _fail("need at least one policy and positive rates")
    base = _config(trace=trace, duration=duration, count=count, policy=pols[0], profile=profile,
                   seed=seed, classes=classes, kv_blocks=kv_blocks, arrival=arrival, cv=cv,
                   synthetic_arrivals=synthetic_arrivals,
                   shared_prefix_tokens=shared_prefix, multi_turn=multi_turn,
        prefix_caching=prefix_caching,
        preemption=preemption, host_kv_blocks=host_kv_blocks,
                   drain_s=drain, instances=instances, rate=rate_list[0],
                   tenant_classes=tenant_classes, view_interval_ms=view_interval, mode=mode,
                   prefill_instances=prefill_instances, decode_instances=decode_instances,
                   kv_link_gbytes_s=kv_link_gbs, latency_noise=latency_noise,
                   truth_profile=truth_profile)
    router_list: list[str | None] = [r.strip() for r in routers.split(",") if r.strip()] if routers else [None]
    for p in pols:
        for rt in router_list:
            _config(**{**base.model_dump(), "policy": p, "router": rt})
    out.mkdir(parents=True, exist_ok=True)
    n = len(pols) * len(rate_list) * len(router_list)
    try:
        with Progress(TextColumn("[bold]grid"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("{task.description}"), console=err) as prog:
            task = prog.add_task("", total=n)
            results = run_grid(base, pols, rate_list, routers=router_list, workers=workers,
                               on_done=lambda r: prog.update(task, advance=1, description=f"{label(r)}@{r['config']['rate']:g}"))
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    write_csv(results, out / "results.csv")
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, out / "plot.png", f"{trace} / {profile} / {instances} instance(s)")
    out_console.print(_rate_table(
        "TDG ratio (SLO attainment) by rate", results, rate_list, label,
        lambda m: f"{100 * m['tdg_ratio']:.1f} ({100 * m['slo_attainment']:.1f})"))
    out_console.print(_rate_table(
        "TTFT p99 s (longest wait s) by rate", results, rate_list, label,
        lambda m: f"{_fmt(m.get('ttft_p99'))} ({_fmt(m.get('max_wait_s'))})"))
    err.print(f"wrote {out / 'results.csv'}, {out / 'results.json'}, {out / 'plot.png'}")


@app.command()
def goodput(
    trace: str = TraceOpt,
    duration: float | None = typer.Option(600.0, "--duration", help="Seconds of the trace per simulated point."),
    count: int | None = CountOpt,
    policy: str | None = typer.Option(None, "--policy", help="Engine scheduler (see `proserve policies`). Default: slide-bounded, or the router's own engine (polyserve: dynamic-chunk; co-chunk: sarathi-fcfs)."),
    policy_arg: list[str] | None = PArgOpt,
    router: str | None = RouterOpt,
    router_arg: list[str] | None = RArgOpt,
    instances: int = typer.Option(1, "--instances", help="Engine instances (co-located mode)."),
    mode: str = ModeOpt,
    prefill_instances: int | None = PInstOpt,
    decode_instances: int | None = DInstOpt,
    profile: str = ProfileOpt,
    classes: str | None = ClassesOpt,
    seed: int = SeedOpt,
    arrival: str = ArrOpt,
    synthetic_arrivals: bool = SynthOpt,
    shared_prefix: int = SharedPrefixOpt,
    multi_turn: int = MultiTurnOpt,
    prefix_caching: bool = PrefixCacheOpt,
    preemption: str = PreemptOpt,
    host_kv_blocks: str | None = HostKvOpt,
    latency_noise: float = NoiseOpt,
    threshold: float = typer.Option(0.9, "--threshold", help="Deadline-SLO attainment the goodput must keep (every token by arrival + TTFT + i*TPOT)."),
    guess: float | None = typer.Option(None, "--guess", help="First rate to try (default: one per instance)."),
    rel_tol: float = typer.Option(0.02, "--rel-tol", help="Stop when the bracket is this close (relative)."),
    workers: int | None = typer.Option(None, "--workers", help="Parallel processes (default: CPU count, at most 4)."),
    out: Path | None = typer.Option(None, "--out", help="Write the result JSON here."),
) -> None:
    """The largest rate the fleet sustains at the attainment threshold, and the fluid bound."""
    from .experiments.goodput import search

    n = (prefill_instances or 0) + (decode_instances or 0) if mode == "disaggregated" else instances
    base = _config(trace=trace, duration=duration, count=count, policy=policy,
                   policy_args=_policy_args(policy_arg), router=router,
                   router_args=_policy_args(router_arg, "--router-arg"), instances=instances,
                   mode=mode, prefill_instances=prefill_instances,
                   decode_instances=decode_instances, profile=profile, classes=classes, seed=seed,
                   arrival=arrival, latency_noise=latency_noise, rate=guess or float(max(n, 1)),
                   synthetic_arrivals=synthetic_arrivals,
                   shared_prefix_tokens=shared_prefix, multi_turn=multi_turn,
        prefix_caching=prefix_caching,
                   preemption=preemption, host_kv_blocks=host_kv_blocks)
    if not 0 < threshold <= 1 or rel_tol <= 0:
        _fail("--threshold must be in (0, 1] and --rel-tol positive")
    try:
        res = search(base, threshold=threshold, guess=guess, rel_tol=rel_tol, workers=workers,
                     on_point=lambda r, a: err.print(f"  {r:9.3f} req/s: attainment {100 * a:5.1f}%"
                                                     + ("" if a >= threshold else "  (fails)")))
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    t = Table(title=f"goodput of {base.policy} ({base.router or 'single'}) x {max(n, 1)} on {trace}, "
                    f">= {100 * threshold:g}% deadline attainment")
    for col in ("goodput req/s", "per instance", "optimal per instance", "fraction of optimal",
                "attainment", "server-seconds"):
        t.add_column(col, justify="right")
    t.add_row(f"{res['goodput_rps']:.3f}", f"{res['goodput_per_instance']:.3f}",
              f"{res['optimal_goodput_per_instance']:.3f}",
              _fmt(res["fraction_of_optimal"], pct=True), _fmt(res["attainment"], pct=True),
              f"{res['server_seconds']:.0f}")
    out_console.print(t)
    ct = Table(title="per class at the goodput rate")
    for col in ("class", "deadline att", "SLO att", "TDG", "TTFT p99 ms", "TPOT p99 ms"):
        ct.add_column(col, justify="right")
    for c, m in res["per_class"].items():
        ct.add_row(c, _fmt(m["deadline_attainment"], pct=True), _fmt(m["slo_attainment"], pct=True),
                   _fmt(m["tdg_ratio"], pct=True), _fmt(m["ttft_p99"], ms=True),
                   _fmt(m["tpot_p99"], ms=True))
    out_console.print(ct)
    err.print(f"{len(res['points'])} rates simulated; first failing rate {res['first_failing_rps']:.3f} req/s")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1) + "\n")
        err.print(f"wrote {out}")


@app.command()
def sweep(
    configs: list[Path] = typer.Argument(..., help="Sweep YAML file(s): name, kind (simulate | goodput), base and grid of simulate/goodput options by long name, optional zip (see experiments/sweep.py). Several files run one after the other, each into OUT/<name>."),
    out: Path | None = typer.Option(None, "--out", help="Output directory (default sweep-out/<name>): sweep.yaml, points/<hash>.json, results.csv, results.parquet, meta.json. With several configs: the parent of one directory per sweep (default sweep-out)."),
    workers: int | None = typer.Option(None, "--workers", help="Parallel processes, or the CPUs of a --ray local cluster (default: CPU count)."),
    ray: str | None = typer.Option(None, "--ray", help="Run the points as Ray tasks: auto (the running cluster), local (start one in this process with --workers CPUs), or a cluster ADDRESS. Needs pip install 'proserve\\[ray]'."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Point cache shared across sweeps (default: OUT/points); found points are copied into OUT/points."),
    limit: int | None = typer.Option(None, "--limit", help="Run only the first N points of each grid (a smoke test of a large sweep)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate the grid and count cached and pending points; run and write nothing."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or table."),
) -> None:
    """Run grids of simulate or goodput points: resumable, each point cached by a hash of its
    configuration, trace and code, in local processes or on Ray."""
    from rich.markup import escape

    from .experiments.sweep import SweepError, load_config

    if workers is not None and workers < 1:
        _fail("--workers must be >= 1")
    if limit is not None and limit < 1:
        _fail("--limit must be >= 1")
    cfgs = []
    for c in configs:  # every config is validated before any runs
        try:
            cfgs.append(load_config(c))
        except SweepError as e:
            _fail(escape(str(e)))
    names = [c.name for c in cfgs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if len(cfgs) > 1 and dup:
        _fail(f"several configs are named {', '.join(dup)}: each sweep needs its own name "
              "(its output directory)")
    totals = [0, 0, 0, 0]  # points, computed, cached, failed
    for cfg in cfgs:
        dest = out if len(cfgs) == 1 else (out or Path("sweep-out")) / cfg.name
        if len(cfgs) > 1 and not quiet:
            err.print(f"[bold]sweep {escape(cfg.name)}[/] -> {dest}")
        res = _one_sweep(cfg, dest, workers, ray, cache_dir, limit, dry_run, quiet)
        totals[0] += res.total
        totals[1] += res.computed
        totals[2] += res.cached
        totals[3] += len(res.failed)
    if len(cfgs) > 1:
        err.print(f"{len(cfgs)} sweeps, {totals[0]} points: "
                  + (f"{totals[0] - totals[2]} to compute (dry run)" if dry_run else
                     f"{totals[1]} computed") + f", {totals[2]} from the cache"
                  + (f", {totals[3]} failed" if totals[3] else ""))
    if totals[3]:
        raise typer.Exit(1)


def _one_sweep(cfg: Any, out: Path | None, workers: int | None, ray: str | None,
               cache_dir: Path | None, limit: int | None, dry_run: bool, quiet: bool) -> Any:
    """One sweep of `proserve sweep`, with its progress bar, table and summary lines."""
    from rich.markup import escape
    from rich.progress import TimeRemainingColumn

    from .experiments.sweep import SweepError, run_sweep

    if dry_run:
        try:
            res = run_sweep(cfg, out, cache_dir=cache_dir, limit=limit, dry_run=True)
        except SweepError as e:
            _fail(escape(str(e)))
        err.print(f"{res.total} points: {len(res.pending)} to compute, {res.cached} from the "
                  f"cache (dry run: nothing run or written)")
        return res
    with Progress(TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), TextColumn("{task.description}"), console=err,
                  disable=quiet) as prog:
        task: list[Any] = []

        def on_start(total: int, cached: int) -> None:
            task.append(prog.add_task("", total=total, completed=cached))

        def on_done(point: Any, doc: dict, cached: bool) -> None:
            if not cached and task:
                prog.update(task[0], advance=1, description=escape(point.label))

        try:
            res = run_sweep(cfg, out, workers=workers, ray=ray, cache_dir=cache_dir, limit=limit,
                            on_start=on_start, on_done=on_done)
        except SweepError as e:
            _fail(escape(str(e)))
    if not quiet and res.rows and len(res.rows) <= 40:
        metrics = (("goodput_rps", "goodput r/s", False), ("fraction_of_optimal", "of optimal", True),
                   ("attainment", "attainment", True)) if cfg.kind == "goodput" else (
            ("tdg_ratio", "TDG ratio", True), ("slo_attainment", "SLO attain", True),
            ("ttft_p99", "TTFT p99 s", False), ("goodput_rps", "goodput r/s", False))
        keys = [k for p in res.points[:1] for k in p.coords]
        t = Table(title=f"sweep {cfg.name} ({cfg.kind})")
        for k in keys:
            t.add_column(k)
        for _, title, _ in metrics:
            t.add_column(title, justify="right")
        for row in res.rows:
            t.add_row(*(str(row.get(k)) for k in keys),
                      *(_fmt(row.get(m), pct=pct) for m, _, pct in metrics))
        out_console.print(t)
    for p, msg in res.failed[:5]:
        err.print(f"[bold red]failed:[/] {escape(p.label)}: {escape(msg)}")
    if len(res.failed) > 5:
        err.print(f"... and {len(res.failed) - 5} more failed points (meta.json lists them)")
    err.print(f"wrote {res.out / 'results.csv'}, {res.out / 'results.parquet'}, "
              f"{res.out / 'meta.json'} and {len(res.docs)} point(s) in {res.out / 'points'}")
    err.print(f"{res.total} points: {res.computed} computed, {res.cached} from the cache"
              + (f", {len(res.failed)} failed" if res.failed else ""))
    return res


@app.command()
def report(
    results: Path = typer.Argument(..., help="A sweep's output directory (sweep.yaml + results.csv, from `proserve sweep`) or a directory holding several, searched recursively."),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="The HTML file to write: self-contained (figures embedded as data: URIs, no network, no other files)."),
) -> None:
    """One self-contained HTML report of sweep results: per sweep its exact configuration, data sources and versions, a table of the main numbers (mean ± 95% CI over seeds) and every figure its grid supports (experiments/report.py lists the rules)."""
    from .experiments.report import ReportError, build_report

    try:
        summary = build_report(results, out)
    except ReportError as e:
        _fail(str(e))
    for w in summary.warnings:
        err.print(f"[yellow]warning:[/] {w}")
    err.print(f"wrote {out}: {len(summary.sweeps)} sweep(s) ({', '.join(summary.sweeps)}), "
              f"{len(summary.figures)} figure(s)")


def _rate_table(title: str, results: list[dict], rates: list[float], label: Any,
                cell: Any) -> Table:
    """One row per series, one column per rate, ``cell(result)`` in each."""
    t = Table(title=title)
    t.add_column("series")
    for r in rates:
        t.add_column(f"{r:g}/s", justify="right")
    for series in dict.fromkeys(label(x) for x in results):
        t.add_row(series, *(cell(next(x for x in results if label(x) == series
                                      and x["config"]["rate"] == r)) for r in rates))
    return t


def _registry_table(title: str, rows: list[tuple[str, str]]) -> None:
    t = Table(title=title)
    t.add_column("name")
    t.add_column("what it does")
    for name, summary in rows:
        t.add_row(name, summary)
    out_console.print(t)


@app.command()
def policies() -> None:
    """List the engine schedulers."""
    from .engine.base import policy_names, policy_spec

    _registry_table("engine schedulers", [(n, policy_spec(n).summary) for n in policy_names()])


@app.command()
def routers() -> None:
    """List the routers."""
    from .cluster.base import router_names, router_spec

    _registry_table("routers", [(n, router_spec(n).summary) for n in router_names()])


@app.command()
def profiles() -> None:
    """List the shipped latency profiles."""
    from .latency.profiles import list_profiles, load_profile

    t = Table(title="latency profiles")
    for c in ("name", "KV blocks", "unloaded TTFT 1k (ms)", "TPOT ctx 1k (ms)"):
        t.add_column(c)
    for n in list_profiles():
        m = load_profile(n)
        t.add_row(n, str(m.kv_blocks), f"{1000 * m.unloaded_ttft(1024):.1f}",
                  f"{1000 * m.unloaded_tpot(1024):.2f}")
    out_console.print(t)


@app.command()
def emulate(
    instances: int = typer.Option(1, "--instances", help="Emulated engines, on ports P .. P+N-1."),
    processes: int = typer.Option(1, "--processes", help="Processes serving the engines (consecutive blocks of ports; the ports do not change), so a fleet uses every core."),
    port: int = typer.Option(18101, "--port", help="Port of the first instance."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    policy: str = typer.Option("slide-bounded", "--policy", help="Engine scheduler inside each instance."),
    policy_arg: list[str] | None = PArgOpt,
    profile: str = ProfileOpt,
    kv_blocks: int | None = KvOpt,
    preemption: str = PreemptOpt,
    host_kv_blocks: str | None = HostKvOpt,
    classes: str | None = typer.Option(None, "--classes", help="Classes by rank: request `priority` p selects class p (lower = more urgent). Behind a gateway, use the gateway's classes."),
    field_limits: str | None = typer.Option(None, "--field-limits", help="Allowed vllm_xargs ranges, e.g. 'weight=1:4,ttft_slo_ms=100:,tpot_slo_ms=10:'. Default: weight within the classes' weights, SLOs no tighter than the tightest class's."),
    model_name: str = typer.Option("proserve-emulated", "--model-name", help="Model id served."),
    max_model_len: int = typer.Option(8192, "--max-model-len", help="Prompt + output token limit."),
    time_scale: float = typer.Option(1.0, "--time-scale", help="Wall seconds per engine second (0.1 = 10x faster)."),
) -> None:
    """Serve OpenAI-compatible emulated engines that batch, prioritise and preempt for real."""
    from .core.classes import SpecError, parse_classes
    from .core.sched_fields import FieldLimits
    from .engine.base import policy_spec
    from .engine.offload import host_blocks_for, preemption_mode
    from .latency.profiles import load_profile
    from .serve.emulator import EmulatorConfig, run_emulators
    from .serve.supervisor import WorkerStartError

    if instances < 1 or not 0 < port < 65536 or port + instances - 1 > 65535:
        _fail("--instances must be >= 1 and the ports P .. P+N-1 valid")
    if not 1 <= processes <= instances:
        _fail(f"--processes must be between 1 and --instances ({instances})")
    if time_scale <= 0 or max_model_len < 2:
        _fail("--time-scale must be positive and --max-model-len >= 2")
    try:
        policy_spec(policy)
        parse_classes(classes)
        FieldLimits.parse(field_limits)
        load_profile(profile)
        host_blocks_for(host_kv_blocks, 1, preemption_mode(preemption))
    except (ValueError, SpecError) as e:
        _fail(str(e))
    cfg = EmulatorConfig(model_name=model_name, policy=policy, policy_args=_policy_args(policy_arg),
                         profile=profile, kv_blocks=kv_blocks, classes=classes,
                         field_limits=field_limits, preemption=preemption,
                         host_kv_blocks=host_kv_blocks,
                         max_model_len=max_model_len, time_scale=time_scale)
    err.print(f"emulating {instances} x {policy} on {profile} at http://{host}:{port}"
              + (f"..{port + instances - 1}" if instances > 1 else "")
              + (f" in {processes} processes" if processes > 1 else "") + " (Ctrl-C to stop)")
    if processes > 1:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        code = run_emulators(cfg, instances, processes, host, port)
    except OSError as e:
        _fail(f"cannot listen: {e}")
    except WorkerStartError as e:
        _fail(str(e))
    if code:
        raise typer.Exit(code)


@app.command()
def gateway(
    config: Path = typer.Option(..., "--config", help="Gateway YAML (see examples/gateway.yaml, docs/GATEWAY.md)."),
    port: int | None = typer.Option(None, "--port", help="Override the config's port."),
    workers: int | None = typer.Option(None, "--workers", help="Worker processes sharing the port (SO_REUSEPORT); overrides the config's `workers`. Tenant limits are shared between them only with `limits: {backend: redis}`."),
    metrics_port: int | None = typer.Option(None, "--metrics-port", help="Each worker also serves /metrics and /health on this port + its index; overrides the config's `metrics_port`."),
) -> None:
    """Serve an OpenAI-compatible gateway with tenants, priorities and GoRouting, for one model
    or several, in one process or several (--workers)."""
    from .serve.gateway import run_gateway
    from .serve.gateway_config import load_gateway_config
    from .serve.supervisor import WorkerStartError

    try:
        cfg = load_gateway_config(config)
        over: dict[str, Any] = {}
        if port is not None:
            over["port"] = port
        if workers is not None:
            over["workers"] = workers
        if metrics_port is not None:
            over["metrics_port"] = metrics_port
        if over:
            cfg = type(cfg).model_validate({**cfg.model_dump(by_alias=True, exclude_unset=True),
                                            **over})
        from .latency.profiles import load_profile

        specs = cfg.model_specs()
        for spec in specs:
            for b in spec.backends:
                load_profile(b.profile)
    except ValueError as e:
        msg = str(e)
        if isinstance(e, ValidationError):
            msg = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'config'}: {x['msg']}"
                            for x in e.errors())
        _fail(msg)
    nb = sum(len(s.backends) for s in specs)
    what = (f"{nb} backend(s), router {specs[0].router}" if len(specs) == 1 else
            f"{len(specs)} models ({', '.join(s.name for s in specs)}), {nb} backend(s)")
    err.print(f"gateway on http://{cfg.host}:{cfg.port} -> {what}"
              + (f", {cfg.workers} workers" if cfg.workers > 1 else "")
              + " (Ctrl-C to stop; SIGHUP re-reads the backend lists)")
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        code = run_gateway(cfg, config_path=config)
    except OSError as e:
        _fail(f"cannot listen: {e}")
    except WorkerStartError as e:  # a worker's own message: "cannot listen: ...", ...
        _fail(str(e))
    if code:
        raise typer.Exit(code)


@app.command()
def bench(
    target: str = typer.Option(..., "--target", help="Base URL of an OpenAI-compatible endpoint, e.g. http://127.0.0.1:18080"),
    trace: str = TraceOpt,
    rate: float | None = RateOpt,
    duration: float | None = DurOpt,
    count: int | None = CountOpt,
    profile: str = ProfileOpt,
    seed: int = SeedOpt,
    classes: str | None = ClassesOpt,
    arrival: str = ArrOpt,
    cv: float = CvOpt,
    synthetic_arrivals: bool = SynthOpt,
    max_model_len: int | None = MaxLenOpt,
    keys: str | None = typer.Option(None, "--keys", help="API key per class: 'high=sk-1,low=sk-2'."),
    model: str = typer.Option("proserve-emulated", "--model", help="Model id to request."),
    prompt_format: str = typer.Option("ids", "--prompt-format", help="ids (token-id prompts: exact lengths) | text."),
    chat: bool = typer.Option(False, "--chat", help="Use /v1/chat/completions."),
    no_priority: bool = typer.Option(False, "--no-priority", help="Do not send vLLM's priority field."),
    prompt_salt: int | None = typer.Option(None, "--prompt-salt", min=0, max=990**2 - 1, help="Spell this salt into every prompt (default: a fresh one per run, so a server's prefix cache never carries one run's prompts into the next; fix it to measure a warm cache)."),
    timeout: float = typer.Option(300.0, "--timeout", help="Per-request timeout (s)."),
    max_requests: int = typer.Option(20000, "--max-requests", help="Refuse workloads larger than this."),
    max_duration: float = typer.Option(600.0, "--max-duration", help="Stop waiting this long after the last arrival (s)."),
    out: Path | None = typer.Option(None, "--out", help="Write the result JSON here."),
    plot_path: Path | None = typer.Option(None, "--plot", help="Write TTFT/TPOT CDFs per class (PNG)."),
) -> None:
    """Replay a workload against an endpoint (open loop) and measure TDG, attainment and latency."""
    import asyncio

    from .serve.bench import BenchConfig, run_bench
    from .sim.run import SimConfig
    from .sim.run import load_model as _load_model
    from .workload import make_workload

    if prompt_format not in ("ids", "text"):
        _fail("--prompt-format must be 'ids' or 'text'")
    if not target.startswith(("http://", "https://")):
        _fail(f"--target must be an http(s) URL, got {target!r}")
    key_map = {}
    for item in filter(None, (keys or "").split(",")):
        c, eq, k = item.partition("=")
        if not eq or not c.strip() or not k.strip():
            _fail(f"--keys expects class=key pairs, got {item!r}")
        key_map[c.strip()] = k.strip()
    sim_cfg = _config(trace=trace, rate=rate, duration=duration, count=count, profile=profile,
                      seed=seed, classes=classes, arrival=arrival, cv=cv, max_model_len=max_model_len)
    try:
        reqs, info = make_workload(trace, rate=rate, duration=duration, count=count,
                                   classes=classes, model=_load_model(sim_cfg), seed=seed,
                                   arrival=arrival, cv=cv, max_model_len=max_model_len)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    unknown = set(key_map) - {r.cls for r in reqs}
    if unknown:
        _fail(f"--keys names class(es) not in the workload: {sorted(unknown)}")
    if len(reqs) > max_requests:
        _fail(f"workload has {len(reqs)} requests, over --max-requests {max_requests}")
    cfg = BenchConfig(target=target, model=model, keys=key_map, prompt_format=prompt_format,
                      timeout_s=timeout, max_duration_s=max_duration,
                      send_priority=not no_priority, chat=chat, salt=prompt_salt)
    err.print(f"bench: {len(reqs)} requests over {info.get('duration', 0):.0f} s against {target}")
    with Progress(TextColumn("[bold]bench"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True) as prog:
        task = prog.add_task("", total=len(reqs))
        res = asyncio.run(run_bench(cfg, reqs, progress=lambda d, n: prog.update(task, completed=d)))
    res = {"policy": "measured", "router": "measured", "instances": None, **res,
           "workload": info, "config": {**SimConfig.model_dump(sim_cfg), "target": target}}
    out_console.print(summary_table({**res, "profile": profile, "mode": "live"}))
    if res["errors"]:
        err.print(f"[yellow]errors:[/] {res['errors']}; e.g. {res['error_examples']}")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1) + "\n")
        err.print(f"wrote {out}")
    if plot_path:
        from .experiments.plots import plot_latency_cdfs

        plot_latency_cdfs(reqs, plot_path, f"bench {trace} against {target}")
        err.print(f"wrote {plot_path}")


@app.command("fit")
def fit_cmd(
    points: Path = typer.Argument(..., help="CSV of profiled points: kind,q,p,batch,seconds."),
    out: Path = typer.Option(..., "--out", help="Profile file to write (.yaml or .json)."),
    kv_blocks: int = typer.Option(..., "--kv-blocks", help="KV capacity of the profiled deployment, in blocks."),
    block_size: int = typer.Option(16, "--block-size", help="Tokens per KV block."),
    name: str = typer.Option("custom", "--name", help="Profile name."),
    holdout: float = typer.Option(0.2, "--holdout", help="Fraction of points held out to report the fit error."),
    reference_form: bool = typer.Option(False, "--reference-form", help="Fit the paper's form: no per-prefill cost c5, c0 = mean of the two intercepts."),
    seed: int = SeedOpt,
) -> None:
    """Fit the ProServe latency model (NNLS) to profiled points and write a profile file."""
    from .latency.model import read_points_csv
    from .latency.profiles import save_profile
    from .profiling.grid import fit_report

    try:
        pts = read_points_csv(points)
        rep = fit_report(pts, holdout=holdout, seed=seed, kv_blocks=kv_blocks,
                         block_size=block_size, name=name, prefill_overhead=not reference_form)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    save_profile(rep.model, out, provenance=(
        f"Fitted by `proserve fit {points} --kv-blocks {kv_blocks} --block-size {block_size} "
        f"--holdout {holdout} --seed {seed}{' --reference-form' if reference_form else ''}` on {len(rep.train)} points; held-out error measured on "
        f"{len(rep.test)} points."))
    _print_fit(rep, out)


def _print_fit(rep: Any, out: Path) -> None:
    e = rep.err_test
    out_console.print(f"fitted {rep.model.name}: " + ", ".join(f"{k}={v:.3g}" for k, v in rep.model.coeffs().items()))
    out_console.print(f"held-out error: mean {100 * e['mape']:.1f}%, p90 {100 * e['p90_ape']:.1f}% "
                      f"({e['n']} points); training: mean {100 * rep.err_train['mape']:.1f}%, "
                      f"p90 {100 * rep.err_train['p90_ape']:.1f}%; wrote {out}")


@app.command("profile")
def profile_cmd(
    out: Path = typer.Option(..., "--out", help="Profile file to write (.yaml or .json); raw points go to NAME.points.csv beside it."),
    synthetic: bool = typer.Option(False, "--synthetic", help="Time a random-weight Llama-shaped model in PyTorch on this machine."),
    server: str | None = typer.Option(None, "--server", help="Profile a running vLLM server at this base URL (OpenAI API + /metrics); it must be idle."),
    offline: str | None = typer.Option(None, "--offline", help="Profile this model through vLLM's offline LLM API."),
    model: str | None = typer.Option(None, "--model", help="--synthetic: architecture preset (tiny [default], qwen2-7b, llama3.1-8b, qwen3-32b). --server: model id (default: the server's first)."),
    model_config: Path | None = typer.Option(None, "--model-config", help="--synthetic: a Hugging Face config.json instead of a preset."),
    device: str = typer.Option("auto", "--device", help="--synthetic: cpu, cuda, cuda:N or auto."),
    dtype: str | None = typer.Option(None, "--dtype", help="--synthetic: bf16, fp16 or fp32 (default bf16 on CUDA, fp32 on CPU)."),
    kv_gib: float = typer.Option(4.0, "--kv-gib", help="--synthetic on CPU: KV cache size to report, GiB (on CUDA: free memory)."),
    threads: int | None = typer.Option(None, "--threads", help="--synthetic on CPU: torch threads."),
    engine_arg: list[str] = typer.Option(None, "--engine-arg", help="--offline: vLLM engine argument key=value (repeatable)."),
    name: str | None = typer.Option(None, "--name", help="Profile name (default: the file's stem)."),
    max_len: int = typer.Option(2048, "--max-len", help="Longest cached + new context profiled (<= the server's --max-model-len)."),
    max_chunk: int = typer.Option(512, "--max-chunk", help="Largest prefill chunk (<= --max-num-batched-tokens)."),
    max_batch: int = typer.Option(8, "--max-batch", help="Largest decode batch (<= --max-num-seqs)."),
    repeats: int = typer.Option(3, "--repeats", help="Timed runs per shape (the median is kept)."),
    decode_tokens: int = typer.Option(32, "--decode-tokens", help="--server/--offline: output tokens per decode measurement."),
    no_cached_prefill: bool = typer.Option(False, "--no-cached-prefill", help="Profile prefills on an empty cache only (server without prefix caching)."),
    holdout: float = typer.Option(0.25, "--holdout", help="Fraction of points held out to report the fit error."),
    seed: int = SeedOpt,
) -> None:
    """Measure iteration latency on a grid of batch shapes and fit a latency profile.

    The profile loads anywhere a profile name does: `proserve simulate --profile FILE`, `proserve
    emulate --profile FILE`, the gateway config and the vLLM plug-in's `profile:` key.
    """
    from .latency.roofline import MODEL_PRESETS, ModelConfig
    from .profiling import ProfileGrid, profile

    if sum([synthetic, server is not None, offline is not None]) != 1:
        _fail("give exactly one of --synthetic, --server URL or --offline MODEL")
    if not 0 <= holdout < 1:
        _fail("--holdout must be in [0, 1)")
    try:
        grid = ProfileGrid(max_len=max_len, max_chunk=max_chunk, max_batch=max_batch,
                           cached_prefill=not no_cached_prefill)
    except ValueError as e:
        _fail(str(e))
    try:
        if synthetic:
            from .profiling.synthetic import SyntheticLlama

            if model_config:
                try:
                    cfg = ModelConfig.from_hf(json.loads(model_config.read_text()), name=model_config.parent.name)
                except (OSError, json.JSONDecodeError) as e:
                    _fail(f"{model_config}: {e}")
            elif (model or "tiny") in MODEL_PRESETS:
                cfg = MODEL_PRESETS[model or "tiny"]
            else:
                _fail(f"unknown --model {model!r} for --synthetic; presets: {', '.join(MODEL_PRESETS)} (or --model-config)")
            backend = SyntheticLlama(cfg, device=device, dtype=dtype, repeats=repeats, seed=seed,
                                     kv_gib=kv_gib, threads=threads)
        elif server is not None:
            from .profiling.server import ServerBackend

            if not server.startswith(("http://", "https://")):
                _fail(f"--server must be an http(s) URL, got {server!r}")
            backend = ServerBackend(server, model=model,
                                    repeats=repeats, decode_tokens=decode_tokens, seed=seed)
        else:
            from .profiling.offline import OfflineBackend

            backend = OfflineBackend(offline, engine_args=_policy_args(engine_arg, "--engine-arg"),
                                     repeats=repeats, decode_tokens=decode_tokens, seed=seed)
    except (ValueError, RuntimeError) as e:
        _fail(str(e))
    err.print(f"profiling {backend.description}: {grid.size()} shapes")
    try:
        with Progress(TextColumn("[bold]profile"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                      transient=True) as prog:
            task = prog.add_task("", total=grid.size())
            rep = profile(backend, grid, out, name=name or out.name.rsplit(".", 1)[0],
                          holdout=holdout, seed=seed, command="proserve " + " ".join(sys.argv[1:]),
                          progress=lambda d, n, what: prog.update(task, completed=d, total=n, description=what))
    except (ValueError, RuntimeError, OSError) as e:
        _fail(str(e))
    finally:
        backend.close()
    _print_fit(rep, out)


@app.command()
def traces() -> None:
    """List the built-in traces."""
    from .workload.builtin import BUILTINS

    t = Table(title="built-in traces")
    t.add_column("name")
    t.add_column("what")
    for n, b in BUILTINS.items():
        t.add_row(n, getattr(b, "description", "") or str(b))
    out_console.print(t)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
