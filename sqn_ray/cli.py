"""The ``sqn-ray`` command line.

    sqn-ray run --problem toy-small --method s-lsr1 --memory 10 --radius 1 --sampling hvp --seed 0 --out run.parquet
    sqn-ray methods            # registered methods and their options with defaults
    sqn-ray problems           # the problem library
    sqn-ray study run FILE     # a declarative study on Ray Tune (see studies/)
    sqn-ray report DIR         # an HTML report from a study's Parquet
    sqn-ray eigen              # eigenvalue spectra along an S-LSR1 trajectory (figure 5's data)
    sqn-ray theory --out F     # Lemma 3 / Theorem 4 checked: fixed-step S-LBFGS on the logistic problem
    sqn-ray data fetch mnist   # MNIST into the local cache (checksummed; studies never download)
    sqn-ray scaling FILE       # throughput and worker-scaling measurements (studies/scaling.yaml)

``run`` prints a live per-iteration table, stops at the problem's target training accuracy (100 % on the toy
networks) or the iteration budget, and writes the history to Parquet (atomically) with the run's settings
in the file's metadata.
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import sys
import time

DTYPES = ("float64", "float32")


def _parse_option(text: str):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--option expects KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw  # a bare word such as exact or gamma
    return key.strip(), value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sqn-ray", description="Sampled quasi-Newton methods and studies of them.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one method on one problem, print a live table, write Parquet")
    run.add_argument("--problem", default="toy-small", help="a problem name (see `sqn-ray problems`)")
    run.add_argument("--method", default="s-lsr1", help="a method name (see `sqn-ray methods`)")
    run.add_argument("--memory", type=int, help="m: curvature pairs")
    run.add_argument("--radius", type=float, help="r: sampling radius (sampled methods)")
    run.add_argument("--sampling", help="hvp (Option II) or grad-diff (Option I)")
    run.add_argument("--seed", type=int, default=0, help="seed of the initial point and the direction stream")
    run.add_argument("--lr", type=float, help="learning rate (gd, adam); α of --option step_rule=fixed (line search)")
    run.add_argument("--tr-solver", dest="tr_solver", help="cg-steihaug or exact (trust-region methods)")
    run.add_argument("--option", action="append", type=_parse_option, default=[], metavar="KEY=VALUE",
                     help="any other method option, e.g. --option b0=gamma (repeatable)")
    run.add_argument("--max-iters", type=int, default=1000, help="iteration budget (default 1000, as in the paper)")
    run.add_argument("--dtype", choices=DTYPES, default="float64")
    run.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    run.add_argument("--target-accuracy", type=float, default=None,
                     help="stop at this training accuracy (default: the problem's target, 1.0 on the toy nets)")
    run.add_argument("--out", help="write the per-iteration history to this Parquet file")
    run.add_argument("--every", type=int, default=1, help="print every N-th iteration")
    run.add_argument("--quiet", action="store_true", help="no live table")

    sub.add_parser("methods", help="list methods and their options")
    sub.add_parser("problems", help="list problems")
    theory = sub.add_parser("theory", help="fixed-step S-LBFGS on the logistic problem: Lemma 3's eigenvalue "
                                           "bounds and Theorem 4's linear rate, measured, to Parquet")
    theory.add_argument("--out", metavar="FILE", help="write one row per iteration (constants in the metadata)")
    theory.add_argument("--lr", type=float, help="the fixed step α (default: one inside Theorem 4's condition "
                                                 "α <= μ1/(μ2² L) with the measured μ1, μ2)")
    theory.add_argument("--memory", type=int, default=10, help="m: pairs sampled per iteration (default 10)")
    theory.add_argument("--iterations", type=int, default=200, help="K: iterations (default 200)")
    theory.add_argument("--seed", type=int, default=0, help="seed of the direction stream (default 0)")
    theory.add_argument("--first-step", dest="first_step", choices=("sampled", "gradient"), default="sampled",
                        help="first iteration: sampled H_0 (default) or H_0 = I")
    from .data.cli import add_data_commands
    from .scaling import add_scaling_command

    add_data_commands(sub)
    add_scaling_command(sub)
    try:
        from .study.cli import add_study_commands
    except ImportError:  # the study layer is optional for the core library
        pass
    else:
        add_study_commands(sub)
    try:
        from analysis.cli import add_eigen_command, add_report_command
    except ImportError:  # the analysis package ships beside sqn_ray; a bare library install lacks it
        pass
    else:
        add_report_command(sub)
        add_eigen_command(sub)
    return parser


def _method_options(args) -> dict:
    options = {k: getattr(args, k) for k in ("memory", "radius", "sampling", "lr", "tr_solver")
               if getattr(args, k) is not None}
    options.update(dict(args.option))
    return options


class LiveTable:
    """A compact per-iteration table: the numbers a researcher watches while a run goes.

    ``COLUMNS``: (record field, header, width, format) per column, fields of the record schema
    (:mod:`sqn_ray.records`) plus the run's ``accuracy``; ``trust_radius`` shows the step size where a method
    has no trust region, ``accepted`` shows y/n."""

    COLUMNS = (("iteration", "iter", 5, "d"), ("loss", "loss", 12, ".6g"), ("accuracy", "acc", 6, ".3f"),
               ("grad_norm", "|g|", 9, ".3g"), ("n_fun", "f", 6, "d"), ("n_grad", "g", 6, "d"),
               ("n_hvp", "hvp", 7, "d"), ("grad_equivalents", "grad-eq", 9, ".1f"),
               ("trust_radius", "alpha/Delta", 11, ".4g"), ("accepted", "acc?", 4, ""),
               ("pairs_kept", "pairs", 5, "d"), ("wall_time", "time", 7, ".2f"))
    HEADER = " ".join(f"{header:>{width}}" for _, header, width, _ in COLUMNS)

    def __init__(self, every: int, out=None):
        self.every, self.out = max(1, every), out or sys.stdout
        print(self.HEADER, file=self.out)

    @staticmethod
    def _value(r: dict, name: str):
        if name == "trust_radius":  # the step's knob: the trust radius, else the step size
            return r["trust_radius"] if not math.isnan(r["trust_radius"]) else r["step_size"]
        if name == "accepted":
            return "y" if r["accepted"] else "n"
        return r[name]

    def row(self, r: dict, force: bool = False):
        if not force and r["iteration"] % self.every:
            return
        print(" ".join(format(self._value(r, name), f">{width}{fmt}") for name, _, width, fmt in self.COLUMNS),
              file=self.out, flush=True)


def cmd_run(args) -> int:
    import torch

    from . import minimize, validate_options
    from .io import write_parquet_atomic
    from .problems import get_problem
    from .stopping import StopRules

    options = _method_options(args)
    options["seed"] = args.seed
    validate_options(args.method, **options)  # bad input fails here, before any work
    problem = get_problem(args.problem, dtype=getattr(torch, args.dtype), device=args.device)
    target = args.target_accuracy if args.target_accuracy is not None else problem.target_accuracy
    rules = StopRules(iterations=args.max_iters, accuracy=target)
    table = None if args.quiet else LiveTable(args.every)
    accuracies = []

    def callback(x, record):
        record["accuracy"] = problem.accuracy(x)
        accuracies.append(record["accuracy"])
        if table:
            table.row(record)
        return rules.check(record, accuracy=record["accuracy"]) is not None

    t0 = time.perf_counter()
    result = minimize(problem.oracle, problem.init(args.seed), method=args.method, **rules.minimize_options(),
                      callback=callback, **options)
    history = result.history
    if len(accuracies) < len(history):  # a diverged final record never reached the callback
        accuracies.append(problem.accuracy(result.x) if torch.isfinite(result.x).all() else math.nan)
    history["accuracy"] = accuracies[:len(history)]
    status = "solved" if result.status == "callback" and target is not None else result.status
    if table and len(history) and history.iteration.iloc[-1] % table.every:
        table.row(history.iloc[-1].to_dict(), force=True)
    print(f"{args.method} on {args.problem}: {status} after {int(history.iteration.iloc[-1])} iterations, "
          f"loss {result.loss:.6g}, accuracy {history.accuracy.iloc[-1]:.3f}, "
          f"{history.grad_equivalents.iloc[-1]:.1f} gradient-equivalents, {time.perf_counter() - t0:.2f} s"
          f" ({result.message})")
    if args.out:
        for key, value in {"problem": args.problem, "method": args.method, "seed": args.seed, "status": status,
                           **{k: v for k, v in result.options.items() if k != "seed"}}.items():
            history[key] = value if not isinstance(value, (list, dict)) else json.dumps(value)
        write_parquet_atomic(history, args.out, metadata={
            "sqn_ray.run": {"problem": args.problem, "method": args.method, "options": result.options,
                            "dtype": args.dtype, "device": args.device, "max_iters": args.max_iters,
                            "target_accuracy": target, "status": status, "message": result.message}})
        print(f"wrote {len(history)} rows to {args.out}")
    return 0 if status != "diverged" else 3


def cmd_methods(args) -> int:
    from . import METHODS, get_method

    for name in METHODS:
        spec = get_method(name)
        print(f"{name:13s} {spec.summary}")
        for opt, o in spec.options.items():
            print(f"    {opt:22s} default {o.default!r:16} {o.doc}")
    return 0


def cmd_problems(args) -> int:
    from .data import DataNotFetchedError
    from .problems import PROBLEMS, PluginError, get_problem, plugin_entry_points, problem_names
    from .problems.plugins import describe, shadowed_plugins

    names, plugins = problem_names(), plugin_entry_points(PROBLEMS)
    width = max(map(len, names)) + 1
    for name in names:
        origin = f" [plugin {describe(plugins[name])}]" if name in plugins else ""
        try:
            p = get_problem(name)
        except DataNotFetchedError:
            dataset = "fashion-mnist" if name.startswith("fashion-") else "mnist"
            print(f"{name:{width}s} (data not fetched: run `sqn-ray data fetch {dataset}`)")
            continue
        except PluginError as e:  # a broken plugin hides no other problem
            print(f"{name:{width}s} (plugin cannot be loaded: {e})")
            continue
        except (ValueError, RuntimeError, OSError) as e:  # one problem that cannot be built hides no other
            print(f"{name:{width}s} (cannot be built here: {e}){origin}")
            continue
        print(f"{name:{width}s} d = {p.dim:<7d} n = {p.n_samples:<6d} {p.description}{origin}")
    for ep in shadowed_plugins(PROBLEMS):
        print(f"(ignored: plugin {describe(ep)} has the name of a built-in problem)")
    return 0


def cmd_theory(args) -> int:
    import torch

    from .problems.logistic import logistic_oracle, solution
    from .theory import theory_study, write_theory

    oracle = logistic_oracle()
    report = theory_study(oracle, torch.zeros(oracle.dim, dtype=oracle.dtype), solution(), lr=args.lr,
                          memory=args.memory, iterations=args.iterations, seed=args.seed, first_step=args.first_step)
    c, gap = report.constants, report.rows["gap"]
    print(f"S-LBFGS (Option II, m = {c['memory']}, first step {c['first_step']}) on logistic (d = {c['d']}), "
          f"fixed α = {c['alpha']:.4g} ({c['alpha_rule']}), {c['iterations']} iterations, seed {c['seed']}: "
          f"{c['status']}")
    print(f"  μ = {c['mu']:.4g} (least eig ∇²F on the iterates, w*, [w0, w*]), L = {c['L']:.4g} (‖X̃‖²/(4n) + λ)")
    print(f"  Lemma 3: eig(H_k) in [{c['mu1_theory']:.4g}, 10^{c['log10_mu2_theory']:.1f}] (theory), measured "
          f"[{c['mu1_measured']:.4g}, {c['mu2_measured']:.4g}]")
    print(f"  Theorem 4: α ≤ μ1/(μ2² L) = 10^{c['log10_alpha_max_theory']:.1f} (theory's μ1, μ2), "
          f"{c['alpha_max_measured']:.4g} (measured): α is {'inside' if c['alpha_in_condition'] else 'outside'}; "
          f"factor 1 − αμμ1 = {c['theorem4_factor']:.10g}")
    print(f"  measured: rate {c['rate']:.8g} per iteration (R² {c['r2']:.6f} over {c['fit_iterations']} gaps above "
          f"round-off {c['roundoff']:.2g}), largest ratio {c['max_ratio']:.8g}; F_K − F* = {gap[-1]:.4g} "
          f"from {gap[0]:.4g}")
    if args.out:
        write_theory(report, args.out)
        print(f"wrote {len(gap)} rows to {args.out}")
    return 0 if c["status"] != "diverged" else 3


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"run": cmd_run, "methods": cmd_methods, "problems": cmd_problems, "theory": cmd_theory}
    # subcommands added by the study, data and analysis layers register their handler on the parser
    handler = handlers.get(args.command) or getattr(args, "handler", None) or getattr(args, "func", None)
    try:
        return handler(args)
    except ValueError as e:  # bad input: one clear line, no traceback
        print(f"sqn-ray: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
