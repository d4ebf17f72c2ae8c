"""The `sqn-ray run` command as a user runs it, and the spectral tools against dense references."""
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from sqn_ray.cli import main
from sqn_ray.io import read_parquet_metadata
from sqn_ray.linalg.lbfgs import dense_lbfgs_inverse
from sqn_ray.linalg.sr1 import dense_sr1
from sqn_ray.problems import get_problem
from sqn_ray.spectral import dense_hessian, model_matrix, path_pairs, sampled_pairs_at, spectrum


def test_run_prints_a_live_table_stops_at_full_accuracy_and_writes_parquet(tmp_path, capsys):
    out = tmp_path / "run.parquet"
    rc = main(["run", "--problem", "toy-small", "--method", "s-lsr1", "--memory", "10", "--radius", "1",
               "--sampling", "hvp", "--seed", "0", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "iter" in text and "alpha/Delta" in text and "solved" in text
    df = pd.read_parquet(out)
    assert df.accuracy.iloc[-1] == 1.0 and (df.accuracy.iloc[:-1] < 1.0).all()
    assert {"iteration", "loss", "accuracy", "grad_norm", "n_hvp", "grad_equivalents", "trust_radius",
            "problem", "method", "seed", "memory", "radius", "sampling"} <= set(df.columns)
    assert (df.method == "s-lsr1").all() and (df.memory == 10).all()
    meta = read_parquet_metadata(out)["sqn_ray.run"]
    assert meta["status"] == "solved" and meta["options"]["sampling"] == "hvp"
    lines = [line for line in text.splitlines() if line[:5].strip().isdigit()]
    assert len(lines) == len(df)


def test_run_budget_and_generic_options(tmp_path, capsys):
    out = tmp_path / "lbfgs.parquet"
    assert main(["run", "--problem", "toy-small", "--method", "lbfgs", "--memory", "5", "--max-iters", "7",
                 "--option", "trial_step=unit", "--dtype", "float32", "--out", str(out), "--quiet"]) == 0
    df = pd.read_parquet(out)
    assert len(df) <= 8 and df.iteration.iloc[-1] <= 7
    assert (df.trial_step == "unit").all()


@pytest.mark.parametrize("argv, message", [
    (["--method", "newton"], "unknown method 'newton'"),
    (["--method", "lbfgs", "--radius", "2"], "unknown option(s) ['radius'] for method 'lbfgs'"),
    (["--sampling", "bogus"], "sampling='bogus' is not one of ('hvp', 'grad-diff')"),
    (["--problem", "toy-huge"], "unknown problem 'toy-huge'"),
    (["--memory", "0"], "memory must be a positive integer, got 0"),
])
def test_run_rejects_bad_input_with_one_clear_line(argv, message, capsys, tmp_path):
    out = tmp_path / "never.parquet"
    assert main(["run", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_console_entry_point_lists_methods():
    proc = subprocess.run([sys.executable, "-m", "sqn_ray.cli", "methods"], capture_output=True, text=True, check=True)
    for name in ("s-lsr1", "s-lbfgs", "scipy-lbfgsb", "torch-lbfgs"):
        assert name in proc.stdout
    assert "normalize_directions" in proc.stdout


def test_dense_hessian_matches_autograd():
    problem = get_problem("toy-small")
    w = problem.init(0)
    H = dense_hessian(problem.oracle, w, chunk=7)
    torch.testing.assert_close(H, torch.autograd.functional.hessian(problem.fun, w), rtol=1e-9, atol=1e-10)


def test_model_matrices_are_the_optimizers_models():
    problem = get_problem("toy-small")
    w = problem.init(1)
    S, Y = sampled_pairs_at(problem.oracle, w, memory=6, radius=0.5, seed=2)
    H = dense_hessian(problem.oracle, w)
    torch.testing.assert_close(Y, H @ S, rtol=1e-8, atol=1e-10)
    # S-LSR1 (B0 = 0) is the Nyström sketch HS(SᵀHS)⁻¹SᵀH; its nonzero spectrum lies within the Hessian's range
    B = model_matrix("s-lsr1", S, Y)
    torch.testing.assert_close(B, H @ S @ torch.linalg.solve(S.T @ H @ S, S.T @ H), rtol=1e-6, atol=1e-8)
    lam, lam_h = spectrum(B), spectrum(H)
    assert np.sum(np.abs(lam) > 1e-10) <= 6
    assert lam.min() >= lam_h.min() - 1e-8 or lam.min() < 0  # interlacing-style sanity on extremes
    # S-LBFGS/LBFGS matrices are the inverses of the dense BFGS recursion on the angle-filtered pairs
    keep = [i for i in range(6) if float(S[:, i] @ Y[:, i]) > 1e-8 * float(S[:, i].norm() * Y[:, i].norm())]
    gamma = float(S[:, keep[-1]] @ Y[:, keep[-1]] / (Y[:, keep[-1]] @ Y[:, keep[-1]]))
    torch.testing.assert_close(model_matrix("s-lbfgs", S, Y),
                               torch.linalg.inv(dense_lbfgs_inverse(S[:, keep], Y[:, keep], gamma)))
    torch.testing.assert_close(model_matrix("sr1", S, Y), dense_sr1(S, Y, torch.eye(w.numel(), dtype=torch.float64))[0])


def test_path_pairs_from_a_trajectory():
    xs = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 2.0], [0.0, 3.0]], dtype=torch.float64)
    gs = 2 * xs
    S, Y = path_pairs(xs, gs, memory=2)
    torch.testing.assert_close(S, torch.tensor([[0.0, -1.0], [2.0, 1.0]], dtype=torch.float64))
    torch.testing.assert_close(Y, 2 * S)


def _pairs_of_an_indefinite_quadratic(d=8, m=6, seed=0):
    """Pairs y = A s of a symmetric A with negative eigenvalues: some fail the curvature filters."""
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    A = Q @ torch.diag(torch.linspace(-1.0, 4.0, d, dtype=torch.float64)) @ Q.T
    S = torch.randn(d, m, generator=gen, dtype=torch.float64)
    return S, A @ S, torch.randn(d, generator=gen, dtype=torch.float64)


def test_the_registry_says_which_methods_have_an_explicit_model():
    """spectral.MODEL_KINDS and the eigen figure's kinds come from MethodSpec.model_matrix, not from lists."""
    import sqn_ray.spectral as spectral
    from analysis.eigen import model_kinds
    from sqn_ray.optim.registry import REGISTRY

    assert spectral.MODEL_KINDS == ("s-lsr1", "s-lbfgs", "lsr1", "lbfgs", "sr1", "bfgs")
    assert all((REGISTRY[m].model_matrix is not None) == (m in spectral.MODEL_KINDS) for m in REGISTRY)
    assert model_kinds() == (("s-lsr1", "s-lbfgs"), {"lsr1": True, "lbfgs": True, "sr1": False, "bfgs": False})
    with pytest.raises(ValueError, match="kind='gd' is not one of"):
        model_matrix("gd", torch.zeros(3, 1), torch.zeros(3, 1))


@pytest.mark.parametrize("kind", ["s-lsr1", "lsr1", "sr1", "s-lbfgs", "lbfgs", "bfgs"])
def test_the_spectral_matrix_is_the_methods_own_model(kind):
    """model_matrix(kind) applied to a vector equals what the method itself does with the same pairs: the
    line-search methods' direction −H g, the trust-region methods' model on its subspace and complement."""
    import sqn_ray
    from sqn_ray.curvature.models import CompactLSR1, DenseBFGSInverse, DenseSR1, LBFGSInverse

    S, Y, g = _pairs_of_an_indefinite_quadratic()
    B = model_matrix(kind, S, Y)
    eps = sqn_ray.method_options(kind)["epsilon"]
    if kind in ("s-lbfgs", "lbfgs", "bfgs"):
        if kind == "bfgs":  # the dense method sees the pairs one at a time, in order
            model = DenseBFGSInverse(eps=eps)
            memo = model.init_memo()
            for i in range(S.shape[1]):
                memo = model.observe(memo, S[:, i], Y[:, i])
            p, _ = model.direction(g, None, None, memo)
        else:
            p, _ = LBFGSInverse(eps=eps).direction(g, S, Y)
        torch.testing.assert_close(p, -torch.linalg.solve(B, g), rtol=1e-9, atol=1e-12)
        return
    if kind == "sr1":
        model = DenseSR1(eps=eps)
        memo = model.init_memo()
        for i in range(S.shape[1]):
            memo = model.observe(memo, S[:, i], Y[:, i])
        reduced, _ = model.reduce(g, None, None, memo)
    else:
        reduced, _ = CompactLSR1(eps=eps, b0=sqn_ray.method_options(kind)["b0"]).reduce(g, S, Y)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):  # the model's quadratic form on its subspace ...
        a = torch.randn(len(reduced.g), generator=gen, dtype=torch.float64).numpy()
        step = reduced.lift(a, 0.0).double()
        assert reduced.value(a) == pytest.approx(float(g @ step + 0.5 * step @ B @ step), rel=1e-9, abs=1e-12)
    if reduced.complement_eigenvalue is not None:  # ... and on the rest of R^d
        basis = torch.linalg.qr(torch.stack([reduced.lift(e, 0.0).double() for e in np.eye(len(reduced.g))], 1))[0]
        v = torch.randn(g.numel(), generator=gen, dtype=torch.float64)
        v -= basis @ (basis.T @ v)
        torch.testing.assert_close(B @ v, reduced.complement_eigenvalue * v, rtol=1e-9, atol=1e-10)
