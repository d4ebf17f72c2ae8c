"""``sqn-ray report`` and ``sqn-ray eigen``, for the package's argparse CLI.

    sqn-ray report DIR [-o OUT] [--eigen FILE] [--format png,svg]
    sqn-ray eigen [--problem toy-small] [--seed 0] [--memory 10] [--radius 1] [--sampling hvp] [--out FILE]

Handlers return the exit code (0 done, 1 report written but a part of it failed); bad input raises
ValueError with the reason (the main CLI prints it as one line and exits 2).
"""
from __future__ import annotations

import argparse
import sys

__all__ = ["add_report_command", "add_eigen_command", "report_command", "eigen_command"]

FORMATS = ("png", "svg")


def _formats(text: str) -> tuple[str, ...]:
    fmts = tuple(f.strip().lower() for f in text.split(",") if f.strip())
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise argparse.ArgumentTypeError(f"--format takes a comma list of {', '.join(FORMATS)}, got {text!r}")
    return fmts


def add_report_command(subparsers) -> argparse.ArgumentParser:
    """Add ``report`` to an argparse subparsers object."""
    p = subparsers.add_parser(
        "report", help="an HTML report (figures, tables, findings) from a study's Parquet",
        description="Turn a study's DIR/iterations.parquet and DIR/trials.parquet (and DIR/eigen.parquet when "
                    "present) into OUT/report.html, self-contained, plus the figures as PNG/SVG and the tables as "
                    "CSV. Works on partial studies.")
    p.add_argument("dir", metavar="DIR", help="a study's output folder (`sqn-ray study run FILE --out DIR`)")
    p.add_argument("-o", "--out", metavar="OUT", help="output folder (default: DIR/report)")
    p.add_argument("--eigen", metavar="FILE", help="eigen.parquet for figure 5 (default: DIR/eigen.parquet if present)")
    p.add_argument("--format", type=_formats, default=FORMATS, metavar="png,svg",
                   help="figure files written beside the report (default: png,svg; the HTML embeds PNG)")
    p.set_defaults(handler=report_command)
    return p


def report_command(args) -> int:
    import os

    os.environ.setdefault("MPLBACKEND", "Agg")
    import textwrap

    from .findings import markdown_table
    from .report import build_report

    rep = build_report(args.dir, args.out, eigen=args.eigen, formats=args.format)
    study = rep.results
    print(f"study '{study.name}': {len(study.trials)} trials, {len(study.configs)} configs, "
          f"{len(study.iterations)} iteration rows" + (f", {study.running} still running" if study.running else ""))
    if study.tuned:  # which trials the comparisons use
        print(f"  stages: {', '.join(study.stages)}; methods compared on {len(rep.study.trials)} trials "
              f"({', '.join(sorted(set(rep.study.trials['stage'])))})")
    for f in rep.findings:
        print(f"  - {f}")
        if f.table is not None and len(f.table):  # the ranked rows, best and worst only (findings.md has them too)
            print(textwrap.indent(markdown_table(f.table, table_name=f.table_name), "      "))
    for stem, reason in rep.no_data.items():
        print(f"  {stem}: no data ({reason})")
    for stem, reason in rep.skipped.items():
        print(f"  {stem}: not drawn ({reason})")
    for part, err in rep.errors.items():
        print(f"sqn-ray report: {part} failed: {err.strip().splitlines()[-1]}", file=sys.stderr)
    print(f"wrote {rep.path} (+ {sum(len(v) for v in rep.figures.values())} figure files, findings.md, tables/*.csv)")
    return 1 if rep.errors else 0


def add_eigen_command(subparsers) -> argparse.ArgumentParser:
    """Add ``eigen`` (the data of figure 5) to an argparse subparsers object."""
    from .eigen import DEFAULT_OUT

    p = subparsers.add_parser(
        "eigen", help="eigenvalue spectra along an S-LSR1 trajectory (figure 5's data) to Parquet",
        description="Run S-LSR1 from a seed, pick the start, a saddle-plateau iterate and the first iterate at the "
                    "target accuracy, and write the eigenvalues of the true Hessian and of the SR1, LSR1, S-LSR1, "
                    "BFGS, LBFGS and S-LBFGS approximations there (columns point, iteration, matrix, rank, "
                    "eigenvalue). Put the file in a study folder (DIR/eigen.parquet) and `sqn-ray report DIR` "
                    "draws it.")
    p.add_argument("--problem", default="toy-small", help="problem (default toy-small, the poster's small network)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial point and of S-LSR1's directions")
    p.add_argument("--memory", type=int, default=10, help="m: pairs (default 10, the reference code's)")
    p.add_argument("--radius", type=float, default=1.0, help="r: sampling radius (default 1)")
    p.add_argument("--sampling", default="hvp", help="hvp (Option II, default) or grad-diff (Option I)")
    p.add_argument("--max-iters", type=int, default=1000, help="iteration budget of the trajectory")
    p.add_argument("--pair-seed", type=int, help="seed of the pairs sampled at each point (default: --seed)")
    p.add_argument("--out", "-o", default=str(DEFAULT_OUT), metavar="FILE",
                   help=f"output Parquet (default {DEFAULT_OUT})")
    p.set_defaults(handler=eigen_command)
    return p


def eigen_command(args) -> int:
    from .eigen import write_eigen
    from .tables import eigen_table

    path, df, meta = write_eigen(args.out, problem_name=args.problem, seed=args.seed, memory=args.memory,
                                 radius=args.radius, sampling=args.sampling, max_iters=args.max_iters,
                                 pair_seed=args.pair_seed)
    print(f"S-LSR1 on {args.problem} from seed {args.seed}: {meta['trajectory_iterations']} iterations, final "
          f"accuracy {meta['final_accuracy']:.2f}")
    for point, info in meta["points"].items():
        print(f"  {point:9s} iteration {info['iteration']:4d}  ({info['why']})")
    tab = eigen_table(df)
    for _, r in tab.iterrows():
        print(f"  {r['point']:9s} {r['matrix']:8s} λ_min {r['λ_min']:>11.4g}  λ_max {r['λ_max']:>11.4g}  "
              f"negative {r['negative']:3d}  pairs {r.get('pairs', 0):3d}")
    print(f"wrote {len(df)} rows to {path}")
    return 0
