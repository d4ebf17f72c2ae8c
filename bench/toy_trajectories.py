"""Record every method's toy trajectories and compare two recordings bit for bit: the check that a refactor
changes no result.

    python bench/toy_trajectories.py record before.pkl     # on the code before the change (e.g. a git worktree)
    python bench/toy_trajectories.py record after.pkl
    python bench/toy_trajectories.py compare before.pkl after.pkl

A recording holds, for toy-small / toy-medium / toy-large × every registered method × seeds 0-2 (60
iterations, the problem's hand-written oracle), the final iterate's bytes, every history column but the
timings, and the status. ``compare`` compares floats by their bits (NaN equals NaN) and exits 1 on any
difference.
"""
from __future__ import annotations

import pickle
import struct
import sys
import warnings

PROBLEMS = ("toy-small", "toy-medium", "toy-large")
TIMING = ("wall_time", "t_pairs", "t_model", "t_search", "t_grad")


def record(path: str) -> None:
    import sqn_ray
    from sqn_ray.problems import get_problem

    warnings.filterwarnings("ignore")
    out = {}
    for name in PROBLEMS:
        problem = get_problem(name)
        for method in sqn_ray.METHODS:
            for seed in range(3):
                res = sqn_ray.minimize(problem.oracle, problem.init(seed), method, max_iters=60, seed=seed)
                history = res.history.drop(columns=[c for c in TIMING if c in res.history])
                out[(name, method, seed)] = (res.x.numpy().tobytes(), history.to_dict("list"), res.status)
    with open(path, "wb") as f:
        pickle.dump(out, f)
    print(f"{len(out)} trajectories recorded in {path}")


def _bits(v):
    return struct.pack("d", v) if isinstance(v, float) else v


def compare(a_path: str, b_path: str) -> int:
    with open(a_path, "rb") as fa, open(b_path, "rb") as fb:
        a, b = pickle.load(fa), pickle.load(fb)
    if a.keys() != b.keys():
        print(f"the recordings hold different runs: {sorted(set(a) ^ set(b))}")
        return 1
    differ = 0
    for key in a:
        (x, h, s), (y, hh, ss) = a[key], b[key]
        columns = [c for c in set(h) | set(hh) if [_bits(v) for v in h.get(c, [])] != [_bits(v) for v in hh.get(c, [])]]
        if x != y or s != ss or columns:
            differ += 1
            print("DIFF", key, "x" if x != y else "", s, ss, sorted(columns))
    print(f"{len(a)} trajectories, {differ} differ")
    return 1 if differ else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "record":
        record(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)
