"""A small named registry for pluggable policies (engine schedulers, routers).

Each entry is a class plus default keyword arguments and a one-line summary; several names may
share a class with different defaults (``vllm-fcfs`` and ``vllm-priority``). Built-in entries
register themselves when their package is imported (``proserve.engine``, ``proserve.cluster``),
and any import of a module of the package imports the package first, so looking up a name never
depends on import order. ``loader`` (optional) runs before every lookup, for registries that load
plug-ins lazily.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Spec(Generic[T]):
    name: str
    cls: type[T]
    defaults: dict[str, Any]
    summary: str


class Registry(Generic[T]):
    def __init__(self, kind: str, loader: Callable[[], object] = lambda: None) -> None:
        self.kind = kind
        self._loader = loader
        self._specs: dict[str, Spec[T]] = {}

    def register(self, name: str, cls: type[T], summary: str, **defaults: Any) -> None:
        if name in self._specs:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._specs[name] = Spec(name, cls, dict(defaults), summary)

    def names(self) -> list[str]:
        self._loader()
        return list(self._specs)

    def spec(self, name: str) -> Spec[T]:
        self._loader()
        try:
            return self._specs[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; available: "
                             f"{', '.join(self._specs)}") from None

    def make(self, name: str, *args: Any, **params: Any) -> T:
        """Instantiate ``name`` with its defaults overridden by ``params``; the instance's
        ``name`` attribute is set to the registered name."""
        spec = self.spec(name)
        try:
            obj = spec.cls(*args, **{**spec.defaults, **params})
        except TypeError as e:
            raise ValueError(f"bad parameter for {self.kind} {name!r}: {e}") from None
        obj.name = name  # type: ignore[attr-defined]
        return obj
