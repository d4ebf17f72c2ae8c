"""The report at any size: findings bounded in length (a headline per problem, ranked tables collapsed), no 1 × 1
heatmaps, and no title outside its figure. The large study is synthetic: the real test study's trials tiled into
the sensitivity study's grid by bench/bench_report.py (the benchmark's generator, at a small tile size)."""
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from analysis import figures as F
from analysis import tables as T
from analysis.findings import MAX_LISTED, findings, markdown_table
from analysis.load import load_results
from analysis.report import build_report, render_ranked

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

PROBLEMS = ["toy-small", "toy-medium", "toy-large"]
#: the sensitivity study's grid (studies/sensitivity.yaml), one seed, 40 iterations: 240 trials, 80 configs a problem
GRID = {"problems": PROBLEMS, "methods": ["s-lsr1", "s-lbfgs"], "memory": [2, 5, 10, 20, 36],
        "radius": [1e-4, 1e-2, 1.0, 100.0], "sampling": ["grad-diff", "hvp"], "seeds": [0], "iterations": 40}


@pytest.fixture(scope="module")
def large_dir(study_dir, tmp_path_factory):
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_report import synthesize

    return synthesize(study_dir, tmp_path_factory.mktemp("large") / "study", grid=GRID)


@pytest.fixture(scope="module")
def large(large_dir):
    return load_results(large_dir)


@pytest.fixture(scope="module")
def large_report(large_dir, tmp_path_factory):
    return build_report(large_dir, tmp_path_factory.mktemp("large-report"), formats=("png",))


def test_the_synthetic_study_has_the_full_grid_and_the_platforms_metadata(large, study_dir):
    assert len(large.trials) == 240 and set(large.problems) == set(PROBLEMS)
    assert large.trials.groupby("problem")["config"].nunique().eq(80).all()
    spec = large.metadata["sqn_ray.study"]
    assert spec["methods"]["s-lsr1"]["memory"] == GRID["memory"] and spec["seeds"] == [0]
    assert large.problem_size("toy-large")["d"] == 908
    source = load_results(study_dir)
    assert list(large.iterations.columns) == list(source.iterations.columns)


def test_findings_stay_short_at_any_size(large):
    found = findings(large)
    configs = [c for c in large.configs]
    for f in found:  # no finding lists configurations inline beyond a handful
        assert sum(c in f.text for c in configs) <= MAX_LISTED, f
        assert len(f.text) <= 600, f
    assert sum(len(f.text) for f in found) <= 6000
    for problem in PROBLEMS:
        (head,) = [f for f in found if f.topic == problem]
        # one sentence: a full stop only at the end (numbers such as 0.01 keep theirs)
        assert head.text.endswith(".") and not re.search(r"\.\s", head.text[:-1]), head.text
        assert "of 80 configurations" in head.text
        ranked = head.table
        assert len(ranked) == 80 and list(ranked["rank"]) == list(range(1, 81))
        assert ranked["config"].iloc[0] in head.text
        solved = ranked["solved/seeds"].str.split("/").str[0].astype(int)
        assert solved.iloc[0] == solved.max() and solved.is_monotonic_decreasing
        md = head.markdown().splitlines()
        rows = [line for line in md if line.startswith("|")]
        assert len(rows) == 2 + 2 * T.TOP_K + 1  # header, rule, best k, the collapsed row, worst k
        assert "… 70 more configurations (see tables/ranking.csv)" in md[2 + 2 + T.TOP_K]
    # the scientific findings still hold at scale: Option II's curves do not depend on r, Option I's do
    radius = {f.topic: f.text for f in found if f.topic.startswith("Radius")}
    assert "invariant to r up to round-off, as the theory says" in radius["Radius, Option II (hvp)"]
    assert "sensitive to r (finite differences)" in radius["Radius, Option I (grad-diff)"]


def test_the_report_shows_ranked_tables_collapsed_and_long_tables_folded(large_report):
    page = large_report.path.read_text(encoding="utf-8")
    findings_html = page[page.index("<h2>Findings</h2>"):page.index("<h2>Summary</h2>")]
    assert findings_html.count('<tr class="more">') >= len(PROBLEMS)
    assert findings_html.count("… 70 more configurations (see tables/ranking.csv)") == len(PROBLEMS)
    assert findings_html.count("<tr>") <= (len(PROBLEMS) + 1) * (2 * T.TOP_K + 1)  # + the plateau ranking
    ranking = pd.read_csv(large_report.out_dir / "tables" / "ranking.csv")
    assert len(ranking) == 240 and set(ranking.groupby("problem")["rank"].max()) == {80}
    assert "… 70 more configurations" in (large_report.out_dir / "findings.md").read_text(encoding="utf-8")
    # a 240-row table is folded, every row still in the page and the CSV
    assert "<details><summary>240 rows (also in tables/summary.csv)</summary>" in page
    assert large_report.errors == {}


def test_ranked_tables_collapse_only_what_they_hide():
    df = pd.DataFrame({"rank": range(1, 13), "config": [f"c{i}" for i in range(1, 13)]})
    top, hidden, bottom = T.top_bottom(df, 5)
    assert list(top["rank"]) == [1, 2, 3, 4, 5] and hidden == 2 and list(bottom["rank"]) == [8, 9, 10, 11, 12]
    assert T.top_bottom(df.head(11), 5)[1] == 0  # collapsing one row would hide nothing
    md = markdown_table(df, 5, "ranking").splitlines()
    assert md[7] == "| … 2 more configurations (see tables/ranking.csv) |  |" and len(md) == 13
    html = render_ranked(df, "ranking", 5)
    assert html.count("<tr>") == 1 + 10 and '<tr class="more"><td colspan="2">… 2 more configurations' in html
    assert "more configuration" not in render_ranked(df.head(11), "ranking", 5)


# ------------------------------------------------------------------------------------------ figures
def test_a_single_cell_grid_gets_no_heatmap_and_one_line_saying_why(study_dir, tmp_path):
    """S-LSR1 at one (m, r) and S-LBFGS at one: nothing to map, so figure 3 is not drawn and the page says why."""
    d = tmp_path / "one-cell"
    d.mkdir()
    tr = pd.read_parquet(study_dir / "trials.parquet")
    it = pd.read_parquet(study_dir / "iterations.parquet")
    keep = tr.loc[(tr.method != "s-lsr1") | ((tr.radius == 1.0) & (tr.sampling == "hvp")), "trial_id"]
    tr[tr.trial_id.isin(keep)].to_parquet(d / "trials.parquet")
    it[it.trial_id.isin(keep)].to_parquet(d / "iterations.parquet")
    study = load_results(d)
    fig = F.sensitivity(study)
    assert fig.skipped and "single m × r cell" in fig.skipped and not any(ax.images for ax in fig.axes)

    rep = build_report(d, tmp_path / "out", formats=("png", "svg"))
    assert rep.errors == {} and rep.skipped == {"fig3-sensitivity": fig.skipped,
                                                "fig8-tuning": F.tuning_curves(study).skipped,
                                                "fig9-heldout": F.heldout(study).skipped}
    assert "fig3-sensitivity" not in rep.figures and not list((tmp_path / "out").glob("fig3-sensitivity.*"))
    page = rep.path.read_text(encoding="utf-8")
    note, _, _ = re.findall(r'<p class="nodata">Figure not drawn: ([^<]*)</p>', page)  # fig3's, fig8's, fig9's
    assert "\n" not in note and "s-lsr1 · Option II (hvp): m = 6, r = 1" in note
    assert not rep.tables["sensitivity"].empty  # the numbers are still in the table
    assert page.count('src="data:image/png;base64,') == len(F.FIGURES) - 3


def test_a_method_run_at_one_cell_gets_no_panel_of_its_own(study_dir):
    study = load_results(study_dir)  # S-LSR1 over r × Option; S-LBFGS at m = 6 only
    fig = F.sensitivity(study)
    shapes = [ax.images[0].get_array().shape for ax in fig.axes if ax.images]
    assert shapes and all(s != (1, 1) for s in shapes)
    assert not any("s-lbfgs" in ax.get_title() for ax in fig.axes)
    assert "a single cell, in the table only: s-lbfgs · Option II" in fig._supxlabel.get_text()


def _titles(fig):
    """Every title-like text of a figure: suptitle, super-labels, axes titles, legend titles, and the texts of
    axes drawn without axis lines (a no-data figure's title is one)."""
    texts = [getattr(fig, n, None) for n in ("_suptitle", "_supxlabel", "_supylabel")]
    texts += [leg.get_title() for leg in fig.legends]
    for ax in fig.axes:
        texts += [ax.title, ax._left_title, ax._right_title]
        texts += [ax.get_legend().get_title()] if ax.get_legend() else []
        texts += list(ax.texts) if not ax.axison else []
    return [t for t in texts if t is not None and t.get_visible() and t.get_text().strip()]


def _outside(fig, dpi=110) -> list[str]:
    FigureCanvasAgg(fig)
    fig.set_dpi(dpi)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    out = []
    for t in _titles(fig):
        e = t.get_window_extent(renderer)
        if e.x0 < box.x0 - 0.5 or e.x1 > box.x1 + 0.5 or e.y0 < box.y0 - 0.5 or e.y1 > box.y1 + 0.5:
            out.append(f"{t.get_text()!r}: {e} not in {box}")
    return out


@pytest.mark.parametrize("which", ["test study", "one problem, long labels", "large grid"])
def test_every_title_lies_inside_its_figure(which, study_dir, large):
    study = {"test study": lambda: load_results(study_dir),
             # one problem (the narrowest figures) and configs with long labels
             "one problem, long labels": lambda: load_results(study_dir).of(["s-lsr1", "lbfgs"]),
             "large grid": lambda: large}[which]()
    for stem, _, fn in F.FIGURES:
        fig = fn(study)
        assert _outside(fig) == [], stem
    # a figure without data: its title too
    empty = pd.DataFrame(columns=["point", "iteration", "matrix", "rank", "eigenvalue"])
    assert _outside(F.eigen_spectra(empty)) == []


def test_wrapped_text_fits_the_width_it_is_given():
    from matplotlib.font_manager import FontProperties

    prop = FontProperties(size=13, weight="bold")
    text = "3. Sensitivity of the sampled methods to m and r, Option I (grad-diff) vs II (hvp)"
    wrapped = F.wrap_text(text, 200.0, prop)
    assert wrapped.replace("\n", " ") == text and wrapped.count("\n") >= 2
    assert all(F._width_pt(line, prop) <= 200.0 for line in wrapped.splitlines())
    assert F.wrap_text(text, 1e4, prop) == text
    assert np.isclose(F._width_pt("", prop), 0.0)
