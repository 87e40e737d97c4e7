"""``proserve report``: one self-contained HTML file from ``proserve sweep`` results.

**Input.** ``RESULTS_DIR`` is one sweep's directory or a directory holding several (searched
recursively). A sweep directory has ``sweep.yaml`` (``name``, ``kind: simulate|goodput``,
``base``, ``grid``: grid key -> list of values, optional ``zip`` groups), ``results.csv``
(tidy, one row per point: the grid keys' values and the metrics; ``results.parquet`` is read
when the CSV is absent),
``meta.json`` (versions, traces and their sources, timings; optional) and ``points/<hash>.json``
(each point's full result; only read for ``autoscale_timeline``). A ``sweep.yaml`` whose
directory has no results yet is skipped with a warning when RESULTS_DIR holds several sweeps,
and is an error when it is RESULTS_DIR itself; unreadable YAML, CSV or JSON is an error naming
the file (:class:`ReportError`).

**Output.** One HTML file needing no network and no other file: figures are PNGs embedded as
``data:`` URIs, CSS is inline, every string from the data goes through :func:`html.escape`. One
section per sweep, ordered by name: the exact configuration (base and grid), the data sources
and versions from meta.json, a table of the main numbers, then the figures (each a ``<figure>``
with an ``<img id=...>`` and a ``<figcaption>`` stating what it shows and its grid slice).

**Vocabulary.** A grid key *varies* when results.csv holds at least two distinct values of it.
``seed`` never names a series: when it varies, every figure and table shows the mean over seeds
with a 95% confidence interval from Student's t (``scipy.stats.t``; error bars in figures,
``mean ± half-width`` in tables). ``trace``, when it varies, gives one row of panels per trace
(line figures) or a bar group per trace. The *series* of a figure are the combinations of the
varying keys that are neither its x-axis, its panel key, nor ``seed``; they are named as
``proserve compare`` names them (``router+policy``; any other key as ``key=value``). Keys of a
``zip`` group (varied together) count as grid keys, except that the keys zipped to a figure's
x-axis change with it and name no series.

**Which figures** (ids are ``<sweep id>--<suffix>``, the sweep id being ``sweep-`` and its
name in lower-case letters, digits and single dashes; a figure is drawn exactly when its rule
holds and its metric columns have data):

=============================  =================================================================
suffix                         rule -> what it shows
=============================  =================================================================
``tdg-attainment-vs-rate``     simulate, ``rate`` varies -> TDG ratio and SLO attainment vs rate,
                               a line per series, a row of panels per trace
``class-attainment-vs-rate``   simulate, ``rate`` varies, >= 2 classes (``class.<c>.*``
                               columns) -> per-class SLO attainment vs rate, a panel per series
``tdg-vs-ttft-p99``            simulate, ``rate`` varies or >= 2 series -> TDG ratio against
                               TTFT p99 (log x), one marker per rate, a line per series
``weight-<key>``               a weight key varies (``w_p``, ``w_d``, a key containing
                               ``weight``, or ``classes`` specs with ``w=``) -> TDG ratio, SLO
                               attainment and TTFT p99 (goodput: goodput per instance and
                               fraction of optimal) vs that key
``param-<key>``                a ``policy_args.*`` or ``router_args.*`` key (or the whole
                               mapping) varies (lambda, starvation thresholds...) -> the same
                               metrics vs that parameter
``bars-per-series``            >= 2 series besides ``rate``/``instances``/``trace`` (policy
                               ablations, ...) -> grouped bars of TDG ratio and SLO attainment
                               (goodput: goodput per instance, fraction of optimal) per series,
                               a group per rate (goodput: fleet size) and trace
``router-comparison``          ``router`` varies -> bars per router of TDG ratio, SLO
                               attainment, TTFT p99 and prefix hit rate (when any is non-zero;
                               goodput: goodput per instance, fraction of optimal), a group per
                               combination of the other varying keys
``block-management``           ``preemption`` varies -> bars per preemption mode of TDG ratio,
                               preemptions and recomputed tokens (``kv.recomputed_tokens``)
``goodput-vs-instances``       goodput, ``instances`` varies -> goodput per instance (its fluid
                               optimal dashed) and fraction of optimal vs fleet size
``autoscale-timeline``         some ``points/*.json`` carry ``autoscale_timeline`` ->
                               instances per tier and pending requests per tier over time, a row
                               per point (the first 6 points in grid order)
=============================  =================================================================

The table per sweep has a row per combination of the varying keys (seed aside) and a column
group per rate (simulate) or fleet size (goodput) when that key varies: TDG %, SLO
attainment % and TTFT p99 (s) for simulate sweeps; goodput per instance (req/s), % of optimal
and deadline attainment % for goodput sweeps.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import itertools
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

KINDS = ("simulate", "goodput")
# columns a sweep of each kind must have (besides its grid keys)
REQUIRED = {"simulate": ("tdg_ratio", "slo_attainment"),
            "goodput": ("goodput_per_instance",)}
# per-class columns ``class.<cls>.<metric>`` (simulate's and goodput's)
CLASS_METRICS = ("tdg_ratio", "slo_attainment", "ttft_attainment", "deadline_attainment",
                 "ttft_p99", "tpot_p99", "max_wait_s", "rejected")
MAX_TIMELINES = 6
CI_LEVEL = 0.95


class ReportError(ValueError):
    """A results directory that cannot be reported on; the message names the file."""


@dataclass
class ReportSummary:
    """What :func:`build_report` wrote."""

    out: Path
    sweeps: list[str] = field(default_factory=list)   # sweep names, in report order
    figures: list[str] = field(default_factory=list)  # figure (img) ids, in report order
    warnings: list[str] = field(default_factory=list)


@dataclass
class Sweep:
    """One sweep's results as read from its directory."""

    path: Path
    name: str
    kind: str
    base: dict[str, Any]
    grid: dict[str, list[Any]]  # every axis: the grid's keys, then the zip groups' keys
    rows: list[dict[str, Any]]
    meta: dict[str, Any] | None
    source: str  # the results file read
    timelines: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    vary: list[str] = field(default_factory=list)   # varying grid keys (seed excluded)
    values: dict[str, list[Any]] = field(default_factory=dict)  # key -> distinct values, ordered
    seeds: list[Any] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    sid: str = ""
    grid_only: dict[str, list[Any]] = field(default_factory=dict)  # as sweep.yaml's grid
    zip: list[dict[str, list[Any]]] = field(default_factory=list)  # keys varied together
    expected: int = 1  # points the grid and zip groups make

    def partners(self, key: str | None) -> list[str]:
        """The keys zipped with ``key`` (they change with it, so they name no series)."""
        for g in self.zip:
            if key in g:
                return [k for k in g if k != key]
        return []


# ------------------------------------------------------------------------------ reading
def _cell(s: str | None) -> Any:
    """A CSV cell as the value it was written from."""
    if s is None:
        return None
    s = s.strip()
    if s == "":
        return None
    if s in ("True", "true"):
        return True
    if s in ("False", "false"):
        return False
    try:
        return int(s)
    except ValueError:
        pass
    try:
        return float(s)  # also inf / nan
    except ValueError:
        pass
    if s[:1] in "[{":
        try:
            return json.loads(s)
        except ValueError:
            pass
    return s


def _norm(v: Any) -> Any:
    """A hashable identity for a grid value: 2 and 2.0 are the same rate."""
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        low = v.strip().lower()
        if low in ("inf", "+inf", "-inf"):
            return float(low.replace("+", ""))
        return v
    return json.dumps(v, sort_keys=True)


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        if math.isfinite(v) and v == int(v) and abs(v) < 1e15:
            return str(int(v))
        return f"{v:g}"
    if v is None:
        return "-"
    return v if isinstance(v, str) else json.dumps(v)


def _read_yaml(p: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ReportError(f"{p}: not valid YAML: {e}") from None
    except OSError as e:
        raise ReportError(f"{p}: cannot read: {e}") from None
    if not isinstance(doc, dict):
        raise ReportError(f"{p}: expected a mapping with name, kind, base and grid")
    name, kind = doc.get("name"), doc.get("kind") or "simulate"  # sweep's default kind
    doc["kind"] = kind
    if not isinstance(name, str) or not name.strip():
        raise ReportError(f"{p}: 'name' is missing or not a string")
    if kind not in KINDS:
        raise ReportError(f"{p}: 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    base = doc.get("base") or {}
    grid = doc.get("grid") or {}
    if not isinstance(base, dict):
        raise ReportError(f"{p}: 'base' must be a mapping")
    if not isinstance(grid, dict):
        raise ReportError(f"{p}: 'grid' must be a mapping of key -> list of values")
    doc["grid"] = {str(k): (list(v) if isinstance(v, list) else [v]) for k, v in grid.items()}
    doc["base"] = base
    zraw = doc.get("zip") or []
    groups = [zraw] if isinstance(zraw, dict) else zraw
    if not isinstance(groups, list) or not all(
            isinstance(g, dict) and all(isinstance(v, list) for v in g.values())
            for g in groups):
        raise ReportError(f"{p}: 'zip' must be a mapping of key -> list (or a list of them)")
    doc["zip"] = [{str(k): list(v) for k, v in g.items()} for g in groups if g]
    return doc


def _read_rows(d: Path) -> tuple[list[dict[str, Any]], Path]:
    p = d / "results.csv"
    if p.is_file():
        try:
            with p.open(newline="") as f:
                reader = csv.DictReader(f)
                if not reader.fieldnames:
                    raise ReportError(f"{p}: empty (no header row)")
                rows = [{k: _cell(v) for k, v in r.items() if k is not None} for r in reader]
        except (OSError, csv.Error, UnicodeDecodeError) as e:
            raise ReportError(f"{p}: cannot read as CSV: {e}") from None
        return rows, p
    pq_path = d / "results.parquet"
    if pq_path.is_file():
        try:
            import pyarrow.parquet as pq

            rows = pq.read_table(pq_path).to_pylist()
        except Exception as e:  # noqa: BLE001 - any reader failure names the file
            raise ReportError(f"{pq_path}: cannot read as Parquet: {e}") from None
        # a column of mixed types may have been stored as text: read it as the CSV would
        return [{k: _cell(v) if isinstance(v, str) else v for k, v in r.items()}
                for r in rows], pq_path
    raise ReportError(f"{p}: missing (has the sweep finished? {d / 'sweep.yaml'} exists)")


def _read_json(p: Path) -> Any:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ReportError(f"{p}: not valid JSON: {e}") from None


def _ordered(values: Iterable[Any], grid_order: Sequence[Any]) -> list[Any]:
    """Distinct values (normalised) in the grid's order, then any others in order of appearance."""
    seen = list(dict.fromkeys(_norm(v) for v in values))
    order = [v for v in dict.fromkeys(_norm(g) for g in grid_order) if v in seen]
    return order + [v for v in seen if v not in order]


def load_sweep(d: Path, warnings: list[str] | None = None) -> Sweep:
    """Read one sweep directory; :class:`ReportError` names the file that is wrong."""
    warnings = warnings if warnings is not None else []
    spec = _read_yaml(d / "sweep.yaml")
    rows, src = _read_rows(d)
    if not rows:
        raise ReportError(f"{src}: no result rows")
    cols = set().union(*(r.keys() for r in rows))
    axes = {**spec["grid"], **{k: v for g in spec["zip"] for k, v in g.items()}}
    missing = [k for k in (*axes, *REQUIRED[spec["kind"]]) if k not in cols]
    if missing:
        raise ReportError(f"{src}: no column for {', '.join(missing)} "
                          f"(grid keys of {d / 'sweep.yaml'} and the {spec['kind']} metrics)")
    meta = None
    if (d / "meta.json").is_file():
        meta = _read_json(d / "meta.json")
        if not isinstance(meta, dict):
            raise ReportError(f"{d / 'meta.json'}: expected a JSON object")
    else:
        warnings.append(f"{d / 'meta.json'}: missing; versions and data sources unknown")
    sw = Sweep(path=d, name=spec["name"], kind=spec["kind"], base=spec["base"],
               grid=axes, rows=rows, meta=meta, source=src.name, grid_only=spec["grid"],
               zip=spec["zip"])
    sw.expected = math.prod([len(v) for v in spec["grid"].values()]
                            + [len(next(iter(g.values()))) for g in spec["zip"]])
    for r in rows:  # normalised copies of the grid coordinates
        for k in sw.grid:
            r[k] = _norm(r.get(k))
        if "seed" in r:
            r["seed"] = _norm(r["seed"])
    for k in sw.grid:
        sw.values[k] = _ordered((r[k] for r in rows), sw.grid[k])
    sw.vary = [k for k in sw.grid if k != "seed" and len(sw.values[k]) >= 2]
    sw.seeds = _ordered((r.get("seed") for r in rows if r.get("seed") is not None),
                        sw.grid.get("seed", []))
    names: list[str] = []
    pat = re.compile(r"^class\.(.+)\.(" + "|".join(CLASS_METRICS) + r")$")
    for c in (c for r in rows for c in r):
        m = pat.match(c)
        if m and m.group(1) not in names:
            names.append(m.group(1))
    sw.classes = names
    if len(rows) < sw.expected:
        warnings.append(f"{src}: {len(rows)} of the grid's {sw.expected} points have results")
    failed = (meta or {}).get("failed")
    if isinstance(failed, list) and failed:
        warnings.append(f"{d / 'meta.json'}: {len(failed)} point(s) failed: " + "; ".join(
            f"{json.dumps(f.get('coords'), default=str)}: {f.get('error')}"
            if isinstance(f, dict) else str(f) for f in failed[:5])
            + (" ..." if len(failed) > 5 else ""))
    sw.timelines = _read_timelines(d, sw, warnings)
    return sw


def _read_timelines(d: Path, sw: Sweep, warnings: list[str]) -> list[tuple[dict, dict]]:
    pts = d / "points"
    if not pts.is_dir():
        return []
    # points of this sweep's rows only (a shared cache may hold others)
    mine = {str(r["hash"]) for r in sw.rows if r.get("hash") is not None}
    found = []
    for p in sorted(pts.glob("*.json")):
        if mine and p.stem not in mine:
            continue
        try:
            text = p.read_text()
        except OSError as e:
            warnings.append(f"{p}: cannot read ({e}); skipped")
            continue
        if "autoscale_timeline" not in text:
            continue
        try:
            doc = json.loads(text)
        except ValueError as e:
            warnings.append(f"{p}: not valid JSON ({e}); skipped")
            continue
        tl = doc.get("autoscale_timeline") if isinstance(doc, dict) else None
        if not tl:
            continue
        try:
            t, inst, pend = tl["t"], tl["instances"], tl["pending"]
            tiers = list(tl.get("tiers") or [f"tier {i}" for i in range(len(inst[0]))])
            ok = len(t) == len(inst) == len(pend) and len(t) > 0 and all(
                len(a) == len(tiers) and len(b) == len(tiers) for a, b in zip(inst, pend))
        except (KeyError, TypeError, IndexError):
            ok = False
        if not ok:
            warnings.append(f"{p}: autoscale_timeline is malformed (t, instances, pending and "
                            "tiers must have matching lengths); skipped")
            continue
        coords = dict((doc.get("sweep") or {}).get("coords") or {})
        found.append(({k: _norm(v) for k, v in coords.items()},
                      {"t": t, "instances": inst, "pending": pend, "tiers": tiers}))

    def order(item: tuple[dict, dict]) -> tuple:
        c = item[0]
        return tuple(sw.values[k].index(c[k]) if c.get(k) in sw.values.get(k, []) else 1 << 30
                     for k in sw.grid)
    found.sort(key=order)
    if len(found) > MAX_TIMELINES:
        warnings.append(f"{d}: {len(found)} points have auto-scaling timelines; the report "
                        f"shows the first {MAX_TIMELINES} in grid order")
    return found[:MAX_TIMELINES]


def find_sweeps(root: Path) -> tuple[list[Path], list[str]]:
    """The sweep directories under ``root`` (``root`` itself if it is one) and warnings."""
    if not root.exists():
        raise ReportError(f"{root}: no such directory")
    if root.is_file():
        if root.name in ("sweep.yaml", "results.csv"):
            return [root.parent], []
        raise ReportError(f"{root}: expected a sweep's results directory, not a file")
    if (root / "sweep.yaml").is_file():
        return [root], []
    dirs, warnings = [], []
    for y in sorted(root.rglob("sweep.yaml")):
        d = y.parent
        if (d / "results.csv").is_file() or (d / "results.parquet").is_file():
            dirs.append(d)
        else:
            warnings.append(f"{d / 'results.csv'}: missing; sweep skipped (not finished?)")
    if not dirs:
        raise ReportError(f"{root}: no sweep results found (a directory with sweep.yaml and "
                          "results.csv, written by `proserve sweep`)")
    return dirs, warnings


# ------------------------------------------------------------------------------ statistics
@dataclass
class Stat:
    mean: float
    hw: float | None  # half-width of the 95% t interval; None for one sample
    n: int


def stat(values: Iterable[Any]) -> Stat | None:
    """Mean and 95% Student-t half-width of the finite numbers among ``values``."""
    v = [float(x) for x in values
         if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)]
    if not v:
        return None
    n = len(v)
    mean = sum(v) / n
    if n < 2:
        return Stat(mean, None, 1)
    from scipy import stats

    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1))
    return Stat(mean, float(stats.t.ppf(0.5 + CI_LEVEL / 2, n - 1)) * sd / math.sqrt(n), n)


def _groups(sw: Sweep, keys: Sequence[str],
            rows: Iterable[dict] | None = None) -> dict[tuple, list[dict]]:
    """Rows by their values of ``keys``, in grid order."""
    out: dict[tuple, list[dict]] = {}
    for r in rows if rows is not None else sw.rows:
        out.setdefault(tuple(r.get(k) for k in keys), []).append(r)

    def pos(combo: tuple) -> tuple:
        return tuple(sw.values[k].index(v) if v in sw.values.get(k, []) else 1 << 30
                     for k, v in zip(keys, combo))
    return dict(sorted(out.items(), key=lambda kv: pos(kv[0])))


def _col(rows: Iterable[dict], col: str) -> Stat | None:
    return stat(r.get(col) for r in rows)


def _has(rows: Iterable[dict], col: str) -> bool:
    return _col(rows, col) is not None


# ------------------------------------------------------------------------------ naming
def series_label(keys: Sequence[str], combo: Sequence[Any]) -> str:
    """``router+policy`` as ``proserve compare`` names a series; other keys as key=value."""
    d = dict(zip(keys, combo))
    parts = []
    if "router" in d and "policy" in d:
        parts.append(f"{_fmt_value(d.pop('router'))}+{_fmt_value(d.pop('policy'))}")
    for k in ("policy", "router"):
        if k in d:
            parts.append(_fmt_value(d.pop(k)))
    parts += [f"{k}={_fmt_value(v)}" for k, v in d.items()]
    return ", ".join(parts) or "all"


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-") or "x"


def _is_weight_key(sw: Sweep, k: str) -> bool:
    if k in ("w_p", "w_d") or "weight" in k.lower():
        return True
    return k == "classes" and any(isinstance(v, str) and "w=" in v for v in sw.values[k])


def _is_param_key(k: str) -> bool:
    return k.startswith(("policy_args.", "router_args.")) or k in ("policy_args", "router_args")


def _set(vals: Sequence[Any]) -> str:
    return "{" + ", ".join(_fmt_value(v) for v in vals) + "}"


# ------------------------------------------------------------------------------ figures
@dataclass
class Figure:
    id: str
    title: str
    caption: str
    alt: str
    png: bytes


@dataclass
class Metric:
    col: str
    label: str
    unit01: bool = False  # a fraction: y from 0 to 1
    logy: bool = False
    ref: str | None = None  # a companion column drawn dashed in the same colour
    ref_label: str = ""


TDG = Metric("tdg_ratio", "TDG ratio", unit01=True)
ATT = Metric("slo_attainment", "SLO attainment", unit01=True)
P99 = Metric("ttft_p99", "TTFT p99 (s)", logy=True)
GPI = Metric("goodput_per_instance", "goodput per instance (req/s)",
             ref="optimal_goodput_per_instance", ref_label="fluid optimal")
FOPT = Metric("fraction_of_optimal", "fraction of optimal", unit01=True)


X_LABELS = {"rate": "request rate (req/s)", "instances": "instances (fleet size)"}


def _kind_metrics(sw: Sweep) -> list[Metric]:
    return [TDG, ATT] if sw.kind == "simulate" else [GPI, FOPT]


class _Plotter:
    """Draws one sweep's figures; records each one's id, caption and PNG."""

    def __init__(self, sw: Sweep, warnings: list[str]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.plt = plt
        self.sw = sw
        self.warnings = warnings
        self.figures: list[Figure] = []
        self.colors: dict[str, Any] = {}

    # --- helpers
    def color(self, label: str) -> Any:
        return self.style(label)["color"]

    def style(self, label: str) -> dict[str, Any]:
        """One colour and marker per series label within a figure, in series order (so
        figures with the same series agree); distinct markers keep coinciding lines visible."""
        if label not in self.colors:
            i = len(self.colors)
            cmap = self.plt.get_cmap("tab10" if i < 10 else "tab20")
            self.colors[label] = {"color": cmap(i % cmap.N), "marker": "osD^vPX*<>"[i % 10]}
        return self.colors[label]

    def seeds_text(self) -> str:
        s = self.sw.seeds
        if len(s) >= 2:
            return (f"Mean over seed ∈ {_set(s)}; bars: {CI_LEVEL:.0%} confidence interval "
                    "(Student's t).")
        return f"One seed ({_fmt_value(s[0])})." if s else ""

    def fixed_text(self, used: Sequence[str]) -> str:
        fixed = [f"{k}={_fmt_value(self.sw.values[k][0])}" for k in self.sw.grid
                 if k not in used and k != "seed" and len(self.sw.values[k]) == 1]
        return ("Fixed grid values: " + ", ".join(fixed) + ".") if fixed else ""

    def slice_text(self, x: str | None, series: Sequence[str], panels: Sequence[str],
                   extra: str = "") -> str:
        sw = self.sw
        parts = []
        if x:
            zipped = "".join(f", with {k} ∈ {_set(sw.values[k])} zipped to it"
                             for k in sw.partners(x))
            parts.append(f"x: {x} ∈ {_set(sw.values[x])}{zipped}.")
        if series:
            parts.append("Series: " + "; ".join(f"{k} ∈ {_set(sw.values[k])}" for k in series)
                         + ".")
        if panels:
            parts.append("Panels: " + "; ".join(f"{k} ∈ {_set(sw.values[k])}" for k in panels)
                         + ".")
        if extra:
            parts.append(extra)
        parts += [self.fixed_text([*([x] if x else []), *sw.partners(x), *series, *panels]),
                  self.seeds_text()]
        return " ".join(p for p in parts if p)

    def add(self, suffix: str, title: str, what: str, slice_: str, fig: Any) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        self.plt.close(fig)
        self.colors = {}  # each figure colours its own series from the start of the palette
        self.figures.append(Figure(
            id=f"{self.sw.sid}--{suffix}", title=title, caption=f"{what} {slice_}".strip(),
            alt=f"{title} ({self.sw.name})", png=buf.getvalue()))

    def _axis_x(self, ax: Any, key: str) -> tuple[dict[Any, float], bool]:
        """Positions of ``key``'s values: the values themselves when all are finite numbers,
        else 0..n-1 with the values as tick labels."""
        vals = self.sw.values[key]
        ax.set_xlabel(X_LABELS.get(key, key))
        if all(isinstance(v, float) and math.isfinite(v) for v in vals):
            if min(vals) > 0 and max(vals) / min(vals) >= 50:  # e.g. lam from 0.01 to 1
                ax.set_xscale("log")
            if len(vals) <= 8:
                ax.set_xticks(vals, [_fmt_value(v) for v in vals])
                ax.minorticks_off()
            return {v: v for v in vals}, True
        pos = {v: float(i) for i, v in enumerate(vals)}
        ax.set_xticks(list(pos.values()), [_fmt_value(v) for v in vals])
        ax.set_xlim(-0.5, len(vals) - 0.5)
        return pos, False

    @staticmethod
    def _style_y(ax: Any, m: Metric) -> None:
        if m.unit01:
            ax.set_ylim(-0.02, 1.04)
        else:
            lo, hi = ax.dataLim.y0, ax.dataLim.y1
            if m.logy and lo > 0 and hi / lo >= 20:  # tails that span decades
                ax.set_yscale("log")
            elif not (math.isfinite(hi) and hi > 0):  # nothing but zeros: an honest 0..1 axis
                ax.set_ylim(0, 1)
            else:
                ax.set_ylim(bottom=0)
        ax.set_ylabel(m.label)
        ax.grid(alpha=0.3)

    # --- the figure kinds
    def lines(self, suffix: str, title: str, what: str, x: str, metrics: Sequence[Metric]) -> None:
        """Metrics vs ``x``: a column of panels per metric, a row per trace, a line per series."""
        sw = self.sw
        metrics = [m for m in metrics if _has(sw.rows, m.col)]
        if not metrics:
            self.warnings.append(f"{sw.name}: no data for figure {suffix}; not drawn")
            return
        panel = ["trace"] if "trace" in sw.vary and x != "trace" else []
        series = [k for k in sw.vary if k not in (x, *panel, *sw.partners(x))]
        pvals = list(_groups(sw, panel)) if panel else [()]
        fig, axes = self.plt.subplots(
            len(pvals), len(metrics), squeeze=False, layout="constrained",
            figsize=(4.6 * len(metrics) + 1.8, 3.4 * len(pvals)))
        handles: dict[str, Any] = {}
        for i, pv in enumerate(pvals):
            prow = [r for r in sw.rows if tuple(r.get(k) for k in panel) == pv]
            for j, m in enumerate(metrics):
                ax = axes[i][j]
                pos, numeric = self._axis_x(ax, x)
                for combo, rows in _groups(sw, series, prow).items():
                    lab = series_label(series, combo)
                    pts = [(pos[xv], _col(g, m.col), _col(g, m.ref) if m.ref else None)
                           for (xv,), g in _groups(sw, [x], rows).items() if xv in pos]
                    pts = [p for p in pts if p[1] is not None]
                    if not pts:
                        continue
                    st = self.style(lab)
                    c = st["color"]
                    h = ax.errorbar([p[0] for p in pts], [p[1].mean for p in pts],
                                    yerr=[p[1].hw or 0.0 for p in pts], ms=5, lw=1.6,
                                    capsize=3, label=lab, **st)
                    handles.setdefault(lab, h)
                    ref = [(p[0], p[2].mean) for p in pts if p[2] is not None]
                    if ref:
                        ax.plot(*zip(*ref), color=c, ls="--", lw=1.0)
                self._style_y(ax, m)
                ttl = m.label + (f" (dashed: {m.ref_label})" if m.ref else "")
                ax.set_title((f"{_fmt_value(pv[0])}: " if panel else "") + ttl, fontsize=9)
        self._legend(fig, handles)
        fig.suptitle(f"{sw.name}: {title}", fontsize=10)
        self.add(suffix, title, what, self.slice_text(x, series, panel), fig)

    def _legend(self, fig: Any, handles: dict[str, Any], title: str = "series") -> None:
        """Beside the panels when the labels are few and short, else below them in columns
        (the figure grows to make room)."""
        if not handles:
            return
        labels = list(handles)
        longest = max(map(len, labels))
        if len(labels) <= 6 and longest <= 24:
            fig.legend(list(handles.values()), labels, loc="outside right upper", fontsize=8,
                       title=title, title_fontsize=8)
            return
        ncols = max(1, min(len(labels), int(fig.get_figwidth() * 72 / (4.8 * longest + 42))))
        fig.set_figheight(fig.get_figheight() + 0.2 * (-(-len(labels) // ncols)) + 0.35)
        fig.legend(list(handles.values()), labels, loc="outside lower center", ncols=ncols,
                   fontsize=8, title=title, title_fontsize=8)

    def class_lines(self, suffix: str, title: str, what: str, x: str) -> None:
        """Per-class SLO attainment vs ``x``: a panel per series (and trace), a line per class."""
        sw = self.sw
        series = [k for k in sw.vary if k not in (x, *sw.partners(x))]
        groups = _groups(sw, series)
        n = len(groups)
        ncol = 2 if n == 4 else min(n, 3)
        nrow = -(-n // ncol)
        fig, axes = self.plt.subplots(nrow, ncol, squeeze=False, layout="constrained",
                                      figsize=(4.4 * ncol + 1.4, 3.2 * nrow))
        handles: dict[str, Any] = {}
        cmap = self.plt.get_cmap("tab10")
        for idx, (combo, rows) in enumerate(groups.items()):
            ax = axes[idx // ncol][idx % ncol]
            pos, _ = self._axis_x(ax, x)
            for ci, cls in enumerate(sw.classes):
                col = f"class.{cls}.slo_attainment"
                pts = [(pos[xv], _col(g, col)) for (xv,), g in _groups(sw, [x], rows).items()]
                pts = [p for p in pts if p[1] is not None]
                if not pts:
                    continue
                h = ax.errorbar([p[0] for p in pts], [p[1].mean for p in pts],
                                yerr=[p[1].hw or 0.0 for p in pts], color=cmap(ci % 10),
                                marker="o", ms=4, lw=1.6, capsize=3, label=cls)
                handles.setdefault(cls, h)
            self._style_y(ax, ATT)
            ax.set_title(series_label(series, combo), fontsize=9)
        for idx in range(n, nrow * ncol):
            axes[idx // ncol][idx % ncol].set_visible(False)
        if handles:
            fig.legend(list(handles.values()), list(handles), loc="outside right upper",
                       fontsize=8, title="class", title_fontsize=8)
        fig.suptitle(f"{sw.name}: {title}", fontsize=10)
        self.add(suffix, title, what, self.slice_text(x, [], series,
                                                      f"Lines: class ∈ {_set(sw.classes)}."),
                 fig)

    def frontier(self, suffix: str, title: str, what: str) -> None:
        """TDG ratio against TTFT p99 (log x): a marker per rate, a line per series."""
        sw = self.sw
        panel = ["trace"] if "trace" in sw.vary else []
        x = "rate" if "rate" in sw.vary else None
        series = [k for k in sw.vary if k not in ("rate", *panel, *sw.partners("rate"))]
        pvals = list(_groups(sw, panel)) if panel else [()]
        fig, axes = self.plt.subplots(1, len(pvals), squeeze=False, layout="constrained",
                                      figsize=(max(7.5, 5.6 * len(pvals) + 1.8), 3.8))
        handles: dict[str, Any] = {}
        for i, pv in enumerate(pvals):
            ax = axes[0][i]
            prow = [r for r in sw.rows if tuple(r.get(k) for k in panel) == pv]
            for combo, rows in _groups(sw, series, prow).items():
                lab = series_label(series, combo)
                pts = []
                for (rv,), g in _groups(sw, [x] if x else [], rows).items() if x else [
                        ((None,), rows)]:
                    sx, sy = _col(g, P99.col), _col(g, TDG.col)
                    if sx is not None and sy is not None and sx.mean > 0:
                        pts.append((sx, sy, rv))
                if not pts:
                    continue
                st = self.style(lab)
                c = st["color"]
                h = ax.errorbar([p[0].mean for p in pts], [p[1].mean for p in pts],
                                xerr=[min(p[0].hw or 0.0, p[0].mean * 0.999) for p in pts],
                                yerr=[p[1].hw or 0.0 for p in pts], ms=5, lw=1.4, capsize=2,
                                label=lab, **st)
                handles.setdefault(lab, h)
                if x:
                    for sx, sy, rv in pts:
                        ax.annotate(_fmt_value(rv), (sx.mean, sy.mean), fontsize=6,
                                    xytext=(3, 3), textcoords="offset points", color=c)
            ax.set_xscale("log")
            ax.set_xlabel("TTFT p99 (s, log)")
            self._style_y(ax, TDG)
            if panel:
                ax.set_title(_fmt_value(pv[0]), fontsize=9)
        self._legend(fig, handles)
        fig.suptitle(f"{sw.name}: {title}", fontsize=10)
        extra = "Each marker is one rate (req/s, labelled)." if x else ""
        self.add(suffix, title, what, self.slice_text(x, series, panel, extra), fig)

    def bars(self, suffix: str, title: str, what: str, bar_keys: Sequence[str],
             metrics: Sequence[Metric]) -> None:
        """Grouped bars: a bar per combination of ``bar_keys``, a group per combination of the
        other varying keys, a panel per metric."""
        sw = self.sw
        metrics = [m for m in metrics if _has(sw.rows, m.col)]
        if not metrics:
            self.warnings.append(f"{sw.name}: no data for figure {suffix}; not drawn")
            return
        group_keys = [k for k in sw.vary if k not in bar_keys]
        groups = _groups(sw, group_keys)
        bars = list(_groups(sw, bar_keys))
        nb, ng = max(len(bars), 1), max(len(groups), 1)
        width = 0.8 / nb
        panel_w = min(max(3.8, 0.22 * nb * ng + 1.2), 14.0)
        ncol = len(metrics) if panel_w * len(metrics) <= 18 else 1
        nrow = -(-len(metrics) // ncol)
        fig, axes = self.plt.subplots(nrow, ncol, squeeze=False, layout="constrained",
                                      figsize=(panel_w * ncol + 1.8, 3.4 * nrow))
        handles: dict[str, Any] = {}
        for mi, m in enumerate(metrics):
            ax = axes[mi // ncol][mi % ncol]
            for gi, grows in enumerate(groups.values()):
                by_bar = _groups(sw, bar_keys, grows)
                for bi, bcombo in enumerate(bars):
                    s = _col(by_bar.get(bcombo, []), m.col)
                    if s is None:
                        continue
                    lab = series_label(bar_keys, bcombo)
                    h = ax.bar(gi + (bi - (nb - 1) / 2) * width, s.mean, width * 0.92,
                               yerr=s.hw if s.hw else None, capsize=2, color=self.color(lab),
                               label=lab, edgecolor="white", linewidth=0.5)
                    handles.setdefault(lab, h)
            # tick labels are the group's values; the axis label names the keys
            labels = [", ".join(_fmt_value(v) for v in g) for g in groups]
            crowded = max(map(len, labels)) * 0.075 > panel_w / ng
            ax.set_xticks(range(len(groups)), labels, fontsize=8,
                          rotation=30 if crowded else 0, ha="right" if crowded else "center")
            ax.set_xlabel(", ".join(X_LABELS.get(k, k) if len(group_keys) == 1 else k
                                    for k in group_keys))
            self._style_y(ax, m)
            ax.set_title(m.label, fontsize=9)
        self._legend(fig, handles)
        fig.suptitle(f"{sw.name}: {title}", fontsize=10)
        slice_ = self.slice_text(None, bar_keys, [], (
            "Groups: " + "; ".join(f"{k} ∈ {_set(sw.values[k])}" for k in group_keys) + "."
        ) if group_keys else "")
        self.add(suffix, title, what, slice_, fig)

    def timelines(self, suffix: str, title: str, what: str) -> None:
        sw = self.sw
        n = len(sw.timelines)
        fig, axes = self.plt.subplots(n, 2, squeeze=False, layout="constrained",
                                      figsize=(11.5, 2.6 * n + 0.6))
        from matplotlib.ticker import MaxNLocator

        cmap = self.plt.get_cmap("tab10")
        labels = []
        for i, (coords, tl) in enumerate(sw.timelines):
            lab = ", ".join(f"{k}={_fmt_value(v)}" for k, v in coords.items()
                            if k in sw.vary or k == "seed") or f"point {i + 1}"
            labels.append(lab)
            for j, (key, ylabel) in enumerate((("instances", "instances"),
                                               ("pending", "pending requests"))):
                ax = axes[i][j]
                for ti, tier in enumerate(tl["tiers"]):
                    ax.step(tl["t"], [row[ti] for row in tl[key]], where="post",
                            color=cmap(ti % 10), lw=1.4, label=str(tier))
                ax.set_ylabel(ylabel)
                ax.set_title(f"{lab}: {ylabel} per tier", fontsize=9)
                ax.grid(alpha=0.3)
                ax.yaxis.set_major_locator(MaxNLocator(integer=True))
                ax.set_ylim(0, max(1.0, ax.dataLim.y1 * 1.08))
                if i == n - 1:
                    ax.set_xlabel("time (s)")
            axes[i][0].legend(fontsize=7, title="tier", title_fontsize=7, loc="upper left")
        fig.suptitle(f"{sw.name}: {title}", fontsize=10)
        self.add(suffix, title, what, "Rows: " + "; ".join(labels) + ".", fig)


def _figures(sw: Sweep, warnings: list[str]) -> list[Figure]:
    p = _Plotter(sw, warnings)
    v = sw.vary
    sim = sw.kind == "simulate"
    x_main = "rate" if sim else "instances"
    series = [k for k in v if k not in (x_main, "trace", *sw.partners(x_main))]
    if sim and "rate" in v:
        p.lines("tdg-attainment-vs-rate", "TDG ratio and SLO attainment vs rate",
                "Token-level deadline-aware gain (TDG) ratio and SLO attainment against the "
                "request rate (req/s), one line per series.", "rate", [TDG, ATT])
        if len(sw.classes) >= 2 and any(
                _has(sw.rows, f"class.{c}.slo_attainment") for c in sw.classes):
            p.class_lines("class-attainment-vs-rate", "Per-class SLO attainment vs rate",
                          "SLO attainment of each priority class against the request rate "
                          "(req/s), one panel per series.", "rate")
    if sim and ("rate" in v or len(_groups(sw, series)) >= 2) and _has(sw.rows, "ttft_p99"):
        p.frontier("tdg-vs-ttft-p99", "TDG ratio vs TTFT p99",
                   "What each series' gain costs in tail latency: TDG ratio against the 99th "
                   "percentile of time to first token (log scale).")
    metrics = _kind_metrics(sw) + ([P99] if sim else [])
    for k in v:
        if _is_weight_key(sw, k):
            p.lines(f"weight-{_slug(k)}", f"Weight scaling: metrics vs {k}",
                    f"How the results move with the weight {k}.", k, metrics)
        elif _is_param_key(k):
            p.lines(f"param-{_slug(k)}", f"Sensitivity to {k}",
                    f"Sensitivity to the parameter {k}.", k, metrics)
    if len(_groups(sw, series)) >= 2:
        p.bars("bars-per-series", "Per series at each " + ("rate" if sim else "fleet size"),
               "Each series side by side (policy ablations and other variants) at each "
               + ("rate." if sim else "fleet size."), series, _kind_metrics(sw))
    if "router" in v:
        rm = [TDG, ATT, Metric("ttft_p99", "TTFT p99 (s)")] if sim else [GPI, FOPT]
        if sim and any((r.get("prefix_hit_rate") or 0) > 0 for r in sw.rows):
            rm.append(Metric("prefix_hit_rate", "prefix hit rate", unit01=True))
        p.bars("router-comparison", "Router comparison",
               "Routers side by side, in groups of the other varying keys.", ["router"], rm)
    if "preemption" in v:
        p.bars("block-management", "Block management under preemption",
               "KV block management ablation: each preemption mode's TDG ratio, preemptions "
               "and recomputed tokens.", ["preemption"],
               [TDG, Metric("preemptions", "preemptions"),
                Metric("kv.recomputed_tokens", "recomputed tokens")])
    if not sim and "instances" in v:
        p.lines("goodput-vs-instances", "Goodput vs fleet size",
                "Goodput per instance (req/s at the attainment threshold; dashed: the fluid "
                "optimal bound) and the fraction of optimal against the number of instances.",
                "instances", [GPI, FOPT])
    if sw.timelines:
        p.timelines("autoscale-timeline", "Auto-scaling timeline",
                    "Instances serving each tier and requests pending per tier over simulated "
                    "time, for each point that auto-scales.")
    return p.figures


# ------------------------------------------------------------------------------ HTML
CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;
max-width:1180px;padding:0 18px 40px;color:#222}
h1{margin:18px 0 4px}h2{border-bottom:2px solid #ddd;padding-bottom:3px;margin-top:38px}
h3{margin:22px 0 6px}nav ol{margin:4px 0;padding-left:22px}nav li{margin:1px 0}
table{border-collapse:collapse;margin:6px 0 12px;font-size:12.5px}
th,td{border:1px solid #d6d6d6;padding:3px 7px;vertical-align:top}
th{background:#f3f3f3;text-align:left}td.n{text-align:right;white-space:nowrap}
table.kv th{min-width:110px}code{font-size:12px}td.long code{word-break:break-all}
.traces td:not(.long) code{white-space:nowrap}
.cols{display:flex;flex-wrap:wrap;gap:0 28px;align-items:flex-start}.cols p{margin:4px 0}
figure{margin:14px 0 26px;border:1px solid #e4e4e4;padding:8px;background:#fcfcfc}
figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:12.5px;color:#444;margin-top:6px}figcaption b{color:#222}
.warn{background:#fff6e0;border:1px solid #f0d28a;padding:6px 10px;font-size:13px}
.muted{color:#777}
"""


def _e(x: Any) -> str:
    return html.escape(x if isinstance(x, str) else _fmt_value(x), quote=True)


def _plain(v: Any) -> str:
    """A cell's text: mappings as ``key: value; ...`` (trace attributions), lists joined."""
    if isinstance(v, dict):
        return "; ".join(f"{k}: {_plain(x)}" for k, x in v.items())
    if isinstance(v, list):
        return ", ".join(map(_plain, v))
    return "" if v is None else str(v)


def _kv_table(rows: Sequence[tuple[str, Any]]) -> str:
    out = ['<table class="kv">']
    for k, v in rows:
        if isinstance(v, (dict, list)):
            v = json.dumps(v, sort_keys=isinstance(v, dict), default=str)
        out.append(f"<tr><th>{_e(str(k))}</th><td><code>{_e(str(v))}</code></td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _config_html(sw: Sweep, root: Path) -> str:
    try:
        rel = str(sw.path.relative_to(root)) or "."
    except ValueError:
        rel = str(sw.path)
    head = [("name", sw.name), ("kind", sw.kind), ("directory", rel),
            ("results", f"{sw.source}: {len(sw.rows)} of {sw.expected} grid points")]
    out = ["<h3>Configuration</h3>", '<div class="cols"><div><p><b>Sweep</b></p>',
           _kv_table(head), "</div><div><p><b>Base</b> (every point, unless the grid sets "
           "it)</p>",
           _kv_table(sorted(sw.base.items())) if sw.base else '<p class="muted">(empty)</p>',
           "</div><div><p><b>Grid</b> (points: the product of the lists"
           + (" and of the zip groups" if sw.zip else "") + ")</p>",
           _kv_table(list(sw.grid_only.items())) if sw.grid_only else
           '<p class="muted">(empty)</p>', "</div>"]
    for i, g in enumerate(sw.zip):
        out += [f"<div><p><b>Zip group {i + 1}</b> (lists varied together)</p>",
                _kv_table(list(g.items())), "</div>"]
    out.append("</div>")
    m = sw.meta
    out.append("<h3>Data sources and versions</h3>")
    if m is None:
        out.append('<p class="warn">meta.json is missing: versions and data sources unknown.</p>')
        return "\n".join(out)
    keys = ("proserve_version", "version", "code_hash", "git", "git_commit", "commit",
            "backend", "started_utc", "finished_utc", "started", "finished", "points",
            "computed", "cached")
    rows = [(k, m[k]) for k in keys if k in m]
    rows += [(k, v) for k, v in m.items()
             if k not in keys and k not in ("traces", "name", "kind", "failed")]
    out.append(_kv_table(rows))
    traces = m.get("traces") or []
    if isinstance(traces, list) and traces:
        cols: list[str] = []
        for t in traces:
            if isinstance(t, dict):
                cols += [c for c in t if c not in cols]
        out.append('<table class="traces"><tr>' + "".join(f"<th>{_e(c)}</th>" for c in cols)
                   + "</tr>")
        for t in traces:
            if isinstance(t, dict):
                cells = [_plain(t.get(c, "")) for c in cols]
                out.append("<tr>" + "".join(
                    ('<td class="long">' if len(v) > 32 else "<td>") + f"<code>{_e(v)}</code></td>"
                    for v in cells) + "</tr>")
        out.append("</table>")
    return "\n".join(out)


def _cell_text(s: Stat | None, pct: bool, digits: int) -> str:
    if s is None:
        return "-"
    k = 100.0 if pct else 1.0
    txt = f"{k * s.mean:.{digits}f}"
    if s.hw is not None:
        txt += f" ± {k * s.hw:.{digits}f}"
    return txt


def _table_html(sw: Sweep) -> str:
    """The main numbers: a row per combination of the varying keys, a column group per rate
    (simulate) or fleet size (goodput) when it varies; mean ± 95% half-width over seeds."""
    x = "rate" if sw.kind == "simulate" else "instances"
    x = x if x in sw.vary else None
    cells = ([("TDG %", "tdg_ratio", True, 1), ("attain %", "slo_attainment", True, 1),
              ("TTFT p99 s", "ttft_p99", False, 2)] if sw.kind == "simulate" else
             [("goodput/inst", "goodput_per_instance", False, 2),
              ("% of optimal", "fraction_of_optimal", True, 1),
              ("attain %", "attainment", True, 1)])
    cells = [c for c in cells if _has(sw.rows, c[1])]
    keys = [k for k in sw.vary if k != x and k not in sw.partners(x)]
    xs = sw.values[x] if x else [None]
    out = ["<table>", "<tr>"]
    span = ' rowspan="2"' if x else ""
    out += [f"<th{span}>{_e(k)}</th>" for k in keys] or [f"<th{span}>series</th>"]
    if x:
        out += [f'<th colspan="{len(cells)}">{_e(x)} = {_e(v)}</th>' for v in xs]
        out.append("</tr><tr>")
        out += [f"<th>{_e(c[0])}</th>" for _ in xs for c in cells]
    else:
        out += [f"<th>{_e(c[0])}</th>" for c in cells]
    out.append("</tr>")
    for combo, rows in _groups(sw, keys).items():
        out.append("<tr>" + ("".join(f"<td>{_e(v)}</td>" for v in combo) if keys
                             else f"<td>{_e(series_label([], ()))}</td>"))
        by_x = _groups(sw, [x], rows) if x else {(None,): rows}
        for xv in xs:
            g = by_x.get((xv,), [])
            out += [f'<td class="n">{_e(_cell_text(_col(g, col), pct, d))}</td>'
                    for _, col, pct, d in cells]
        out.append("</tr>")
    out.append("</table>")
    note = (f"Mean ± half-width of the {CI_LEVEL:.0%} t-interval over seed ∈ {_set(sw.seeds)}."
            if len(sw.seeds) >= 2 else "")
    return "\n".join(out) + (f'<p class="muted">{_e(note)}</p>' if note else "")


def _figure_html(f: Figure) -> str:
    data = base64.b64encode(f.png).decode("ascii")
    return (f'<figure id="fig-{_e(f.id)}"><img id="{_e(f.id)}" alt="{_e(f.alt)}" '
            f'src="data:image/png;base64,{data}">'
            f"<figcaption><b>{_e(f.title)}.</b> {_e(f.caption)}</figcaption></figure>")


def render_html(root: Path, sweeps: Sequence[Sweep], figs: dict[str, list[Figure]],
                warnings: Sequence[str]) -> str:
    from .. import __version__

    title = f"proserve report: {root.name or root}"
    toc = ["<nav><h2>Contents</h2><ol>"]
    body = []
    for sw in sweeps:
        toc.append(f'<li><a href="#{_e(sw.sid)}">{_e(sw.name)}</a> '
                   f'<span class="muted">({_e(sw.kind)})</span><ol>')
        toc += [f'<li><a href="#fig-{_e(f.id)}">{_e(f.title)}</a></li>' for f in figs[sw.sid]]
        toc.append("</ol></li>")
        body += [f'<section id="{_e(sw.sid)}"><h2>{_e(sw.name)} '
                 f'<span class="muted">({_e(sw.kind)})</span></h2>',
                 _config_html(sw, root), "<h3>Main numbers</h3>", _table_html(sw),
                 "<h3>Figures</h3>" if figs[sw.sid] else
                 '<p class="muted">No figure: nothing but the seed varies in this grid.</p>',
                 *(_figure_html(f) for f in figs[sw.sid]), "</section>"]
    toc.append("</ol></nav>")
    warn = ""
    if warnings:
        warn = ('<div class="warn"><b>Warnings</b><ul>' +
                "".join(f"<li>{_e(w)}</li>" for w in warnings) + "</ul></div>")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="muted">{len(sweeps)} sweep(s) from <code>{_e(str(root))}</code>; '
        f"report by proserve {_e(__version__)}. TDG: token-level deadline-aware gain "
        "(ProServe); attainment: TTFT and mean TPOT within their SLOs.</p>",
        warn, *toc, *body, "</body></html>", ""])


def build_report(results_dir: Path, out: Path) -> ReportSummary:
    """Write one self-contained HTML report of every sweep under ``results_dir`` to ``out``."""
    results_dir = Path(results_dir)
    out = Path(out)
    dirs, warnings = find_sweeps(results_dir)
    root = results_dir if results_dir.is_dir() else results_dir.parent
    sweeps = [load_sweep(d, warnings) for d in dirs]
    sweeps.sort(key=lambda s: (s.name, str(s.path)))
    used: set[str] = set()
    for sw in sweeps:
        sid = base = "sweep-" + _slug(sw.name)
        for i in itertools.count(2):
            if sid not in used:
                break
            sid = f"{base}-{i}"
        used.add(sid)
        sw.sid = sid
    figs = {sw.sid: _figures(sw, warnings) for sw in sweeps}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(root, sweeps, figs, warnings), encoding="utf-8")
    return ReportSummary(out=out, sweeps=[s.name for s in sweeps],
                         figures=[f.id for s in sweeps for f in figs[s.sid]], warnings=warnings)
