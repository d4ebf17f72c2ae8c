"""Benchmark: ``sqn-ray report`` on a large study, without running one.

    python -m sqn_ray.study run studies/sensitivity.yaml --smoke --out /tmp/sens-smoke --quiet --num-cpus 2
    python bench/bench_report.py --source /tmp/sens-smoke --out /tmp/sens-1200       # synthesize, then time
    python bench/bench_report.py --out /tmp/sens-1200 --no-synthesize --profile 25   # time (and profile) again

:func:`synthesize` tiles the trials of a real small study folder into the full grid of a study file (default
``studies/sensitivity.yaml``: 3 toy problems × S-LSR1/S-LBFGS × m ∈ {2, 5, 10, 20, 36} × r ∈ {1e-4, 1e-2, 1, 100}
× Option I/II × 5 seeds = 1,200 trials, up to 1,000 iterations each). Every synthetic trial copies the rows of a
real trial of the same method and Option (its counters' increments, clocks, telemetry), stretched to its own
length, with a made-up outcome: solved at a drawn iteration, or run to the budget on or off the ln 2 plateau.
Losses are perturbed per trial, but a trial's loss curve does not depend on r under Option II (as the theory
says), while under Option I it does. The files keep the source's columns, Arrow types and ``sqn_ray.*`` schema
metadata; ``sqn_ray.study`` (grid, seeds, budget) and ``sqn_ray.problems`` are updated to the full study's.

Printed: the Parquet read time (pandas, both files), the report's wall and CPU time (``build_report``, PNG + SVG;
on a shared machine the CPU time is the steadier of the two) and, with ``--profile N``, the N most expensive
functions (cumulative time).
"""
from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import json
import math
import os
import pstats
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LN2 = math.log(2.0)
#: problems the toy library knows: n, d and target accuracy, as the platform records them in sqn_ray.problems
TOY_SIZES = {"toy-small": {"d": 36, "n": 100, "target_accuracy": 1.0},
             "toy-medium": {"d": 176, "n": 100, "target_accuracy": 1.0},
             "toy-large": {"d": 908, "n": 100, "target_accuracy": 1.0}}
#: per-trial cumulative counters: the synthetic trial tiles their per-iteration increments
CUMULATIVE = ("n_fun", "n_grad", "n_hvp", "grad_equivalents", "epochs", "wall_time")


def study_grid(study_file: str | Path = ROOT / "studies" / "sensitivity.yaml") -> dict:
    """problems, methods, options (memory, radius, sampling lists), seeds and the iteration budget of a study
    file (its full grid, not its smoke one)."""
    spec = yaml.safe_load(Path(study_file).read_text())
    opts = spec.get("options", {})
    seeds = spec.get("seeds", 1)
    return {"problems": list(spec["problems"]), "methods": list(spec["methods"]),
            "memory": list(opts.get("memory", [10])), "radius": [float(r) for r in opts.get("radius", [1.0])],
            "sampling": list(opts.get("sampling", ["hvp"])),
            "seeds": list(range(seeds)) if isinstance(seeds, int) else list(seeds),
            "iterations": int((spec.get("budget") or {}).get("iterations", 1000))}


def _outcome(rng: np.random.Generator, problem: str, method: str, sampling: str, memory: int, radius: float,
             max_iters: int) -> tuple[int | None, bool]:
    """(iterations to target or None, ends on the plateau): a made-up but structured outcome, so that the
    ranking has a top and a bottom. S-LSR1 solves more often and faster than S-LBFGS; small m and, under
    Option I, large r hurt; larger networks take longer."""
    p = {"s-lsr1": 0.98, "s-lbfgs": 0.8}.get(method, 0.9)
    p *= {"toy-small": 1.0, "toy-medium": 0.95, "toy-large": 0.9}.get(problem, 0.95)
    p *= 0.7 if memory <= 2 else 1.0
    if sampling == "grad-diff":
        p *= 0.4 if radius >= 100 else 0.9 if radius >= 1 else 1.0
    median = {"s-lsr1": 30.0, "s-lbfgs": 120.0}.get(method, 60.0)
    median *= {"toy-small": 1.0, "toy-medium": 1.5, "toy-large": 2.0}.get(problem, 1.5)
    median *= 3.0 if memory <= 2 else 1.5 if memory <= 5 else 1.0 if memory <= 10 else 0.9
    if rng.random() < p:
        return int(np.clip(round(median * math.exp(0.5 * rng.standard_normal())), 5, max_iters)), False
    return None, bool(rng.random() < 0.5)


def synthesize(source: str | Path, out: str | Path, *, grid: dict | None = None, study_file=None,
               seed: int = 0) -> Path:
    """Write ``out/iterations.parquet`` and ``out/trials.parquet``: the trials of the real study in ``source``
    tiled into ``grid`` (default: :func:`study_grid` of ``study_file``, the sensitivity study). ``grid`` keys:
    problems, methods, memory, radius, sampling, seeds, iterations (the budget). Returns ``out``."""
    source, out = Path(source), Path(out)
    g = grid or study_grid(study_file or ROOT / "studies" / "sensitivity.yaml")
    it_src = pq.read_table(source / "iterations.parquet")
    tr_src = pq.read_table(source / "trials.parquet")
    it_df, tr_df = it_src.to_pandas(), tr_src.to_pandas()
    it_df = it_df.sort_values(["trial_id", "iteration"], kind="stable").reset_index(drop=True)
    tr_df = tr_df[tr_df["method"].isin(it_df["method"].unique())]
    if "sampling" in tr_df:
        tr_df = tr_df.assign(sampling=tr_df["sampling"].fillna("hvp"))
    starts = it_df.groupby("trial_id", sort=False).indices  # trial -> row positions (sorted by iteration)
    tr_df = tr_df[tr_df["trial_id"].isin(starts) & tr_df["trial_id"].map(lambda t: len(starts.get(t, [])) >= 2)]
    if tr_df.empty:
        raise ValueError(f"{source}: no trial with at least 2 iteration rows to tile")
    incr = {c: it_df.groupby("trial_id", sort=False)[c].diff().fillna(it_df[c]).to_numpy(dtype=float)
            for c in CUMULATIVE}
    fingerprint = str(tr_df["trial_id"].iloc[0]).split("_")[0]
    max_iters = int(g["iterations"])

    idx_parts, trial_rows, over = [], [], {k: [] for k in ("trial_id", "cell", "variant", "problem", "method",
                                                           "memory", "radius", "sampling", "seed", "iteration",
                                                           "loss", "accuracy", *CUMULATIVE)}
    cells = list(itertools.product(g["problems"], g["methods"], g["memory"], g["radius"], g["sampling"]))
    for k, ((problem, method, memory, radius, sampling), s) in enumerate(itertools.product(cells, g["seeds"])):
        pool = tr_df[(tr_df["method"] == method) & (tr_df.get("sampling", sampling) == sampling)]
        pool = pool if len(pool) else tr_df[tr_df["method"] == method]
        pool = pool if len(pool) else tr_df
        if "memory" in pool:  # the source trial with the nearest m
            near = (pd.to_numeric(pool["memory"], errors="coerce").fillna(memory) - memory).abs().to_numpy()
            src = pool.iloc[int(near.argmin())]
        else:
            src = pool.iloc[k % len(pool)]
        rows = starts[src["trial_id"]]
        # the outcome and loss curve: under Option II the same for every r (the theory's invariance)
        key = f"{problem}/{method}/{sampling}/{memory}/{s}/{seed}" + (f"/{radius}" if sampling == "grad-diff" else "")
        rng = np.random.default_rng(zlib.crc32(key.encode()))
        solved_at, plateau = _outcome(rng, problem, method, sampling, memory, radius, max_iters)
        n = (solved_at if solved_at is not None else max_iters) + 1
        tile = np.concatenate([[0], 1 + (np.arange(n - 1) % (len(rows) - 1))])
        idx = rows[tile]
        idx_parts.append(idx)
        i = np.arange(n, dtype=float)
        l0 = float(it_df["loss"].iloc[rows[0]]) * (1 + 0.05 * rng.standard_normal())
        if solved_at is not None:
            final = 0.02 + 0.05 * rng.random()
            loss = final + (l0 - final) * np.exp(-5.0 * i / max(n - 1, 1))
            acc = np.minimum(0.5 + 0.5 * i / max(n - 1, 1), 0.99)
            acc[-1] = 1.0
        else:
            final = LN2 + 1e-4 * rng.random() if plateau else 0.15 + 0.3 * rng.random()
            loss = final + (l0 - final) * np.exp(-12.0 * i / n)
            acc = np.minimum(0.5 + (0.0 if plateau else 0.45) * i / n, 0.95)
        loss *= 1 + 1e-3 * rng.standard_normal(n) * (i > 0)
        ratio = memory / float(src.get("memory", memory) or memory)
        timing = 1 + 0.1 * np.random.default_rng([k, seed]).random()  # clocks differ between any two runs
        inc = {c: incr[c][idx].copy() for c in CUMULATIVE}
        pair = "n_hvp" if sampling == "hvp" else "n_grad"
        extra = (inc[pair] * (ratio - 1.0)).round()
        inc[pair] = inc[pair] + extra
        inc["grad_equivalents"] = inc["grad_equivalents"] + extra
        inc["epochs"] = inc["epochs"] + extra
        inc["wall_time"] = inc["wall_time"] * timing * (1 + 0.3 * (ratio - 1) * (i > 0))
        trial_id = f"{fingerprint}_{k:05d}"
        options = {"memory": memory, "radius": radius, "sampling": sampling}
        cell = json.dumps({"method": method, "options": options, "problem": problem, "seed": s})
        variant = f"{problem}/{method}/memory={memory},radius={radius:g},sampling={sampling}"
        for name, v in (("trial_id", trial_id), ("cell", cell), ("variant", variant), ("problem", problem),
                        ("method", method), ("memory", memory), ("radius", radius), ("sampling", sampling),
                        ("seed", s)):
            over[name].append(np.full(n, v, dtype=object if isinstance(v, str) else None))
        over["iteration"].append(np.arange(n))
        over["loss"].append(loss)
        over["accuracy"].append(acc)
        cum = {c: np.cumsum(inc[c]) for c in CUMULATIVE}
        for c in CUMULATIVE:
            over[c].append(cum[c])
        row = src.to_dict()
        hit = n - 1 if solved_at is not None else None
        row.update(trial_id=trial_id, cell=cell, variant=variant, problem=problem, method=method, memory=memory,
                   radius=radius, sampling=sampling, seed=s,
                   status="solved" if hit is not None else "budget",
                   stop_reason="accuracy" if hit is not None else "iterations",
                   optimizer_status="callback" if hit is not None else "max_iters",
                   message="reached the target accuracy" if hit is not None else f"reached max_iters={max_iters}",
                   final_loss=float(loss[-1]), best_loss=float(loss.min()), final_accuracy=float(acc[-1]),
                   best_accuracy=float(acc.max()), iterations=n - 1,
                   grad_equivalents=float(cum["grad_equivalents"][-1]),
                   epochs=float(cum["epochs"][-1]), wall_time=float(cum["wall_time"][-1]),
                   trial_time=float(cum["wall_time"][-1]) * 1.2,
                   target_accuracy=TOY_SIZES.get(problem, {}).get("target_accuracy", 1.0),
                   iters_to_target=hit,
                   grad_equivalents_to_target=float(cum["grad_equivalents"][hit]) if hit is not None else None,
                   wall_time_to_target=float(cum["wall_time"][hit]) if hit is not None else None,
                   metric_value=float(loss.min()))
        trial_rows.append(row)

    idx = np.concatenate(idx_parts)
    its = it_df.iloc[idx].reset_index(drop=True)
    for name, parts in over.items():
        its[name] = np.concatenate(parts)
    for c in ("n_fun", "n_grad", "n_hvp"):
        its[c] = its[c].round().astype("int64")
    noise = np.random.default_rng(seed)  # telemetry differs between runs too (and compresses like real data)
    for c in its.columns:
        if c not in over and pd.api.types.is_float_dtype(its[c]):
            its[c] = its[c] * (1 + 1e-3 * noise.standard_normal(len(its)))
    trials = pd.DataFrame(trial_rows)
    if "rank" in trials:
        trials["rank"] = trials["metric_value"].rank(method="first").astype("int64")

    meta = dict(it_src.schema.metadata or {})
    spec = json.loads(meta.get(b"sqn_ray.study", b"{}"))
    spec.update(problems=list(g["problems"]), seeds=list(g["seeds"]), smoke=False,
                methods={m: {"memory": list(g["memory"]), "radius": list(g["radius"]),
                             "sampling": list(g["sampling"])} for m in g["methods"]})
    spec.setdefault("budget", {})["iterations"] = max_iters
    problems = json.loads(meta.get(b"sqn_ray.problems", b"{}"))
    problems.update({p: TOY_SIZES[p] for p in g["problems"] if p in TOY_SIZES and p not in problems})
    meta[b"sqn_ray.study"] = json.dumps(spec).encode()
    meta[b"sqn_ray.problems"] = json.dumps(problems).encode()
    out.mkdir(parents=True, exist_ok=True)
    for df, schema, name in ((its, it_src.schema, "iterations.parquet"), (trials, tr_src.schema, "trials.parquet")):
        df = df[[f.name for f in schema]]
        table = pa.Table.from_pandas(df, schema=schema.remove_metadata(), preserve_index=False, safe=False)
        pq.write_table(table.replace_schema_metadata(meta), out / name, compression="zstd")
    return out


def time_reads(folder: Path) -> float:
    """Seconds for pandas to read both Parquet files."""
    t = time.perf_counter()
    pd.read_parquet(folder / "iterations.parquet")
    pd.read_parquet(folder / "trials.parquet")
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, help="a real (small) study folder to tile, e.g. the sensitivity smoke")
    ap.add_argument("--out", type=Path, default=Path("/tmp/sens-1200"), help="the synthetic study folder")
    ap.add_argument("--study", type=Path, default=ROOT / "studies" / "sensitivity.yaml", help="grid to tile into")
    ap.add_argument("--no-synthesize", action="store_true", help="reuse --out as it is")
    ap.add_argument("--report", type=Path, help="report folder (default OUT/report)")
    ap.add_argument("--format", default="png,svg", help="figure formats (default png,svg)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="print the N most expensive functions")
    args = ap.parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    if not args.no_synthesize:
        if args.source is None:
            ap.error("--source is required unless --no-synthesize")
        t = time.perf_counter()
        synthesize(args.source, args.out, study_file=args.study)
        print(f"synthesized {args.out} in {time.perf_counter() - t:.1f} s")
    tr = pd.read_parquet(args.out / "trials.parquet", columns=["trial_id"])
    size = (args.out / "iterations.parquet").stat().st_size / 2**20
    rows = pq.ParquetFile(args.out / "iterations.parquet").metadata.num_rows
    print(f"{len(tr)} trials, {rows} iteration rows, iterations.parquet {size:.1f} MiB")
    print(f"Parquet read (pandas, both files): {time_reads(args.out):.2f} s")

    from analysis.report import build_report

    prof = cProfile.Profile() if args.profile else None
    t, cpu = time.perf_counter(), time.process_time()
    if prof:
        prof.enable()
    rep = build_report(args.out, args.report, formats=tuple(args.format.split(",")))
    if prof:
        prof.disable()
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    print(f"report: {wall:.1f} s wall, {cpu:.1f} s CPU ({rep.path}; {len(rep.errors)} failed part(s): "
          f"{', '.join(rep.errors) or '-'})")
    if prof:
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(args.profile)
        print(s.getvalue())
    return 1 if rep.errors else 0


if __name__ == "__main__":
    sys.exit(main())
