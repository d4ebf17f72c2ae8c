"""``sqn-ray report DIR``: a self-contained HTML report of a study, from its Parquet only.

:func:`build_report` loads ``DIR`` (:func:`analysis.load.load_results`), draws the figures
(:mod:`analysis.figures`), computes the tables (:mod:`analysis.tables`, :mod:`analysis.costs`,
:mod:`analysis.tuning`) and the findings (:mod:`analysis.findings`), and writes into ``OUT`` (default
``DIR/report``):

* ``report.html``: one file, figures embedded as PNG (base64), tables as HTML, no external resource, so it
  opens offline and can be mailed around;
* ``fig1-convergence.png`` / ``.svg`` ... ``fig8-tuning``: the figures beside it;
* ``tables/*.csv``: every table;
* ``findings.md``: the findings as Markdown (each problem's headline and its ranked table).

The page reads the same at 10 or 1,000 configurations: the findings give each problem a one-sentence headline and
a ranked table of its best and worst :data:`~analysis.tables.TOP_K` configurations (the rest collapsed into one
row naming the CSV), and a table longer than :data:`INLINE_ROWS` rows is folded (``<details>``). A figure that
would show nothing worth drawing (a sensitivity "grid" of one cell) is skipped with a one-line reason.

Methods are compared on :meth:`~analysis.load.StudyResults.comparison` only: a tuned study's evaluation stage
(each method's chosen configuration on fresh seeds), any other study's every trial. A tuned study's tuning stage
appears in figure 8 (tuning curves), the table of the configurations chosen, one finding and the list of every
trial; in nothing that ranks the methods. A plain study's figure 8 is skipped with its one-line reason.

A partial study (running, interrupted, some methods only, no eigen.parquet) still gives a full report: a figure
without data says so. A figure or table that fails is reported in the page and in ``Report.errors`` instead of
stopping the others.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import costs as C
from . import figures as F
from . import tables as T
from . import tuning as TU
from .findings import collapsed_row
from .findings import findings as compute_findings
from .load import StudyResults, load_results

__all__ = ["build_report", "Report", "render_table", "render_ranked", "CAPTIONS", "INLINE_ROWS"]

#: tables longer than this are folded into a <details> element (every row stays in the page and in the CSV)
INLINE_ROWS = 30

CAPTIONS = {
    "fig1-convergence": (
        "Training loss (log scale; dotted line: the ln 2 saddle plateau) and training accuracy against iterations, "
        "gradient-equivalents (one gradient or Hessian-vector product = 1, a loss alone = ½) and the optimizer's wall "
        "time. Lines are the median across seeds, bands the 25–75 % range; a run that stopped (solved) holds its "
        "last value. Configs whose curves coincide (Option II across r) draw on top of each other."),
    "fig2-robustness": (
        "Top rows: data profiles, the fraction of a config's seeds that reached the target training accuracy "
        "within a budget of iterations or gradient-equivalents. Bottom: iterations to the target of every solved "
        "run (box = quartiles), with solved/seeds beside each config."),
    "fig3-sensitivity": (
        "Sampled methods over memory m × radius r, one panel per problem, method and Option (I: gradient "
        "differences, II: Hessian-vector products). Cells: colour and first number, the median over seeds of the "
        "iterations to the target (unsolved runs counted as ∞); then the median gradient-equivalents to it and "
        "solved/seeds. Option II is invariant to r (Y = ∇²F·S is linear in S): its columns must be identical; "
        "Option I's need not be. A method and Option run at a single (m, r) has no panel (it is in the table)."),
    "fig4-cost": (
        "Measured cost of one iteration (median over seeds of each run's mean): wall time split into the "
        "gradient at the new point, pair sampling, linear algebra (pair filter, model, direction or TR subproblem) "
        "and line search / TR trial evaluation (external anchors report all their time as line search); "
        "gradient-equivalents split by kind of oracle call. ◆: the poster's cost per iteration divided by nd "
        "(one gradient), evaluated at the problem's n, d, the config's m and the κ measured here; right: the "
        "poster's storage. The poster lists no storage for the sampled methods; it claims they need none beyond "
        "the m pairs, taken here as 2md. The poster counts a loss evaluation as nd and every step as accepted; "
        "the counters count a loss alone as ½ gradient and no new gradient after a rejected step, so measured "
        "values may sit below ◆."),
    "fig5-eigen": (
        "Eigenvalues in ascending order (symmetric log scale) at three iterates of an S-LSR1 run (eigen.parquet, "
        "made by `sqn-ray eigen`): the start, a point on the saddle plateau and the first iterate at the target "
        "accuracy. Black: the true Hessian. Sampled approximations (S-LSR1, S-LBFGS) from m pairs sampled at the "
        "point; path ones (LSR1, LBFGS: last m; SR1, BFGS: all) from the trajectory's preceding steps. BFGS-family "
        "matrices are shown as B = H⁻¹."),
    "fig6-anchors": (
        "Our LBFGS and BFGS beside the external anchors (torch.optim.LBFGS with strong Wolfe, scipy L-BFGS-B, "
        "scipy BFGS) from the same initial points: median across seeds and 25–75 % band. The table below pairs "
        "each anchor with our twin seed by seed."),
    "fig8-tuning": (
        "Tuning stage of a tuned study: every method is given the same budget of B configurations (drawn from its "
        "search space, numbered in the order drawn; a grid of fewer cells: all of them), each run on the same "
        "tuning seeds, never the evaluation seeds. Per problem and method, the line is the best selection score "
        "among the first k configurations "
        "(a configuration's score: the mean over the tuning seeds of its trials' selection metric, as recorded "
        "in the results' sqn_ray.tuning metadata, by default the best loss; a diverged or failed trial scores "
        "the worst value); dots, each configuration's own score; ring, the configuration chosen (best mean rank "
        "over the problems) and rerun on the evaluation seeds, on which alone every other figure and table "
        "compares the methods. A curve still falling at k = B says the method might gain from a larger budget."),
    "fig9-heldout": (
        "Real-data problems (MNIST): training loss (for a mini-batch problem, the loss of the current batch), test "
        "loss, training accuracy over the whole training set and test accuracy against epochs (data passes, as the "
        "oracle counts the points it evaluates) and the optimizer's wall time. Accuracies and "
        "test values are evaluated every accuracy_every-th iterate and carried forward; lines are the median across "
        "seeds, bands the 25–75 % range. Wall time excludes those evaluations, so methods with many cheap "
        "iterations are not charged for being measured more often."),
}

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1500px;padding:0 1.5em;
color:#222;line-height:1.45}
h1{margin-bottom:.2em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
.meta{color:#555;font-size:.9em} .meta code{background:#f4f4f4;padding:0 .3em}
img{max-width:100%;height:auto;border:1px solid #eee} figure{margin:1em 0}
figcaption{color:#444;font-size:.92em;max-width:1100px}
table.data{border-collapse:collapse;font-size:.82em;margin:.8em 0} table.data th,table.data td{border:1px solid #ddd;
padding:.2em .5em;text-align:right} table.data th{background:#f3f3f3} table.data td:first-child,
table.data td:nth-child(2){text-align:left}
.nodata{background:#fff8e1;border-left:4px solid #f0b400;padding:.4em .8em}
.error{background:#fdecea;border-left:4px solid #d93025;padding:.4em .8em;white-space:pre-wrap;\
font-family:monospace;font-size:.85em}
ul.findings li{margin:.3em 0} details{margin:.6em 0} pre{background:#f7f7f7;padding:.6em;overflow:auto;font-size:.85em}
.files{font-size:.85em;color:#555} tr.more td{text-align:center;color:#666;font-style:italic;background:#fafafa}
p.headline{margin:.3em 0 .2em}
"""


@dataclass
class Report:
    """What :func:`build_report` wrote and computed."""

    path: Path
    out_dir: Path
    #: what the methods are compared on: ``results.comparison()`` (a tuned study's evaluation stage)
    study: StudyResults
    figures: dict[str, list[Path]] = field(default_factory=dict)
    no_data: dict[str, str] = field(default_factory=dict)
    #: figures not drawn because they would show nothing (stem -> the one-line reason in the page)
    skipped: dict[str, str] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    findings: list = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    #: every stage as loaded (None: the same as ``study``)
    results: StudyResults | None = None

    def __post_init__(self):
        if self.results is None:
            self.results = self.study


_fmt = T.fmt_cell  # the report's number format (kept under its old name)


def render_table(df: pd.DataFrame, caption: str | None = None, max_rows: int = 400) -> str:
    """A DataFrame as an HTML table, numbers to 4 significant digits, missing values as '–'."""
    if df is None or df.empty:
        return '<p class="nodata">no rows</p>'
    more = ""
    if len(df) > max_rows:
        more = f"<p class='meta'>first {max_rows} of {len(df)} rows (all in the CSV)</p>"
        df = df.head(max_rows)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
                   for row in df.itertuples(index=False, name=None))
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f'<table class="data">{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}'


def _rows_html(df: pd.DataFrame) -> str:
    return "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
                   for row in df.itertuples(index=False, name=None))


def render_ranked(df: pd.DataFrame, table_name: str | None = None, k: int = T.TOP_K) -> str:
    """A ranked table (best first) as HTML: its first and last ``k`` rows, the ones between collapsed into one
    row that says how many there are and which CSV holds them (:func:`analysis.tables.top_bottom`)."""
    if df is None or df.empty:
        return '<p class="nodata">no rows</p>'
    top, hidden, bottom = T.top_bottom(df, k)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = _rows_html(top)
    if hidden:
        body += (f'<tr class="more"><td colspan="{len(df.columns)}">{html.escape(collapsed_row(hidden, table_name))}'
                 f"</td></tr>" + _rows_html(bottom))
    return f'<table class="data"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _findings_html(found) -> str:
    """Findings in order: sentences as a list; a finding with a ranked table as a headline paragraph and the
    collapsed table under it."""
    parts, items = [], []

    def flush():
        if items:
            parts.append("<ul class='findings'>" + "".join(items) + "</ul>")
            items.clear()

    for f in found:
        line = f"<b>{html.escape(f.topic)}</b>: {html.escape(f.text)}"
        if f.table is None or f.table.empty:
            items.append(f"<li>{line}</li>")
            continue
        flush()
        parts.append(f"<p class='headline'>{line}</p>" + render_ranked(f.table, f.table_name))
    flush()
    return "".join(parts)


def findings_markdown(study: StudyResults, found) -> str:
    """The findings as a Markdown document (``findings.md``): each one a paragraph, ranked tables collapsed."""
    return f"# Findings: {study.name}\n\n" + "\n\n".join(f.markdown() for f in found) + "\n"


def _figure_tables(study: StudyResults, results: StudyResults) -> dict[str, list[tuple[str, callable]]]:
    """The tables under each figure: of ``study`` (what the methods are compared on), the tuning ones of
    ``results`` (every stage)."""
    robust_cols = ["problem", "config", "trials", "solved", "solved %", "median iterations to target",
                   "median grad-eq to target", "median wall s to target"]
    return {
        "fig1-convergence": [],
        "fig2-robustness": [
            ("robustness", lambda: T.summary_table(study)[robust_cols]),
            ("plateau", lambda: T.plateau_table(study)),
        ],
        "fig3-sensitivity": [
            ("sensitivity", lambda: T.sensitivity_table(study)),
            ("radius_invariance", lambda: T.radius_invariance(study).drop(columns=["spread"])),
        ],
        "fig4-cost": [
            ("cost_measured", lambda: T.cost_table(study)),
            ("cost_poster", lambda: T.theory_table(study)),
            ("cost_ratios", lambda: C.cost_ratios(study)),
        ],
        "fig5-eigen": [("eigen", lambda: T.eigen_table(study.eigen))],
        "fig6-anchors": [
            ("anchors", lambda: T.anchor_table(study)),
            ("anchor_pairs", lambda: T.anchor_pairs(study)),
        ],
        "fig8-tuning": [
            ("tuning_chosen", lambda: TU.chosen_table(results)),
            ("tuning_curve", lambda: TU.tuning_curve(results)),
        ] if results.tuned else [],
        "fig9-heldout": [("heldout", lambda: T.heldout_table(study))],
    }


TABLE_TITLES = {
    "summary": "Outcomes per problem and config (medians across seeds; to-target medians over solved runs)",
    "robustness": "Solved runs and cost to the target", "plateau": "Runs ending on the ln 2 saddle plateau, unsolved",
    "sensitivity": "Sampled methods over Option × m × r (median over seeds, unsolved = ∞)",
    "radius_invariance": "Runs differing only in r: largest loss difference along the trajectory",
    "cost_measured": "Measured cost per iteration (median over seeds of each run's mean)",
    "cost_poster": "The poster's cost and storage table at this problem's n, d, m and the measured κ",
    "eigen": "Extreme eigenvalues per point and matrix", "anchors": "Our LBFGS / BFGS and the external anchors",
    "anchor_pairs": "Anchor vs our twin, same seeds",
    "cost_ratios": "The cost claim at equal m: sampled / classical (S-LSR1 / LSR1, S-LBFGS / LBFGS), measured per "
                   "iteration and per accepted step, beside the poster's model and a projection (not a "
                   "measurement) with the m pair products ideally parallel",
    "heldout": "Held-out metrics at each run's last evaluated iterate, and its epochs, iterations and wall time at "
               "the end (medians over seeds)",
    "tuning_chosen": "The configuration chosen per method in the tuning stage, and the budget it was chosen with",
    "tuning_curve": "Tuning curves: each configuration's selection score and the best among the first k",
    "ranking": "Every configuration ranked per problem: most seeds at the target, then fewest gradient-equivalents "
               "to it, then lowest final loss",
}


def _stages_text(results: StudyResults) -> str:
    """What the trials are and which of them compare the methods (the page's "stages" line)."""
    stages = results.stages
    if stages == ["main"]:
        return "one (a plain study): methods compared on every trial"
    counts = results.trials["stage"].value_counts()
    text = ", ".join(f"{s} ({int(counts.get(s, 0))} trials)" for s in stages)
    if "evaluation" in stages:
        return f"{text}; methods compared on the evaluation stage only"
    return f"{text}; no evaluation stage yet: methods compared on every trial"


def _meta_html(study: StudyResults) -> str:
    md = study.metadata
    spec = md.get("sqn_ray.study") if isinstance(md.get("sqn_ray.study"), dict) else {}
    versions = md.get("sqn_ray.versions") if isinstance(md.get("sqn_ray.versions"), dict) else {}
    rows = [("study", study.name), ("description", study.description or "–"),
            ("folder", str(study.path)), ("files", ", ".join(study.sources) or "–"),
            ("git revision", str(md.get("sqn_ray.git_revision", "–"))),
            ("versions", ", ".join(f"{k} {v}" for k, v in versions.items()) or "–"),
            ("budget", ", ".join(f"{k} {v}" for k, v in (spec.get("budget") or {}).items() if v is not None) or "–"),
            ("stop rule", ", ".join(f"{k} {v}" for k, v in (spec.get("stop") or {}).items()) or "–"),
            ("stages", _stages_text(study)),
            ("generated", _dt.datetime.now().isoformat(timespec="seconds"))]
    return "<p class='meta'>" + "<br>".join(f"<b>{html.escape(k)}</b>: {html.escape(v)}" for k, v in rows) + "</p>"


@dataclass
class _Drawn:
    """What drawing one figure gave: the PNG bytes and files written, or why there is no figure."""

    stem: str
    png: bytes | None = None
    paths: list[Path] = field(default_factory=list)
    no_data: str | None = None
    skipped: str | None = None
    error: str | None = None


def _draw(results: StudyResults, stem: str, out: Path, formats, dpi: int) -> _Drawn:
    """Draw figure ``stem`` and write its files into ``out`` (the layout is computed once, for the PNG; the SVG
    reuses it): of ``results.comparison()``, or of every stage for the figures of :data:`~analysis.figures.ALL_STAGES`.
    A failure is returned, not raised: one figure must not cost the others."""
    fn = {s: f for s, _, f in F.FIGURES}[stem]
    try:
        fig = fn(results if stem in F.ALL_STAGES else results.comparison())
        if getattr(fig, "skipped", None):
            return _Drawn(stem, skipped=fig.skipped)
        png = F.to_png(fig, dpi=dpi)
        F.freeze_layout(fig)
        paths = []
        for fmt in formats:
            p = out / f"{stem}.{fmt}"
            if fmt == "png":
                p.write_bytes(png)
            else:
                fig.savefig(p, format=fmt)
            paths.append(p)
        return _Drawn(stem, png=png, paths=paths, no_data=getattr(fig, "no_data", None) or None)
    except Exception as e:  # noqa: BLE001
        return _Drawn(stem, error="".join(traceback.format_exception(type(e), e, e.__traceback__))[-3000:])


def _figure_html(rep: Report, title: str, drawn: _Drawn) -> str:
    """A drawn figure's HTML (the embedded PNG and caption, after a no-data note), or the one-line reason it
    was not drawn; records it in ``rep``."""
    stem = drawn.stem
    if drawn.error:
        rep.errors[stem] = drawn.error
        return f'<p class="error">figure failed:\n{html.escape(drawn.error)}</p>'
    if drawn.skipped:
        rep.skipped[stem] = drawn.skipped
        return f'<p class="nodata">Figure not drawn: {html.escape(drawn.skipped)}</p>'
    rep.figures[stem] = drawn.paths
    note = ""
    if drawn.no_data:
        rep.no_data[stem] = drawn.no_data
        note = f'<p class="nodata">No data for this figure: {html.escape(drawn.no_data)}</p>'
    b64 = base64.b64encode(drawn.png).decode()
    files = " · ".join(f'<a href="{p.name}">{p.name}</a>' for p in drawn.paths)
    return (f'{note}<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{b64}">'
            f'<figcaption>{html.escape(CAPTIONS.get(stem, ""))} <span class="files">({files})</span>'
            f'</figcaption></figure>')


def build_report(study_dir, out_dir=None, *, eigen=None, formats=("png", "svg"), dpi: int = 110) -> Report:
    """Write the report of the study in ``study_dir`` (see the module docstring); returns a :class:`Report`."""
    results = load_results(study_dir, eigen=eigen)
    study = results.comparison()  # what every table, figure and finding that compares methods is computed from
    out = Path(out_dir) if out_dir is not None else Path(study_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    (out / "tables").mkdir(exist_ok=True)
    rep = Report(path=out / "report.html", out_dir=out, study=study, results=results)
    with T.cached():  # the page, the findings and the figures share the tables
        parts = _page(rep, lambda stem: _draw(results, stem, out, formats, dpi))
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>sqn-ray report: "
            f"{html.escape(study.name)}</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
    tmp = rep.path.with_name(f".{rep.path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(rep.path)
    return rep


def _page(rep: Report, drawn) -> list[str]:
    """The parts of the page, in order: computes the findings and tables (into ``rep``), writes their files and
    draws the figures (``drawn(stem)``)."""
    study, results, out = rep.study, rep.results, rep.out_dir

    def table(name, fn, fold=True):
        try:
            df = fn()
        except Exception as e:  # noqa: BLE001 - one failing table must not cost the whole report
            rep.errors[f"table {name}"] = "".join(traceback.format_exception_only(type(e), e)).strip()
            return f'<p class="error">table {html.escape(name)} failed: {html.escape(rep.errors["table " + name])}</p>'
        rep.tables[name] = df
        if df is not None and not df.empty:
            df.to_csv(out / "tables" / f"{name}.csv", index=False)
        head = f"<h3>{html.escape(TABLE_TITLES.get(name, name))}</h3>"
        if fold and df is not None and len(df) > INLINE_ROWS:
            return (f"{head}<details><summary>{len(df)} rows (also in tables/{html.escape(name)}.csv)</summary>"
                    f"{render_table(df)}</details>")
        return head + render_table(df)

    rep.findings = compute_findings(results)  # compares methods on results.comparison(), i.e. on `study`
    parts = [f"<h1>sqn-ray report: {html.escape(study.name)}</h1>", _meta_html(results)]
    parts.append("<h2>Findings</h2>" + _findings_html(rep.findings))
    (out / "findings.md").write_text(findings_markdown(study, rep.findings), encoding="utf-8")
    parts.append("<h2>Summary</h2>" + table("summary", lambda: T.summary_table(study))
                 + table("ranking", lambda: T.ranking_table(study)))
    figure_tables = _figure_tables(study, results)
    for i, (stem, title, _) in enumerate(F.FIGURES, 1):
        parts.append(f'<h2 id="{stem}">Figure {i}. {html.escape(title)}</h2>')
        parts.append(_figure_html(rep, title, drawn(stem)))
        for name, fn_t in figure_tables.get(stem, []):
            parts.append(table(name, fn_t))
    parts.append("<h2>Trials</h2><details><summary>every trial (trials.parquet, every stage)</summary>"
                 + table("trials",
                         lambda: results.trials[[c for c in results.trials.columns
                                                 if not c.startswith("_") and c not in ("cell", "variant", "error")]],
                         fold=False)
                 + "</details>")
    yaml_text = study.metadata.get("sqn_ray.study_yaml")
    if isinstance(yaml_text, str) and yaml_text.strip():
        parts.append(f"<details><summary>study file</summary><pre>{html.escape(yaml_text)}</pre></details>")
    if rep.errors:
        parts.insert(2, f'<p class="error">{len(rep.errors)} part(s) of this report failed: '
                        f'{html.escape(", ".join(rep.errors))}</p>')
    return parts
