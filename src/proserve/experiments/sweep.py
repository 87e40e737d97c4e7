"""``proserve sweep CONFIG.yaml``: a grid of ``simulate`` or ``goodput`` points that survives being
killed, never recomputes a point it has already computed, and runs in local processes or on Ray.

Why it exists: a paper figure is a grid (traces x policies x routers x rates x seeds x policy
parameters x fleet sizes ...) of points that each take seconds to minutes. Re-running a whole
grid to add one rate, or after a crash at 90%, wastes hours; so every point is cached under a hash
of everything that determines its numbers, and written the moment it finishes.

**Config** (YAML; :func:`load_config`)::

    name: main-figure
    kind: simulate            # or goodput
    base: {profile: llama3.1-8b@h100, duration: 600, seed: 0}
    grid: {trace: [azure-conv, sharegpt], policy: [sarathi-priority, slide-bounded],
           rate: [5, 10, 20], policy_args.lam: [0.5, 0.9]}
    zip:  {duration: [600, 300], count: [null, 2000]}   # optional: lists varied together

``base`` and ``grid`` take any ``proserve simulate`` / ``goodput`` option by its long name, with
``-`` or ``_`` (``kv-blocks``, ``kv_blocks``), or by its :class:`~proserve.sim.run.SimConfig`
field name; names are normalised to the field names (``shared-prefix`` -> ``shared_prefix_tokens``,
``drain`` -> ``drain_s``, ``policy-arg`` -> ``policy_args`` ...). ``policy_args.KEY`` and
``router_args.KEY`` set one entry of those mappings, so a parameter sensitivity sweep is one grid
key. goodput-only options: ``threshold``, ``guess``, ``rel_tol`` and ``search_workers`` (the
search's own parallelism, which changes the rates it probes, hence its result: part of the
point; default 1, the sweep's parallelism is across points). Points are the cartesian product of
the grid keys (first key slowest, like nested loops) and the zip groups (after the grid keys).

**Validation** happens before anything runs (:func:`expand`): unknown names (with close
matches), grid values that are not non-empty lists, and every expanded point through
``SimConfig`` plus the checks a run would only make later (trace and profile files exist, policy
and router parameters are accepted, disaggregated pools are given).

**Cache key** (:func:`point_hash`): the validated ``SimConfig`` dump, the kind, the goodput
parameters, the sha256 of the trace file(s) the config resolves to and of a profile given as a
file, and :func:`code_hash` (sha256 of the installed package's ``*.py`` and shipped profiles), so
an edit to the simulator invalidates every point while an unchanged point is never recomputed.
Points live in ``OUT/points/<hash>.json`` (or ``--cache-dir``, shared between sweeps, with a copy
in ``OUT/points``), written atomically (tmp file + ``os.replace``) by the driver as each point
finishes: a killed sweep loses only its in-flight points.

**Outputs** (in ``OUT``, default ``sweep-out/<name>``): ``sweep.yaml`` (the normalised config),
``points/<hash>.json`` (the full result of ``sim.run.run`` or ``experiments.goodput.search``
plus ``"sweep": {name, kind, hash, coords}``), ``results.csv`` and ``results.parquet`` (one row per
point in grid order: :func:`result_row`) and ``meta.json`` (versions, code hash, git commit,
trace files with sha256 and attribution, times, counts, backend).

Determinism: the simulator is a pure function of its config, so local processes and Ray give
identical numbers; only ``sim_wall_s`` (host time) differs, and the tables leave it out.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import hashlib
import itertools
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..sim.run import SimConfig, run

# bump when the meaning of a cached point changes without a change to the hashed code (it is in
# every hash), e.g. when this module changes what a point stores (it is not hashed itself)
HASH_VERSION = 1
TIMELINE_MAX_SAMPLES = 2000

SIM_FIELDS: tuple[str, ...] = tuple(SimConfig.model_fields)
# CLI long names (with '-' read as '_') that differ from the SimConfig field they set
CLI_ALIASES: dict[str, str] = {
    "shared_prefix": "shared_prefix_tokens", "drain": "drain_s",
    "view_interval": "view_interval_ms", "kv_link_gbs": "kv_link_gbytes_s",
    "queue_timeout": "queue_timeout_s", "policy_arg": "policy_args",
    "router_arg": "router_args", "shed": "shed_classes",
}
GOODPUT_FIELDS: tuple[str, ...] = ("threshold", "guess", "rel_tol", "search_workers")
MAPPING_FIELDS: tuple[str, ...] = ("policy_args", "router_args")
# options of the commands that are not properties of a point
COMMAND_ONLY: dict[str, str] = {
    "out": "give the output directory with `proserve sweep --out`",
    "workers": "`proserve sweep --workers` sets the parallelism across points; a goodput "
               "search's own parallelism is `search_workers`",
    "quiet": "a command option", "reproducible": "a command option (tables omit sim_wall_s)",
}
TOP_KEYS = ("name", "kind", "base", "grid", "zip")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# result columns: simulate's scalar metrics, per class, and goodput's
SIM_METRICS: tuple[str, ...] = (
    "requests", "finished", "unfinished", "rejected", "tdg_ratio", "slo_attainment",
    "ttft_attainment", "deadline_attainment", "token_deadline_attainment", "goodput_rps",
    "ttft_p50", "ttft_p90", "ttft_p99", "tpot_p50", "tpot_p90", "tpot_p99",
    "e2e_p50", "e2e_p90", "e2e_p99", "max_wait_s", "preemptions", "prefix_hit_rate",
    "server_seconds", "steps", "sim_end_s", "drained",
)
SIM_CLASS_METRICS: tuple[str, ...] = ("tdg_ratio", "slo_attainment", "ttft_attainment",
                                      "deadline_attainment", "ttft_p99", "max_wait_s",
                                      "rejected")
GOODPUT_METRICS: tuple[str, ...] = (
    "goodput_rps", "goodput_per_instance", "mean_instances", "fleet_instances",
    "goodput_per_fleet_instance", "optimal_goodput_per_instance", "fraction_of_optimal",
    "threshold", "attainment", "server_seconds", "first_failing_rps",
)
GOODPUT_CLASS_METRICS: tuple[str, ...] = ("deadline_attainment", "slo_attainment", "tdg_ratio",
                                          "ttft_p99", "tpot_p99")


class SweepError(ValueError):
    """A bad sweep config or an unusable backend; the message names the key or point."""


# ---------------------------------------------------------------------------- config
class GoodputParams(BaseModel):
    """The goodput search's own parameters (``proserve goodput``'s defaults)."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(default=0.9, gt=0, le=1)
    guess: float | None = Field(default=None, gt=0)
    rel_tol: float = Field(default=0.02, gt=0)
    search_workers: int = Field(default=1, ge=1)


def _pydantic_msg(e: ValidationError) -> str:
    """``loc: message`` per error, without pydantic's "Value error, " prefix."""
    return "; ".join(
        f"{'.'.join(map(str, x['loc'])) or 'config'}: "
        f"{str(x['msg']).removeprefix('Value error, ')}" for x in e.errors())


def _candidates(kind: str) -> list[str]:
    names = set(SIM_FIELDS) | set(CLI_ALIASES)
    if kind == "goodput":
        names |= set(GOODPUT_FIELDS)
        names.discard("rate")
    return sorted(names)


def _unknown(raw: str, where: str, kind: str) -> SweepError:
    key = raw.strip().replace("-", "_")
    close = difflib.get_close_matches(key, _candidates(kind), n=4, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return SweepError(f"{where}: unknown option {raw!r}{hint} (options are the long names of "
                      f"`proserve {kind}`, with - or _, or SimConfig field names)")


def normalize_key(raw: Any, where: str, kind: str) -> str:
    """The canonical name of option ``raw`` (a SimConfig field, a goodput parameter, or
    ``policy_args.KEY`` / ``router_args.KEY``); :class:`SweepError` naming ``where`` otherwise."""
    if not isinstance(raw, str) or not raw.strip():
        raise SweepError(f"{where}: option names are strings, got {raw!r}")
    key = raw.strip().replace("-", "_")
    if "." in key:
        head, _, sub = key.partition(".")
        head = CLI_ALIASES.get(head, head)
        if head not in MAPPING_FIELDS:
            raise SweepError(f"{where}: {raw!r}: only policy_args.KEY and router_args.KEY may "
                             "be dotted")
        if not sub or "." in sub:
            raise SweepError(f"{where}: {raw!r}: expected {head}.KEY")
        return f"{head}.{sub}"
    if key in COMMAND_ONLY:
        raise SweepError(f"{where}: {raw!r} is not an option of a point: {COMMAND_ONLY[key]}")
    name = CLI_ALIASES.get(key, key)
    if name in GOODPUT_FIELDS:
        if kind != "goodput":
            raise SweepError(f"{where}: {raw!r} is an option of goodput points (kind: goodput)")
        return name
    if name not in SIM_FIELDS:
        raise _unknown(raw, where, kind)
    if kind == "goodput" and name == "rate":
        raise SweepError(f"{where}: goodput points search over the rate; give `guess` for the "
                         "first rate to try")
    return name


def parse_scalar(v: str) -> Any:
    """``key=value`` values as the CLI reads them (``--policy-arg``, sweep strings): booleans,
    ints, floats, else the string."""
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    for t in (int, float):
        try:
            return t(v)
        except ValueError:
            pass
    return v


def normalize_value(name: str, value: Any, where: str) -> Any:
    """A value in the form SimConfig takes: ``policy_args``/``router_args`` from a mapping or
    ``key=value`` strings (keys with '-' read as '_'), ``shed_classes`` from a list or "a,b"."""
    if name in MAPPING_FIELDS:
        if value is None:
            return {}
        if isinstance(value, Mapping):
            return {str(k).strip().replace("-", "_"): v for k, v in value.items()}
        items = [value] if isinstance(value, str) else value
        if isinstance(items, list) and all(isinstance(x, str) for x in items):
            out: dict[str, Any] = {}
            for it in items:
                k, eq, v = it.partition("=")
                if not eq or not k.strip():
                    raise SweepError(f"{where}: {name} expects key=value items or a mapping, "
                                     f"got {it!r}")
                out[k.strip().replace("-", "_")] = parse_scalar(v.strip())
            return out
        raise SweepError(f"{where}: {name} must be a mapping (or key=value strings), "
                         f"got {value!r}")
    if name == "shed_classes" and isinstance(value, str):
        return [c.strip() for c in value.split(",") if c.strip()]
    return value


def _normalize_section(raw: Any, section: str, kind: str, *, lists: bool) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise SweepError(f"{section}: expected a mapping of option: "
                         f"{'[values]' if lists else 'value'}, got {type(raw).__name__}")
    out: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for raw_key, value in raw.items():
        key = normalize_key(raw_key, section, kind)
        if key in out:
            raise SweepError(f"{section}: {spelled[key]!r} and {raw_key!r} are the same option "
                             f"({key})")
        spelled[key] = str(raw_key)
        where = f"{section}.{raw_key}"
        if lists:
            if not isinstance(value, list):
                raise SweepError(f"{where}: expected a list of values, got {value!r} "
                                 f"(write [{value!r}] for one value, or put it in base)")
            if not value:
                raise SweepError(f"{where}: the list of values is empty")
            out[key] = [_normal(key, v, where) for v in value]
        else:
            out[key] = _normal(key, value, where)
    return out


def _normal(key: str, value: Any, where: str) -> Any:
    return value if "." in key else normalize_value(key, value, where)


def normalize_config(raw: Any) -> dict[str, Any]:
    """The config with canonical option names and value forms; :class:`SweepError` naming the
    key for anything malformed. Idempotent, so a normalised config validates again."""
    if not isinstance(raw, Mapping):
        raise SweepError("a sweep config is a mapping with keys name, kind, base, grid (zip)")
    for k in raw:
        if k not in TOP_KEYS:
            close = difflib.get_close_matches(str(k), TOP_KEYS, n=2)
            raise SweepError(f"unknown top-level key {k!r}"
                             + (f"; did you mean {', '.join(close)}?" if close else "")
                             + f" (keys: {', '.join(TOP_KEYS)})")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise SweepError(f"name: expected a name of letters, digits, '.', '_' or '-' (it names "
                         f"the output directory), got {name!r}")
    kind = raw.get("kind", "simulate") or "simulate"
    if kind not in ("simulate", "goodput"):
        raise SweepError(f"kind: expected simulate or goodput, got {kind!r}")
    base = _normalize_section(raw.get("base"), "base", kind, lists=False)
    grid = _normalize_section(raw.get("grid"), "grid", kind, lists=True)
    zraw = raw.get("zip")
    groups = [] if zraw is None else [zraw] if isinstance(zraw, Mapping) else zraw
    if not isinstance(groups, list):
        raise SweepError("zip: expected a mapping of option: [values] (or a list of them)")
    zips: list[dict[str, list[Any]]] = []
    seen = set(grid)
    for i, g in enumerate(groups):
        where = "zip" if isinstance(zraw, Mapping) else f"zip[{i}]"
        z = _normalize_section(g, where, kind, lists=True)
        if not z:
            raise SweepError(f"{where}: an empty group")
        lens = {k: len(v) for k, v in z.items()}
        if len(set(lens.values())) > 1:
            raise SweepError(f"{where}: the lists must have equal lengths, got "
                             + ", ".join(f"{k}: {n}" for k, n in lens.items()))
        dup = seen & set(z)
        if dup:
            raise SweepError(f"{where}: {sorted(dup)} already varied in grid or another zip group")
        seen |= set(z)
        zips.append(z)
    return {"name": name, "kind": kind, "base": base, "grid": grid, "zip": zips}


class SweepConfig(BaseModel):
    """A validated, normalised sweep config (module docstring for its shape)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["simulate", "goodput"] = "simulate"
    base: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    zip: list[dict[str, list[Any]]] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _normalize(cls, data: Any) -> dict[str, Any]:
        return normalize_config(data)

    @classmethod
    def parse(cls, raw: Any) -> SweepConfig:
        """Like ``model_validate`` but every problem is a :class:`SweepError` naming the key."""
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise SweepError(_pydantic_msg(e)) from None


def load_config(path: str | os.PathLike[str]) -> SweepConfig:
    """Read a sweep YAML (``name`` defaults to the file's stem)."""
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SweepError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SweepError(f"{p}: cannot read: {e}") from None
    except yaml.YAMLError as e:
        raise SweepError(f"{p}: invalid YAML: {e}") from None
    if isinstance(raw, Mapping) and "name" not in raw:
        raw = {"name": p.stem, **raw}
    try:
        return SweepConfig.parse(raw)
    except SweepError as e:
        raise SweepError(f"{p}: {e}") from None


# ---------------------------------------------------------------------------- hashing
# Parts of the package that cannot change a point's numbers: the command line, live serving, the
# vLLM plug-in, profiling tools, and the sweep and report machinery themselves (a sweep point is
# ``sim.run.run`` or ``experiments.goodput.search``). Left out of the code hash, so editing them
# does not invalidate every cached point.
_NOT_IN_CODE_HASH = ("cli.py", "serve/", "integrations/", "profiling/", "experiments/sweep.py",
                     "experiments/report.py", "experiments/plots.py",
                     "experiments/prefix_vllm.py")


@lru_cache(maxsize=1)
def code_hash() -> str:
    """sha256 over the installed package's ``*.py`` files and shipped profiles (relative path and
    bytes, sorted by path), except the parts that cannot change a point (``_NOT_IN_CODE_HASH``):
    any change to the code that computes a point changes its key. Computed once per process (the
    one piece of module state)."""
    import proserve

    root = Path(proserve.__file__).resolve().parent
    files = {p for p in root.rglob("*.py")
             if not p.relative_to(root).as_posix().startswith(_NOT_IN_CODE_HASH)}
    prof = root / "latency" / "profiles"
    if prof.is_dir():
        files |= {p for p in prof.iterdir() if p.is_file()}
    h = hashlib.sha256()
    for rel, p in sorted((p.relative_to(root).as_posix(), p) for p in files):
        data = p.read_bytes()
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


@dataclass(frozen=True)
class TraceRef:
    """What a config's ``trace`` resolves to, and the sha256 of its bytes."""

    trace: str
    path: Path
    sha256: str
    builtin: bool


class ContentHasher:
    """sha256 of trace and profile files, remembered by (path, mtime, size) for this object's
    lifetime (one sweep), so a grid of 1000 points over one trace reads it once."""

    def __init__(self) -> None:
        self._files: dict[tuple[str, int, int], str] = {}
        self._traces: dict[str, TraceRef] = {}
        self._shipped: set[str] | None = None

    def file(self, path: Path) -> str:
        st = path.stat()
        key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
        if key not in self._files:
            h = hashlib.sha256()
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            self._files[key] = h.hexdigest()
        return self._files[key]

    def path(self, path: Path) -> str:
        """A file's sha256, or for a directory (ServeGen) one over its files' names and hashes."""
        if path.is_file():
            return self.file(path)
        h = hashlib.sha256()
        for rel, p in sorted((p.relative_to(path).as_posix(), p) for p in path.rglob("*")
                             if p.is_file()):
            h.update(f"{rel}\0{self.file(p)}\0".encode())
        return h.hexdigest()

    def trace(self, trace: str) -> TraceRef:
        """Resolve ``trace`` as ``workload.make`` does (a built-in name, else a path)."""
        from ..workload.builtin import BUILTINS, builtin_path

        builtin = trace in BUILTINS
        path = builtin_path(trace) if builtin else Path(trace)
        if not path.exists():
            raise SweepError(f"trace {trace!r}: no such file, and not a built-in trace "
                             f"(built-ins: {', '.join(sorted(BUILTINS))})")
        ref = TraceRef(trace, path, self.path(path), builtin)
        self._traces[trace] = ref
        return ref

    def profile(self, profile: str | None) -> str | None:
        """sha256 of a profile given as a file; None for a shipped one (in :func:`code_hash`)."""
        from ..latency.profiles import list_profiles

        if self._shipped is None:
            self._shipped = set(list_profiles())
        if profile is None or profile in self._shipped:
            return None
        p = Path(profile)
        return self.file(p) if p.is_file() else None

    def traces(self) -> list[TraceRef]:
        """Every trace resolved so far, in first-use order."""
        return list(self._traces.values())


def _json_safe_config(x: Any) -> Any:
    """A config as JSON can hold it (infinite parameters as "inf", as sim.run records them)."""
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if isinstance(x, dict):
        return {k: _json_safe_config(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe_config(v) for v in x]
    return x


def point_hash(kind: str, sim: SimConfig, goodput: GoodputParams | None,
               hasher: ContentHasher) -> str:
    """The cache key of a point (module docstring): 32 hex digits of a sha256."""
    doc = {
        "v": HASH_VERSION,
        "kind": kind,
        "config": _json_safe_config(sim.model_dump()),
        "goodput": goodput.model_dump() if goodput is not None else None,
        "trace_sha256": hasher.trace(sim.trace).sha256,
        "profile_sha256": hasher.profile(sim.profile),
        "truth_profile_sha256": hasher.profile(sim.truth_profile),
        "code": code_hash(),
    }
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


# ---------------------------------------------------------------------------- expansion
@dataclass(frozen=True)
class Point:
    """One grid point: where it sits in the grid and the validated configs that define it."""

    index: int
    coords: dict[str, Any]
    sim: SimConfig
    goodput: GoodputParams | None
    hash: str
    label: str

    @property
    def kind(self) -> str:
        return "goodput" if self.goodput is not None else "simulate"

    def task_args(self) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
        """Picklable arguments of :func:`compute_point` (python-mode dumps keep infinities,
        which a JSON dump would turn into null)."""
        return (self.kind, self.sim.model_dump(),
                self.goodput.model_dump() if self.goodput is not None else None)


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, dict | list):
        return json.dumps(v, sort_keys=True, separators=(",", ":"), default=str)
    return str(v)


def _label(coords: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={_fmt_value(v)}" for k, v in coords.items()) or "base"


def _fleet_size(sim: SimConfig) -> int:
    if sim.mode == "disaggregated":
        return (sim.prefill_instances or 0) + (sim.decode_instances or 0)
    return sim.instances


def _point_kwargs(settings: Mapping[str, Any]) -> tuple[dict, dict]:
    """SimConfig and goodput keyword arguments from one point's normalised settings."""
    sim_kw: dict[str, Any] = {}
    gp_kw: dict[str, Any] = {}
    dotted: list[tuple[str, Any]] = []
    for k, v in settings.items():
        if "." in k:
            dotted.append((k, v))
        elif k in GOODPUT_FIELDS:
            gp_kw[k] = v
        else:
            sim_kw[k] = dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v
    for k, v in dotted:  # whole mappings first, then the entries the dotted keys set
        head, _, sub = k.partition(".")
        sim_kw[head] = {**sim_kw.get(head, {}), sub: v}
    return sim_kw, gp_kw


class _Checker:
    """The checks a run would make only once it started (profile, policy and router parameters,
    pools), done up front and remembered per distinct setting."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, int | None], Any] = {}
        self._ok: set[str] = set()

    def _once(self, key: Any, fn: Callable[[], None]) -> None:
        k = json.dumps(key, sort_keys=True, default=str)
        if k not in self._ok:
            fn()
            self._ok.add(k)

    def model(self, sim: SimConfig) -> Any:
        from ..sim.run import load_model

        key = (sim.profile, sim.kv_blocks)
        if key not in self._models:
            self._models[key] = load_model(sim)
        return self._models[key]

    def check(self, sim: SimConfig) -> None:
        from ..cluster.base import make_router, router_spec
        from ..core.classes import parse_classes
        from ..engine.base import make_scheduler
        from ..latency.profiles import load_profile

        model = self.model(sim)
        if sim.truth_profile:
            self._once(("truth", sim.truth_profile), lambda: load_profile(sim.truth_profile))
        if sim.mode == "disaggregated" and not (sim.prefill_instances and sim.decode_instances):
            raise ValueError("disaggregated mode needs prefill_instances and decode_instances")
        names = [c.name for c in parse_classes(sim.classes)]
        bad = [c for c in sim.shed_classes if c not in names]
        if sim.admission and bad:
            raise ValueError(f"shed classes {bad} are not among the classes {names}")
        self._once(("policy", sim.policy, sim.profile, sim.kv_blocks, sim.policy_args,
                    sim.prefix_caching, sim.preemption, sim.host_kv_blocks),
                   lambda: make_scheduler(sim.policy, model, prefix_caching=sim.prefix_caching,
                                          preemption=sim.preemption,
                                          host_kv_blocks=sim.host_kv_blocks, **sim.policy_args))
        if sim.router and sim.router != "single":
            spec = router_spec(sim.router)
            args: dict[str, Any] = {"seed": sim.seed, **sim.router_args}
            if getattr(spec.cls, "holds_requests", False) and "tiers" not in args:
                args["tiers"] = [{"name": n, "tpot": 0.05, "mean_output": 100.0} for n in names]

            def router() -> None:
                try:
                    make_router(sim.router, **args)
                except ValueError as e:  # only unknown parameters: the rest needs the workload
                    if str(e).startswith("bad parameter"):
                        raise
                except Exception:  # noqa: BLE001 - anything else is checked when it runs
                    pass

            self._once(("router", sim.router, sim.router_args, names), router)


def expand(config: SweepConfig, hasher: ContentHasher | None = None) -> list[Point]:
    """Every point of the grid in grid order, each validated and hashed; :class:`SweepError`
    with the first bad point's coordinates and the problem, before anything runs."""
    hasher = hasher or ContentHasher()
    dims: list[tuple[tuple[str, ...], list[tuple[Any, ...]]]] = [
        ((k,), [(v,) for v in vals]) for k, vals in config.grid.items()]
    dims += [(tuple(g), list(zip(*g.values()))) for g in config.zip]
    combos = list(itertools.product(*(d[1] for d in dims)))
    checker = _Checker()
    points: list[Point] = []
    by_hash: dict[str, Point] = {}
    for i, combo in enumerate(combos):
        coords: dict[str, Any] = {}
        for (keys, _), vals in zip(dims, combo):
            coords.update(zip(keys, vals))
        label = _label(coords)
        where = f"point {i + 1} of {len(combos)} ({label})"
        sim_kw, gp_kw = _point_kwargs({**config.base, **coords})
        try:
            gp = None
            if config.kind == "goodput":
                gp = GoodputParams(**gp_kw)
                sim_kw.setdefault("duration", 600.0)  # `proserve goodput`'s default
                n = SimConfig(**sim_kw, rate=1.0)  # the fleet size picks the default guess
                sim_kw["rate"] = gp.guess or float(max(_fleet_size(n), 1))
            sim = SimConfig(**sim_kw)
            checker.check(sim)
            h = point_hash(config.kind, sim, gp, hasher)
        except ValidationError as e:
            raise SweepError(f"{where}: {_pydantic_msg(e)}") from None
        except (ValueError, TypeError, KeyError, FileNotFoundError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            raise SweepError(f"{where}: {msg}") from None
        if h in by_hash:
            raise SweepError(f"{where} is the same configuration as point "
                             f"{by_hash[h].index + 1} ({by_hash[h].label})")
        p = Point(i, coords, sim, gp, h, label)
        by_hash[h] = p
        points.append(p)
    return points


# ---------------------------------------------------------------------------- running
def jsonable(x: Any) -> Any:
    """A JSON-ready copy: numpy scalars as numbers, tuples as lists, NaN as None, infinities as
    "inf"/"-inf"; objects JSON cannot hold are dropped from mappings (None in lists)."""
    if isinstance(x, Mapping):
        out = {}
        for k, v in x.items():
            j = jsonable(v)
            if j is not _DROP:
                out[str(k)] = j
        return out
    if isinstance(x, list | tuple):
        return [None if j is _DROP else j for j in map(jsonable, x)]
    if isinstance(x, bool) or x is None or isinstance(x, str | int):
        return x
    if isinstance(x, float):
        if math.isnan(x):
            return None
        return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")
    item = getattr(x, "item", None)  # numpy scalars
    if callable(item) and getattr(x, "ndim", None) == 0:
        return jsonable(item())
    return _DROP


_DROP = object()


def autoscale_timeline(router: Any, max_samples: int = TIMELINE_MAX_SAMPLES) -> dict | None:
    """A PolyServe fleet's (t, instances per tier, pending per tier) samples, at most
    ``max_samples`` of them (evenly spaced, first and last kept); None without a fleet."""
    fleet = getattr(router, "fleet", None)
    tl = getattr(fleet, "timeline", None)
    if not tl:
        return None
    n = len(tl)
    idx = list(range(n)) if n <= max_samples else sorted(
        {round(j * (n - 1) / (max_samples - 1)) for j in range(max_samples)})
    return {"tiers": list(getattr(fleet, "tier_names", [])), "samples": n,
            "t": [float(tl[i][0]) for i in idx],
            "instances": [list(tl[i][1]) for i in idx],
            "pending": [list(tl[i][2]) for i in idx]}


def compute_point(kind: str, sim: dict[str, Any],
                  goodput: dict[str, Any] | None) -> tuple[dict[str, Any], str, float]:
    """Run one point wherever it lands (the driver, a pool process, a Ray worker): the JSON-ready
    result, this process's :func:`code_hash` (the driver refuses results of other code) and the
    wall seconds it took."""
    t0 = time.perf_counter()
    cfg = SimConfig.model_validate(sim)
    if kind == "goodput":
        from .goodput import search

        gp = GoodputParams.model_validate(goodput or {})
        res = search(cfg, threshold=gp.threshold, guess=gp.guess, rel_tol=gp.rel_tol,
                     workers=gp.search_workers)
    else:
        res = run(cfg, keep_requests=True)
        res.pop("_requests", None)
        tl = autoscale_timeline(res.pop("_router", None))
        if tl is not None:
            res["autoscale_timeline"] = tl
    return jsonable(res), code_hash(), time.perf_counter() - t0


def _tmp_name(name: str) -> str:
    """``.NAME~HOST~PID.tmp``: '~' appears in neither a host name nor our file names."""
    return f".{name}~{socket.gethostname()}~{os.getpid()}.tmp"


def _write_atomic(path: Path, data: str | bytes) -> None:
    """Write via a tmp file in the same directory and ``os.replace``: a reader (or a resumed
    sweep) sees the old file or the new one, never half of one."""
    tmp = path.with_name(_tmp_name(path.name))
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data, encoding="utf-8")
    os.replace(tmp, path)


def _clean_stale_tmp(folder: Path) -> None:
    """Remove tmp files left by killed sweeps of this host (their process is gone)."""
    me = socket.gethostname()
    for f in folder.glob(".*~*~*.tmp"):
        _, host, pid = f.name[:-4].rsplit("~", 2)
        if host != me or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            f.unlink(missing_ok=True)
        except OSError:
            pass


def _load_point(path: Path, h: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(doc, dict) and isinstance(doc.get("sweep"), dict) and \
        doc["sweep"].get("hash") == h
    return doc if ok else None


def _dump(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=1) + "\n"


@dataclass
class SweepResult:
    """What a sweep did: its points in grid order, their JSON by hash, the table rows, counts."""

    out: Path
    points: list[Point]
    docs: dict[str, dict[str, Any]]
    rows: list[dict[str, Any]] = field(default_factory=list)
    computed: int = 0
    cached: int = 0
    failed: list[tuple[Point, str]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    compute_s: float = 0.0  # seconds the computed points took, summed over workers

    @property
    def total(self) -> int:
        return len(self.points)

    @property
    def pending(self) -> list[Point]:
        return [p for p in self.points if p.hash not in self.docs]


def default_out(config: SweepConfig) -> Path:
    return Path("sweep-out") / config.name


OnDone = Callable[[Point, dict[str, Any], bool], None]


def run_sweep(
    config: SweepConfig,
    out: str | os.PathLike[str] | None = None,
    *,
    workers: int | None = None,
    ray: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    dry_run: bool = False,
    on_start: Callable[[int, int], None] | None = None,
    on_done: OnDone | None = None,
) -> SweepResult:
    """Validate and expand ``config``, take what the cache has, compute the rest and write the
    outputs (module docstring).

    ``workers``: local processes, or CPUs of a ``ray="local"`` cluster (default: CPU count).
    ``ray``: None (local processes), ``"auto"``, ``"local"`` or a cluster address. ``limit``:
    only the first N points of the grid. ``dry_run``: count cached and pending points, write
    nothing. ``on_start(total, cached)`` runs once before any work; ``on_done(point, doc,
    cached)`` for each point (cached ones first), in the driver.
    """
    started = datetime.now(timezone.utc)
    hasher = ContentHasher()
    points = expand(config, hasher)
    if limit is not None:
        points = points[:max(limit, 0)]
    out_dir = Path(out) if out is not None else default_out(config)
    points_dir = out_dir / "points"
    cache = Path(cache_dir) if cache_dir is not None else points_dir
    shared = cache.resolve() != points_dir.resolve()
    res = SweepResult(out_dir, points, {})

    def block(p: Point) -> dict[str, Any]:
        return {"name": config.name, "kind": config.kind, "hash": p.hash,
                "coords": jsonable(p.coords)}

    found: dict[str, tuple[dict[str, Any], bool]] = {}  # hash -> (doc, already in points_dir)
    for p in points:
        doc = _load_point(points_dir / f"{p.hash}.json", p.hash)
        if doc is not None:
            found[p.hash] = (doc, True)
        elif shared and (doc := _load_point(cache / f"{p.hash}.json", p.hash)) is not None:
            found[p.hash] = (doc, False)
    if dry_run:
        res.docs = {h: d for h, (d, _) in found.items()}
        res.cached = len(found)
        return res

    workers = max(1, workers or os.cpu_count() or 1)
    if ray is not None and len(found) < len(points):  # no Ray: fail before writing anything
        _import_ray()
    points_dir.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    for folder in {out_dir, points_dir, cache}:
        _clean_stale_tmp(folder)
    _write_atomic(out_dir / "sweep.yaml",
                  yaml.safe_dump(config.model_dump(), sort_keys=False, allow_unicode=True))
    if on_start:
        on_start(len(points), len(found))
    for p in points:
        if p.hash not in found:
            continue
        doc, local = found[p.hash]
        if not local or doc.get("sweep") != block(p):  # this sweep's name and coordinates
            doc = {**doc, "sweep": block(p)}
            _write_atomic(points_dir / f"{p.hash}.json", _dump(doc))
        res.docs[p.hash] = doc
        res.cached += 1
        if on_done:
            on_done(p, doc, True)

    driver_code = code_hash()

    def finish(p: Point, value: tuple[dict[str, Any], str, float]) -> None:
        result, code, wall = value
        if code != driver_code:
            fail(p, f"the worker runs other proserve code (code hash {code[:12]}, this "
                    f"process {driver_code[:12]}): install the same version everywhere")
            return
        doc = {"sweep": block(p), **result}
        text = _dump(doc)
        if shared:
            _write_atomic(cache / f"{p.hash}.json", text)
        _write_atomic(points_dir / f"{p.hash}.json", text)
        res.docs[p.hash] = doc
        res.computed += 1
        res.compute_s += wall
        if on_done:
            on_done(p, doc, False)

    def fail(p: Point, e: BaseException | str) -> None:
        msg = e if isinstance(e, str) else f"{type(e).__name__}: {e}"
        res.failed.append((p, msg))

    todo = res.pending
    if ray is not None:
        backend = _run_ray(todo, ray, workers, finish, fail)
    else:
        backend = _run_local(todo, workers, finish, fail)
    res.rows = [result_row(config, p, res.docs[p.hash]) for p in points if p.hash in res.docs]
    write_tables(res.rows, out_dir)
    res.meta = _meta(config, res, hasher, started, backend, cache, limit)
    _write_atomic(out_dir / "meta.json", json.dumps(res.meta, indent=1) + "\n")
    return res


Finish = Callable[[Point, tuple[dict[str, Any], str, float]], None]
Fail = Callable[[Point, "BaseException | str"], None]


def _exit_with_parent(parent: int) -> None:
    """Pool-worker initializer: exit when the sweep's process is gone (killed, SIGTERM), so a
    killed sweep leaves no worker blocked forever on its task queue."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _run_local(todo: list[Point], workers: int, finish: Finish, fail: Fail) -> dict[str, Any]:
    """Points in worker processes (the simulator is CPU-bound pure Python), or in this process
    for one worker; a point's exception is recorded and the others go on."""
    n = min(workers, len(todo))
    backend = {"kind": "processes", "workers": workers}
    if n <= 1:
        for p in todo:
            try:
                value = compute_point(*p.task_args())
            except Exception as e:  # noqa: BLE001 - recorded per point, the rest still run
                fail(p, e)
                continue
            finish(p, value)
        return backend
    ex = ProcessPoolExecutor(max_workers=n, initializer=_exit_with_parent,
                             initargs=(os.getpid(),))
    try:
        futs = {ex.submit(compute_point, *p.task_args()): p for p in todo}
        for f in as_completed(futs):
            try:
                value = f.result()
            except Exception as e:  # noqa: BLE001 - recorded per point
                fail(futs[f], e)
                continue
            finish(futs[f], value)
    except BaseException:
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    ex.shutdown()
    return backend


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise SweepError("--ray needs Ray, which is not installed: pip install "
                         "'proserve[ray]'") from None
    return ray


def _run_ray(todo: list[Point], address: str, workers: int, finish: Finish,
             fail: Fail) -> dict[str, Any]:
    """Points as Ray tasks (one CPU each; a goodput search's ``search_workers``). ``local``
    starts a private cluster in this process and stops it afterwards; ``auto`` and an address
    connect to a running one. A Ray session this process already holds is used as it is."""
    if not todo:  # everything came from the cache: no cluster to start or reach
        return {"kind": "ray", "address": address, "cluster_cpus": None}
    ray = _import_ray()
    own = not ray.is_initialized()
    if own:
        try:
            if address == "local":
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
        except Exception as e:  # noqa: BLE001 - ConnectionError, RuntimeError, ValueError ...
            raise SweepError(f"cannot {'start' if address == 'local' else 'connect to'} Ray "
                             f"({address}): {e}") from None
    backend: dict[str, Any] = {"kind": "ray", "address": address,
                               "cluster_cpus": ray.cluster_resources().get("CPU")}
    task = ray.remote(compute_point)
    refs: dict[Any, Point] = {}
    try:
        for p in todo:
            cpus = p.goodput.search_workers if p.goodput is not None else 1
            refs[task.options(num_cpus=cpus).remote(*p.task_args())] = p
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                try:
                    value = ray.get(ref)
                except ray.exceptions.RayError as e:
                    cause = getattr(e, "cause", None)
                    fail(refs[ref], cause if isinstance(cause, BaseException) else e)
                    continue
                finish(refs[ref], value)
    except BaseException:
        for ref in refs:
            with contextlib.suppress(Exception):  # finished or gone already
                ray.cancel(ref, force=True)
        raise
    finally:
        if own:
            ray.shutdown()
    return backend


# ---------------------------------------------------------------------------- outputs
def _effective_router(sim: SimConfig) -> str:
    return sim.router or ("round-robin" if _fleet_size(sim) > 1 else "single")


def _cell(v: Any) -> Any:
    """A table cell: scalars as they are, mappings and lists as compact JSON."""
    if isinstance(v, dict | list):
        return json.dumps(jsonable(v), sort_keys=True, separators=(",", ":"))
    return v


def result_row(config: SweepConfig, point: Point, doc: Mapping[str, Any]) -> dict[str, Any]:
    """One tidy row: name, kind, hash, the grid coordinates (by normalised key), the point's
    seed/trace/profile/instances/policy/router (and rate for simulate) unless they are grid
    keys, then the metrics (module constants), ``kv.*`` and ``class.<cls>.<metric>``."""
    sim = point.sim
    row: dict[str, Any] = {"name": config.name, "kind": config.kind, "hash": point.hash}
    row.update({k: _cell(v) for k, v in point.coords.items()})
    fixed: dict[str, Any] = {"seed": sim.seed, "trace": sim.trace, "profile": sim.profile,
                             "instances": _fleet_size(sim), "policy": sim.policy,
                             "router": _effective_router(sim)}
    if config.kind == "simulate":
        fixed["rate"] = sim.rate
    for k, v in fixed.items():
        row.setdefault(k, v)
    if config.kind == "goodput":
        for m in GOODPUT_METRICS:
            row[m] = doc.get(m)
        row["rates_simulated"] = len(doc.get("points") or [])
        class_metrics = GOODPUT_CLASS_METRICS
    else:
        for m in SIM_METRICS:
            row[m] = doc.get(m)
        row["mean_instances"] = (doc.get("fleet") or {}).get("mean_instances")
        for k, v in (doc.get("kv") or {}).items():  # a nested mapping one level flat
            for kk, vv in (v.items() if isinstance(v, dict) else [(None, v)]):
                if vv is not None and not isinstance(vv, dict | list):
                    row[f"kv.{k}" if kk is None else f"kv.{k}.{kk}"] = vv
        class_metrics = SIM_CLASS_METRICS
    for cls, cm in (doc.get("per_class") or {}).items():
        for m in class_metrics:
            row[f"class.{cls}.{m}"] = cm.get(m)
    return row


def columns(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every key of the rows, in first-seen order (classes may differ between points)."""
    return list(dict.fromkeys(k for r in rows for k in r))


def write_tables(rows: list[dict[str, Any]], out_dir: Path) -> None:
    """``results.csv`` (floats written exactly, empty cells for missing values) and
    ``results.parquet`` (a column whose values Arrow cannot type together becomes strings)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = columns(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow(["" if r.get(c) is None else r.get(c) for c in cols])
    _write_atomic(out_dir / "results.csv", buf.getvalue())

    arrays = {}
    for c in cols:
        vals = [r.get(c) for r in rows]
        try:
            arrays[c] = pa.array(vals)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arrays[c] = pa.array([None if v is None else str(v) for v in vals], pa.string())
    table = pa.table(arrays) if cols else pa.table({})
    tmp = out_dir / _tmp_name("results.parquet")
    pq.write_table(table, tmp)
    os.replace(tmp, out_dir / "results.parquet")


def _git(root: Path) -> dict[str, Any] | None:
    """The commit of the checkout the package runs from, and whether it has local changes."""
    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                               timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def trace_attribution(file: str) -> dict[str, str]:
    """Source, licence and citation of a shipped trace file, from the bullet lines of its
    section in ``workload/data/ATTRIBUTION.md`` (the section whose heading names the file)."""
    from ..workload.builtin import data_dir

    try:
        text = (data_dir() / "ATTRIBUTION.md").read_text(encoding="utf-8")
    except OSError:
        return {}
    out: dict[str, str] = {}
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        heading, _, body = section.partition("\n")
        if f"`{file}`" not in heading and f"`{file}/`" not in heading:
            continue
        key = None
        for line in body.splitlines():
            m = re.match(r"^- (Source|Licence|Cite): (.*)$", line)
            if m:
                key = m.group(1).lower()
                out[key] = m.group(2).strip()
            elif key and line.startswith("  ") and line.strip():
                out[key] += " " + line.strip()
            else:
                key = None
        out["file"] = "proserve/workload/data/ATTRIBUTION.md"
        break
    return out


def _meta(config: SweepConfig, res: SweepResult, hasher: ContentHasher, started: datetime,
          backend: dict[str, Any], cache: Path, limit: int | None) -> dict[str, Any]:
    import proserve

    from ..workload.builtin import BUILTINS

    traces = []
    for ref in hasher.traces():
        t: dict[str, Any] = {"trace": ref.trace, "path": str(ref.path), "sha256": ref.sha256,
                             "builtin": ref.builtin}
        if ref.builtin:
            b = BUILTINS[ref.trace]
            t["description"] = b.description
            t["attribution"] = trace_attribution(b.file)
        traces.append(t)
    profiles = sorted({x for p in res.points for x in (p.sim.profile, p.sim.truth_profile)
                       if x is not None})
    return {
        "name": config.name,
        "kind": config.kind,
        "proserve_version": proserve.__version__,
        "code_hash": code_hash(),
        "git": _git(Path(proserve.__file__).resolve().parent),
        "python": sys.version.split()[0],
        "started_utc": started.isoformat(timespec="seconds"),
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "points": {"total": res.total, "computed": res.computed, "cached": res.cached,
                   "failed": len(res.failed)},
        "failed": [{"hash": p.hash, "coords": jsonable(p.coords), "error": msg}
                   for p, msg in res.failed],
        "limit": limit,
        "backend": backend,
        "compute_s": round(res.compute_s, 3),
        "cache_dir": str(cache),
        "traces": traces,
        "profiles": [{"profile": x, "sha256": hasher.profile(x)} for x in profiles],
    }
