"""Gateway configuration (``proserve gateway --config gateway.yaml``), validated with pydantic.

Every mistake is reported with the file and the field path, e.g.
``gateway.yaml: tenants.1.class: unknown class 'gold'; known: high, low``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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


class TenantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    api_keys: list[str] = Field(min_length=1)
    class_: str = Field(alias="class")
    max_rps: float | None = Field(default=None, gt=0)
    max_tokens_per_s: float | None = Field(default=None, gt=0)


class HealthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    interval_s: float = Field(default=1.0, gt=0)
    timeout_s: float = Field(default=1.0, gt=0)
    failures_to_eject: int = Field(default=2, ge=1)


class GatewayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "proserve-emulated"
    host: str = "127.0.0.1"
    port: int = Field(default=18080, gt=0, lt=65536)
    router: str = "go"
    router_args: dict = Field(default_factory=dict)
    classes: str = "high:w=2,share=0.5;low:w=1,share=0.5"
    class_settings: dict[str, ClassSettings] = Field(default_factory=dict)
    backends: list[BackendConfig] = Field(min_length=1)
    tenants: list[TenantConfig] = Field(min_length=1)
    health: HealthConfig = Field(default_factory=HealthConfig)
    scrape_interval_s: float = Field(default=0.5, gt=0)
    max_model_len: int = Field(default=8192, ge=2)
    retries: int = Field(default=2, ge=0)  # other backends tried when one fails before 1st byte
    request_timeout_s: float = Field(default=600.0, gt=0)
    shutdown_grace_s: float = Field(default=30.0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> GatewayConfig:
        try:
            names = [c.name for c in parse_classes(self.classes)]
        except SpecError as e:
            raise ValueError(f"classes: {e}") from None
        for k in self.class_settings:
            if k not in names:
                raise ValueError(f"class_settings: unknown class {k!r}; known: {', '.join(names)}")
        seen: dict[str, str] = {}
        for i, t in enumerate(self.tenants):
            if t.class_ not in names:
                raise ValueError(f"tenants.{i}.class: unknown class {t.class_!r}; known: "
                                 f"{', '.join(names)}")
            for key in t.api_keys:
                if key in seen:
                    raise ValueError(f"tenants.{i}.api_keys: key also belongs to {seen[key]!r}")
                seen[key] = t.name
        from ..cluster.base import make_router, router_spec

        spec = router_spec(self.router)
        if getattr(spec.cls, "holds_requests", False):  # polyserve: tiers from the classes
            self.router_tiers()  # every class needs an absolute TPOT SLO
            try:
                make_router(self.router, **self.router_kwargs())
            except ValueError as e:
                raise ValueError(f"router_args: {e}") from None
        return self

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
        if "tiers" in self.router_args:
            raise ValueError(f"router_args.tiers: router {self.router!r} takes its tiers from "
                             f"the classes ({', '.join(names)}); set TPOT SLOs there")
        mean = self.router_args.get("mean_output") or {}
        if not isinstance(mean, dict):
            raise ValueError("router_args.mean_output: expected a mapping {class: tokens}")
        for k, v in mean.items():
            if k not in names:
                raise ValueError(f"router_args.mean_output: unknown class {k!r}; known: "
                                 f"{', '.join(names)}")
            if isinstance(v, bool) or not isinstance(v, int | float) or not v >= 1:
                raise ValueError(f"router_args.mean_output.{k}: expected a number of tokens "
                                 f">= 1, got {v!r}")
        out = []
        for c in classes:
            if c.tpot.relative:
                raise ValueError(
                    f"classes: class {c.name!r} has a relative TPOT SLO "
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
