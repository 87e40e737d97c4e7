"""Check that every number in docs/BENCHMARKS.md's tables matches the committed raw output.

Convention (also stated at the top of docs/BENCHMARKS.md). Every Markdown table whose body holds a
digit is annotated by an HTML comment on the nearest non-blank line above it:

* ``<!-- raw: RULE FILE [FILE ...] -->``: the table's numbers come from those files (paths from
  the repository root; JSON, CSV, YAML, or the plain-text table a script printed). RULE names a
  function below (``RULES``) that says, for one body row, which raw value each checked cell shows
  (a cell may show several numbers, e.g. ``98.6/73.2``: they are compared in order). A few rules
  take their file from a ``raw`` column of the table instead (``fit-error``).
* ``<!-- unchecked: REASON -->``: the table holds no measured number of its own (it restates or
  compares numbers of checked tables, e.g. an acceptance-criteria summary). REASON is required.

A table with digits and neither comment is an error, so a new table cannot skip the check.

A doc number matches when it equals the raw value within the displayed rounding: half a unit in
its last shown digit (``53`` matches 52.9, ``52.9`` matches 52.94, ``100.0`` matches 99.97).
``**bold**``, thousands separators, ``%``, units and signs are allowed; a number glued to a letter
(``p99``, ``N=64`` in headers) is not a value. Every body cell that shows a number must be mapped
by the rule; a rule marks a label column that may hold digits (a workload's flags, a command)
explicitly, so a new column of numbers cannot slip past unchecked.

    python benchmarks/check_docs.py [--doc docs/BENCHMARKS.md] [--root .] [--fix]

Exit 0 and a summary line ``check_docs: N tables, M numbers checked, 0 mismatches``; exit 1 and one
line per mismatch naming the table (its heading and line), row, column, doc value and raw value.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

NUM = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w])")
ANNOT = re.compile(r"^<!--\s*(raw|unchecked):\s*(.*?)\s*-->$")


# ---------------------------------------------------------------------- parsing
@dataclass
class Table:
    line: int  # 1-based line of the header row
    heading: str
    header: list[str]
    rows: list[list[str]]  # body rows; an empty first cell repeats the row above's
    raw_lines: list[int]  # 1-based line of each body row
    annot: tuple[str, str] | None  # ("raw" | "unchecked", rest)

    @property
    def name(self) -> str:
        return f"'{self.heading}' (line {self.line})"


def cells(line: str) -> list[str]:
    s = line.strip()
    if s.startswith("|"):
        s = s[1:]
    if s.endswith("|"):
        s = s[:-1]
    return [c.strip() for c in s.split("|")]


def stray_rows(text: str, tables: list[Table]) -> list[int]:
    """1-based lines outside code blocks and parsed tables that look like table rows with
    numbers (a table cut short by a broken line would otherwise leave its rest unchecked)."""
    covered = {n for t in tables for n in (t.line, t.line + 1, *t.raw_lines)}
    out, in_code = [], False
    for n, ln in enumerate(text.splitlines(), start=1):
        if ln.startswith("```"):
            in_code = not in_code
            continue
        if (not in_code and n not in covered and not ln.lstrip().startswith(">")
                and (ln.startswith("|") or ln.count(" | ") >= 2) and re.search(r"\d", ln)):
            out.append(n)
    return out


def parse_tables(text: str) -> list[Table]:
    lines = text.splitlines()
    tables: list[Table] = []
    heading = "(top)"
    in_code = False
    i = 0
    while i < len(lines):
        ln = lines[i]
        if ln.startswith("```"):
            in_code = not in_code
        elif not in_code and ln.startswith("#"):
            heading = ln.lstrip("#").strip()
        elif (not in_code and ln.startswith("|") and i + 1 < len(lines)
              and re.match(r"^\|[\s:|-]+\|\s*$", lines[i + 1])):
            j = i - 1
            while j >= 0 and not lines[j].strip():
                j -= 1
            m = ANNOT.match(lines[j].strip()) if j >= 0 else None
            annot = (m.group(1), m.group(2)) if m else None
            header = cells(ln)
            rows, at = [], []
            k = i + 2
            prev: list[str] = []
            while k < len(lines) and lines[k].startswith("|"):
                r = cells(lines[k])
                if prev and r and not r[0]:
                    r[0] = prev[0]
                rows.append(r)
                at.append(k + 1)
                prev = r
                k += 1
            tables.append(Table(i + 1, heading, header, rows, at, annot))
            i = k
            continue
        i += 1
    return tables


def plain(s: str) -> str:
    return s.replace("**", "").replace("`", "").strip()


def numbers(cell: str) -> list[tuple[float, float, str]]:
    """(value, tolerance, text) of each number shown in a cell."""
    out = []
    for m in NUM.finditer(plain(cell)):
        t = m.group(0)
        dec = len(t.split(".")[1]) if "." in t else 0
        out.append((float(t.replace(",", "")), 0.5 * 10 ** -dec, t))
    return out


def first_number(s: str) -> float:
    n = numbers(s)
    if not n:
        raise KeyError(f"no number in {s!r}")
    return n[0][0]


# ---------------------------------------------------------------------- raw files
def load(path: Path) -> Any:
    if path.suffix == ".json":
        return json.loads(path.read_text())
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    if path.suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(path.read_text())
    if path.suffix == ".txt":
        return parse_text_table(path.read_text())
    raise ValueError(f"no loader for {path}")


def parse_text_table(text: str) -> dict[str, Any]:
    """The plain-text table a benchmark printed (columns 2+ spaces apart, a dashed rule under
    the header): first cell -> the row's cells; '__header__' -> the header; '__rows__' -> every
    body row in order (first cells may repeat)."""
    lines = text.splitlines()
    out: dict[str, Any] = {"__rows__": []}
    for i, ln in enumerate(lines):
        if i and re.match(r"^-+(\s+-+)+\s*$", ln):
            out["__header__"] = re.split(r"\s{2,}", lines[i - 1].strip())
            for row in lines[i + 1:]:
                if not row.strip():
                    break
                c = re.split(r"\s{2,}", row.strip())
                out[c[0]] = c
                out["__rows__"].append(c)
            break
    return out


# ---------------------------------------------------------------------- rules
Expected = dict[int, list[float] | None]  # column index -> raw values shown there, in order
Rule = Callable[["Ctx", list[str]], Expected]


@dataclass
class Ctx:
    table: Table
    files: list[Any]  # loaded files named in the annotation, in order
    root: Path
    cache: dict[str, Any] = field(default_factory=dict)

    def file(self, rel: str) -> Any:
        if rel not in self.cache:
            self.cache[rel] = load(self.root / rel)
        return self.cache[rel]

    def order(self, col: int, row: list[str]) -> int:
        """Index of this row's group (distinct values of column ``col`` in table order)."""
        seen: list[str] = []
        for r in self.table.rows:
            if r[col] not in seen:
                seen.append(r[col])
        return seen.index(row[col])


RULES: dict[str, Rule] = {}


def rule(name: str) -> Callable[[Rule], Rule]:
    def deco(f: Rule) -> Rule:
        RULES[name] = f
        return f
    return deco


def pct(x: Any) -> float:
    return 100.0 * float(x)


def ms(x: Any) -> float:
    return 1000.0 * float(x)


def find(recs: list[dict], **kw: Any) -> dict:
    """The one record whose fields equal ``kw`` (numbers compared as floats)."""
    def eq(a: Any, b: Any) -> bool:
        try:
            return float(a) == float(b)
        except (TypeError, ValueError):
            return str(a) == str(b)

    hits = [r for r in recs if all(eq(r.get(k), v) for k, v in kw.items())]
    if len(hits) != 1:
        raise KeyError(f"{len(hits)} raw records match {kw}")
    return hits[0]


@rule("grid")
def grid(ctx: Ctx, row: list[str]) -> Expected:
    """`proserve compare` results.csv: rows 'policy' or 'router + policy' (or 'router' when the
    file has one policy), columns are rates ('PREFIX RATE' with one file per distinct PREFIX, in
    header order); a cell is 'TDG % / SLO %'."""
    label = plain(row[0]).split(" + ")
    prefixes: list[str] = []
    for h in ctx.table.header[1:]:
        p = plain(h).rsplit(" ", 1)[0] if " " in plain(h) else ""
        if p not in prefixes:
            prefixes.append(p)
    out: Expected = {}
    for c, h in enumerate(ctx.table.header[1:], start=1):
        h = plain(h)
        p = h.rsplit(" ", 1)[0] if " " in h else ""
        recs = ctx.files[prefixes.index(p)]
        kw: dict[str, Any] = {"rate": first_number(h.rsplit(" ", 1)[-1])}
        if len(label) == 2:
            kw["router"], kw["policy"] = label
        elif "router" in recs[0] and len({x["policy"] for x in recs}) == 1:
            kw["router"] = label[0]
        else:
            kw["policy"] = label[0]
        r = find(recs, **kw)
        out[c] = [pct(r["tdg_ratio"]), pct(r["slo_attainment"])]
    return out


@rule("grid-p99")
def grid_p99(ctx: Ctx, row: list[str]) -> Expected:
    """`proserve compare` results.csv: rows are policies, columns rates; a cell is the TTFT p99
    in seconds."""
    out: Expected = {}
    for c, h in enumerate(ctx.table.header[1:], start=1):
        r = find(ctx.files[0], policy=plain(row[0]), rate=first_number(plain(h)))
        out[c] = [float(r["ttft_p99"])]
    return out


def _args_label(policy: str, args: dict) -> str:
    inner = ", ".join(f"{k}={'inf' if v is None else f'{v:g}'}" for k, v in args.items())
    return f"{policy} ({inner})" if inner else policy


FRONTIER_COLS = {"TDG %": ("tdg_ratio", pct), "SLO att %": ("slo_attainment", pct),
                 "TTFT p99 s": ("ttft_p99", float), "E2E p99 s": ("e2e_p99", float),
                 "longest wait s": ("max_wait_s", float)}


@rule("frontier")
def frontier(ctx: Ctx, row: list[str]) -> Expected:
    """starvation_frontier.py JSON: rows 'policy (arg=value)'; columns as it prints them."""
    want = plain(row[0])
    hits = [p for p in ctx.files[0]["points"]
            if _args_label(p["policy"], p["policy_args"]) == want]
    if len(hits) != 1:
        raise KeyError(f"{len(hits)} frontier points named {want!r}")
    out: Expected = {0: None}  # the label holds parameter values, matched above
    for c, h in enumerate(ctx.table.header[1:], start=1):
        key, f = FRONTIER_COLS[plain(h)]
        out[c] = [f(hits[0][key])]
    return out


@rule("noise")
def noise(ctx: Ctx, row: list[str]) -> Expected:
    """noise_sensitivity.py JSON: rows 'trace @ rate | policy | noise CV'; TDG %, SLO %, p99."""
    trace, rate = plain(row[0]).split(" @ ")
    r = find(ctx.files[0]["points"], trace=trace, rate=float(rate), policy=plain(row[1]),
             latency_noise=first_number(row[2]))
    out: Expected = {0: None, 2: [float(r["latency_noise"])]}
    for c, h in enumerate(ctx.table.header[3:], start=3):
        key, f = FRONTIER_COLS[plain(h)]
        out[c] = [f(r[key])]
    return out


@rule("admission")
def admission(ctx: Ctx, row: list[str]) -> Expected:
    """admission_overload.py JSON: rows 'policy | admission (off, or on, TIMEOUT s[, yield
    SHARE][, target T]) | class'; SLO att %, refused, TTFT p99 s, admitted over (queue timeout +
    TTFT SLO), worst excess s."""
    adm = plain(row[1])
    on = adm.startswith("on")
    kw: dict[str, Any] = {"policy": plain(row[0]), "admission": str(on),
                          "yield_share": first_number(adm.split("yield")[1])
                          if "yield" in adm else 0.0,
                          "yield_target": first_number(adm.split("target")[1])
                          if "target" in adm else None}
    if on:
        kw["queue_timeout_s"] = first_number(adm)
    x = find(ctx.files[0]["points"], **kw)
    cls = plain(row[2])
    m, w = x["per_class"][cls], x["admitted_wait"][cls]
    keys = {"SLO att %": pct(m["slo_attainment"]), "refused": float(m["rejected"]),
            "TTFT p99 s": float(m["ttft_p99"]), "admitted over timeout+SLO": float(
                w["over_bound"]), "worst excess s": float(w["worst_excess_s"])}
    out: Expected = {c: [keys[plain(h)]] for c, h in enumerate(ctx.table.header)
                     if plain(h) in keys}
    out[1] = None if not on else [float(x["queue_timeout_s"])] + (
        [float(x["yield_share"])] if x.get("yield_share") else []) + (
        [float(x["yield_target"])] if x.get("yield_target") is not None else [])
    return out


@rule("go-packing")
def go_packing(ctx: Ctx, row: list[str]) -> Expected:
    """Files: the cluster results.csv, then one `proserve simulate --out` JSON per rate. Rows are
    rates; a column whose header names a router argument ('light_frac') comes from the JSON of
    that rate, the others ('default go', 'min-load') from the CSV, policy as in the JSON."""
    rate = first_number(row[0])
    sims = [f for f in ctx.files[1:] if float(f["config"]["rate"]) == rate]
    if len(sims) != 1:
        raise KeyError(f"{len(sims)} simulate outputs at rate {rate}")
    sim = sims[0]
    out: Expected = {0: [rate]}
    for c, h in enumerate(ctx.table.header[1:], start=1):
        if "light_frac" in h:
            r = sim
        else:
            router = "go" if "go" in h.split() else plain(h)
            r = find(ctx.files[0], router=router, policy=sim["policy"], rate=rate)
        out[c] = [pct(r["tdg_ratio"]), pct(r["slo_attainment"])]
    return out


@rule("weight-sweep")
def weight_sweep(ctx: Ctx, row: list[str]) -> Expected:
    """exp_weight_sweep.py JSON, one file per distinct first cell (trace @ rate), in table order;
    columns 'w=W'; a cell is 'SLO / high SLO / low SLO[, TDG tdg]' in %."""
    recs = ctx.files[ctx.order(0, row)]
    out: Expected = {0: None}  # 'trace @ rate' names the file (the raw rows hold no rate)
    for c, h in enumerate(ctx.table.header[2:], start=2):
        r = find(recs, policy=plain(row[1]), w_high=first_number(h.split("=")[1]))
        vals = [pct(r["slo"]), pct(r["slo_high"]), pct(r["slo_low"])]
        if "TDG" in row[c]:
            vals.append(pct(r["tdg"]))
        out[c] = vals
    return out


@rule("simulator")
def simulator(ctx: Ctx, row: list[str]) -> Expected:
    """bench_simulator.py JSON: rows are policies, best-of-repeats columns."""
    r = find(ctx.files[0]["results"], policy=plain(row[0]))
    keys = {"engine steps": "steps", "simulated s": "sim_s", "wall s": "wall_best_s",
            "simulated requests / wall s": "req_per_wall_s_best",
            "wall ms per simulated replica-second": "wall_ms_per_replica_s_best"}
    return {c: [float(r[keys[plain(h)]])] for c, h in enumerate(ctx.table.header)
            if plain(h) in keys}


@rule("scheduler")
def scheduler(ctx: Ctx, row: list[str]) -> Expected:
    """bench_scheduler.py JSON: rows are policies, columns 'N=QUEUED'; steady-mode median us."""
    out: Expected = {}
    for c, h in enumerate(ctx.table.header[1:], start=1):
        n = int(plain(h).split("=")[1].replace(",", ""))
        r = find(ctx.files[0]["results"], mode="steady", policy=plain(row[0]), queued=n)
        out[c] = [float(r["median_us"])]
    return out


@rule("memory")
def memory(ctx: Ctx, row: list[str]) -> Expected:
    """bench_memory.py JSON: first cell names the measurement kind; peak RSS in MB (10^6 B)."""
    kind = plain(row[0]).split()[0].rstrip(":")
    r = find(ctx.files[0]["results"], kind=kind)
    return {c: [r["maxrss_bytes"] / 1e6] for c, h in enumerate(ctx.table.header)
            if "MB" in h}


@rule("kv-link")
def kv_link(ctx: Ctx, row: list[str]) -> Expected:
    """`proserve simulate --out` JSONs, one per link bandwidth (first cell, GB/s)."""
    gbs = first_number(row[0])
    sims = [f for f in ctx.files if float(f["config"]["kv_link_gbytes_s"]) == gbs]
    if len(sims) != 1:
        raise KeyError(f"{len(sims)} simulate outputs at {gbs} GB/s")
    r = sims[0]
    out: Expected = {0: [gbs]}
    for c, h in enumerate(ctx.table.header[1:], start=1):
        h = plain(h)
        if h.startswith("TTFT p50"):
            out[c] = [ms(r["ttft_p50"])]
        elif h.startswith("TTFT p99"):
            out[c] = [ms(r["ttft_p99"])]
        elif h.startswith("TDG"):
            out[c] = [pct(r["tdg_ratio"]), pct(r["slo_attainment"])]
    return out


SUMMARY_COLS = {"TTFT p50 (ms)": ("ttft_p50", 1000.0), "TTFT p99 (ms)": ("ttft_p99", 1000.0),
                "TPOT p50 (ms)": ("tpot_p50", 1000.0), "TPOT p99 (ms)": ("tpot_p99", 1000.0),
                "TDG %": ("tdg_ratio", 100.0), "SLO %": ("slo_attainment", 100.0),
                "requests": ("requests", 1.0)}


@rule("summary")
def summary(ctx: Ctx, row: list[str]) -> Expected:
    """One `proserve simulate --out` JSON per body row, in order; columns named as in
    SUMMARY_COLS (e.g. 'TTFT p50 (ms)'), other columns are labels."""
    d = ctx.files[ctx.table.rows.index(row)]
    out: Expected = {0: None}  # the row's label
    for c, h in enumerate(ctx.table.header):
        if plain(h) in SUMMARY_COLS:
            k, scale = SUMMARY_COLS[plain(h)]
            out[c] = [float(d[k]) * scale]
    return out


@rule("text")
def text(ctx: Ctx, row: list[str]) -> Expected:
    """The plain-text table a benchmark printed (.txt), copied: the body row whose leading cells
    equal the doc row's (as few as make the match unique: those are labels), each other doc
    cell showing the numbers of the raw cell in the same column."""
    rows = ctx.files[0]["__rows__"]
    doc = [plain(c) for c in row]
    for k in range(1, len(doc) + 1):
        hits = [r for r in rows if r[:k] == doc[:k]]
        if len(hits) <= 1:
            break
    if len(hits) != 1:
        raise KeyError(f"{len(hits)} raw rows match {doc[:k]!r}")
    raw = hits[0]
    out: Expected = {c: None for c in range(k)}
    for c in range(k, len(row)):
        if c >= len(raw):
            raise KeyError(f"raw row {doc[:k]!r} has no column {c}")
        out[c] = [v for v, _, _ in numbers(raw[c])]
    return out


@rule("router")
def router(ctx: Ctx, row: list[str]) -> Expected:
    """bench_router.py JSON: rows 'router | mode', columns 'N instances p50 / p90' (us)."""
    out: Expected = {}
    for c, h in enumerate(ctx.table.header[2:], start=2):
        r = find(ctx.files[0]["results"], router=plain(row[0]), mode=plain(row[1]),
                 instances=first_number(h))
        out[c] = [r["p50_us"], r["p90_us"]]
    return out


@rule("router-build")
def router_build(ctx: Ctx, row: list[str]) -> Expected:
    """bench_router.py JSON, gateway mode: rows are routers, columns 'N instances'; a cell is
    'view building p50 / whole decision p50' (us)."""
    out: Expected = {}
    for c, h in enumerate(ctx.table.header[1:], start=1):
        r = find(ctx.files[0]["results"], router=plain(row[0]), mode="gateway",
                 instances=first_number(h))
        out[c] = [r["build_p50_us"], r["p50_us"]]
    return out


@rule("e2e-fidelity")
def e2e_fidelity(ctx: Ctx, row: list[str]) -> Expected:
    """e2e_fidelity.py JSONs (one per rate): rows 'rate | metric', columns live, simulated and
    live/sim (ms for latencies)."""
    rate = first_number(row[0])
    runs = [f for f in ctx.files if float(f["args"]["rate"]) == rate]
    if len(runs) != 1:
        raise KeyError(f"{len(runs)} runs at rate {rate}")
    d = runs[0]
    metric = plain(row[1])
    keys = {"TDG ratio": [("tdg_ratio", 1)], "SLO attainment": [("slo_attainment", 1)],
            "goodput (req/s)": [("goodput_rps", 1)],
            "TTFT p50 / p99": [("ttft_p50", 1000), ("ttft_p99", 1000)],
            "TPOT p50 / p99": [("tpot_p50", 1000), ("tpot_p99", 1000)],
            "TTFT p50 / TPOT p50": [("ttft_p50", 1000), ("tpot_p50", 1000)]}[metric]
    live = [d["live"][k] * s for k, s in keys]
    sim = [d["sim"][k] * s for k, s in keys]
    return {0: [rate], 1: None, 2: live, 3: sim,
            4: [a / b for a, b in zip(live, sim, strict=True)]}


def _target(label: str) -> str:
    s = plain(label).lower()
    for k in ("direct", "proserve", "litellm"):
        if k in s:
            return k
    raise KeyError(f"unknown target {label!r}")


@rule("gateway-overhead")
def gateway_overhead(ctx: Ctx, row: list[str]) -> Expected:
    """bench_gateway.py JSON: rows 'rate | target'; ok/n, then ms; 'added' = minus direct."""
    rate = first_number(row[0])
    res = ctx.files[0]["overhead"][f"{rate:g}"]
    m, base = res[_target(row[1])], res["direct"]
    out: Expected = {0: [rate]}
    if "skipped" in m:  # not measured there (past its saturation): the row must say so
        if "not measured" not in row[2]:
            raise KeyError(f"raw says skipped ({m['skipped']}), the doc row shows values")
        return out
    for c, h in enumerate(ctx.table.header[2:], start=2):
        h = plain(h)
        key = {"TTFT p50": "ttft_p50", "TTFT p99": "ttft_p99", "e2e p50": "e2e_p50",
               "e2e p99": "e2e_p99", "added p50": "ttft_p50", "added p99": "ttft_p99",
               "added e2e p50": "e2e_p50", "added e2e p99": "e2e_p99"}.get(h)
        if h == "ok":
            out[c] = [m["ok"], m["n"]]
        elif key and h.startswith("added"):
            out[c] = None if _target(row[1]) == "direct" else [ms(m[key] - base[key])]
        elif key:
            out[c] = [ms(m[key])]
    return out


@rule("gateway-sustained")
def gateway_sustained(ctx: Ctx, row: list[str]) -> Expected:
    """bench_gateway.py JSON: highest sustained rate, then the first failing step as
    'rate: TTFT p99 S s[, OK/N ok]' (or '-' when every step passed)."""
    t = _target(row[0])
    d = ctx.files[0]
    fail = next((s for s in d["steps"][t] if not s[4]), None)
    if fail is None:
        return {1: [d["sustained"][t]], 2: None}
    return {1: [d["sustained"][t]],
            2: [fail[0], fail[3]] + ([fail[1], fail[2]] if " ok" in row[2] else [])}


@rule("plugin-compare")
def plugin_compare(ctx: Ctx, row: list[str]) -> Expected:
    """vllm_plugin_compare.py JSONs, one per distinct workload (first cell), in table order; the
    workload cell is 'S slots, R req/s (N req.)'."""
    d = ctx.files[ctx.order(0, row)]
    s = d[plain(row[1])]["summary"]
    hi = s["per_class"]["high"]
    vals = {"TDG %": pct(s["tdg_ratio"]), "high TDG %": pct(hi["tdg_ratio"]),
            "high TTFT-SLO %": pct(hi["ttft_attainment"]), "all SLO %": pct(s["slo_attainment"]),
            "high TTFT p50": hi["ttft_p50"], "TPOT p50": ms(s["tpot_p50"]),
            "makespan": s["bench_wall_s"]}
    out: Expected = {0: [d["args"]["max_num_seqs"], d["args"]["rate"], s["requests"]]}
    for c, h in enumerate(ctx.table.header[2:], start=2):
        out[c] = [vals[plain(h)]]
    return out


@rule("step-cost")
def step_cost(ctx: Ctx, row: list[str]) -> Expected:
    """plugin_step_cost.py JSON: rows 'max_num_seqs | live | variant'; columns schedule p50,
    vLLM part p50, plug-in overhead p50 (us), overhead / vLLM priority's schedule()."""
    r = find(ctx.files[0]["rows"], max_num_seqs=int(first_number(row[0])),
             live=int(first_number(row[1])), variant=plain(row[2]))
    vals = {"schedule() p50 us": r["schedule_us_p50"], "vLLM part p50 us": r["vllm_part_us_p50"],
            "plug-in overhead p50 us": (r["overhead_us_p50"]
                                        if r["variant"].startswith("plugin") else None),
            "overhead / vLLM priority": r["overhead_vs_vllm_priority"]}
    out: Expected = {0: None, 1: None, 2: None}
    for c, h in enumerate(ctx.table.header[3:], start=3):
        v = vals[plain(h)]
        out[c] = None if v is None else [v]
    return out


@rule("plugin-sim")
def plugin_sim(ctx: Ctx, row: list[str]) -> Expected:
    """vllm_plugin_compare.py --simulate printouts (.txt), one per row in table order; header
    'sim POLICY METRIC' picks the printed row 'sim vllm POLICY' / 'sim plug-in POLICY'."""
    t = ctx.files[ctx.table.rows.index(row)]
    cols = t["__header__"]

    def val(policy: str, metric: str) -> float:
        name = next(k for k in t if k.startswith("sim ") and k.split(" ", 2)[-1] == policy)
        return float(t[name][cols.index(metric)])

    out: Expected = {0: None}  # the workload's label; the .txt names its flags
    for c, h in enumerate(ctx.table.header[1:], start=1):
        h = plain(h)
        if h.endswith(" TDG"):
            out[c] = [val(h.split()[1], "TDG %")]
        elif h.endswith("TPOT p50"):
            out[c] = [val(h.split()[1], "TPOT p50 ms")]
        elif "TTFT-SLO" in h:  # 'sim high TTFT-SLO, A / B'
            pols = [p.strip() for p in h.split(",", 1)[1].split("/")]
            out[c] = [val(p, "high TTFT-SLO %") for p in pols]
    return out


@rule("fit-error")
def fit_error(ctx: Ctx, row: list[str]) -> Expected:
    """Profile fit errors; the 'raw' column names the file: a profile YAML ('mean% / p90%
    (H held-out points of N)') or 'fidelity_vllm.json: ENGINE' ('mean% / p90% (H held-out
    points)')."""
    hdr = [plain(h) for h in ctx.table.header]
    src = plain(row[hdr.index("raw")])
    path, _, engine = src.partition(": ")
    d = ctx.file(path.strip())
    if engine:
        fe = d["results"][engine.strip()]["fit_error"]
        vals = [pct(fe["mape"]), pct(fe["p90_ape"]), fe["n"]]
    else:
        fe = d["fit_error"]
        vals = [pct(fe["held_out"]["mape"]), pct(fe["held_out"]["p90_ape"]),
                fe["held_out"]["n"], fe["held_out"]["n"] + fe["train"]["n"]]
    out: Expected = {c: None for c in range(len(hdr))}  # backend, command, raw: labels
    out[hdr.index("held-out error, mean / p90")] = vals
    return out


@rule("fidelity")
def fidelity(ctx: Ctx, row: list[str]) -> Expected:
    """fidelity_vllm.py JSON: rows 'engine | rate'; TTFT p50 pair, its error, TTFT p90 error,
    TPOT p50 pair, its error, TPOT p90 error (ms, %)."""
    eng = plain(row[0])
    rates = ctx.files[0]["results"][eng]["rates"]
    shown, tol, _ = numbers(row[1])[0]  # the rate as displayed, within its rounding
    keys = [k for k in rates if abs(float(k) - shown) <= tol + 1e-9]
    if len(keys) != 1:
        raise KeyError(f"{len(keys)} raw rates match {row[1]!r}")
    d = rates[keys[0]]
    re_, si = d["real"], d["sim"]

    def err(k: str) -> list[float]:
        return [100.0 * (si[k] / re_[k] - 1.0)]

    rate_cell = [float(keys[0])]
    if len(numbers(row[1])) > 1:  # 'R req/s (L%)': the load as a share of measured capacity
        rate_cell.append(100.0 * ctx.files[0]["results"][eng]["loads"][keys[0]])
    return {1: rate_cell, 2: [ms(re_["ttft_p50"]), ms(si["ttft_p50"])],
            3: err("ttft_p50"), 4: err("ttft_p90"), 5: [ms(re_["tpot_p50"]), ms(si["tpot_p50"])],
            6: err("tpot_p50"), 7: err("tpot_p90")}


# ---------------------------------------------------------------------- check
def check(doc: Path, root: Path, fixes: dict[tuple[int, int], list[float]] | None = None
          ) -> tuple[int, int, list[str]]:
    """(tables checked, numbers checked, problems). With ``fixes``, every mismatching cell whose
    count of numbers matches the raw file's is recorded there: (line, column) -> raw values."""
    text = doc.read_text()
    tables = parse_tables(text)
    n_tables = n_numbers = 0
    problems = [f"line {n}: looks like a table row with numbers, outside any table"
                for n in stray_rows(text, tables)]
    for t in tables:
        has_digit = any(re.search(r"\d", c) for r in t.rows for c in r)
        if t.annot is None:
            if has_digit:
                problems.append(f"table {t.name}: numbers but no <!-- raw: ... --> or "
                                "<!-- unchecked: REASON --> comment above it")
            continue
        kind, rest = t.annot
        if kind == "unchecked":
            if not rest:
                problems.append(f"table {t.name}: <!-- unchecked: --> needs a reason")
            continue
        parts = rest.split()
        if not parts or parts[0] not in RULES:
            problems.append(f"table {t.name}: unknown rule {parts[:1]} (known: {sorted(RULES)})")
            continue
        missing = [p for p in parts[1:] if not (root / p).is_file()]
        if missing:
            problems.append(f"table {t.name}: raw file(s) missing: {missing}")
            continue
        ctx = Ctx(t, [load(root / p) for p in parts[1:]], root)
        n_tables += 1
        for r, at in zip(t.rows, t.raw_lines, strict=True):
            where = f"table {t.name}, row {plain(r[0])!r} (line {at})"
            try:
                exp = RULES[parts[0]](ctx, r)
            except (KeyError, IndexError, ValueError, TypeError, StopIteration) as e:
                problems.append(f"{where}: no raw value: {e!r}")
                continue
            for c, cell in enumerate(r):
                if c not in exp and NUM.search(plain(cell)):
                    problems.append(f"{where}, column {plain(t.header[c])!r}: numbers the rule "
                                    f"{parts[0]!r} does not map: {cell!r}")
            for c, want in exp.items():
                col = plain(t.header[c]) if c < len(t.header) else f"#{c}"
                got = numbers(r[c]) if c < len(r) else []
                if want is None or (c == 0 and not got):
                    continue
                if len(got) != len(want):
                    problems.append(f"{where}, column {col!r}: doc shows {len(got)} number(s) "
                                    f"{r[c]!r}, raw has {len(want)}: {_fmt(want)}")
                    continue
                for (v, tol, txt), w in zip(got, want, strict=True):
                    n_numbers += 1
                    if abs(v - float(w)) > tol * (1 + 1e-9) + 1e-9:
                        problems.append(f"{where}, column {col!r}: doc {txt} != raw "
                                        f"{float(w):.6g} (displayed rounding +-{tol:g})")
                        if fixes is not None:
                            fixes[(at, c)] = [float(x) for x in want]
    return n_tables, n_numbers, problems


def _shown(old: str, value: float) -> str:
    """``value`` written as ``old`` was: its decimals, thousands separators and explicit sign."""
    dec = len(old.split(".")[1]) if "." in old else 0
    txt = f"{value:{',' if ',' in old else ''}.{dec}f}"
    return "+" + txt if old.startswith("+") and value >= 0 else txt


def apply_fixes(doc: Path, fixes: dict[tuple[int, int], list[float]]) -> int:
    """Rewrite the recorded cells' numbers to the raw values, in place, keeping every other
    character of the line (bold, units, spacing). Returns the number of cells rewritten."""
    lines = doc.read_text().split("\n")
    for (at, c), vals in fixes.items():
        line = lines[at - 1]
        bars = [i for i, ch in enumerate(line) if ch == "|"]
        start, end = bars[c] + 1, bars[c + 1]  # the line starts with '|': cell c follows bar c
        cell = NUM.sub(lambda m, it=iter(vals): _shown(m.group(0), next(it)), line[start:end])
        lines[at - 1] = line[:start] + cell + line[end:]
    doc.write_text("\n".join(lines))
    return len(fixes)


def _fmt(vals: list[float]) -> str:
    return ", ".join(f"{float(v):.6g}" for v in vals)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--doc", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    ap.add_argument("--root", default=str(ROOT), help="where raw file paths are relative to")
    ap.add_argument("--fix", action="store_true",
                    help="after re-running a benchmark: rewrite each mismatching cell to its raw "
                         "value (same format), then check again; rows and text are yours")
    a = ap.parse_args(argv)
    if a.fix:
        fixes: dict[tuple[int, int], list[float]] = {}
        check(Path(a.doc), Path(a.root), fixes)
        print(f"check_docs: rewrote {apply_fixes(Path(a.doc), fixes)} cell(s)")
    n_tables, n_numbers, problems = check(Path(a.doc), Path(a.root))
    for p in problems:
        print(f"MISMATCH {p}")
    print(f"check_docs: {n_tables} tables, {n_numbers} numbers checked, "
          f"{len(problems)} mismatches")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
