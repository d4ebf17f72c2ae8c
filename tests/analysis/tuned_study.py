"""A small tuned study written by hand as the study runner writes one (both stages in one folder), for the
analysis tests: its configurations, scores and costs are chosen so that every number can be computed by hand."""
import json
import math
from pathlib import Path
#: the synthetic tuned study's configurations (the order drawn) and its evaluation seeds
TUNED_CONFIGS = {
    "s-lsr1": [{"memory": 4, "radius": 1.0, "sampling": "hvp"}, {"memory": 8, "radius": 0.01, "sampling": "grad-diff"},
               {"memory": 8, "radius": 1.0, "sampling": "hvp"}],
    "lsr1": [{"memory": 4}, {"memory": 8}, {"memory": 16}],
}
TUNING_SEEDS = [10000, 10001]
EVALUATION_SEEDS = list(range(10))
#: best_loss of each tuning trial: (problem, method, configuration) -> one value per tuning seed (NaN: diverged)
TUNING_LOSSES = {
    ("toy-small", "s-lsr1", 0): [0.5, 0.7], ("toy-small", "s-lsr1", 1): [0.2, 0.4],
    ("toy-small", "s-lsr1", 2): [0.1, 0.3],
    ("toy-small", "lsr1", 0): [0.6, 0.6], ("toy-small", "lsr1", 1): [0.3, 0.5], ("toy-small", "lsr1", 2): [1e-9, 1e-9],
    ("toy-medium", "s-lsr1", 0): [0.4, 0.4], ("toy-medium", "s-lsr1", 1): [0.5, 0.5],
    ("toy-medium", "s-lsr1", 2): [0.2, 0.2],
    ("toy-medium", "lsr1", 0): [0.6, 0.8], ("toy-medium", "lsr1", 1): [0.3, 0.3],
    ("toy-medium", "lsr1", 2): [float("nan"), 0.9],
}
#: the platform's choice from those scores (best mean rank over the problems) and its score (mean over problems)
TUNED_CHOSEN = {"s-lsr1": (2, 0.2), "lsr1": (1, 0.35)}
#: per-iteration cost of every trial of a method: wall s, t_pairs, t_grad, t_model, t_search; gradients, HVPs,
#: loss-only evaluations; κ (inner_iters); and the accepted flags of iterations 1..4
TUNED_COST = {"s-lsr1": dict(dt=0.004, t_pairs=0.002, t_grad=0.001, t_model=0.0005, t_search=0.0005, grads=1,
                             hvps=8, funs=0, kappa=3, accepted=[True, False, True, True]),
              "lsr1": dict(dt=0.001, t_pairs=0.0, t_grad=0.0005, t_model=0.0002, t_search=0.0003, grads=1, hvps=0,
                           funs=1, kappa=2, accepted=[True, True, True, True])}
TUNED_PROBLEMS = {"toy-small": {"n": 100, "d": 36, "target_accuracy": 1.0},
                  "toy-medium": {"n": 100, "d": 176, "target_accuracy": 1.0}}


def write_tuned_study(out: Path, *, tuned: bool = True) -> Path:
    """A small tuned study written as the runner writes one (both stages in DIR/iterations.parquet and
    DIR/trials.parquet, ``stage`` and ``tuning_config`` columns, ``sqn_ray.tuning`` metadata): 24 tuning trials
    (2 methods × 3 configurations × 2 problems × 2 tuning seeds) and 40 evaluation trials (each method's chosen
    configuration × 2 problems × 10 seeds), 4 iterations each. ``tuned=False``: the evaluation trials alone as a
    plain study from before stages existed (no stage columns, no tuning metadata)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    trials, rows = [], []

    def add(problem, method, number, seed, stage, best, solved):
        options = {"memory": None, "radius": None, "sampling": None, **TUNED_CONFIGS[method][number]}
        tid = f"{stage[:2]}-{problem}-{method}-{number}-{seed}"
        cost = TUNED_COST[method]
        diverged = math.isnan(best)
        trials.append({"study": "tuned-test", "trial_id": tid, "problem": problem, "method": method, **options,
                       "seed": seed, "stage": stage, "tuning_config": number,
                       "cell": json.dumps({"options": TUNED_CONFIGS[method][number]}),
                       "status": "diverged" if diverged else "solved" if solved else "budget",
                       "final_loss": best, "best_loss": best, "final_accuracy": 1.0 if solved else 0.5,
                       "best_accuracy": 1.0 if solved else 0.5, "iterations": 4,
                       "grad_equivalents": 4 * (cost["grads"] + cost["hvps"] + 0.5 * cost["funs"]),
                       "target_accuracy": 1.0, "iters_to_target": 4.0 if solved else math.nan,
                       "grad_equivalents_to_target": 40.0 if solved else math.nan,
                       "wall_time_to_target": 0.01 if solved else math.nan, "wall_time": 4 * cost["dt"],
                       "device": "cpu"})
        for k in range(5):
            rows.append({"study": "tuned-test", "trial_id": tid, "problem": problem, "method": method, **options,
                         "seed": seed, "stage": stage, "tuning_config": number, "iteration": k,
                         "loss": 0.7 - k * (0.7 - best) / 4 if not diverged else math.nan, "accuracy": 0.5,
                         "grad_norm": 1.0, "n_fun": k * cost["funs"], "n_grad": 1 + k * cost["grads"],
                         "n_hvp": k * cost["hvps"], "grad_equivalents": 1 + k * (cost["grads"] + cost["hvps"]
                                                                                 + 0.5 * cost["funs"]),
                         "epochs": float(k), "wall_time": 0.0005 + k * cost["dt"],
                         "accepted": True if k == 0 else cost["accepted"][k - 1],
                         "inner_iters": 0 if k == 0 else cost["kappa"],
                         **{c: (0.0 if k == 0 else cost[c]) for c in ("t_pairs", "t_grad", "t_model", "t_search")}})

    if tuned:
        for (problem, method, number), losses in TUNING_LOSSES.items():
            for seed, best in zip(TUNING_SEEDS, losses):
                add(problem, method, number, seed, "tuning", best, best < 1e-6)
    for problem in TUNED_PROBLEMS:
        for method, (number, _) in TUNED_CHOSEN.items():
            for seed in EVALUATION_SEEDS:
                solved = seed < (8 if method == "s-lsr1" else 3)
                add(problem, method, number, seed, "evaluation", 1e-3 if solved else 0.4 + 0.01 * seed, solved)
    metadata = {"sqn_ray.study": {"name": "tuned-test", "seeds": EVALUATION_SEEDS, "budget": {"iterations": 4}},
                "sqn_ray.problems": TUNED_PROBLEMS}
    if tuned:
        metadata["sqn_ray.tuning"] = {
            "trials": 3, "seeds": TUNING_SEEDS, "metric": "best_loss", "mode": "min",
            "configurations": TUNED_CONFIGS,
            "chosen": {m: {"tuning_config": n, "options": TUNED_CONFIGS[m][n], "score": score}
                       for m, (n, score) in TUNED_CHOSEN.items()}}
    out.mkdir(parents=True, exist_ok=True)
    for name, records in (("trials.parquet", trials), ("iterations.parquet", rows)):
        table = pa.Table.from_pylist(records)
        if not tuned:
            table = table.drop_columns(["stage", "tuning_config"])
        meta = {k.encode(): json.dumps(v).encode() for k, v in metadata.items()}
        pq.write_table(table.replace_schema_metadata(meta), out / name)
    return out
