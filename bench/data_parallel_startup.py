"""What a data-parallel trial pays before its first iteration: a study of 1-worker and 2-worker S-LSR1 trials
(12 iterations each) on a small notebook problem (a 5-8-2 tanh net on 203 rows, float64), on embedded Ray with
2 CPUs; prints each trial's ``startup_seconds`` (start to first iteration: the problem's build and, for a
k-worker trial, its Ray Train worker group's start and the wait for its workers' resources), ``trial_time`` and
the optimizer's ``wall_time`` from trials.parquet.

    python bench/data_parallel_startup.py [--out /tmp/dp-startup]
"""
from __future__ import annotations

import argparse
import shutil
import time

import pandas as pd
import torch
from torch import nn

from sqn_ray.problems import ModuleProblem
from sqn_ray.study.runner import run_study


def blobs() -> ModuleProblem:
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(203, 5, generator=gen, dtype=torch.float64)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).long()

    def net():
        return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))

    return ModuleProblem("blobs", net, torch.nn.functional.cross_entropy, X, y, dtype=torch.float64)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/dp-startup")
    args = ap.parse_args(argv)
    shutil.rmtree(args.out, ignore_errors=True)
    study = {"name": "dp-startup", "problems": ["blobs"], "seeds": [0, 1], "budget": {"iterations": 12},
             "dtype": "float64", "methods": {"s-lsr1": {"memory": 4}}, "resources": {"workers": [1, 2], "cpu": 1},
             "report_interval": 0.2}
    t0 = time.perf_counter()
    outcome = run_study(study, args.out, problems={"blobs": blobs()}, progress=False, num_cpus=2)
    took = time.perf_counter() - t0
    trials = pd.read_parquet(outcome.trials_path).sort_values("started_at")
    print(trials[["workers", "seed", "startup_seconds", "trial_time", "wall_time", "iterations"]]
          .to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"the whole study, Ray's start included: {took:.1f} s")


if __name__ == "__main__":
    main()
