"""The control behind the report's Option II r-invariance finding: how far S-LSR1 / S-LBFGS runs that differ
only in r agree, and when they part, on toy-small.

    python bench/radius_roundoff.py     # ~1 minute on 2 cores

For each dtype, method, m in {2, 8} and seed 0-2, runs with r in {1e-4, 1, 100} (Option II, 150 iterations):
the largest relative loss difference over iterations 0-3 (relative to max(1, |loss|)) and the first iteration
where it exceeds 1e-6 (None: never), the quantities analysis.tables.radius_invariance records.
"""
from __future__ import annotations

import numpy as np
import torch

import sqn_ray
from sqn_ray.problems import get_problem


def main() -> None:
    print(f"{'dtype':8} {'method':8} {'m':>2} {'seed':>4} {'early rel. Δ':>13} {'apart at':>8} {'max rel. Δ':>10}")
    for dtype in (torch.float64, torch.float32):
        problem = get_problem("toy-small", dtype=dtype)
        for method in ("s-lsr1", "s-lbfgs"):
            for memory in (2, 8):
                for seed in range(3):
                    losses = [sqn_ray.minimize(problem.oracle, problem.init(seed), method, max_iters=150,
                                               memory=memory, radius=r, seed=seed).history.loss.to_numpy()
                              for r in (1e-4, 1.0, 100.0)]
                    n = min(map(len, losses))
                    stack = np.vstack([curve[:n] for curve in losses])
                    rel = np.max(np.abs(stack - stack[0]) / np.maximum(1.0, np.abs(stack[0])), axis=0)
                    apart = np.flatnonzero(rel > 1e-6)
                    print(f"{str(dtype)[6:]:8} {method:8} {memory:>2} {seed:>4} {rel[:4].max():>13.2e} "
                          f"{str(apart[0]) if apart.size else 'never':>8} {rel.max():>10.1e}")


if __name__ == "__main__":
    main()
