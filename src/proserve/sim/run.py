"""One simulation run from a validated config to a JSON-ready result dict.

This is the single entry point shared by ``proserve simulate``, ``proserve compare`` (in worker
processes) and the benchmarks, so every path builds workloads, engines and results the same way.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..cluster.admission import Admission, ClassAdmission
from ..cluster.base import make_router, router_spec
from ..core.classes import parse_classes
from ..core.metrics import clean_floats, summarize
from ..engine.base import make_scheduler, policy_spec, vllm_batch_defaults
from ..engine.offload import host_blocks_for, preemption_mode
from ..latency.model import LatencyModel
from ..latency.profiles import load_profile
from ..workload import make_workload
from .simulator import simulate
from .timing import DEFAULT_LATENCY_NOISE, StepTimer

DEFAULT_POLICY = "slide-bounded"
# Routers that come with their own engine policy (the paper's pairing): used when no --policy
# is given. PolyServe's routing assumes dynamic chunking (its admission test plays that rule
# forward); CO-Chunk is "all tiers mixed, a fixed token budget" (Sarathi's 2048-token chunks).
ROUTER_POLICY = {"polyserve": "dynamic-chunk", "co-chunk": "sarathi-fcfs",
                 "polyserve-go": "slide-bounded"}


class SimConfig(BaseModel):
    """Everything that determines a simulation's result (with the seed, fully reproducible)."""

    model_config = ConfigDict(extra="forbid")

    trace: str = "azure-conv"
    rate: float | None = Field(default=None, gt=0)
    duration: float | None = Field(default=None, gt=0)
    count: int | None = Field(default=None, gt=0)
    arrival: str = "poisson"
    cv: float = Field(default=1.0, gt=0)
    # a timestamped trace's lengths with Poisson/gamma arrivals at ``rate`` (its clock ignored)
    synthetic_arrivals: bool = False
    classes: str | None = None
    # None: the router's own engine (ROUTER_POLICY: polyserve runs dynamic-chunk, co-chunk a
    # fixed token budget), else slide-bounded, the recommended policy
    policy: str | None = None
    policy_args: dict[str, Any] = Field(default_factory=dict)
    profile: str = "llama3.1-8b@h100"
    kv_blocks: int | None = Field(default=None, gt=0)
    instances: int = Field(default=1, ge=1)
    seed: int = 0
    drain_s: float = Field(default=300.0, ge=0)
    w_p: float = Field(default=1.0, ge=0)
    w_d: float = Field(default=1.0, ge=0)
    max_model_len: int | None = Field(default=None, gt=0)
    # --- prefix caching (engine/kv.py) ---
    # every request of a tenant (class) starts with the same system prompt of this many tokens
    # (traces without their own prefix ids; Mooncake's hash_ids are always used)
    shared_prefix_tokens: int = Field(default=0, ge=0)
    # K-turn sessions whose prompts carry their history (workload/sessions.py); 0: none
    multi_turn: int = Field(default=0, ge=0)
    prefix_caching: bool = True  # vLLM's default; acts only on requests with prefix identity
    # --- preemption (engine/offload.py): recompute | offload-sync | offload-async | full ... ---
    preemption: str = "recompute"
    # host KV capacity: a block count or "<factor>x" of the device blocks (None: 4x if offloading)
    host_kv_blocks: str | None = None
    # Fixed per-request latency outside the engine (API server, network). None: the profile's
    # measured ``request_overhead_s`` (profiles from `proserve profile --server`), else 0.
    request_overhead_ms: float | None = Field(default=None, ge=0)
    # Prediction error: steps take the truth profile's time (default: the planning profile)
    # times gamma noise of this coefficient of variation (sim/timing.py says why 0.05).
    latency_noise: float = Field(default=DEFAULT_LATENCY_NOISE, ge=0, le=1)
    truth_profile: str | None = None
    # --- admission (the gateway's rule, cluster/admission.py) ---
    admission: bool = False
    queue_timeout_s: float = Field(default=5.0, ge=0)  # the gateway's default per class
    shed_classes: list[str] = Field(default_factory=list)  # classes refused at once when late
    # the shed classes' yield_share (cluster/admission.py): their predicted TTFT is stretched by
    # 1 / (1 - yield_share) for the heavier work that will overtake them while they wait
    yield_share: float = Field(default=0.0, ge=0, lt=1)
    # adaptive share instead (cluster/admission.py, AdaptiveShare): the shed classes' share
    # follows the heavier classes' SLO outcomes, so that they meet their SLO this often
    yield_target: float | None = Field(default=None, gt=0, lt=1)
    # Tenant -> class mapping for traces with tenants (ServeGen clients): a rule ("volume",
    # "top:0.2") or explicit pairs "client-5=high,client-38=low" (others follow the shares).
    tenant_classes: str | None = None
    # --- cluster tier ---
    router: str | None = None  # default: "single" for one instance, else "round-robin"
    router_args: dict[str, Any] = Field(default_factory=dict)
    view_interval_ms: float = Field(default=0.0, ge=0)  # 0: exact views at every decision
    mode: str = "colocated"
    prefill_instances: int | None = Field(default=None, ge=1)
    decode_instances: int | None = Field(default=None, ge=1)
    kv_link_gbytes_s: float = Field(default=50.0, gt=0)  # 400 Gb/s RDMA NIC per instance pair
    kv_link_latency_ms: float = Field(default=0.5, ge=0)

    @field_validator("policy_args", "router_args")
    @classmethod
    def _args(cls, v: dict[str, Any]) -> dict[str, Any]:
        # JSON has no infinity: a recorded config writes it as "inf" (see _config_json), and a
        # config read back must mean the same number
        return {k: float(x) if isinstance(x, str) and x.strip().lower() in ("inf", "+inf", "-inf")
                else x for k, x in v.items()}

    @field_validator("mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        if v not in ("colocated", "disaggregated"):
            raise ValueError("mode must be 'colocated' or 'disaggregated'")
        return v

    @field_validator("preemption")
    @classmethod
    def _preemption(cls, v: str) -> str:
        preemption_mode(v)  # raises with the list of modes
        return v

    @field_validator("host_kv_blocks", mode="before")
    @classmethod
    def _host(cls, v: Any) -> str | None:
        if v is None:
            return None
        host_blocks_for(str(v), 1, preemption_mode("full"))  # raises naming the problem
        return str(v)

    @field_validator("router")
    @classmethod
    def _router(cls, v: str | None) -> str | None:
        if v is not None:
            router_spec(v)  # raises with the list of known routers
        return v

    @field_validator("arrival")
    @classmethod
    def _arrival(cls, v: str) -> str:
        if v not in ("poisson", "gamma"):
            raise ValueError("arrival must be 'poisson' or 'gamma'")
        return v

    @field_validator("policy")
    @classmethod
    def _policy(cls, v: str | None) -> str | None:
        if v is not None:
            policy_spec(v)  # raises with the list of known policies
        return v

    @model_validator(mode="after")
    def _default_policy(self) -> SimConfig:
        if self.policy is None:
            self.policy = ROUTER_POLICY.get(self.router or "", DEFAULT_POLICY)
        return self

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: str | None) -> str | None:
        parse_classes(v)  # raises SpecError naming the problem
        return v


def parse_tenant_classes(spec: str | None) -> str | dict[str, str] | None:
    """A rule name passes through; ``a=x,b=y`` becomes a dict; anything else is an error."""
    if not spec:
        return None
    if "=" not in spec:
        return spec
    out: dict[str, str] = {}
    for item in spec.split(","):
        tenant, eq, cls = item.partition("=")
        if not eq or not tenant.strip() or not cls.strip():
            raise ValueError(f"bad --tenant-classes item {item!r}: expected tenant=class")
        out[tenant.strip()] = cls.strip()
    return out


def class_load_shares(reqs, names) -> dict[str, float]:
    """Each class's share of the workload's tokens (prompt + output): its average load."""
    tot = {c: 0.0 for c in names}
    for r in reqs:
        tot[r.cls] = tot.get(r.cls, 0.0) + r.prompt_len + r.output_len
    return tot


def tiers_of(classes, reqs) -> list[dict[str, Any]]:
    """PolyServe's tiers from the classes: TPOT SLO (the class's absolute value; for a relative
    rule, the median over its requests) and mean output length (the paper's bin average, here
    over the workload's requests of the class; 256 if it has none)."""
    out = []
    for c in classes:
        mine = [r for r in reqs if r.cls == c.name]
        tpot = c.tpot.value if not c.tpot.relative else (
            float(np.median([r.tpot_slo for r in mine])) if mine else c.tpot.floor or 0.05)
        mean = float(np.mean([r.output_len for r in mine])) if mine else 256.0
        out.append({"name": c.name, "tpot": tpot, "mean_output": max(mean, 1.0)})
    return out


def kv_transfer_fn(model: LatencyModel, cfg: SimConfig):
    """Seconds to move a request's prompt KV from its prefill to its decode instance."""
    from ..latency.roofline import ModelConfig

    spec = model.meta.get("model")
    if not spec:
        raise ValueError(f"profile {model.name!r} has no model config: cannot size KV transfers")
    per_token = ModelConfig(**spec).kv_bytes_per_token(1)
    bw = cfg.kv_link_gbytes_s * 1e9
    lat = cfg.kv_link_latency_ms / 1000.0

    def seconds(r) -> float:
        return lat + r.prompt_len * per_token / bw

    return seconds


def request_overhead_s(model: LatencyModel, cfg: SimConfig) -> float:
    """The config's per-request overhead, else the one measured into the profile, else 0."""
    if cfg.request_overhead_ms is not None:
        return cfg.request_overhead_ms / 1000.0
    return float(model.meta.get("request_overhead_s", 0.0))


def load_model(cfg: SimConfig) -> LatencyModel:
    model = load_profile(cfg.profile)
    return model.with_kv_blocks(cfg.kv_blocks) if cfg.kv_blocks else model


def build_workload(cfg: SimConfig, model: LatencyModel):
    """The requests (and workload info) a config describes, SLOs resolved on ``model``."""
    return make_workload(
        cfg.trace, rate=cfg.rate, duration=cfg.duration, count=cfg.count, classes=cfg.classes,
        model=model, seed=cfg.seed, arrival=cfg.arrival, cv=cfg.cv,
        max_model_len=cfg.max_model_len, tenant_classes=parse_tenant_classes(cfg.tenant_classes),
        synthetic_arrivals=cfg.synthetic_arrivals, shared_prefix_tokens=cfg.shared_prefix_tokens,
        multi_turn=cfg.multi_turn,
    )


def _config_json(cfg: SimConfig) -> dict[str, Any]:
    """The config as JSON can hold it: infinite parameters (``tau_s=inf``) become "inf", which
    the config reads back as infinity, so a recorded config re-runs exactly."""
    def enc(x: Any) -> Any:
        if isinstance(x, float) and math.isinf(x):
            return "inf" if x > 0 else "-inf"
        if isinstance(x, dict):
            return {k: enc(v) for k, v in x.items()}
        if isinstance(x, list):
            return [enc(v) for v in x]
        return x
    return enc(cfg.model_dump())


def _caps(engine, model: LatencyModel) -> dict[str, Any]:
    """The engine's token/sequence caps and where their defaults came from."""
    return {"max_num_batched_tokens": engine.max_num_batched_tokens,
            "max_num_seqs": engine.max_num_seqs, "defaults_source": vllm_batch_defaults(model)[2]}


def kv_totals(engines) -> dict[str, Any]:
    """Preemptions by mode and KV moved, summed over the instances (engine/offload.py)."""
    tot: dict[str, Any] = {}
    for e in engines:
        for k, v in e.preemption_stats().items():
            if isinstance(v, str):
                tot[k] = v
            else:
                tot[k] = tot.get(k, 0) + v
    if engines:
        tm = engines[0].transfer
        tot["transfer_model"] = None if tm is None else {
            "s_per_block": tm.s_per_block, "s_per_copy": tm.s_per_copy, "source": tm.source}
    return tot


def run(cfg: SimConfig, progress=None, keep_requests: bool = False) -> dict:
    """Build the workload and engines, simulate, and summarise.

    The result's ``sim_wall_s`` is the only field that depends on the host; everything else is a
    pure function of the config.
    """
    t0 = time.perf_counter()
    model = load_model(cfg)
    classes = parse_classes(cfg.classes)
    reqs, wl_info = build_workload(cfg, model)
    def engines(n: int) -> list:
        return [make_scheduler(cfg.policy, model,
                               **{"prefix_caching": cfg.prefix_caching,
                                  "preemption": cfg.preemption,
                                  "host_kv_blocks": cfg.host_kv_blocks, **cfg.policy_args})
                for _ in range(n)]

    disagg = cfg.mode == "disaggregated"
    if disagg:
        if not (cfg.prefill_instances and cfg.decode_instances):
            raise ValueError("disaggregated mode needs --prefill-instances and --decode-instances")
        pool, decode_pool = engines(cfg.prefill_instances), engines(cfg.decode_instances)
    else:
        pool, decode_pool = engines(cfg.instances), []
    n_total = len(pool) + len(decode_pool)
    router_name = cfg.router or ("round-robin" if n_total > 1 else "single")
    router = None
    if router_name != "single":
        rargs = {"seed": cfg.seed, **cfg.router_args}
        if router_name == "static-partition" and "shares" not in rargs:
            rargs["shares"] = class_load_shares(reqs, [c.name for c in classes])
        if getattr(router_spec(router_name).cls, "holds_requests", False) and (
                "tiers" not in rargs):  # PolyServe and ours: tiers from the classes
            rargs["tiers"] = tiers_of(classes, reqs)
        router = make_router(router_name, **rargs)
        if hasattr(router, "set_instances"):
            router.set_instances(len(pool))
    admission = None
    if (cfg.yield_share or cfg.yield_target is not None) and not (
            cfg.admission and cfg.shed_classes):
        raise ValueError("yield_share and yield_target apply to the shed classes of "
                         "--admission: give --admission and --shed CLASSES, or leave "
                         "--yield-share at 0")
    if cfg.admission:
        names = [c.name for c in classes]
        bad = [c for c in cfg.shed_classes if c not in names]
        if bad:
            raise ValueError(f"shed classes {bad} are not among the classes {names}")
        shed = set(cfg.shed_classes)
        rules = {c: ClassAdmission(cfg.queue_timeout_s, c in shed,
                                   cfg.yield_share if c in shed else 0.0,
                                   cfg.yield_target if c in shed else None)
                 for c in names}
        admission = Admission(rules, {c.name: c.rank for c in classes})
    truth = load_profile(cfg.truth_profile) if cfg.truth_profile else None
    timer = StepTimer(model, truth, cfg.latency_noise, cfg.seed)
    res = simulate(
        reqs, pool, router=router, view_interval=cfg.view_interval_ms / 1000.0,
        decode_engines=decode_pool, kv_transfer_s=kv_transfer_fn(model, cfg) if disagg else None,
        drain_s=cfg.drain_s, progress=progress, ingress_s=request_overhead_s(model, cfg),
        step_time=None if timer.identity else timer, admission=admission,
    )
    summary = summarize(res.requests, cfg.w_p, cfg.w_d, [c.name for c in classes])
    span = max(res.end_time - (reqs[0].arrival if reqs else 0.0), 1e-12)
    fleet = res.extra.get("fleet")
    if fleet is None:  # a fixed fleet: every instance counts for the whole run
        fleet = {"server_seconds": n_total * span, "mean_instances": float(n_total)}
    elif disagg:  # the shared prefill instances run the whole time
        fleet["server_seconds"] += len(pool) * span
        fleet["mean_instances"] = fleet.get("mean_instances", 0.0) + len(pool)
    fleet.setdefault("mean_instances", fleet["server_seconds"] / span)
    roles = ["prefill"] * len(pool) + ["decode"] * len(decode_pool) if disagg else (
        ["colocated"] * len(pool))
    out: dict[str, Any] = {
        "policy": cfg.policy,
        "router": router_name,
        "instances": n_total,
        "mode": cfg.mode,
        "profile": model.name,
        "kv_blocks": model.kv_blocks,
        "request_overhead_s": request_overhead_s(model, cfg),
        "latency_noise": cfg.latency_noise,
        "truth_profile": truth.name if truth is not None else model.name,
        "engine_caps": _caps(pool[0], model),
        **{k: summary[k] for k in summary if k != "per_class"},
        "per_class": summary["per_class"],
        "server_seconds": fleet["server_seconds"],
        "fleet": fleet,
        "kv": kv_totals(res.engines),
        "steps": res.steps,
        "drained": res.drained,
        "sim_end_s": res.end_time,
        "per_instance": [
            {"instance": k, "role": roles[k], "utilisation": b / span,
             "finished": e.num_finished, "preemptions": e.num_preemptions,
             "prefix_hit_tokens": e.kv.hit_tokens, "prefix_evictions": e.kv.evictions,
             **e.preemption_stats()}
            for k, (e, b) in enumerate(zip(res.engines, res.busy_time))
        ],
        "workload": wl_info,
        "config": _config_json(cfg),
        "sim_wall_s": time.perf_counter() - t0,
    }
    if admission is not None and admission.adaptive:  # what each adaptive share did
        out["adaptive_shares"] = {
            c: {"target": a.target, "final_share": a.share, "heavier_misses": a.late,
                "heavier_hits": a.on_time} for c, a in admission.adaptive.items()}
    out = clean_floats(out)
    if keep_requests:  # in-process callers (benchmarks, tests): the objects themselves
        out["_requests"] = res.requests
        out["_router"] = router
    return out
