"""Request traces: a columnar :class:`Trace` and loaders for the public trace formats.

A trace is kept as numpy columns rather than a list of :class:`~proserve.core.request.Request`
because the workload layer rescales, truncates and samples whole traces before any request object
exists; columns make those operations one vectorised expression, and a 19k-row CSV loads in a few
tens of milliseconds.

Every loader reports malformed input as :class:`TraceError` (a ``ValueError``) whose message reads
``"<file>, line <n>: <problem>"`` so a user can open the file at the offending line.

Loader decisions (also stated in each docstring):

* Azure 2023: rows with ``GeneratedTokens == 0`` are kept with the output clamped to 1 token and
  counted in ``meta["clamped_zero_output"]``: the request still occupied a prefill on the real
  service, so dropping it would under-state the load.
* BurstGPT: rows with ``Response tokens == 0`` (failed requests in BurstGPT's logs) and rows with
  ``Request tokens == 0`` are skipped and counted (``meta["skipped_zero_output"]``,
  ``meta["skipped_zero_prompt"]``): they never reached the model.
* Everywhere else a zero or negative length is malformed input.
* ServeGen: see :class:`ServeGenData` for the reading of the per-client format.
"""

from __future__ import annotations

import csv
import json
import math
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from proserve.workload.builtin import BUILTINS, builtin_path


class TraceError(ValueError):
    """Malformed or unusable trace input; the message names the file, the line and the problem."""


# ====================================================================================== Trace
def _object_column(values: Sequence[Any]) -> np.ndarray:
    """A 1-d object array holding ``values`` as they are (numpy would unpack equal tuples)."""
    col = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        col[i] = v
    return col


@dataclass(eq=False)
class Trace:
    """A request trace as columns: arrival times (s) and prompt / output lengths (tokens).

    Invariants, enforced on construction: equal lengths, ``arrival`` sorted ascending and rebased
    so the first request arrives at 0.0, lengths >= 1. A length-only trace (``has_timestamps``
    false) carries all-zero arrivals; the workload layer gives it synthetic arrivals.

    ``prefix_ids`` (optional, an object column): per row, a tuple of prefix-chained ids of the
    prompt's ``prefix_block``-token chunks (Mooncake's ``hash_ids``, 512 tokens each), or None;
    the workload turns them into each request's :class:`~proserve.core.request.Prefix`.
    """

    arrival: np.ndarray
    prompt_len: np.ndarray
    output_len: np.ndarray
    tenant: np.ndarray | None = None
    name: str = "trace"
    has_timestamps: bool = True
    meta: dict[str, Any] = field(default_factory=dict)
    prefix_ids: np.ndarray | None = None
    prefix_block: int = 512

    def __post_init__(self) -> None:
        self.arrival = np.asarray(self.arrival, dtype=np.float64).reshape(-1)
        self.prompt_len = np.asarray(self.prompt_len, dtype=np.int64).reshape(-1)
        self.output_len = np.asarray(self.output_len, dtype=np.int64).reshape(-1)
        n = self.arrival.size
        if self.prompt_len.size != n or self.output_len.size != n:
            raise ValueError(
                f"trace {self.name!r}: column lengths differ (arrival {n}, prompt "
                f"{self.prompt_len.size}, output {self.output_len.size})"
            )
        if self.tenant is not None:
            self.tenant = np.asarray(self.tenant, dtype=str).reshape(-1)
            if self.tenant.size != n:
                raise ValueError(f"trace {self.name!r}: tenant column has {self.tenant.size} "
                                 f"rows, expected {n}")
        if self.prefix_ids is not None:
            if not isinstance(self.prefix_ids, np.ndarray) or self.prefix_ids.dtype != object:
                self.prefix_ids = _object_column(
                    [None if x is None else tuple(x) for x in self.prefix_ids])
            if self.prefix_ids.size != n:
                raise ValueError(f"trace {self.name!r}: prefix_ids column has "
                                 f"{self.prefix_ids.size} rows, expected {n}")
            if self.prefix_block < 1:
                raise ValueError(f"trace {self.name!r}: prefix_block must be >= 1")
        if n:
            if not np.all(np.isfinite(self.arrival)):
                raise ValueError(f"trace {self.name!r}: arrival times must be finite")
            if np.any(np.diff(self.arrival) < 0):
                raise ValueError(f"trace {self.name!r}: arrival times must be sorted ascending")
            if self.arrival[0] != 0.0:
                self.arrival = self.arrival - self.arrival[0]
            if self.prompt_len.min() < 1 or self.output_len.min() < 1:
                raise ValueError(f"trace {self.name!r}: prompt and output lengths must be >= 1")

    def __len__(self) -> int:
        return int(self.arrival.size)

    @property
    def span(self) -> float:
        """Time from the first to the last arrival (seconds); 0 for fewer than two requests."""
        return float(self.arrival[-1]) if self.arrival.size else 0.0

    @property
    def mean_rate(self) -> float:
        """Mean arrival rate as ``(n - 1) / span``: the reciprocal of the mean inter-arrival time.

        This definition (rather than ``n / span``) is the one that scaling inter-arrival times by
        a factor changes by exactly that factor, so :func:`~proserve.workload.arrivals.rescale`
        hits its target rate exactly. NaN when it is undefined (no timestamps, < 2 requests).
        """
        if not self.has_timestamps or self.arrival.size < 2 or self.span <= 0:
            return float("nan")
        return (self.arrival.size - 1) / self.span

    def select(self, index: np.ndarray | slice) -> Trace:
        """A new trace holding the rows picked by ``index`` (a mask, slice or sorted indices)."""
        return Trace(
            arrival=self.arrival[index],
            prompt_len=self.prompt_len[index],
            output_len=self.output_len[index],
            tenant=None if self.tenant is None else self.tenant[index],
            name=self.name,
            has_timestamps=self.has_timestamps,
            meta=dict(self.meta),
            prefix_ids=None if self.prefix_ids is None else self.prefix_ids[index],
            prefix_block=self.prefix_block,
        )

    def with_arrivals(self, arrival: np.ndarray) -> Trace:
        """The same requests with new (sorted) arrival times, e.g. synthetic ones."""
        return Trace(arrival, self.prompt_len, self.output_len, self.tenant, self.name,
                     has_timestamps=True, meta=dict(self.meta), prefix_ids=self.prefix_ids,
                     prefix_block=self.prefix_block)


# ====================================================================================== CSV helpers
def _err(path: Path | str, line: int, problem: str) -> TraceError:
    return TraceError(f"{path}, line {line}: {problem}")


def _norm(name: str) -> str:
    return re.sub(r"[\s_]+", "", name.strip().lower())


def _read_csv(
    path: Path, columns: dict[str, Sequence[str]]
) -> tuple[dict[str, list[str]], np.ndarray]:
    """Read ``path`` and return the requested columns (as strings) and each row's line number.

    ``columns`` maps a logical name to accepted header spellings; matching ignores case,
    whitespace and underscores, because the public traces disagree on all three.
    """
    try:
        f = path.open(newline="", encoding="utf-8-sig")
    except OSError as e:
        raise TraceError(f"{path}: cannot open: {e.strerror or e}") from None
    with f:
        reader = csv.reader(f)
        header = next(reader, None)
        while header is not None and not any(h.strip() for h in header):
            header = next(reader, None)
        if header is None:
            raise _err(path, 1, "empty file (no header row)")
        hline = reader.line_num
        where = {_norm(h): i for i, h in enumerate(header)}
        idx: dict[str, int] = {}
        for key, names in columns.items():
            hit = next((where[_norm(n)] for n in names if _norm(n) in where), None)
            if hit is None:
                raise _err(path, hline, f"missing column {names[0]!r} (header is {header})")
            idx[key] = hit
        width = max(idx.values()) + 1
        out: dict[str, list[str]] = {k: [] for k in columns}
        lines: list[int] = []
        for row in reader:
            if not row or not any(c.strip() for c in row):
                continue
            if len(row) < width:
                raise _err(path, reader.line_num,
                           f"expected at least {width} fields, got {len(row)}")
            for k, i in idx.items():
                out[k].append(row[i])
            lines.append(reader.line_num)
    if not lines:
        raise _err(path, hline + 1, "no data rows after the header")
    return out, np.asarray(lines, dtype=np.int64)


def _numbers(values: list[str], lines: np.ndarray, path: Path, column: str) -> np.ndarray:
    """Vectorised float conversion; on failure, find and report the first bad line."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except ValueError:
        for v, ln in zip(values, lines, strict=True):
            try:
                float(v)
            except ValueError:
                raise _err(path, int(ln), f"column {column!r}: not a number: {v!r}") from None
        raise  # pragma: no cover - numpy and float() disagree
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.argmax(bad))
        raise _err(path, int(lines[i]), f"column {column!r}: not a finite number: {values[i]!r}")
    return arr


def _lengths(
    values: list[str], lines: np.ndarray, path: Path, column: str, *, allow_zero: bool = False
) -> np.ndarray:
    """Token counts: non-negative integers (> 0 unless ``allow_zero``)."""
    arr = _numbers(values, lines, path, column)
    frac = arr != np.round(arr)
    if frac.any():
        i = int(np.argmax(frac))
        raise _err(path, int(lines[i]), f"column {column!r}: not an integer: {values[i]!r}")
    low = arr < (0 if allow_zero else 1)
    if low.any():
        i = int(np.argmax(low))
        what = "negative" if arr[i] < 0 else "zero"
        raise _err(path, int(lines[i]), f"column {column!r}: {what} token count {values[i]!r}")
    return arr.astype(np.int64)


def _sorted_trace(
    t: np.ndarray, prompt: np.ndarray, output: np.ndarray, tenant: np.ndarray | None,
    name: str, meta: dict[str, Any], prefix_ids: np.ndarray | None = None,
    prefix_block: int = 512,
) -> Trace:
    order = np.argsort(t, kind="stable")
    if not np.all(order[1:] > order[:-1]):
        meta["resorted"] = True
    return Trace(t[order], prompt[order], output[order],
                 None if tenant is None else tenant[order], name=name, meta=meta,
                 prefix_ids=None if prefix_ids is None else prefix_ids[order],
                 prefix_block=prefix_block)


# ====================================================================================== loaders
def load_azure(path: str | Path, name: str | None = None) -> Trace:
    """Load an Azure LLM inference trace 2023 CSV (``TIMESTAMP,ContextTokens,GeneratedTokens``).

    Timestamps (``2023-11-16 18:15:46.6805900``, 100 ns resolution) are parsed in one vectorised
    ``datetime64[ns]`` conversion; only on failure is the file walked row by row to name the bad
    line. Rows are sorted by time. ``GeneratedTokens == 0`` is clamped to 1 and counted in
    ``meta["clamped_zero_output"]`` (the request still cost a prefill on the real service).
    """
    path = Path(path)
    cols, lines = _read_csv(path, {
        "ts": ["TIMESTAMP"], "prompt": ["ContextTokens"], "output": ["GeneratedTokens"],
    })
    raw = cols["ts"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy warns about (and converts) explicit UTC offsets
        try:
            ts = np.asarray([s.strip() for s in raw], dtype="datetime64[ns]")
        except ValueError:
            ts = None
        if ts is None or np.isnat(ts).any():
            for s, ln in zip(raw, lines, strict=True):
                try:
                    ok = s.strip() != "" and not np.isnat(np.datetime64(s.strip(), "ns"))
                except ValueError:
                    ok = False
                if not ok:
                    raise _err(path, int(ln), f"column 'TIMESTAMP': unparsable timestamp {s!r}"
                               " (expected e.g. '2023-11-16 18:15:46.6805900')")
            raise _err(path, int(lines[0]), "unparsable timestamps")  # pragma: no cover
    t = (ts - ts.min()).astype(np.int64) / 1e9
    prompt = _lengths(cols["prompt"], lines, path, "ContextTokens")
    output = _lengths(cols["output"], lines, path, "GeneratedTokens", allow_zero=True)
    zeros = int((output == 0).sum())
    output = np.maximum(output, 1)
    meta = {"source": str(path), "format": "azure", "clamped_zero_output": zeros}
    return _sorted_trace(t, prompt, output, None, name or path.stem, meta)


MOONCAKE_HASH_BLOCK = 512  # tokens per Mooncake hash id (the Mooncake trace's block size)


def load_mooncake(path: str | Path, name: str | None = None) -> Trace:
    """Load a Mooncake JSONL trace: ``timestamp`` (ms), ``input_length``, ``output_length``,
    optional ``hash_ids``.

    ``hash_ids`` are kept as the trace's ``prefix_ids`` (block of
    :data:`MOONCAKE_HASH_BLOCK` = 512 tokens): Mooncake's ids are prefix-chained (an id stands
    for its 512-token chunk and everything before it), so equal ids at the same position mean
    equal prompt prefixes; :class:`~proserve.core.request.Prefix` maps them to engine blocks. A
    record without ``hash_ids`` gets no prefix identity (None).
    """
    path = Path(path)
    t: list[float] = []
    prompt: list[int] = []
    output: list[int] = []
    hashes: list[tuple[int, ...] | None] = []
    try:
        f = path.open(encoding="utf-8-sig")
    except OSError as e:
        raise TraceError(f"{path}: cannot open: {e.strerror or e}") from None
    last = 0
    with f:
        for ln, text in enumerate(f, start=1):
            last = ln
            if not text.strip():
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as e:
                raise _err(path, ln, f"invalid JSON: {e.msg}") from None
            if not isinstance(rec, dict):
                raise _err(path, ln, "expected a JSON object per line")
            vals: list[float] = []
            for key in ("timestamp", "input_length", "output_length"):
                if key not in rec:
                    raise _err(path, ln, f"missing field {key!r}")
                v = rec[key]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise _err(path, ln, f"field {key!r}: not a number: {v!r}")
                vals.append(float(v))
            ts, inp, out = vals
            for key, v in (("input_length", inp), ("output_length", out)):
                if v != int(v):
                    raise _err(path, ln, f"field {key!r}: not an integer: {v!r}")
                if v < 1:
                    raise _err(path, ln, f"field {key!r}: {'negative' if v < 0 else 'zero'} "
                               f"token count {rec[key]!r}")
            h = rec.get("hash_ids")
            if h is not None:
                if not isinstance(h, list) or not all(
                        isinstance(x, int) and not isinstance(x, bool) for x in h):
                    raise _err(path, ln, "field 'hash_ids': expected a list of integers")
                h = tuple(h) if h else None
            t.append(ts / 1000.0)
            prompt.append(int(inp))
            output.append(int(out))
            hashes.append(h)
    if not t:
        raise _err(path, max(last, 1), "empty file (no JSON records)")
    meta = {"source": str(path), "format": "mooncake"}
    ids: np.ndarray | None = None
    if any(h is not None for h in hashes):
        ids = _object_column(hashes)
    return _sorted_trace(np.asarray(t), np.asarray(prompt, dtype=np.int64),
                         np.asarray(output, dtype=np.int64), None, name or path.stem, meta,
                         prefix_ids=ids, prefix_block=MOONCAKE_HASH_BLOCK)


def load_burstgpt(
    path: str | Path, name: str | None = None, *, tenant_from_model: bool = False,
    models: Iterable[str] | None = None,
) -> Trace:
    """Load a BurstGPT CSV: ``Timestamp, Model, Request tokens, Response tokens, ...``.

    ``Timestamp`` is in seconds. Rows with 0 response tokens (BurstGPT's failed requests) or 0
    request tokens are skipped and counted in ``meta``. ``models`` keeps only those models (e.g.
    ``["ChatGPT"]``); ``tenant_from_model`` makes the Model column the tenant, which lets a caller
    map models to priority classes.
    """
    path = Path(path)
    cols, lines = _read_csv(path, {
        "ts": ["Timestamp"], "model": ["Model"], "prompt": ["Request tokens"],
        "output": ["Response tokens"],
    })
    t = _numbers(cols["ts"], lines, path, "Timestamp")
    neg = t < 0
    if neg.any():
        i = int(np.argmax(neg))
        raise _err(path, int(lines[i]), f"column 'Timestamp': negative time {cols['ts'][i]!r}")
    prompt = _lengths(cols["prompt"], lines, path, "Request tokens", allow_zero=True)
    output = _lengths(cols["output"], lines, path, "Response tokens", allow_zero=True)
    model = np.asarray([m.strip() for m in cols["model"]], dtype=str)
    keep = (prompt > 0) & (output > 0)
    meta: dict[str, Any] = {
        "source": str(path), "format": "burstgpt",
        "skipped_zero_output": int((output == 0).sum()),
        "skipped_zero_prompt": int(((prompt == 0) & (output > 0)).sum()),
    }
    if models is not None:
        wanted = set(models)
        in_model = np.isin(model, list(wanted))
        meta["skipped_other_models"] = int((keep & ~in_model).sum())
        keep &= in_model
    if not keep.any():
        raise _err(path, int(lines[0]), "no usable rows (all skipped: zero tokens or model filter)")
    tenant = model[keep] if tenant_from_model else None
    return _sorted_trace(t[keep], prompt[keep], output[keep], tenant, name or path.stem, meta)


def load_lengths(path: str | Path, name: str | None = None) -> Trace:
    """Load a length-only CSV (``num_prefill_tokens,num_decode_tokens,...``; ShareGPT, arXiv).

    Such files have no timestamps: the trace has all-zero arrivals and ``has_timestamps=False``;
    :func:`~proserve.workload.make.make_workload` gives it Poisson or gamma arrivals.
    """
    path = Path(path)
    cols, lines = _read_csv(path, {
        "prompt": ["num_prefill_tokens", "prompt_len", "input_length"],
        "output": ["num_decode_tokens", "output_len", "output_length"],
    })
    prompt = _lengths(cols["prompt"], lines, path, "num_prefill_tokens")
    output = _lengths(cols["output"], lines, path, "num_decode_tokens")
    return Trace(np.zeros(prompt.size), prompt, output, None, name=name or path.stem,
                 has_timestamps=False, meta={"source": str(path), "format": "lengths"})


# ====================================================================================== dispatch
def sniff_format(path: str | Path) -> str:
    """Guess a trace file's format: ``azure``, ``burstgpt``, ``lengths``, ``mooncake`` or
    ``servegen`` (a directory), from the extension and the CSV header."""
    path = Path(path)
    if path.is_dir():
        from proserve.workload.servegen import CHUNK_FILE

        if any(CHUNK_FILE.fullmatch(p.name) for p in path.iterdir()):
            return "servegen"
        raise TraceError(f"{path}: directory without chunk-N-trace.csv files")
    if not path.exists():
        raise TraceError(f"{path}: no such file")
    if path.suffix.lower() in (".jsonl", ".json"):
        return "mooncake"
    with path.open(encoding="utf-8-sig") as f:
        head = next((ln for ln in f if ln.strip()), "")
    cols = {_norm(c) for c in head.split(",")}
    if {"timestamp", "contexttokens", "generatedtokens"} <= cols:
        return "azure"
    if {"timestamp", "requesttokens", "responsetokens"} <= cols:
        return "burstgpt"
    if {"numprefilltokens", "numdecodetokens"} <= cols:
        return "lengths"
    raise _err(path, 1, f"unrecognised header {head.strip()!r}; expected an Azure "
               "(TIMESTAMP,ContextTokens,GeneratedTokens), BurstGPT (Timestamp,Model,Request "
               "tokens,Response tokens,...) or length-only (num_prefill_tokens,"
               "num_decode_tokens) CSV, a Mooncake .jsonl or a ServeGen directory")


def load_file(path: str | Path, fmt: str | None = None, name: str | None = None,
              **servegen: Any) -> Trace:
    """Load ``path`` with the loader for ``fmt`` (sniffed when None).

    ``servegen`` keyword arguments (``rng``, ``start``, ``duration``, ``rate_scale``, ...) are
    passed to :func:`load_servegen` and rejected for the other formats.
    """
    fmt = fmt or sniff_format(path)
    if fmt == "servegen":
        from proserve.workload.servegen import load_servegen  # imports this module

        return load_servegen(path, name=name, **servegen)
    if servegen:
        raise TypeError(f"options {sorted(servegen)} apply only to ServeGen traces, not {fmt}")
    loaders = {"azure": load_azure, "mooncake": load_mooncake, "burstgpt": load_burstgpt,
               "lengths": load_lengths}
    if fmt not in loaders:
        raise ValueError(f"unknown trace format {fmt!r}")
    return loaders[fmt](path, name=name)


def load_trace(spec: str | Path, **servegen: Any) -> Trace:
    """Load a built-in trace by name (see :mod:`proserve.workload.builtin`) or a file/directory.

    Files are dispatched by extension (``.jsonl`` = Mooncake) and CSV header; a directory is a
    ServeGen client directory. ServeGen options (``rng``, ``start``, ``duration``,
    ``rate_scale``, ``clients``, ``missing_dataset``) are passed through.
    """
    key = str(spec)
    if key in BUILTINS:
        return load_file(builtin_path(key), BUILTINS[key].fmt, name=key, **servegen)
    path = Path(spec)
    if not path.exists():
        raise TraceError(f"{spec}: no such file, and not a built-in trace "
                         f"(built-ins: {', '.join(sorted(BUILTINS))})")
    return load_file(path, **servegen)
