"""The report's figures, one function per figure, each ``f(study) -> matplotlib.figure.Figure``.

1. :func:`convergence`  loss and accuracy against iterations, gradient-equivalents and wall time, per network
2. :func:`robustness`   fraction of seeds reaching the target against budget; iterations to target
3. :func:`sensitivity`  iterations / gradient-equivalents to target over m × r, by Option I/II and method
4. :func:`cost`         measured per-iteration cost (time by phase, gradient-equivalents by kind) beside the
   poster's cost and storage table
5. :func:`eigen_spectra` spectra of the true Hessian and of the QN approximations at three trajectory points
6. :func:`anchors`      our LBFGS / BFGS beside torch.optim.LBFGS and scipy on the same seeds
7. :func:`performance_profiles` Dolan–Moré and Moré–Wild profiles over (problem, seed) instances
8. :func:`tuning_curves` a tuned study's tuning stage: best selection score after k configurations, per method

Every figure but the last compares methods on what it is given: the report gives them
:meth:`~analysis.load.StudyResults.comparison` (a tuned study's evaluation stage). Figure 8 reads the tuning stage
of the results it is given (:data:`ALL_STAGES`).

Curves are the median across seeds with the interquartile range (25–75 %) as a band: each trial is resampled
onto a common grid of the x-axis, holding its last value once it has stopped (a solved run stays solved).
Figures are built on :class:`matplotlib.figure.Figure` directly (no pyplot state, any backend; files are
rendered by Agg). A figure without data says so in its own panel instead of raising; ``fig.no_data`` then
holds the reason. A figure that would show nothing worth a figure (a sensitivity "grid" of a single m × r cell)
is a small placeholder whose ``fig.skipped`` holds the one-line reason; the report then draws no figure and
prints the reason. Titles are wrapped to the width they have (measured with the font's metrics), so no title
runs past the figure's edge however long the problem and config names are.
"""
from __future__ import annotations

import colorsys
import io
import itertools
import math
from contextlib import contextmanager

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import LinearSegmentedColormap, to_rgb
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.text import Text
from matplotlib.textpath import TextToPath
from matplotlib.ticker import FuncFormatter, NullLocator

from . import tables as T
from .load import ANCHORS, LN2, SAMPLED, TUNING, StudyResults, _method_rank, family

__all__ = ["convergence", "robustness", "sensitivity", "cost", "eigen_spectra", "anchors", "performance_profiles",
           "tuning_curves", "heldout", "FIGURES", "ALL_STAGES", "palette", "resample", "save", "to_png", "wrap_text",
           "freeze_layout"]

X_AXES = {"iteration": "iterations", "grad_equivalents": "gradient-equivalents (≈ epochs)",
          "wall_time": "wall time (s, optimizer only)"}
Y_AXES = {"loss": "training loss", "accuracy_filled": "training accuracy"}
MATRIX_LABELS = {"hessian": "true Hessian", "s-lsr1": "S-LSR1 (sampled)", "lsr1": "LSR1 (path)",
                 "sr1": "SR1 (path)", "s-lbfgs": "S-LBFGS (sampled)", "lbfgs": "LBFGS (path)", "bfgs": "BFGS (path)"}
POINT_LABELS = {"start": "start", "plateau": "plateau / saddle", "solution": "near the solution"}
FAMILY_DASHES = {"sampled QN": "", "classical QN": (5, 2), "first order": (1, 2), "external anchor": (4, 1, 1, 1),
                 "other": (2, 2)}


# ------------------------------------------------------------------------------------------- helpers
#: seaborn 0.13's "whitegrid" style and "notebook" context at font_scale 0.85, written out: importing seaborn
#: costs ~2.5 s (it imports scipy.stats), a tenth of a large study's report; these figures need only its look
_SEABORN_WHITEGRID = {
    "figure.facecolor": "white", "axes.labelcolor": ".15", "xtick.direction": "out", "ytick.direction": "out",
    "xtick.color": ".15", "ytick.color": ".15", "axes.axisbelow": True, "grid.linestyle": "-", "text.color": ".15",
    "font.family": ["sans-serif"],
    "font.sans-serif": ["Arial", "DejaVu Sans", "Liberation Sans", "Bitstream Vera Sans", "sans-serif"],
    "lines.solid_capstyle": "round", "patch.edgecolor": "w", "patch.force_edgecolor": True, "xtick.top": False,
    "ytick.right": False, "axes.grid": True, "axes.facecolor": "white", "axes.edgecolor": ".8", "grid.color": ".8",
    "axes.spines.left": True, "axes.spines.bottom": True, "axes.spines.right": True, "axes.spines.top": True,
    "xtick.bottom": False, "ytick.left": False,
    "axes.linewidth": 1.25, "grid.linewidth": 1, "lines.linewidth": 1.5, "lines.markersize": 6, "patch.linewidth": 1,
    "xtick.major.width": 1.25, "ytick.major.width": 1.25, "xtick.minor.width": 1, "ytick.minor.width": 1,
    "xtick.major.size": 6, "ytick.major.size": 6, "xtick.minor.size": 4, "ytick.minor.size": 4,
    "font.size": 10.2, "axes.labelsize": 10.2, "axes.titlesize": 10.2, "xtick.labelsize": 9.35,
    "ytick.labelsize": 9.35, "legend.fontsize": 9.35, "legend.title_fontsize": 10.2,
}


@contextmanager
def _style():
    rc = {**_SEABORN_WHITEGRID, "figure.dpi": 100, "savefig.dpi": 110, "axes.titleweight": "bold",
          # titles at a fixed height above their axes (no axis draws labels on top): matplotlib's automatic
          # placement re-measures every tick label at each draw, a third of the drawing time of a big figure
          "axes.titley": 1.0}
    with matplotlib.rc_context(rc):
        yield


def _blend(colors, n: int) -> list[tuple]:
    """``n`` colours evenly along the gradient through ``colors``."""
    cmap = LinearSegmentedColormap.from_list("blend", [to_rgb(c) for c in colors])
    return [tuple(cmap(x)[:3]) for x in np.linspace(0, 1, n)]


def _with_lightness(color, lightness: float) -> tuple:
    h, _, s = colorsys.rgb_to_hls(*to_rgb(color))
    return colorsys.hls_to_rgb(h, lightness, s)


def _hues(n: int) -> list[tuple]:
    """``n`` evenly spaced hues of equal lightness and saturation."""
    return [colorsys.hls_to_rgb(i / n, 0.6, 0.65) for i in range(n)]


def _qualitative(name: str, n: int) -> list[tuple]:
    """The first ``n`` colours of one of matplotlib's qualitative colour maps (Set2, Pastel1, ...)."""
    return list(matplotlib.colormaps[name].colors[:n])


#: one hue per method, kept across every figure and study (variants of a method get shades of it)
METHOD_COLORS = {"s-lsr1": "#d62728", "s-lbfgs": "#ff7f0e", "lsr1": "#1f77b4", "lbfgs": "#17becf",
                 "sr1": "#2ca02c", "bfgs": "#bcbd22", "gd": "#7f7f7f", "adam": "#8c564b", "torch-lbfgs": "#9467bd",
                 "scipy-lbfgsb": "#e377c2", "scipy-bfgs": "#393b79"}
MAX_CONFIGS = 12


def _method_of(config: str) -> str:
    return config.split(" [", 1)[0]


def palette(configs: list[str]) -> dict[str, tuple]:
    """One colour per config, stable across figures: the method's hue, in shades when it has several configs."""
    out, groups = {}, {}
    for c in configs:
        groups.setdefault(_method_of(c), []).append(c)
    extra = iter(_hues(max(1, sum(m not in METHOD_COLORS for m in groups))))
    for method, cs in groups.items():
        base = METHOD_COLORS.get(method) or next(extra)
        if len(cs) == 1:
            out[cs[0]] = to_rgb(base)
        else:  # from a light to a dark shade of the method's hue, through the hue itself
            light = _blend([_with_lightness(base, 0.95), base], 4)[1]
            dark = _blend([_with_lightness(base, 0.15), base], 4)[1]
            out.update(zip(cs, _blend([light, base, dark], len(cs))))
    return out


def _select_configs(study: StudyResults, limit: int | None = None) -> tuple[list[str], str]:
    """All configs, or, when there are more than ``limit`` (a sensitivity grid), the best config of each
    method: most seeds at the target, then fewest gradient-equivalents to it, then lowest final loss."""
    configs = study.configs
    if len(configs) <= (MAX_CONFIGS if limit is None else limit):
        return configs, ""
    s = T.summary_table(study)
    agg = s.groupby("config").agg(solved=("solved %", "mean"), ge=("median grad-eq to target", "median"),
                                  loss=("median final loss", "median")).reset_index()
    agg["method"] = agg["config"].map(_method_of)
    agg = agg.assign(ge=agg["ge"].fillna(np.inf), loss=agg["loss"].fillna(np.inf))
    best = agg.sort_values(["solved", "ge", "loss"], ascending=[False, True, True]).groupby("method").head(1)
    chosen = [c for c in configs if c in set(best["config"])]
    return chosen, (f"showing the best config of each method ({len(chosen)} of {len(configs)} configs; all are in "
                    "the tables)")


def _focus(study: StudyResults) -> tuple[StudyResults, list[str], str]:
    """The study restricted to :func:`_select_configs` (a view), its configs and the note saying so."""
    configs, note = _select_configs(study)
    if not note:
        return study, configs, ""
    return study.of(configs, column="config"), configs, note


_TEXT_PATH = TextToPath()


def _width_pt(text: str, prop: FontProperties) -> float:
    """Width in points of one line of ``text`` in the font ``prop`` (the font's own metrics; no renderer)."""
    return float(_TEXT_PATH.get_text_width_height_descent(text, prop, ismath=False)[0])


def wrap_text(text: str, width_pt: float, prop: FontProperties) -> str:
    """``text`` with line breaks between words so that every line is at most ``width_pt`` points wide in
    ``prop`` (a single word wider than that keeps its own line); existing line breaks are kept."""
    lines = []
    for para in text.split("\n"):
        if _width_pt(para, prop) <= width_pt:  # most titles fit as they are: one measurement
            lines.append(para)
            continue
        line = ""
        for word in para.split(" "):
            candidate = f"{line} {word}" if line else word
            if line and _width_pt(candidate, prop) > width_pt:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return "\n".join(lines)


def _fit(text: Text | None, width_pt: float) -> None:
    if text is not None and text.get_text():
        text.set_text(wrap_text(text.get_text(), width_pt, text.get_fontproperties()))


def _fit_titles(fig: Figure) -> None:
    """Wrap the figure's titles to the room they have: the suptitle and super-labels to the figure's width,
    each axes title to its axes' width (constrained layout then makes room for the extra lines)."""
    width = fig.get_figwidth() * 72.0
    for t in (getattr(fig, "_suptitle", None), getattr(fig, "_supxlabel", None)):
        _fit(t, 0.94 * width)
    for ax in fig.axes:
        if not ax.get_visible() or ax.get_label() == "<colorbar>":
            continue
        room = max(ax.get_position().width * width, 72.0)
        for t in (ax.title, ax._left_title, ax._right_title):
            _fit(t, room)


def _no_data(title: str, reason: str, prefix: str = "no data: ") -> Figure:
    with _style():
        fig = Figure(figsize=(7, 1.6))
        ax = fig.subplots()
        ax.set_axis_off()
        for y, text, kw in ((0.66, title, {"fontsize": 12, "fontweight": "bold"}),
                            (0.24, f"{prefix}{reason}", {"fontsize": 10, "color": "0.35"})):
            t = ax.text(0.5, y, text, ha="center", va="center", transform=ax.transAxes, **kw)
            _fit(t, 0.94 * 7 * 72)
    fig.no_data = reason
    fig.skipped = None
    return fig


def _skipped(title: str, reason: str) -> Figure:
    """A placeholder for a figure that would show nothing worth a figure: ``fig.skipped`` is the reason (the
    report then draws no figure and prints the reason in one line; a notebook still gets a figure that says so)."""
    fig = _no_data(title, reason, prefix="not drawn: ")
    fig.no_data, fig.skipped = None, reason
    return fig


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _decade_label(v: float, _pos=None) -> str:
    """A log axis' tick label as plain text: 1, 10, 10², 10⁻³ (matplotlib's default is mathtext, which costs a
    parse and a layout per label per draw); other values as %g."""
    if not v > 0:
        return ""
    k = math.log10(v)
    if abs(k - round(k)) > 1e-9:
        return f"{v:g}"
    return {0: "1", 1: "10"}.get(round(k), "10" + str(round(k)).translate(_SUPERSCRIPT))


def _lean_ticks(fig: Figure) -> None:
    """Log axes spanning more than a decade: no minor ticks (matplotlib labels none of them there and the
    whitegrid style draws neither their marks nor their grid lines, but each costs a tick object at every draw:
    up to 40 per axis, most of a big figure's drawing time) and decade labels as plain text."""
    for ax in fig.axes:
        for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            lo, hi = sorted((abs(lo), abs(hi)))
            if axis.get_scale() == "log" and lo > 0 and hi / lo > 10:
                axis.set_minor_locator(NullLocator())
                axis.set_major_formatter(FuncFormatter(_decade_label))


def _done(fig: Figure, title: str, note: str = "") -> Figure:
    fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=13, fontweight="bold")
    _fit_titles(fig)
    _lean_ticks(fig)
    fig.no_data = None
    fig.skipped = None
    return fig


def _legend(fig: Figure, axes, title: str | None = None, ncol: int = 1) -> None:
    """One legend for the figure, from the first axes that has labelled artists; per-axes legends removed."""
    handles, labels = [], []
    for ax in np.ravel(axes):
        h, lab = ax.get_legend_handles_labels()
        for hh, ll in zip(h, lab):
            if ll not in labels and not ll.startswith("_"):
                handles.append(hh)
                labels.append(ll)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    if handles:
        fig.legend(handles, labels, loc="outside right center", frameon=False, title=title, ncol=ncol)


def resample(iterations: pd.DataFrame, x: str, y: str, *, points: int = 160, log: bool = False) -> pd.DataFrame:
    """Each trial's ``y`` on a common grid of ``x`` (per problem): the value of the last iterate with
    x ≤ grid point; after a trial's end its last value is held. Returns long rows (problem, config,
    family, trial_id, x, y)."""
    out = []
    for problem, sub in iterations.groupby("problem", sort=False):
        xs_all = pd.to_numeric(sub[x], errors="coerce")
        xs_all = xs_all[np.isfinite(xs_all)]
        if xs_all.empty:
            continue
        hi = float(xs_all.max())
        if x == "iteration":
            grid = np.unique(np.linspace(0, hi, min(points, int(hi) + 1)).round())
        elif log:
            lo = float(xs_all[xs_all > 0].min()) if (xs_all > 0).any() else 1e-9
            grid = np.geomspace(lo, max(hi, lo * 1.0001), points)
        else:
            grid = np.linspace(0, hi, points)
        for tid, t in sub.groupby("trial_id", sort=False):
            xs = pd.to_numeric(t[x], errors="coerce").to_numpy(dtype=float)
            ys = pd.to_numeric(t[y], errors="coerce").to_numpy(dtype=float)
            ok = np.isfinite(xs)
            xs, ys = xs[ok], ys[ok]
            if xs.size == 0:
                continue
            order = np.argsort(xs, kind="stable")
            xs, ys = np.maximum.accumulate(xs[order]), ys[order]
            idx = np.searchsorted(xs, grid, side="right") - 1
            vals = np.where(idx >= 0, ys[np.clip(idx, 0, None)], np.nan)
            out.append(pd.DataFrame({"problem": problem, "config": t["config"].iloc[0],
                                     "family": t["family"].iloc[0], "trial_id": tid, "x": grid, "y": vals}))
    if not out:
        return pd.DataFrame(columns=["problem", "config", "family", "trial_id", "x", "y"])
    return pd.concat(out, ignore_index=True)


def _median_band(ax, df: pd.DataFrame, colors: dict, hue_order: list[str]) -> None:
    """Median across seeds (step line, dash style by family) with the 25–75 % band, one line per config.
    The quantiles are computed per grid point with one vectorized groupby (a per-point estimator is too slow
    for hundreds of trials)."""
    df = df.dropna(subset=["y"])
    if df.empty:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", color="0.4", transform=ax.transAxes)
        return
    q = df.groupby(["config", "x"], sort=True)["y"].quantile([0.25, 0.5, 0.75]).unstack()
    fam = df.drop_duplicates("config").set_index("config")["family"]
    for config in [c for c in hue_order if c in fam.index]:
        c = q.loc[config]
        x = c.index.to_numpy(dtype=float)
        dashes = FAMILY_DASHES.get(fam[config], "")
        (line,) = ax.plot(x, c[0.5], drawstyle="steps-post", color=colors.get(config), lw=1.6, label=config)
        if dashes:
            line.set_dashes(dashes)
        ax.fill_between(x, c[0.25], c[0.75], step="post", color=colors.get(config), alpha=0.18, lw=0)


def to_png(fig: Figure, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)  # constrained layout keeps legends inside: no 'tight' re-draw
    return buf.getvalue()


def freeze_layout(fig: Figure) -> None:
    """Keep the positions the layout engine found at the last draw and stop re-running it: a second file of
    the same figure (SVG after PNG) then costs one draw, not a layout and a draw. The positions are fractions
    of the figure, so they hold at any dpi."""
    fig.set_layout_engine("none")


def save(fig: Figure, path_stem, formats=("png", "svg")) -> list:
    """Write ``fig`` as ``<path_stem>.png`` / ``.svg``; returns the paths. The layout is computed once, at the
    first file (:func:`freeze_layout`)."""
    from pathlib import Path

    paths = []
    for fmt in formats:
        p = Path(f"{path_stem}.{fmt}")
        fig.savefig(p, format=fmt)
        freeze_layout(fig)
        paths.append(p)
    return paths


# ------------------------------------------------------------------------------------- 1 convergence
def convergence(study: StudyResults) -> Figure:
    """Figure 1: training loss and accuracy against iterations, gradient-equivalents and wall time, every
    config, one pair of rows per network; median across seeds and interquartile band."""
    title = "1. Convergence: median across seeds, band = 25–75 %"
    if study.iterations.empty or study.iterations["loss"].notna().sum() == 0:
        return _no_data(title, "the study has no iteration rows yet")
    study, configs, note = _focus(study)
    it = study.iterations
    problems = [p for p in study.problems if p in set(it["problem"])]
    colors = palette(configs)
    with _style():
        fig = Figure(figsize=(15, 3.1 * 2 * len(problems)), layout="constrained")
        axes = np.atleast_2d(fig.subplots(2 * len(problems), 3, squeeze=False))
        for j, x in enumerate(X_AXES):
            log_x = x != "iteration"
            for k, y in enumerate(Y_AXES):
                long = resample(it, x, y, log=log_x)
                for i, problem in enumerate(problems):
                    ax = axes[2 * i + k, j]
                    _median_band(ax, long[long["problem"] == problem], colors, configs)
                    ax.set_xlabel(X_AXES[x])
                    ax.set_ylabel(f"{Y_AXES[y]}\n{problem}" if j == 0 else Y_AXES[y])
                    if log_x:
                        ax.set_xscale("log")
                    if y == "loss":
                        ax.set_yscale("log")
                        ax.axhline(LN2, color="0.5", lw=0.8, ls=":")
                    else:
                        ax.set_ylim(-0.02, 1.02)
                    ax.set_title(f"{problem}: {Y_AXES[y]} vs {X_AXES[x].split(' (')[0]}", fontsize=9)
        _legend(fig, axes, "config (line style: family)")
    return _done(fig, title, note)


# -------------------------------------------------------------------------------------- 2 robustness
def robustness(study: StudyResults) -> Figure:
    """Figure 2: data profiles (fraction of seeds that reached the target accuracy within a budget of
    iterations or gradient-equivalents) and the iterations to target of each solved run."""
    title = "2. Robustness: fraction of seeds reaching the target accuracy, and iterations to target"
    if study.trials.empty:
        return _no_data(title, "the study has no trials")
    study, configs, note = _focus(study)
    t = study.trials
    problems = study.problems
    colors = palette(configs)
    with _style():
        # at least 11 in wide: the legend and the config labels of the bottom row need ~5 in beside the axes
        fig = Figure(figsize=(max(5.2 * len(problems) + 1, 11.0), 3.3 * 3), layout="constrained")
        axes = np.atleast_2d(fig.subplots(3, len(problems), squeeze=False))
        for r, axis in enumerate(("iteration", "grad_equivalents")):
            prof = T.profile(study, axis)
            budget_max = (float(pd.to_numeric(study.iterations.get(axis), errors="coerce").max())
                          if len(study.iterations) else 1.0)
            for c, problem in enumerate(problems):
                ax = axes[r, c]
                p = prof[prof["problem"] == problem]
                for config in configs:
                    q = p[p["config"] == config]
                    if q.empty:
                        continue
                    xs = np.append(q["budget"].to_numpy(), budget_max if np.isfinite(budget_max) else q["budget"].max())
                    ys = np.append(q["fraction"].to_numpy(), q["fraction"].iloc[-1])
                    if axis == "grad_equivalents":  # log budget axis: the profile starts at one gradient
                        xs = np.maximum(xs, 1.0)
                    ax.step(xs, ys, where="post", color=colors[config], label=config, lw=1.6)
                if axis == "grad_equivalents":
                    ax.set_xscale("log")
                ax.set_ylim(-0.03, 1.03)
                ax.set_xlabel(f"budget: {X_AXES[axis]}")
                ax.set_ylabel("fraction of seeds at target")
                ax.set_title(f"{problem}: data profile vs {X_AXES[axis].split(' (')[0]}", fontsize=9)
        for c, problem in enumerate(problems):
            ax = axes[2, c]
            g = t[t["problem"] == problem]
            solved = g[g["solved"]].assign(iters=lambda d: pd.to_numeric(d["iters_to_target"], errors="coerce"))
            order = [cf for cf in configs if cf in set(g["config"])]
            if solved.empty:
                ax.text(0.5, 0.5, "no run reached the target accuracy", ha="center", va="center", color="0.4",
                        transform=ax.transAxes)
                ax.set_yticks(range(len(order)), order)
            else:
                _box_strip(ax, [solved.loc[solved["config"] == cf, "iters"].dropna().to_numpy() for cf in order],
                           [colors[cf] for cf in order])
            counts = g.groupby("config")["solved"].agg(["sum", "size"])
            ax.set_yticks(range(len(order)), [f"{cf}  ({int(counts.loc[cf, 'sum'])}/{int(counts.loc[cf, 'size'])})"
                                             for cf in order])
            ax.set_xlabel("iterations to target (solved runs)")
            ax.set_ylabel("")
            ax.set_title(f"{problem}: iterations to target (solved/seeds)", fontsize=9)
        _legend(fig, axes[:2], "config")
    return _done(fig, title, note)


# ------------------------------------------------------------------------------------- 3 sensitivity
def _option(sampling: str) -> str:
    return "Option I (grad-diff)" if sampling == "grad-diff" else "Option II (hvp)"


def _cell_text(values) -> str:
    return ", ".join(f"{int(v)}" if float(v).is_integer() else f"{v:g}" for v in values)


def _compact(v: float) -> str:
    """A count in at most 4 characters of digits: 950, 1220, 12.3k, 1.2M."""
    return f"{v:.0f}" if v < 1e4 else f"{v / 1e3:.3g}k" if v < 1e6 else f"{v / 1e6:.3g}M"


def _grid(values: pd.Series, where: tuple, shape: tuple) -> np.ndarray:
    """``values`` placed at (row, column) positions ``where`` of a ``shape`` array, NaN elsewhere (no run)."""
    out = np.full(shape, np.nan)
    out[where] = values.to_numpy(dtype=float)
    return out


def _box_strip(ax, values: list[np.ndarray], colors: list) -> None:
    """One horizontal box (quartiles, whiskers to 1.5 IQR, no fliers) per row, the first row at the top, with
    every value as a jittered dot on it (the jitter is seeded: the same data draw the same figure)."""
    rng = np.random.default_rng(0)
    rows = [(i, v, c) for i, (v, c) in enumerate(zip(values, colors)) if len(v)]
    if rows:
        box = ax.boxplot([v for _, v, _ in rows], positions=[i for i, _, _ in rows], orientation="horizontal",
                         widths=0.5, showfliers=False, patch_artist=True, manage_ticks=False)
        for patch, (_, _, c) in zip(box["boxes"], rows):
            patch.set(facecolor=(*to_rgb(c), 0.35), edgecolor="0.3")
        for part in ("medians", "whiskers", "caps"):
            for line in box[part]:
                line.set(color="0.3", lw=1.2)
        for i, v, c in rows:
            ax.scatter(v, i + rng.uniform(-0.15, 0.15, len(v)), s=25, color=c, zorder=3, lw=0)
    ax.set_ylim(len(values) - 0.5, -0.5)


def sensitivity(study: StudyResults) -> Figure:
    """Figure 3: heatmaps over memory m × radius r of the median (over seeds) iterations to target, one panel per
    problem, sampled method and Option I/II, one colour scale per problem; each cell also gives the median
    gradient-equivalents to target and solved/seeds. Unsolved runs count as ∞ (a cell shows '∞' when at least
    half its seeds failed). Under Option II the columns (r) are identical.

    A (method, Option) whose runs cover a single m × r cell gets no panel (a 1 × 1 heatmap maps nothing; its
    numbers are in the sensitivity table); when no (method, Option) has more than one cell the figure is
    skipped (``fig.skipped`` says why)."""
    title = "3. Sensitivity of the sampled methods to m and r, Option I (grad-diff) vs II (hvp)"
    tab = T.sensitivity_table(study)
    if tab.empty:
        return _no_data(title, f"the study has no runs of the sampled methods ({', '.join(SAMPLED)})")
    any_solved = bool(tab["solved"].sum())
    metric = "iterations to target" if any_solved else "best loss"
    # columns: (method, Option) with a grid of more than one cell; rows: problems, one colour scale per row
    columns, single = [], []
    for m, smp in ((m, smp) for m in SAMPLED for smp in ("grad-diff", "hvp")):
        sel = tab[(tab["method"] == m) & (tab["sampling"] == smp)]
        if sel.empty:
            continue
        ms, rs = sorted(sel["memory"].unique()), sorted(sel["radius"].unique())
        (columns if len(ms) * len(rs) > 1 else single).append((m, smp, ms, rs))
    lone = "; ".join(f"{m} · {_option(smp)}: m = {_cell_text(ms)}, r = {_cell_text(rs)}" for m, smp, ms, rs in single)
    if not columns:
        return _skipped(title, f"every sampled run is in a single m × r cell ({lone}), so there is no grid to map; "
                               "its numbers are in the sensitivity table")
    problems = [p for p in study.problems if p in set(tab["problem"])]
    ncol, nrow = len(columns), len(problems)
    nm = max(len(ms) for _, _, ms, _ in columns)
    nr = max(len(rs) for _, _, _, rs in columns)
    cmap = matplotlib.colormaps["viridis_r"].with_extremes(bad="0.85")  # grey: ∞ (unsolved) or no run
    with _style():
        fig = Figure(figsize=(ncol * max(3.2, 0.85 * nr + 1.4) + 1.2, nrow * max(2.5, 0.6 * nm + 1.3)),
                     layout="constrained")
        axes = np.atleast_2d(fig.subplots(nrow, ncol, squeeze=False))
        for row, problem in enumerate(problems):
            row_vals = tab.loc[tab["problem"] == problem, metric].replace(np.inf, np.nan).dropna()
            vmin, vmax = (float(row_vals.min()), float(row_vals.max())) if len(row_vals) else (0.0, 1.0)
            vmax = vmax if vmax > vmin else vmin + 1
            image = None
            for c, (method, sampling, ms, rs) in enumerate(columns):
                ax = axes[row, c]
                sel = tab[(tab["problem"] == problem) & (tab["method"] == method) & (tab["sampling"] == sampling)]
                if sel.empty:
                    ax.set_axis_off()
                    ax.text(0.5, 0.5, f"{problem} · {method} · {_option(sampling)}:\nno runs", ha="center",
                            va="center", color="0.4", transform=ax.transAxes, fontsize=9)
                    continue
                where = (np.searchsorted(ms, sel["memory"].to_numpy()), np.searchsorted(rs, sel["radius"].to_numpy()))
                vals, ge, solved, n = (_grid(sel[col], where, (len(ms), len(rs)))
                                       for col in (metric, "grad-eq to target", "solved", "trials"))
                image = ax.imshow(np.ma.masked_invalid(vals), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto",
                                  interpolation="nearest")
                for a, b in itertools.product(range(len(ms)), range(len(rs))):  # every cell, ∞ / missing too
                    v = vals[a, b]
                    if np.isnan(v):
                        txt = "–"
                    elif not any_solved:
                        txt = f"{v:.3g}"
                    else:
                        cost = f"{_compact(ge[a, b])} ge · " if np.isfinite(ge[a, b]) else ""
                        txt = ("∞" if v == np.inf else f"{v:.0f} it") + f"\n{cost}{solved[a, b]:.0f}/{n[a, b]:.0f}"
                    dark = np.isfinite(v) and (v - vmin) / (vmax - vmin) > 0.55  # viridis_r: dark at the top
                    ax.text(b, a, txt, ha="center", va="center", fontsize=7.5, color="white" if dark else "black",
                            in_layout=False)  # inside its cell: nothing for the layout to make room for
                ax.grid(False)
                ax.set_xticks(range(len(rs)), [f"{r:g}" for r in rs])
                ax.set_yticks(range(len(ms)), [_cell_text([m]) for m in ms])
                ax.set_xlabel("radius r")
                ax.set_ylabel("memory m")
                ax.set_title(f"{problem} · {method} · {_option(sampling)}", fontsize=9)
            if image is not None and len(row_vals):
                fig.colorbar(image, ax=list(axes[row, :]), label=f"{metric} (median)", shrink=0.9, pad=0.01)
        note = ("median over seeds; unsolved runs count as ∞ (grey); cell text: iterations (it), "
                "gradient-equivalents (ge) to target, solved/seeds"
                if any_solved else "no run reached the target: colour and text = median best loss")
        if single:
            note += f"; a single cell, in the table only: {lone}"
        fig.supxlabel(note, fontsize=9, color="0.3")
    return _done(fig, title)


# -------------------------------------------------------------------------------------------- 4 cost
def cost(study: StudyResults) -> Figure:
    """Figure 4: per-iteration cost of each config (median over seeds of the per-trial mean): wall time split
    into gradient, pair sampling, linear algebra and line search / TR trial; gradient-equivalents split by
    kind of oracle call, with the poster's theoretical cost / nd (◆) at the problem's n, d, m and the
    measured κ; and the poster's storage."""
    title = "4. Cost per iteration: measured vs the poster's cost and storage table"
    study, configs, note = _focus(study)
    ct = T.cost_table(study)
    if ct.empty:
        return _no_data(title, "no iterations beyond the initial point")
    theory = T.theory_table(study)
    problems = [p for p in study.problems if p in set(ct["problem"])]
    with _style():
        fig = Figure(figsize=(17, max(3.0, 0.42 * len(configs) + 1.6) * len(problems)), layout="constrained")
        axes = np.atleast_2d(fig.subplots(len(problems), 3, squeeze=False))
        phase_colors = _qualitative("Set2", len(T.PHASES))
        kind_colors = _qualitative("Pastel1", len(T.KINDS))
        for i, problem in enumerate(problems):
            c = ct[ct["problem"] == problem].set_index("config")
            c = c.loc[[cf for cf in configs if cf in c.index][::-1]]
            ax = axes[i, 0]
            phases = c[[f"ms {v}" for v in T.PHASES.values()]]
            phases.columns = list(T.PHASES.values())
            phases.plot.barh(stacked=True, ax=ax, color=phase_colors, width=0.7, legend=False)
            ax.set_xlabel("wall time per iteration (ms)")
            ax.set_ylabel("")
            ax.set_title(f"{problem}: measured time by phase", fontsize=9)
            ax = axes[i, 1]
            kinds = c[[f"grad-eq {v}" for v in T.KINDS.values()]].clip(lower=0)
            kinds.columns = list(T.KINDS.values())
            kinds.plot.barh(stacked=True, ax=ax, color=kind_colors, width=0.7, legend=False,
                            edgecolor="0.5", linewidth=0.4)
            th = theory[theory["problem"] == problem].set_index("config") if len(theory) else pd.DataFrame()
            ypos = {cf: k for k, cf in enumerate(c.index)}
            if len(th):
                pts = [(th.loc[cf, "cost / nd"], ypos[cf]) for cf in th.index if cf in ypos]
                if pts:
                    ax.scatter(*zip(*pts), marker="D", color="black", zorder=5, s=28,
                               label="poster: cost / nd (measured κ)")
            ax.set_xlabel("gradient-equivalents per iteration (1 ≈ nd flops)")
            ax.set_ylabel("")
            ax.set_yticks(range(len(c.index)), [])
            ax.set_title(f"{problem}: measured gradient-equivalents vs poster cost", fontsize=9)
            ax = axes[i, 2]
            st = th.reindex([cf for cf in c.index if cf in th.index]) if len(th) else th
            if len(st) and not pd.to_numeric(st["storage (floats)"], errors="coerce").notna().any():
                ax.set_axis_off()  # results written before n and d were recorded with them
                ax.text(0.5, 0.5, "the results do not record this problem's n and d", ha="center", va="center",
                        color="0.4", transform=ax.transAxes)
            elif len(st):
                ax.barh([ypos[cf] for cf in st.index], st["storage (floats)"], color="0.6", height=0.6)
                for cf, row in st.iterrows():
                    ax.text(row["storage (floats)"], ypos[cf],
                            f"  {row['storage formula']} = {row['storage (floats)']:,.0f}",
                            va="center", fontsize=8)
                ax.set_xscale("log")
                ax.set_xlim(1, float(st["storage (floats)"].max()) * 300)  # bars from 1 float; room for the labels
                ax.set_ylim(-0.6, len(c.index) - 0.4)
                ax.set_yticks(range(len(c.index)), [])
                ax.set_xlabel("storage (floats), poster's table")
            else:
                ax.set_axis_off()
                ax.text(0.5, 0.5, "no method of the poster's table in the study", ha="center", va="center",
                        color="0.4", transform=ax.transAxes)
            size = study.problem_size(problem)
            ax.set_title(f"{problem}: storage (n={size['n']}, d={size['d']})", fontsize=9)
        h1, l1 = axes[0, 0].get_legend_handles_labels()
        h2, l2 = axes[0, 1].get_legend_handles_labels()
        fig.legend(h1 + h2, l1 + l2, loc="outside right center", frameon=False, title="time phase / grad-eq kind")
    return _done(fig, title, note)


# ------------------------------------------------------------------------------------------- 5 eigen
def eigen_spectra(study_or_eigen) -> Figure:
    """Figure 5: eigenvalues (ascending, by rank) at the start, a plateau / saddle point and near the solution
    of an S-LSR1 trajectory: the true Hessian against the SR1 family (top) and the BFGS family (bottom).
    Sampled approximations from pairs sampled at the point, path ones from the trajectory's preceding steps."""
    title = "5. Eigenvalue spectra along an S-LSR1 trajectory: true Hessian vs quasi-Newton approximations"
    eig = study_or_eigen.eigen if isinstance(study_or_eigen, StudyResults) else study_or_eigen
    if eig is None or len(eig) == 0:
        return _no_data(title,
                        "no eigen.parquet beside the study (make it with `sqn-ray eigen --out DIR/eigen.parquet`)")
    points = [p for p in T.POINTS if p in set(eig["point"])] + sorted(set(eig["point"]) - set(T.POINTS))
    families = [("SR1 family", ["s-lsr1", "lsr1", "sr1"]), ("BFGS family", ["s-lbfgs", "lbfgs", "bfgs"])]
    colors = {"hessian": "black", "s-lsr1": "#d62728", "lsr1": "#1f77b4", "sr1": "#2ca02c",
              "s-lbfgs": "#d62728", "lbfgs": "#1f77b4", "bfgs": "#2ca02c"}
    markers = {"hessian": "", "s-lsr1": "o", "lsr1": "s", "sr1": "^", "s-lbfgs": "o", "lbfgs": "s", "bfgs": "^"}
    lin = max(1e-4, float(np.nanpercentile(np.abs(eig["eigenvalue"]), 20)) or 1e-4)
    with _style():
        fig = Figure(figsize=(5.0 * len(points) + 1.5, 8), layout="constrained")
        axes = np.atleast_2d(fig.subplots(2, len(points), squeeze=False, sharey="row"))
        for c, point in enumerate(points):
            pe = eig[eig["point"] == point]
            it = int(pe["iteration"].iloc[0])
            extra = ""
            if "loss" in pe and pe["loss"].notna().any():
                extra = f", loss {pe['loss'].iloc[0]:.4g}"
            if "accuracy" in pe and pe["accuracy"].notna().any():
                extra += f", acc {pe['accuracy'].iloc[0]:.2f}"
            for r, (fam, mats) in enumerate(families):
                ax = axes[r, c]
                for mat in ["hessian"] + mats:
                    q = pe[pe["matrix"] == mat].sort_values("rank")
                    if q.empty:
                        continue
                    ax.plot(q["rank"], q["eigenvalue"], color=colors.get(mat, "0.5"), marker=markers.get(mat, "."),
                            ms=4 if mat != "hessian" else 0, lw=2.2 if mat == "hessian" else 0.9,
                            alpha=1.0 if mat == "hessian" else 0.85, label=MATRIX_LABELS.get(mat, mat))
                ax.axhline(0, color="0.5", lw=0.7)
                ax.set_yscale("symlog", linthresh=lin)
                ax.set_xlabel("eigenvalue rank (ascending)")
                ax.set_ylabel(f"eigenvalue ({fam})" if c == 0 else "")
                ax.set_title(f"{POINT_LABELS.get(point, point)}: iteration {it}{extra}\n{fam}", fontsize=9)
        for r in range(2):
            h, lab = axes[r, 0].get_legend_handles_labels()
            axes[r, -1].legend(h, lab, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    return _done(fig, title)


# ----------------------------------------------------------------------------------------- 6 anchors
def anchors(study: StudyResults) -> Figure:
    """Figure 6: our LBFGS and BFGS beside the external anchors (torch.optim.LBFGS, scipy L-BFGS-B, scipy BFGS)
    on the same seeds: loss against iterations and gradient-equivalents, accuracy against iterations."""
    title = "6. External anchors: our LBFGS / BFGS beside torch.optim.LBFGS and scipy"
    present = [m for m in ANCHORS if m in study.methods]
    if not present:
        return _no_data(title, f"the study runs none of {', '.join(ANCHORS)}")
    sub = study.of(["lbfgs", "bfgs", *ANCHORS])
    configs = [c for c in study.configs if c in set(sub.trials["config"])]
    colors = palette(configs)
    problems = [p for p in study.problems if p in set(sub.trials["problem"])]
    panels = [("iteration", "loss"), ("grad_equivalents", "loss"), ("iteration", "accuracy_filled")]
    with _style():
        fig = Figure(figsize=(15, 3.4 * len(problems)), layout="constrained")
        axes = np.atleast_2d(fig.subplots(len(problems), len(panels), squeeze=False))
        for j, (x, y) in enumerate(panels):
            long = resample(sub.iterations, x, y, log=x != "iteration")
            for i, problem in enumerate(problems):
                ax = axes[i, j]
                _median_band(ax, long[long["problem"] == problem], colors, configs)
                ax.set_xlabel(X_AXES[x])
                ax.set_ylabel(f"{Y_AXES[y]}\n{problem}" if j == 0 else Y_AXES[y])
                if x != "iteration":
                    ax.set_xscale("log")
                if y == "loss":
                    ax.set_yscale("log")
                    ax.axhline(LN2, color="0.5", lw=0.8, ls=":")
                ax.set_title(f"{problem}: {Y_AXES[y]} vs {X_AXES[x].split(' (')[0]}", fontsize=9)
        _legend(fig, axes, "config (line style: family)")
    return _done(fig, title)


def performance_profiles(study: StudyResults) -> Figure:
    """Figure 7: Dolan–Moré performance profiles (iterations, gradient-equivalents, wall time to the target) and
    the Moré–Wild data profile over (problem, seed) instances (:mod:`analysis.profiles`)."""
    from . import profiles

    title = "7. Performance and data profiles over (problem, seed) instances, to the study's target"
    if len(study.configs) < 2:
        return _skipped(title, "a single configuration: there is nothing to compare")
    if not study.trials["solved"].astype(bool).any():
        return _skipped(title, "no trial reached its target: every profile is zero")
    with _style():
        fig = profiles.plot(study)
    return _done(fig, title)


# ------------------------------------------------------------------------------------------ 8 tuning
def tuning_curves(results: StudyResults) -> Figure:
    """Figure 8: a tuned study's tuning curves (:func:`analysis.tuning.tuning_curve`), one panel per problem and
    one line per method (per variant, when options are tuned apart: shades of the method's colour): the best
    selection score among the first k configurations, k = 1..B in the order drawn;
    dots, each configuration's own score; a ring, the configuration chosen. Log-scale y for losses. Skipped
    (``fig.skipped``) when the results hold no tuning stage."""
    from . import tuning

    title = "8. Tuning curves: best selection score after k configurations, the same budget for every method"
    if not results.tuned:
        return _skipped(title, "not a tuned study (no tuning stage): every method is compared on all its trials")
    curve = tuning.tuning_curve(results)
    if curve.empty:
        return _no_data(title, "the tuning stage has no trial with a configuration number yet")
    metric, mode, _ = tuning.selection(results)
    seeds = (results.tuning or {}).get("seeds") or sorted(results.stage(TUNING).trials["seed"].dropna().unique())
    finite = curve["score"].replace([np.inf, -np.inf], np.nan).dropna()
    log_y = metric in tuning.LOG_METRICS and len(finite) and (finite > 0).all()
    problems = [p for p in results.problems if p in set(curve["problem"])]
    order = curve.drop_duplicates("variant").sort_values(
        "method", key=lambda c: c.map(lambda m: _method_rank(str(m))), kind="stable")
    lines = list(order["variant"])
    colors = palette(lines)  # the method's hue; variants of one method in shades of it
    method_of = dict(zip(order["variant"], order["method"]))
    ncol = min(3, len(problems))
    nrow = math.ceil(len(problems) / ncol)
    budget = int(curve["k"].max())
    with _style():
        fig = Figure(figsize=(4.6 * ncol + 2.2, 3.4 * nrow), layout="constrained")
        axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False).ravel())
        for ax, problem in zip(axes, problems):
            c = curve[curve["problem"] == problem]
            for label in lines:
                g = c[c["variant"] == label].replace([np.inf, -np.inf], np.nan)
                if g.empty:
                    continue
                color = colors[label]
                ks, best = g["k"].to_numpy(dtype=float), g["best so far"].to_numpy(dtype=float)
                (line,) = ax.plot(np.append(ks, ks[-1] + 0.5), np.append(best, best[-1]), drawstyle="steps-post",
                                  color=color, lw=1.8, label=label)  # the last value held to the panel's edge
                dashes = FAMILY_DASHES.get(family(method_of[label]), "")
                if dashes:
                    line.set_dashes(dashes)
                ax.scatter(g["k"], g["score"], color=color, s=14, alpha=0.45, lw=0)
                pick = g[g["chosen"]]
                ax.scatter(pick["k"], pick["score"], facecolors="none", edgecolors=[color], s=90, lw=1.6, zorder=5)
            if log_y:
                ax.set_yscale("log")
            ax.set_xlim(0.5, budget + 0.5)
            ax.set_xticks(sorted(set(np.linspace(1, budget, min(budget, 8)).round().astype(int))))
            ax.set_xlabel("configurations tried, k (in the order drawn)")
            ax.set_ylabel(f"best score so far\n(mean {metric} over {len(seeds)} tuning seeds)")
            ax.set_title(f"{problem}: tuning curve ({'lower' if mode == 'min' else 'higher'} is better)", fontsize=9)
        for ax in axes[len(problems):]:
            ax.set_visible(False)
        ax0 = axes[0]
        ax0.scatter([], [], color="0.4", s=14, alpha=0.45, lw=0, label="one configuration's score")
        ax0.scatter([], [], facecolors="none", edgecolors=["0.2"], s=90, lw=1.6, label="chosen configuration")
        _legend(fig, axes[:len(problems)], "method (line: best so far)")
    return _done(fig, title)


#: figures that read every stage of the results they are given (the others compare methods on
#: :meth:`~analysis.load.StudyResults.comparison`, which the report gives them)
# ----------------------------------------------------------------------------------------- 9 held-out
#: the held-out metrics real-data problems record (every ``accuracy_every``-th iterate), beside the training ones
HELDOUT = {"loss": "training loss", "test_loss": "test loss", "accuracy_filled": "training accuracy",
           "test_accuracy": "test accuracy"}
HELDOUT_X = {"epochs": "epochs (data passes)", "wall_time": "wall time (s, optimizer only)"}


def heldout(study: StudyResults) -> Figure:
    """Figure 9: training and test loss and accuracy against epochs and wall time (the poster's MNIST panels),
    one block of four rows per problem; median across seeds and interquartile band. Test values exist only where
    they were evaluated; each is carried forward to the next evaluation, as the training accuracy is. Not drawn
    (``fig.skipped``) for a study without test metrics (the toy problems)."""
    title = "9. Training and test loss and accuracy against epochs and wall time: median across seeds"
    it = study.iterations
    if "test_accuracy" not in it.columns or pd.to_numeric(it["test_accuracy"], errors="coerce").notna().sum() == 0:
        return _skipped(title, "no problem of the study records test metrics (the real-data problems, MNIST, do)")
    study, configs, note = _focus(study)
    it = study.iterations.copy()
    for col in ("test_loss", "test_accuracy"):
        if col in it.columns:
            it[col] = pd.to_numeric(it[col], errors="coerce").groupby(it["trial_id"]).ffill()
    problems = [p for p in study.problems if p in set(it["problem"]) and it.loc[it["problem"] == p, "test_accuracy"]
                .notna().any()]
    metrics = [y for y in HELDOUT if y in it.columns]
    colors = palette(configs)
    with _style():
        fig = Figure(figsize=(12, 2.7 * len(metrics) * len(problems)), layout="constrained")
        axes = np.atleast_2d(fig.subplots(len(metrics) * len(problems), len(HELDOUT_X), squeeze=False))
        for j, x in enumerate(HELDOUT_X):
            for k, y in enumerate(metrics):
                long = resample(it, x, y, log=True)
                for i, problem in enumerate(problems):
                    ax = axes[len(metrics) * i + k, j]
                    _median_band(ax, long[long["problem"] == problem], colors, configs)
                    ax.set_xscale("log")
                    ax.set_xlabel(HELDOUT_X[x])
                    ax.set_ylabel(f"{HELDOUT[y]}\n{problem}" if j == 0 else HELDOUT[y])
                    if "loss" in y:
                        ax.set_yscale("log")
                    else:
                        ax.set_ylim(-0.02, 1.02)
                    ax.set_title(f"{problem}: {HELDOUT[y]} vs {HELDOUT_X[x].split(' (')[0]}", fontsize=9)
        _legend(fig, axes, "config (line style: family)")
    return _done(fig, title, note)


ALL_STAGES = frozenset({"fig8-tuning"})

#: (file stem, title, function) of every report figure, in report order
FIGURES = (
    ("fig1-convergence", "Convergence", convergence),
    ("fig2-robustness", "Robustness", robustness),
    ("fig3-sensitivity", "Sensitivity to m, r and Option I/II", sensitivity),
    ("fig4-cost", "Cost per iteration", cost),
    ("fig5-eigen", "Eigenvalue spectra", eigen_spectra),
    ("fig6-anchors", "External anchors", anchors),
    ("fig7-profiles", "Performance profiles", performance_profiles),
    ("fig8-tuning", "Tuning curves", tuning_curves),
    ("fig9-heldout", "Training and test metrics over epochs and wall time", heldout),
)
