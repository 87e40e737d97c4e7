"""Gateway configuration (``proserve gateway --config gateway.yaml``), validated with pydantic.

Every mistake is reported with the file and the field path, e.g.
``gateway.yaml: tenants.1.class: unknown class 'gold'; known: high, low`` or
``gateway.yaml: models.1.backends.0.url: String should match pattern '^https?://'``.

A file serves one model (``model:`` + ``backends:``, as before) or several (``models:``, each
with its name, aliases, backends and optionally its own router, classes and settings); both
become a list of :class:`ModelSpec`. docs/GATEWAY.md is the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..cluster.admission import MAX_ADAPTIVE_SHARE
from ..core.classes import PriorityClass, SpecError, parse_classes

DEFAULT_MEAN_OUTPUT = 256  # tokens: a PolyServe tier's expected output length unless configured


class BackendConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(pattern=r"^https?://")
    # How priority is spelled for this engine: vLLM (lower = more urgent), SGLang (higher = more
    # urgent), or our emulator / vLLM plug-in (vLLM's field plus SLO fields in vllm_xargs).
    kind: Literal["vllm", "sglang", "proserve"] = "proserve"
    profile: str = "llama3.1-8b@h100"  # latency model the router uses for this backend
    kv_blocks: int | None = Field(default=None, gt=0)


class ClassSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    queue_timeout_s: float = Field(default=5.0, ge=0)  # how long a request may wait for capacity
    sheddable: bool = False  # 429 + Retry-After at once instead of waiting
    # share of the engine heavier classes take while a request of this class waits: its
    # predicted TTFT is stretched by 1 / (1 - yield_share) (cluster/admission.py); 0: off
    yield_share: float = Field(default=0.0, ge=0, lt=1)
    # adaptive share instead (cluster/admission.py, AdaptiveShare): it follows the heavier
    # classes' SLO outcomes, so that they meet their SLO this often; yield_share is where it
    # starts
    yield_target: float | None = Field(default=None, gt=0, lt=1)

    @model_validator(mode="after")
    def _adaptive_start(self) -> ClassSettings:
        if self.yield_target is not None and self.yield_share > MAX_ADAPTIVE_SHARE:
            raise ValueError(f"yield_share: an adaptive share (yield_target set) starts at "
                             f"most at {MAX_ADAPTIVE_SHARE}, got {self.yield_share}")
        return self


class TenantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    api_keys: list[str] = Field(min_length=1)
    class_: str = Field(alias="class")
    max_rps: float | None = Field(default=None, gt=0)
    max_tokens_per_s: float | None = Field(default=None, gt=0)
    max_concurrency: int | None = Field(default=None, gt=0)  # requests in flight at once
    models: list[str] | None = None  # allow-list of model names or aliases; None: all


class HealthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    interval_s: float = Field(default=1.0, gt=0)
    timeout_s: float = Field(default=1.0, gt=0)
    failures_to_eject: int = Field(default=2, ge=1)


class TimeoutsConfig(BaseModel):
    """How long the gateway waits on a backend, per forwarded request (seconds).

    ``connect_s``: to open the connection. ``first_byte_s``: from sending the request to the
    response's headers (a backend that accepts and never answers; then the request is retried on
    another backend, as any failure before the first byte). ``between_tokens_s``: between two
    body reads once the response started (a stream that stalls; the client then gets an SSE error
    event, or a 504 for a non-streaming request). The total is ``request_timeout_s``."""

    model_config = ConfigDict(extra="forbid")

    connect_s: float = Field(default=2.0, gt=0)
    first_byte_s: float = Field(default=120.0, gt=0)  # long prompts queue before vLLM answers
    between_tokens_s: float = Field(default=60.0, gt=0)


class LimitsConfig(BaseModel):
    """Where tenant limits (``max_rps``, ``max_tokens_per_s``, ``max_concurrency``) are kept.

    ``local`` (the default): in each gateway process. ``redis``: in one Redis shared by every
    worker and every gateway host, so a tenant's limits hold across all of them
    (:mod:`proserve.serve.tenant_limits`)."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["local", "redis"] = "local"
    url: str | None = Field(default=None, pattern=r"^(rediss?|unix)://")
    # Redis unreachable (or slower than timeout_s): "open" judges the request by this process's
    # own limits (as backend: local) and counts it; "closed" refuses it with 503.
    on_error: Literal["open", "closed"] = "open"
    timeout_s: float = Field(default=0.25, gt=0)  # per Redis call
    retry_s: float = Field(default=1.0, gt=0)  # after a failure, skip Redis this long
    lease_ttl_s: float = Field(default=30.0, gt=0)  # a concurrency slot held by a dead process
    key_prefix: str = Field(default="proserve", min_length=1)

    @model_validator(mode="after")
    def _check(self) -> LimitsConfig:
        if self.backend == "redis" and not self.url:
            raise ValueError("limits.url: backend redis needs a url, e.g. "
                             "'redis://127.0.0.1:6379/0'")
        return self


class ModelConfig(BaseModel):
    """One served model (an entry of ``models:``). Unset fields take the top-level value."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    aliases: list[str] = Field(default_factory=list)
    router: str | None = None
    router_args: dict | None = None
    # The top-level classes' names, in the same order (tenants hold a class name), with this
    # model's own weights and SLOs.
    classes: str | None = None
    class_settings: dict[str, ClassSettings] | None = None
    max_model_len: int | None = Field(default=None, ge=2)
    backends: list[BackendConfig] = Field(min_length=1)


@dataclass
class ModelSpec:
    """A served model with every setting resolved (top-level defaults filled in)."""

    name: str
    aliases: list[str]
    router: str
    router_args: dict
    classes: str
    class_settings: dict[str, ClassSettings]
    max_model_len: int
    backends: list[BackendConfig]
    path: str = ""  # where it sits in the file, for errors: "" or "models.1."

    def router_holds_requests(self) -> bool:
        """Does the router queue requests itself (PolyServe's fleet API) instead of answering
        each ``choose``?"""
        from ..cluster.base import router_spec

        return bool(getattr(router_spec(self.router).cls, "holds_requests", False))

    def router_tiers(self) -> list[dict]:
        """PolyServe tiers from the classes, one per class: its absolute TPOT SLO and its mean
        output length (``router_args.mean_output: {class: tokens}``, default 256)."""
        classes = self.priority_classes()
        names = [c.name for c in classes]
        ra = f"{self.path}router_args"
        if "tiers" in self.router_args:
            raise ValueError(f"{ra}.tiers: router {self.router!r} takes its tiers from "
                             f"the classes ({', '.join(names)}); set TPOT SLOs there")
        mean = self.router_args.get("mean_output") or {}
        if not isinstance(mean, dict):
            raise ValueError(f"{ra}.mean_output: expected a mapping {{class: tokens}}")
        for k, v in mean.items():
            if k not in names:
                raise ValueError(f"{ra}.mean_output: unknown class {k!r}; known: "
                                 f"{', '.join(names)}")
            if isinstance(v, bool) or not isinstance(v, int | float) or not v >= 1:
                raise ValueError(f"{ra}.mean_output.{k}: expected a number of tokens "
                                 f">= 1, got {v!r}")
        out = []
        for c in classes:
            if c.tpot.relative:
                raise ValueError(
                    f"{self.path}classes: class {c.name!r} has a relative TPOT SLO "
                    f"(tpot={c.tpot.value:g}x); router {self.router!r} makes one tier per "
                    f"class and needs an absolute one, e.g. '{c.name}:tpot=50ms'")
            out.append({"name": c.name, "tpot": c.tpot.value,
                        "mean_output": float(mean.get(c.name, DEFAULT_MEAN_OUTPUT))})
        return out

    def router_kwargs(self) -> dict:
        """What ``make_router`` gets: ``router_args``, and for a router that holds requests
        the tiers in place of the gateway-only ``mean_output``."""
        args = dict(self.router_args)
        if self.router_holds_requests():
            args.pop("mean_output", None)
            args["tiers"] = self.router_tiers()
        return args

    def priority_classes(self) -> list[PriorityClass]:
        return parse_classes(self.classes)

    def settings(self, cls: str) -> ClassSettings:
        return self.class_settings.get(cls, ClassSettings())

    def check(self, class_names: list[str]) -> None:
        """Validate what pydantic cannot: classes, class settings, the router and its args."""
        p = self.path
        try:
            names = [c.name for c in parse_classes(self.classes)]
        except SpecError as e:
            raise ValueError(f"{p}classes: {e}") from None
        if names != class_names:
            raise ValueError(f"{p}classes: a model's classes must be the top-level classes "
                             f"({', '.join(class_names)}) in that order, with its own weights "
                             f"and SLOs; got {', '.join(names)}")
        for k in self.class_settings:
            if k not in names:
                raise ValueError(f"{p}class_settings: unknown class {k!r}; known: "
                                 f"{', '.join(names)}")
        from ..cluster.base import make_router, router_spec

        try:
            spec = router_spec(self.router)
        except ValueError as e:
            raise ValueError(f"{p}router: {e}") from None
        if getattr(spec.cls, "holds_requests", False):  # polyserve: tiers from the classes
            # its own admission test replaces the gateway's prediction: a share would be
            # accepted and then do nothing
            for k, cs in self.class_settings.items():
                if cs.yield_share or cs.yield_target is not None:
                    raise ValueError(
                        f"{p}class_settings.{k}: yield_share and yield_target apply to the "
                        f"gateway's own admission; router {self.router!r} runs its own "
                        f"admission test and would ignore them")
            self.router_tiers()  # every class needs an absolute TPOT SLO
            try:
                make_router(self.router, **self.router_kwargs())
            except ValueError as e:
                raise ValueError(f"{p}router_args: {e}") from None


class GatewayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # One model: ``model`` + ``backends``. Several: ``models`` (then ``router``, ``router_args``,
    # ``classes``, ``class_settings`` and ``max_model_len`` here are every model's defaults).
    model: str = "proserve-emulated"
    models: list[ModelConfig] | None = Field(default=None, min_length=1)
    host: str = "127.0.0.1"
    port: int = Field(default=18080, gt=0, lt=65536)
    workers: int = Field(default=1, ge=1, le=256)  # processes sharing the port (SO_REUSEPORT)
    # Each worker also serves /metrics and /health on metrics_port + its index (a scrape of the
    # shared port reaches whichever worker the kernel picks).
    metrics_port: int | None = Field(default=None, gt=0, lt=65536)
    router: str = "go"
    router_args: dict = Field(default_factory=dict)
    classes: str = "high:w=2,share=0.5;low:w=1,share=0.5"
    class_settings: dict[str, ClassSettings] = Field(default_factory=dict)
    backends: list[BackendConfig] | None = Field(default=None, min_length=1)
    tenants: list[TenantConfig] = Field(min_length=1)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    scrape_interval_s: float = Field(default=0.5, gt=0)
    max_model_len: int = Field(default=8192, ge=2)
    retries: int = Field(default=2, ge=0)  # other backends tried when one fails before 1st byte
    request_timeout_s: float = Field(default=600.0, gt=0)
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)
    shutdown_grace_s: float = Field(default=30.0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> GatewayConfig:
        if self.models is None and self.backends is None:
            raise ValueError("backends: Field required (or list the served models under "
                             "models:, each with its backends)")
        if self.models is not None:
            both = [k for k in ("model", "backends") if k in self.model_fields_set]
            if both:
                raise ValueError(f"{'/'.join(both)}: give either models: (each with its name "
                                 f"and backends) or the single-model model:/backends:, not both")
        try:
            names = [c.name for c in parse_classes(self.classes)]
        except SpecError as e:
            raise ValueError(f"classes: {e}") from None
        for k in self.class_settings:
            if k not in names:
                raise ValueError(f"class_settings: unknown class {k!r}; known: {', '.join(names)}")
        specs = self.model_specs()
        ids: dict[str, str] = {}
        for i, m in enumerate(specs):
            for j, n in enumerate([m.name, *m.aliases]):
                where = f"models.{i}.name" if j == 0 else f"models.{i}.aliases.{j - 1}"
                if n in ids:
                    raise ValueError(f"{where}: {n!r} already names model {ids[n]!r}")
                ids[n] = m.name
            m.check(names)
        seen: dict[str, str] = {}
        for i, t in enumerate(self.tenants):
            if t.class_ not in names:
                raise ValueError(f"tenants.{i}.class: unknown class {t.class_!r}; known: "
                                 f"{', '.join(names)}")
            for key in t.api_keys:
                if key in seen:
                    raise ValueError(f"tenants.{i}.api_keys: key also belongs to {seen[key]!r}")
                seen[key] = t.name
            for j, n in enumerate(t.models or ()):
                if n not in ids:
                    raise ValueError(f"tenants.{i}.models.{j}: unknown model {n!r}; known: "
                                     f"{', '.join(ids)}")
        return self

    def model_specs(self) -> list[ModelSpec]:
        """The served models, each with its settings resolved; a single-model file is one."""
        if self.models is None:
            return [ModelSpec(self.model, [], self.router, dict(self.router_args), self.classes,
                              dict(self.class_settings), self.max_model_len,
                              list(self.backends or ()))]
        return [ModelSpec(
            m.name, list(m.aliases), m.router or self.router,
            dict(m.router_args if m.router_args is not None
                 else (self.router_args if m.router is None or m.router == self.router
                       else {})),
            m.classes or self.classes,
            dict(m.class_settings if m.class_settings is not None else self.class_settings),
            m.max_model_len or self.max_model_len, list(m.backends), path=f"models.{i}.")
            for i, m in enumerate(self.models)]

    def _top(self) -> ModelSpec:
        return ModelSpec(self.model, [], self.router, dict(self.router_args), self.classes,
                         dict(self.class_settings), self.max_model_len,
                         list(self.backends or ()))

    def router_holds_requests(self) -> bool:
        """Does the top-level router queue requests itself (PolyServe's fleet API)?"""
        return self._top().router_holds_requests()

    def router_tiers(self) -> list[dict]:
        """The top-level router's PolyServe tiers (:meth:`ModelSpec.router_tiers`)."""
        return self._top().router_tiers()

    def router_kwargs(self) -> dict:
        """What ``make_router`` gets for the top-level router (:meth:`ModelSpec.router_kwargs`)."""
        return self._top().router_kwargs()

    def priority_classes(self) -> list[PriorityClass]:
        return parse_classes(self.classes)

    def settings(self, cls: str) -> ClassSettings:
        return self.class_settings.get(cls, ClassSettings())

    def tenant_models(self, t: TenantConfig) -> set[str] | None:
        """The model names (aliases resolved) tenant ``t`` may use; None: every model."""
        if t.models is None:
            return None
        ids = {n: m.name for m in self.model_specs() for n in (m.name, *m.aliases)}
        return {ids[n] for n in t.models}


def load_gateway_config(path: str | Path) -> GatewayConfig:
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    try:
        return GatewayConfig.model_validate(doc)
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            msgs.append(f"{loc}: {err['msg']}" if loc else err["msg"])
        raise ValueError(f"{path}: " + "; ".join(msgs)) from None
