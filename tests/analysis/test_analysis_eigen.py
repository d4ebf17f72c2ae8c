"""Figure 5's data: three points of an S-LSR1 run, the true Hessian's spectrum and six approximations."""
import math

import numpy as np
import pandas as pd
import pytest

from analysis.eigen import trajectory
from analysis.load import read_metadata
from sqn_ray.problems import get_problem
from sqn_ray.spectral import dense_hessian, model_matrix, sampled_pairs_at, spectrum

pytestmark = pytest.mark.slow


def test_eigen_file_has_three_points_seven_matrices_and_the_true_spectra(study_dir):
    df = pd.read_parquet(study_dir / "eigen.parquet")
    assert {"point", "iteration", "matrix", "rank", "eigenvalue"} <= set(df.columns)
    assert list(df.point.unique()) == ["start", "plateau", "solution"]
    assert set(df.matrix) == {"hessian", "s-lsr1", "lsr1", "sr1", "s-lbfgs", "lbfgs", "bfgs"}
    for _, g in df.groupby(["point", "matrix"]):
        assert list(g["rank"]) == list(range(1, 37))  # d = 36
        assert (np.diff(g.eigenvalue) >= 0).all()
    pts = df.drop_duplicates("point").set_index("point")
    assert pts.loc["start", "iteration"] == 0
    assert abs(pts.loc["plateau", "loss"] - math.log(2)) <= 0.01 and pts.loc["plateau", "accuracy"] < 1
    assert pts.loc["solution", "accuracy"] == 1.0
    meta = read_metadata(study_dir / "eigen.parquet")["sqn_ray.eigen"]
    assert meta["points"]["plateau"]["iteration"] == pts.loc["plateau", "iteration"]

    # recompute the plateau point from the same seed: same trajectory, same spectra
    problem = get_problem("toy-small")
    history, W, _ = trajectory(problem, 0, memory=10, radius=1.0, sampling="hvp")
    k = int(pts.loc["plateau", "iteration"])
    assert len(history) - 1 == pts.loc["solution", "iteration"]
    w = W[k]
    true = df[(df.point == "plateau") & (df.matrix == "hessian")].eigenvalue.to_numpy()
    np.testing.assert_allclose(true, np.linalg.eigvalsh(dense_hessian(problem.oracle, w).numpy()), atol=1e-10)
    S, Y = sampled_pairs_at(problem.oracle, w, memory=10, radius=1.0, sampling="hvp", seed=k)
    slsr1 = df[(df.point == "plateau") & (df.matrix == "s-lsr1")].eigenvalue.to_numpy()
    np.testing.assert_allclose(slsr1, spectrum(model_matrix("s-lsr1", S, Y)), atol=1e-10)
    # S-LSR1 (B0 = 0, m = 10) has rank <= 10; the start's path matrices are their B0 (no pairs yet)
    assert (np.abs(slsr1) > 1e-8 * np.abs(slsr1).max()).sum() <= 10
    start = df[df.point == "start"]
    assert np.allclose(start[start.matrix == "sr1"].eigenvalue, 1.0)
    assert (start[start.matrix == "lsr1"].pairs == 0).all()
