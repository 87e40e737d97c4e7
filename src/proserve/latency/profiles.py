"""Named latency profiles: the shipped YAML files and users' own profile files.

A profile file holds one :class:`LatencyModel` (the seven coefficients in seconds and the KV
capacity) together with where it came from: model architecture, GPU, efficiency assumptions, fit
error and a free-text ``provenance``. Keeping the provenance inside the file means a number in a
report can always be traced back to the assumptions that produced it.

Shipped profiles live in ``proserve/latency/profiles/`` as package data. Profile names contain
``@`` (``llama3.1-8b@h100``); the file name replaces each ``@`` with ``__``
(``llama3.1-8b__h100.yaml``) because ``@`` means something to scp, rsync, pip URLs and some
build tools, even though filesystems accept it.

YAML layout (JSON with the same keys is accepted too)::

    name: llama3.1-8b@h100
    coefficients: {c0: ..., c1: ..., c2: ..., c3: ..., c4: ..., d1: ..., d2: ...}   # seconds
                                        # (+ optional c5: per-prefill-sequence cost)
    kv_blocks: 27507
    block_size: 16
    model: {...}          # ModelConfig fields (optional)
    gpu: {...}            # GPUSpec fields (optional)
    efficiency: {...}     # Efficiency fields (optional)
    transfer: {s_per_block: ..., s_per_copy: ..., provenance: ...}   # KV copy time (optional;
                          # latency/transfer.py derives it from model + gpu when absent)
    fit_error: {mape: ..., p90_ape: ..., n: ...}
    provenance: |
      multi-line text

The flat form written by ``LatencyModel.to_dict`` (coefficients at top level) also loads. Every
key other than name, coefficients, kv_blocks and block_size ends up in ``LatencyModel.meta``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import yaml
from pydantic import ValidationError

from proserve.latency.model import COEFF_NAMES, OPTIONAL_COEFFS, LatencyModel
from proserve.latency.roofline import (
    H100_SXM,
    LLAMA31_8B,
    QWEN2_7B,
    QWEN3_32B,
    Efficiency,
    GPUSpec,
    ModelConfig,
)

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

PROFILE_SUFFIX = ".yaml"
_FILE_SUFFIXES = (".yaml", ".yml", ".json")
_RESERVED = frozenset({"name", "coefficients", "kv_blocks", "block_size", *COEFF_NAMES,
                       *OPTIONAL_COEFFS})
_VALIDATED_SECTIONS = (("model", ModelConfig), ("gpu", GPUSpec), ("efficiency", Efficiency))


class ProfileSpec(NamedTuple):
    """What a shipped profile is built from (see ``scripts/make_profiles.py``)."""

    name: str
    model: ModelConfig
    gpu: GPUSpec


#: The profiles shipped with the package, in the order ``make_profiles.py`` writes them.
SHIPPED_SPECS: tuple[ProfileSpec, ...] = (
    ProfileSpec("qwen2-7b@h100", QWEN2_7B, H100_SXM),
    ProfileSpec("llama3.1-8b@h100", LLAMA31_8B, H100_SXM),
    ProfileSpec("qwen3-32b@4xh100", QWEN3_32B,
                H100_SXM.model_copy(update={"count": 4})),
)


# ---------------------------------------------------------------------- names <-> files
def profile_filename(name: str) -> str:
    """File name of the profile called ``name`` (``@`` -> ``__``, see module docstring)."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"invalid profile name {name!r}")
    return name.replace("@", "__") + PROFILE_SUFFIX


def profile_name(filename: str) -> str:
    """Inverse of :func:`profile_filename`."""
    stem = filename[: -len(PROFILE_SUFFIX)] if filename.endswith(PROFILE_SUFFIX) else filename
    return stem.replace("__", "@")


def _profiles_dir() -> Traversable:
    return resources.files("proserve.latency").joinpath("profiles")


def _shipped_files() -> dict[str, Traversable]:
    d = _profiles_dir()
    if not d.is_dir():
        return {}
    return {profile_name(f.name): f for f in d.iterdir()
            if f.is_file() and f.name.endswith(PROFILE_SUFFIX)}


def list_profiles() -> list[str]:
    """Names of the shipped profiles, sorted."""
    return sorted(_shipped_files())


# ---------------------------------------------------------------------- loading
def load_profile(name_or_path: str | os.PathLike[str]) -> LatencyModel:
    """A shipped profile by name, or a profile file (YAML or JSON) by path.

    Raises ``ValueError`` for an unknown name (listing the shipped ones), a missing file, or a
    malformed file (naming the file and the problem), so a CLI can report any of them uniformly.
    """
    shipped = _shipped_files()
    if isinstance(name_or_path, str) and name_or_path in shipped:
        f = shipped[name_or_path]
        return _parse_text(f.read_text(encoding="utf-8"), f"profile {name_or_path!r} ({f.name})",
                           default_name=name_or_path, json_format=False)
    path = Path(name_or_path)
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: cannot read profile file: {e}") from None
        return _parse_text(text, str(path), default_name=path.stem.replace("__", "@"),
                           json_format=path.suffix.lower() == ".json")
    available = ", ".join(sorted(shipped)) or "(none)"
    if path.suffix.lower() in _FILE_SUFFIXES or os.sep in str(name_or_path) or path.exists():
        raise ValueError(f"{path}: no such profile file (shipped profiles: {available})")
    raise ValueError(f"unknown profile {str(name_or_path)!r}; available: {available}")


def _parse_text(text: str, source: str, *, default_name: str, json_format: bool) -> LatencyModel:
    try:
        doc = json.loads(text) if json_format else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        kind = "JSON" if json_format else "YAML"
        raise ValueError(f"{source}: invalid {kind}: {e}") from None
    try:
        return profile_from_mapping(doc, default_name=default_name)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


def profile_from_mapping(doc: Any, *, default_name: str = "custom") -> LatencyModel:
    """Build a :class:`LatencyModel` from a parsed profile document; ``ValueError`` if malformed."""
    if not isinstance(doc, Mapping):
        raise ValueError(f"profile must be a mapping, got {type(doc).__name__}")
    if "coefficients" in doc:
        coeffs = doc["coefficients"]
        if not isinstance(coeffs, Mapping):
            raise ValueError("'coefficients' must be a mapping of c0..c4, d1, d2 (and optional c5)")
        stray = [k for k in (*COEFF_NAMES, *OPTIONAL_COEFFS) if k in doc]
        if stray:
            raise ValueError(
                f"coefficient(s) {stray} given both at top level and in 'coefficients'")
    else:
        coeffs = doc
    missing = [k for k in COEFF_NAMES if k not in coeffs]
    if missing:
        raise ValueError(f"missing coefficient(s) {missing}")
    known = COEFF_NAMES + OPTIONAL_COEFFS
    unknown = sorted(set(coeffs) - set(known)) if coeffs is not doc else []
    if unknown:
        raise ValueError(f"unknown coefficient(s) {unknown}; expected {list(known)}")
    values: dict[str, float] = {}
    for k in (*COEFF_NAMES, *(c for c in OPTIONAL_COEFFS if c in coeffs)):
        v = coeffs[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"coefficient {k} must be a number, got {v!r}")
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"coefficient {k} must be finite and >= 0, got {v!r}")
        values[k] = float(v)
    name = doc.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise ValueError(f"'name' must be a non-empty string, got {name!r}")
    kv = _positive_int(doc, "kv_blocks", 100_000)
    bs = _positive_int(doc, "block_size", 16)
    meta = {k: v for k, v in doc.items() if k not in _RESERVED}
    for key, schema in _VALIDATED_SECTIONS:
        if key in meta:
            try:
                schema.model_validate(meta[key])
            except ValidationError as e:
                first = e.errors()[0]
                where = ".".join(str(x) for x in first["loc"]) or "(section)"
                raise ValueError(f"invalid '{key}' section at {where}: {first['msg']}") from None
    return LatencyModel(**values, kv_blocks=kv, block_size=bs, name=name, meta=meta)


def _positive_int(doc: Mapping[str, Any], key: str, default: int) -> int:
    v = doc.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError(f"'{key}' must be a positive integer, got {v!r}")
    return v


# ---------------------------------------------------------------------- saving
class _Dumper(yaml.SafeDumper):
    """SafeDumper that writes multi-line strings as literal blocks, so provenance stays readable.

    A subclass, so the representer is not registered on PyYAML's global SafeDumper.
    """


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_representer)


def profile_to_mapping(model: LatencyModel, provenance: str) -> dict[str, Any]:
    """The document :func:`save_profile` writes: reserved keys first, then meta, then provenance."""
    clash = sorted(set(model.meta) & _RESERVED)
    if clash:
        raise ValueError(f"meta key(s) {clash} clash with the profile's own fields")
    doc: dict[str, Any] = {
        "name": model.name,
        "coefficients": {k: float(v) for k, v in model.coeffs().items()},
        "kv_blocks": int(model.kv_blocks),
        "block_size": int(model.block_size),
    }
    doc.update({k: v for k, v in model.meta.items() if k != "provenance"})
    # trailing spaces would force PyYAML out of the literal block style
    doc["provenance"] = "\n".join(line.rstrip() for line in provenance.strip().splitlines()) + "\n"
    return doc


def save_profile(model: LatencyModel, path: str | os.PathLike[str], provenance: str) -> Path:
    """Write ``model`` as a profile file (JSON if the suffix is ``.json``, YAML otherwise).

    ``provenance`` says where the numbers come from (a command, a GPU run, a paper); it is
    required because a profile without one cannot be judged. Returns the path written.
    """
    if not provenance.strip():
        raise ValueError("provenance must say where the profile comes from")
    path = Path(path)
    doc = profile_to_mapping(model, provenance)
    if path.suffix.lower() == ".json":
        text = json.dumps(doc, indent=2) + "\n"
    else:
        body = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                         allow_unicode=True, width=100)
        text = f"# latency profile {model.name!r}; see the provenance at the end.\n{body}"
    path.write_text(text, encoding="utf-8")
    return path
