"""``proserve report``: one self-contained HTML file from sweep results (real simulations, built
once per session in conftest.py), the figures each grid calls for, clear errors on malformed
input, and the page as headless Chromium renders it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from tests.experiments.conftest import ALL_SUFFIXES, chromium_binary

from proserve.experiments.report import ReportError, build_report, load_sweep, stat


@pytest.fixture(scope="session")
def report(sweeps_root: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("report") / "sub" / "report.html"
    return build_report(sweeps_root, out)


def _img_ids(text: str) -> list[str]:
    return re.findall(r'<img id="([^"]+)"', text)


def test_report_is_one_self_contained_file(report) -> None:
    text = report.out.read_text(encoding="utf-8")
    assert report.out.is_file() and text.startswith("<!DOCTYPE html>")
    assert report.sweeps == ["capacity", "fleet", "knobs", "main", "seeds", "traces", "zipped"]
    # no external reference of any kind: every src is an embedded PNG, every href a fragment
    srcs = re.findall(r'\bsrc\s*=\s*"([^"]*)"', text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    hrefs = re.findall(r'\bhref\s*=\s*"([^"]*)"', text)
    assert hrefs and all(h.startswith("#") for h in hrefs)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text)
    assert "url(" not in text and "<script" not in text and "<link" not in text
    # every in-page link lands on an element that exists
    ids = set(re.findall(r'\bid="([^"]+)"', text))
    assert {h[1:] for h in hrefs} <= ids
    assert report.warnings == []


def test_figures_are_exactly_those_the_grids_support(report, expected_figures) -> None:
    text = report.out.read_text(encoding="utf-8")
    got = _img_ids(text)
    assert got == report.figures and len(set(got)) == len(got)
    for name, want in expected_figures.items():
        have = {i.removeprefix(f"sweep-{name}--") for i in got
                if i.startswith(f"sweep-{name}--")}
        assert have == want, name
        for suffix in ALL_SUFFIXES - want:  # data absent: no figure
            assert f'id="sweep-{name}--{suffix}"' not in text
    # each figure: alt text and a caption naming its grid slice
    for fig in re.findall(r"<figure .*?</figure>", text, flags=re.S):
        assert re.search(r'<img id="[^"]+" alt="[^"]+"', fig)
        assert "<figcaption>" in fig
    main_rate = re.search(r'<figure id="fig-sweep-main--tdg-attainment-vs-rate">.*?</figure>',
                          text, flags=re.S).group(0)
    assert "x: rate ∈ {10, 25, 40}" in main_rate
    assert "policy ∈ {slide-bounded, vllm-fcfs}" in main_rate
    assert "seed ∈ {0, 1}" in main_rate and "95% confidence interval" in main_rate
    # zip partners change with the x-axis: they name no series
    zipped = re.search(r'<figure id="fig-sweep-zipped--tdg-attainment-vs-rate">.*?</figure>',
                       text, flags=re.S).group(0)
    assert "x: rate ∈ {10, 30}, with kv_blocks ∈ {5000, 3000} zipped to it." in zipped
    assert 'Series: policy_args ∈ {{}, {&quot;lam&quot;: 0.5}}.' in zipped


def test_sections_show_config_sources_and_ci_tables(report, sweeps_root: Path) -> None:
    text = report.out.read_text(encoding="utf-8")
    for name in report.sweeps:
        assert f'<section id="sweep-{name}">' in text
        assert f'<a href="#sweep-{name}">' in text  # table of contents
    main = text[text.index('<section id="sweep-main">'):]
    main = main[:main.index("</section>")]
    meta = json.loads((sweeps_root / "sim" / "main" / "meta.json").read_text())
    assert meta["traces"][0]["sha256"] in main and "test-fixture" in main
    assert "policy_args" not in main and "vllm-fcfs" in main
    # the table: mean ± half-width over the two seeds, a column group per rate
    assert "rate = 10" in main and "rate = 40" in main and " ± " in main
    # one seed: no interval in the knobs table
    knobs = text[text.index('<section id="sweep-knobs">'):]
    knobs = knobs[:knobs.index("</section>")]
    table = knobs[knobs.index("Main numbers"):knobs.index("</table>", knobs.index("Main numbers"))]
    assert " ± " not in table


def test_mean_and_t_interval() -> None:
    s = stat([1.0, 2.0, 3.0, None, float("nan")])
    assert s.n == 3 and s.mean == pytest.approx(2.0)
    assert s.hw == pytest.approx(4.302652729911275 / 3 ** 0.5)  # t(0.975, 2) * sd / sqrt(n)
    one = stat([0.5])
    assert one.n == 1 and one.hw is None
    assert stat([None, "x"]) is None


def test_one_sweep_dir_and_text_from_the_data_is_escaped(sweeps_root: Path,
                                                          tmp_path: Path) -> None:
    d = tmp_path / "evil"
    shutil.copytree(sweeps_root / "goodput" / "capacity", d)
    spec = yaml.safe_load((d / "sweep.yaml").read_text())
    spec["name"] = '<script>alert("x")</script>'
    (d / "sweep.yaml").write_text(yaml.safe_dump(spec))
    meta = json.loads((d / "meta.json").read_text())
    meta["traces"][0]["source"] = '<img src="https://example.com/x.png">'
    (d / "meta.json").write_text(json.dumps(meta))
    s = build_report(d, tmp_path / "r.html")
    text = (tmp_path / "r.html").read_text()
    assert "<script" not in text and '<img src="https:' not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text
    assert s.sweeps == [spec["name"]] and all(f.startswith("sweep-script-alert-x-script--")
                                              for f in s.figures)


def test_parquet_is_read_when_the_csv_is_absent(sweeps_root: Path, tmp_path: Path) -> None:
    d = tmp_path / "pq"
    shutil.copytree(sweeps_root / "sim" / "main", d)
    (d / "results.csv").unlink()
    sw = load_sweep(d)
    assert sw.source == "results.parquet" and len(sw.rows) == 12
    assert sw.vary == ["policy", "rate"] and sw.seeds == [0.0, 1.0]
    assert sw.classes == ["high", "low"]


def test_malformed_results_name_the_file(sweeps_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    d = tmp_path / "nocsv"
    d.mkdir()
    shutil.copy(sweeps_root / "sim" / "main" / "sweep.yaml", d)
    with pytest.raises(ReportError, match=re.escape(str(d / "results.csv")) + ".*missing"):
        build_report(d, out)

    bad = tmp_path / "badyaml"
    shutil.copytree(sweeps_root / "sim" / "main", bad)
    (bad / "sweep.yaml").write_text("name: [unclosed\nkind: simulate\n")
    with pytest.raises(ReportError, match=re.escape(str(bad / "sweep.yaml")) + ".*YAML"):
        build_report(bad, out)

    (bad / "sweep.yaml").write_text(yaml.safe_dump({"name": "x", "kind": "bogus", "grid": {}}))
    with pytest.raises(ReportError, match="sweep.yaml.*kind"):
        build_report(bad, out)

    (bad / "sweep.yaml").write_text(yaml.safe_dump(
        {"name": "x", "kind": "simulate", "grid": {"policy_args.lam": [1, 2]}}))
    with pytest.raises(ReportError, match=r"results\.csv.*policy_args\.lam"):
        build_report(bad, out)

    (bad / "sweep.yaml").write_text(yaml.safe_dump({"name": "x", "kind": "simulate",
                                                    "grid": {"rate": [10]}}))
    (bad / "meta.json").write_text("{not json")
    with pytest.raises(ReportError, match=re.escape(str(bad / "meta.json"))):
        build_report(bad, out)

    with pytest.raises(ReportError, match="no such directory"):
        build_report(tmp_path / "absent", out)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReportError, match="no sweep results found"):
        build_report(empty, out)
    assert not out.exists()


def test_an_unfinished_sweep_among_several_is_skipped_with_a_warning(
        sweeps_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    shutil.copytree(sweeps_root / "goodput", root / "done")
    (root / "running").mkdir()
    shutil.copy(sweeps_root / "sim" / "main" / "sweep.yaml", root / "running")
    s = build_report(root, tmp_path / "r.html")
    assert s.sweeps == ["capacity"] and s.figures == ["sweep-capacity--goodput-vs-instances"]
    assert any("running" in w and "results.csv" in w for w in s.warnings)
    assert "results.csv" in (tmp_path / "r.html").read_text()  # the warning is in the page


def test_renders_in_headless_chromium(report) -> None:
    exe = chromium_binary()
    sync_api = pytest.importorskip("playwright.sync_api")
    errors: list[str] = []
    requests: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(report.out.resolve().as_uri(), wait_until="load")
            imgs = page.evaluate("""() => Array.from(document.images).map(i => ({
                id: i.id, ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth}))""")
            captions = page.evaluate(
                "() => document.querySelectorAll('figure > figcaption').length")
        finally:
            browser.close()
    assert [i["id"] for i in imgs] == report.figures
    assert all(i["ok"] for i in imgs), [i for i in imgs if not i["ok"]]
    assert captions == len(report.figures) == 26
    assert errors == []
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
