"""Built-in traces shipped inside the package (``proserve/workload/data``).

Names are stable identifiers for the CLI (``--trace azure-conv``); each maps to a file or
directory under ``data/`` and its format, so a built-in loads without header sniffing. Sources,
licences and the derivation of the ServeGen subset are in ``data/ATTRIBUTION.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class Builtin:
    """A shipped trace: its file under ``data/``, its format and a one-line description."""

    name: str
    file: str
    fmt: str
    description: str


# read-only: a module-level registry must not be mutable shared state
BUILTINS: MappingProxyType[str, Builtin] = MappingProxyType({
    b.name: b
    for b in (
        Builtin("azure-conv", "azure_llm_2023_conv.csv", "azure",
                "Azure LLM inference 2023, conversation, 1 h, 19,366 requests"),
        Builtin("azure-code", "azure_llm_2023_code.csv", "azure",
                "Azure LLM inference 2023, code completion, 1 h, 8,819 requests"),
        Builtin("mooncake-synthetic", "mooncake_synthetic.jsonl", "mooncake",
                "Mooncake FAST'25 synthetic workload, long prompts, 3,993 requests"),
        Builtin("sharegpt", "sharegpt_lengths.csv", "lengths",
                "ShareGPT prompt/output lengths (no timestamps), 30,731 rows"),
        Builtin("arxiv-lengths", "arxiv_summarization_lengths.csv", "lengths",
                "arXiv summarization prompt/output lengths (no timestamps), 28,257 rows"),
        Builtin("servegen-m-small", "servegen-m-small", "servegen",
                "ServeGen (Alibaba Bailian) m-small, 43 clients, one day (day 9 of 14)"),
    )
})


def data_dir() -> Path:
    """The package's data directory (a real path: the package is never zipped)."""
    return Path(str(resources.files("proserve.workload") / "data"))


def builtin_path(name: str) -> Path:
    """Path of the built-in trace ``name``; ``KeyError`` listing the valid names otherwise."""
    try:
        b = BUILTINS[name]
    except KeyError:
        raise KeyError(f"unknown built-in trace {name!r}; choose from {sorted(BUILTINS)}") from None
    return data_dir() / b.file


def list_builtins() -> list[Builtin]:
    """All built-in traces, in a stable order."""
    return list(BUILTINS.values())
