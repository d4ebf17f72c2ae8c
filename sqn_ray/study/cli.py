"""``sqn-ray study ...``: the study commands, for the package's argparse CLI.

    sqn-ray study run FILE [--out DIR] [--smoke] [--address ADDR] [--resume] [--num-cpus N] [--quiet]
    sqn-ray study validate FILE [--smoke]
    sqn-ray study check-cluster [cluster.yaml]

Exit codes: 0 done, 2 invalid study / refused, 130 interrupted (rerun with --resume to continue).
Nothing here imports Ray until a study actually runs.
"""
from __future__ import annotations

import argparse
import sys

from ..ray_session import add_connect_arguments

__all__ = ["add_study_commands", "run_study_command"]


def add_study_commands(subparsers) -> argparse.ArgumentParser:
    """Add the ``study`` command (with run / validate / check-cluster) to an argparse subparsers object."""
    study = subparsers.add_parser(
        "study", help="run a declarative study (YAML) on Ray Tune; results in Parquet",
        description="Run studies: problems × methods × option grids × seeds as Ray Tune trials, every "
                    "iteration written to DIR/iterations.parquet and every trial to DIR/trials.parquet.")
    sub = study.add_subparsers(dest="study_command", metavar="{run,validate,check-cluster}", required=True)

    run = sub.add_parser("run", help="run (or resume) a study",
                         description="Run a study. Without --address an embedded local Ray is started and "
                                     "stopped; --address auto (or RAY_ADDRESS) joins a running cluster.")
    run.add_argument("file", help="study file, e.g. studies/paper-toy.yaml")
    run.add_argument("--out", metavar="DIR", help="output folder (default: results/<study name>)")
    run.add_argument("--smoke", action="store_true", help="apply the study's smoke: overrides (seconds, for CI)")
    add_connect_arguments(run)
    run.add_argument("--resume", action="store_true",
                     help="continue an interrupted study in DIR (finished trials are not rerun)")
    run.add_argument("--quiet", action="store_true", help="no live progress table")

    val = sub.add_parser("validate", help="check a study file without running it")
    val.add_argument("file")
    val.add_argument("--smoke", action="store_true", help="validate the --smoke version")

    cl = sub.add_parser("check-cluster", help="validate a Ray cluster-launcher file offline")
    cl.add_argument("file", nargs="?", default="cluster.yaml")

    study.set_defaults(func=run_study_command)
    return study


def _describe(study) -> str:
    if study.tuning is not None:
        from .tuning import draw_configurations, stage_trials

        stages = stage_trials(study)
        configs = {m: len(c) for m, c in draw_configurations(study).items()}
        kind = (f"tuned: {stages['tuning']} tuning trials ({study.tuning['trials']} configurations per method on "
                f"{len(study.tuning['seeds'])} tuning seed(s), chosen on {study.tuning['metric']}), then "
                f"{stages['evaluation']} evaluation trials")
    else:
        kind = f"{study.search['algorithm']} search{', ASHA' if study.scheduler else ''}"
    lines = [f"{study.source}: OK: study '{study.name}'{' (smoke)' if study.smoke else ''}, "
             f"{study.num_trials} trials ({kind})"]
    lines.append(f"  problems: {', '.join(study.problems)} · {'evaluation ' if study.tuning else ''}seeds: "
                 f"{len(study.seeds)} · "
                 f"budget: {', '.join(f'{k} {v:g}' for k, v in study.budget.items() if v is not None)}")
    for method in study.methods:
        axes = ", ".join(f"{k}={'|'.join(map(str, v)) if isinstance(v, tuple) else v.to_json()}"
                         for k, v in study.methods[method].items())
        count = (f"{configs[method]} configuration(s)" if study.tuning is not None
                 else f"{len(study.method_cells(method))} cell(s)")
        lines.append(f"  {method}: {count}{': ' + axes if axes else ''}")
    if study.worker_counts != (1,):  # data-parallel trials: the resources are each worker's (Ray Train's workers)
        counts = "|".join(map(str, study.worker_counts))
        lines.append(f"  resources: workers {counts} (data parallel, Ray Train), per worker cpu "
                     f"{study.resources['cpu']:g}, gpu {study.resources['gpu']:g} · metric: {study.metric} "
                     f"({study.mode})")
    else:
        lines.append(f"  resources per trial: cpu {study.resources['cpu']:g}, gpu {study.resources['gpu']:g} · "
                     f"metric: {study.metric} ({study.mode})")
    return "\n".join(lines)


def run_study_command(args) -> int:
    """Execute a parsed ``study`` command; returns the process exit code."""
    from .spec import StudySpecError, load_study_spec

    cmd = args.study_command
    try:
        if cmd == "check-cluster":
            from .cluster import ClusterConfigError, validate_cluster_config

            try:
                cfg = validate_cluster_config(args.file)
            except ClusterConfigError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            types = ", ".join(f"{k} {v['resources']}" for k, v in cfg["available_node_types"].items())
            print(f"{args.file}: OK: cluster '{cfg['cluster_name']}' on {cfg['provider']['type']}: {types}")
            return 0
        study = load_study_spec(args.file, smoke=args.smoke)
        if cmd == "validate":
            print(_describe(study))
            if not args.smoke:  # the --smoke version too: a broken smoke: block should not wait for CI to show
                smoke = load_study_spec(args.file, smoke=True)
                print(f"  --smoke: {smoke.num_trials} trials")
            return 0
        from sqn_ray.problems import ProblemError

        from .runner import StudyError, run_study

        try:
            outcome = run_study(study, args.out, address=args.address, resume=args.resume,
                                progress=not args.quiet, num_cpus=args.num_cpus, num_gpus=args.num_gpus)
        except (StudyError, ProblemError) as e:  # ProblemError: a problem (e.g. a broken plugin) that cannot be built
            print(f"error: {e}", file=sys.stderr)
            return 2
        except OSError as e:  # the disk filled up or went read-only mid-study: every file is whole, none half
            where = f" ({e.filename})" if getattr(e, "filename", None) else ""
            print(f"error: writing the study's files failed{where}: {e.strerror or e}; what was written is whole "
                  f"(atomic files): fix the disk and continue with --resume", file=sys.stderr)
            return 2
    except StudySpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
    counts = " · ".join(f"{k} {v}" for k, v in sorted(outcome.counts.items()))
    print(f"study '{study.name}': {outcome.done}/{outcome.total} trials ({counts}) in {outcome.wall_time:.1f} s")
    print(f"  {outcome.iterations_path}\n  {outcome.trials_path}")
    if outcome.interrupted:
        resume = (f"sqn-ray study run {args.file} --out {outcome.out_dir} --resume" + (" --smoke" if args.smoke else "")
                  + (f" --address {args.address}" if args.address else ""))
        print(f"interrupted: continue with\n  {resume}", file=sys.stderr)
    return outcome.exit_code
