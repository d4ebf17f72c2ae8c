"""The theory, checked: S-LBFGS with a fixed step on a strongly convex problem (the paper's Lemma 3 and Theorem 4).

Berahas, Jahani, Takáč, "Quasi-Newton Methods for Machine Learning: Forget the Past, Just Sample"
(arXiv 1901.09997), for F μ-strongly convex and L-smooth:

* Lemma 3: the S-LBFGS matrices satisfy μ1 I ⪯ H_k ⪯ μ2 I for constants 0 < μ1 ≤ μ2;
* Theorem 4: with a fixed step 0 < α ≤ μ1 / (μ2² L), F(w_k) − F* ≤ (1 − α μ μ1)^k (F(w_0) − F*).

The proof of Theorem 4 is one line per iteration: the descent lemma gives
F_{k+1} ≤ F_k − α gᵀHg + (L/2) α² ‖Hg‖² ≤ F_k − α μ1 ‖g‖² + (L/2) α² μ2² ‖g‖² ≤ F_k − (α μ1 / 2) ‖g‖² for
α ≤ μ1/(μ2² L), and strong convexity ‖g‖² ≥ 2μ (F_k − F*) makes that a contraction by 1 − α μ μ1.

Here the constants are computed for the L2-regularised logistic problem (:mod:`sqn_ray.problems.logistic`,
handed in as an oracle: this module imports no problem) and checked along a real run:
:func:`fixed_step_run` runs S-LBFGS (Option II pairs) through :func:`sqn_ray.minimize` with
``step_rule="fixed"`` and observes, without changing the method, the pairs each H_k is built from;
:func:`theory_study` adds μ, L, the Lemma 3 bounds, the measured extremes of eig(H_k), the fitted linear rate
and Theorem 4's factor. The theoretical μ2 is astronomically loose (≈ 10^168 on the logistic problem with
m = 10), so Theorem 4's own step condition asks for α ≈ 10^-338, below the smallest double; the step used is
inside the condition with the *measured* μ1, μ2 instead. Core module: no Ray, no analysis, no problems imports.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .objective import Oracle
from .optim.minimize import minimize
from .optim.registry import get_method
from .spectral import dense_hessian

__all__ = ["HessianProductLog", "FixedStepRun", "TheoryReport", "logistic_smoothness", "hessian_eigen_range",
           "lemma3_bounds", "theorem4_max_step", "theorem4_factor", "log_linear_fit", "roundoff_level",
           "inverse_hessian_eigenvalues", "fixed_step_run", "theorem4_step", "theory_study", "write_theory"]

#: the Parquet schema metadata key of :func:`write_theory`'s constants
METADATA_KEY = "sqn_ray.theory"


# -- the constants ------------------------------------------------------------------------------------------
def logistic_smoothness(Xt: torch.Tensor, lam: float) -> float:
    """A global smoothness constant of the logistic loss: L = ‖X̃‖₂² / (4n) + λ.

    ∇²F(w) = X̃ᵀ D X̃ / n + λP with D = diag(s(z)(1 − s(z))) ⪯ I/4 and P ⪯ I, so λ_max(∇²F(w)) ≤ L for every w.
    On the standardised data the bound is attained at w = 0 (there D = I/4, and the intercept column of X̃ is
    orthogonal to the centred features).

    Args:
        Xt: X̃ = [X, 1], shape (n, d) (``LogisticOracle.Xt``).
        lam: λ, the L2 weight (on β only; the bound adds it to every direction).

    Returns:
        L as a float.
    """
    return float(torch.linalg.matrix_norm(Xt.double(), ord=2)) ** 2 / (4 * Xt.shape[0]) + float(lam)


def hessian_eigen_range(oracle: Oracle, w: torch.Tensor) -> tuple[float, float]:
    """(λ_min, λ_max) of ∇²F(w), from the dense Hessian (d Hessian-vector products, uncounted).

    The logistic problem has no global strong-convexity constant above 0: the intercept is unpenalised and its
    curvature mean(s(z)(1 − s(z))) tends to 0 as ‖w‖ grows, and λ bounds only the β block. On the bounded set
    a run visits it is strongly convex, with μ = the least λ_min there; :func:`theory_study` takes that minimum
    over the iterates, w* and the segment [w_0, w*].

    Args:
        oracle: the problem's oracle (``hvps`` is used).
        w: the point, shape (d,).

    Returns:
        The extreme eigenvalues as floats (NaN, NaN at a non-finite w).
    """
    if not torch.isfinite(w).all():
        return math.nan, math.nan
    e = torch.linalg.eigvalsh(dense_hessian(oracle, w))
    return float(e[0]), float(e[-1])


@dataclass(frozen=True)
class Lemma3Bounds:
    """μ1 ≤ eig(H_k) ≤ μ2 (:func:`lemma3_bounds`); ``log10_mu2`` is exact where ``mu2`` overflows to inf."""

    mu1: float
    mu2: float
    log10_mu2: float


def lemma3_bounds(mu: float, L: float, d: int, memory: int) -> Lemma3Bounds:
    """Lemma 3's bounds μ1 I ⪯ H_k ⪯ μ2 I for S-LBFGS from m pairs with H_0 = γI.

    By the trace/determinant argument of Byrd, Hansen, Nocedal & Singer (2016, "A stochastic quasi-Newton
    method for large-scale optimization", SIAM J. Optim., Lemma 3.1), carried out here for the paper's pairs.
    Option II pairs are y_i = A s_i with A = ∇²F(w_k), μI ⪯ A ⪯ LI, so sᵀy/sᵀs ≥ μ and yᵀy/sᵀy ≤ L. Work with
    B = H⁻¹, B_0 = I/γ, γ = sᵀy/yᵀy ∈ [1/L, 1/μ], and the m BFGS updates
    B⁺ = B − B s sᵀ B / (sᵀ B s) + y yᵀ / (yᵀ s):

    * trace: tr B⁺ ≤ tr B + ‖y‖²/(yᵀs) ≤ tr B + L, so λ_max(B) ≤ tr B ≤ (d + m) L;
    * determinant: det B⁺ = det B · (yᵀs)/(sᵀBs) ≥ det B · μ / ((d + m) L), det B_0 = γ^{-d} ≥ μ^d, and
      λ_min(B) ≥ det B / λ_max(B)^{d-1}.

    Hence μ1 = 1 / ((d + m) L) and μ2 = ((d + m) L)^{d+m-1} / μ^{d+m} (both monotone in m, so m = the memory
    bounds a run that kept fewer pairs). μ2 is astronomically loose (≈ 10^168 for d = 31, m = 10 on the
    logistic problem); it is computed through logarithms.

    Args:
        mu: μ > 0, a lower bound on the Hessian's eigenvalues where the pairs are sampled.
        L: L ≥ μ, an upper bound there.
        d: the dimension.
        memory: m, the number of pairs.

    Returns:
        :class:`Lemma3Bounds` (mu1, mu2 — inf where it overflows a double, or where μ is not > 0: a region the
        problem is not strongly convex on — and log10 μ2).
    """
    c = (d + memory) * L
    if not mu > 0:
        return Lemma3Bounds(mu1=1.0 / c, mu2=math.inf, log10_mu2=math.inf)
    log10_mu2 = (d + memory - 1) * math.log10(c) - (d + memory) * math.log10(mu)
    return Lemma3Bounds(mu1=1.0 / c, mu2=10.0 ** log10_mu2 if log10_mu2 < 308 else math.inf, log10_mu2=log10_mu2)


def theorem4_max_step(mu1: float, mu2: float, L: float) -> float:
    """Theorem 4's step condition: the largest fixed α it allows, α_max = μ1 / (μ2² L) (0.0 where it underflows)."""
    return mu1 / (mu2 * mu2 * L)


def theorem4_factor(alpha: float, mu: float, mu1: float) -> float:
    """Theorem 4's contraction factor 1 − α μ μ1: F_k − F* ≤ (1 − α μ μ1)^k (F_0 − F*) for α ≤ μ1/(μ2² L)."""
    return 1.0 - alpha * mu * mu1


# -- the measured rate --------------------------------------------------------------------------------------
def roundoff_level(f_star: float) -> float:
    """The gap F_k − F* below which it is round-off: 10⁴ ε |F*| (ε the float64 unit round-off, |F*| ≥ 1 taken
    as 1), where the loss's own rounding is still under 0.1 % of the gap."""
    return 1e4 * float(np.finfo(np.float64).eps) * max(1.0, abs(f_star))


def above_roundoff(gaps: np.ndarray, f_star: float) -> int:
    """The number of leading gaps that are finite and above :func:`roundoff_level` (the range the rate is
    measured on)."""
    ok = np.isfinite(gaps) & (gaps > roundoff_level(f_star))
    return int(np.argmin(ok)) if not ok.all() else len(gaps)


def log_linear_fit(gaps: np.ndarray) -> tuple[float, float]:
    """The linear rate of a sequence of positive gaps: the least-squares line log g_k ≈ a + b k.

    Args:
        gaps: F_k − F* > 0 for k = 0, 1, ... (at least 3).

    Returns:
        (rate, R²): rate = e^b (g_{k+1} ≈ rate · g_k), R² = 1 − SS_res/SS_tot of the fit (NaN, NaN for fewer than
        3 gaps).
    """
    if len(gaps) < 3:
        return math.nan, math.nan
    k, y = np.arange(len(gaps), dtype=np.float64), np.log(gaps)
    b, a = np.polyfit(k, y, 1)
    ss_res, ss_tot = float(np.sum((y - a - b * k) ** 2)), float(np.sum((y - y.mean()) ** 2))
    return math.exp(b), 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0


# -- observing H_k ------------------------------------------------------------------------------------------
def inverse_hessian_eigenvalues(S: torch.Tensor, Y: torch.Tensor, eps: float) -> tuple[np.ndarray, torch.Tensor]:
    """eig(H) and H for the S-LBFGS matrix of the pairs (S, Y), exactly as the method builds it.

    The registry's model of ``s-lbfgs`` (:func:`sqn_ray.spectral.bfgs_family_matrix`, ``scale_from="last"``)
    uses the method's own filter and scale (``lbfgs_selection``: condition (1) sᵢᵀyᵢ > ε‖sᵢ‖‖yᵢ‖, γ = sᵀy/yᵀy
    of the newest kept pair; I when no pair passes) and returns B = H⁻¹; eig(H) = 1/eig(B).

    Args:
        S, Y: the pairs, shape (d, m) each (float64).
        eps: ε of the filter (the method's ``epsilon``).

    Returns:
        (eigenvalues of H in ascending order, H as a dense float64 tensor).
    """
    B = get_method("s-lbfgs").model_matrix(S, Y, eps=eps)
    B = 0.5 * (B + B.T)
    return np.sort(1.0 / torch.linalg.eigvalsh(B).numpy()), torch.linalg.inv(B)


class HessianProductLog:
    """An oracle that forwards to another one and keeps every Hessian-matrix product asked of it.

    Under Option II each iteration of S-LBFGS asks for one block Y = ∇²F(w_k) S; the log keeps (w, S, Y), so
    the pairs H_k is built from are observed without changing the method (the counters, the generator and every
    number are the run's own).

    Args:
        oracle: the :class:`~sqn_ray.objective.Oracle` to forward to.

    Attributes:
        products: (w, V, ∇²F(w) V) per call, in call order (copies).
    """

    def __init__(self, oracle: Oracle):
        self.oracle, self.products = oracle, []
        self.dim, self.dtype, self.device = oracle.dim, oracle.dtype, oracle.device

    def loss(self, w):
        return self.oracle.loss(w)

    def loss_and_grad(self, w):
        return self.oracle.loss_and_grad(w)

    def grads(self, W):
        return self.oracle.grads(W)

    def hvps(self, w, V):
        Y = self.oracle.hvps(w, V)
        self.products.append((w.detach().clone(), V.detach().clone(), Y.detach().clone()))
        return Y


@dataclass(frozen=True)
class FixedStepRun:
    """One S-LBFGS run with ``step_rule="fixed"`` and the H_k it used (:func:`fixed_step_run`).

    Attributes:
        alpha: the fixed step α.
        iterates: w_0, ..., w_K (K = the iterations run).
        losses, grad_norms: F(w_k) and ‖∇F(w_k)‖, k = 0..K.
        pairs_kept: the pairs H_k kept, k = 0..K−1 (0 for H_0 = I of a gradient first step).
        h_eigs: eig(H_k) ascending, k = 0..K−1.
        status: ``minimize``'s status (``"max_iters"``, or ``"diverged"`` for a step that made F non-finite).
        matrices: H_k as dense tensors when asked for (``keep_matrices``), else None.
    """

    alpha: float
    iterates: list
    losses: np.ndarray
    grad_norms: np.ndarray
    pairs_kept: np.ndarray
    h_eigs: list
    status: str
    matrices: list | None = None


def fixed_step_run(oracle: Oracle, w0: torch.Tensor, lr: float, *, memory: int = 10, iterations: int = 200,
                   seed: int = 0, first_step: str = "sampled", epsilon: float = 1e-8,
                   keep_matrices: bool = False) -> FixedStepRun:
    """Run S-LBFGS (Option II pairs) with w_{k+1} = w_k − α H_k ∇F(w_k) and record the H_k it used.

    The run is :func:`sqn_ray.minimize` (``method="s-lbfgs"``, ``step_rule="fixed"``, ``gtol=0``) on a
    :class:`HessianProductLog` of the oracle; each H_k is rebuilt from the block of products asked at w_k by
    :func:`inverse_hessian_eigenvalues` (with ``first_step="gradient"``, H_0 = I).

    Args:
        oracle: the problem's oracle (float64 for the theory).
        w0: the initial point, shape (d,).
        lr: α > 0.
        memory, seed, first_step, epsilon: the method's options (m pairs, direction stream, first iteration, ε).
        iterations: K, the iterations to run.
        keep_matrices: also return the H_k.

    Returns:
        :class:`FixedStepRun`.

    Raises:
        OptionError: (a ValueError) for a bad option value, as ``minimize``.
        RuntimeError: when the logged products do not line up with the iterates (the method sampled elsewhere).
    """
    log, iterates = HessianProductLog(oracle), []
    result = minimize(log, w0, "s-lbfgs", step_rule="fixed", lr=lr, memory=memory, sampling="hvp",
                      first_step=first_step, epsilon=epsilon, seed=seed, max_iters=iterations, gtol=0.0,
                      callback=lambda x, record: iterates.append(x.detach().clone()))
    if len(iterates) < len(result.history):  # a diverged last iterate never reaches the callback
        iterates.append(result.x.detach().clone())
    products, eigs, matrices = iter(log.products), [], []
    for k, w in enumerate(iterates[:-1]):
        if k == 0 and first_step == "gradient":
            H = torch.eye(w.numel(), dtype=torch.float64)
            e = np.ones(w.numel())
        else:
            wk, S, Y = next(products)
            if not torch.equal(wk, w):
                raise RuntimeError(f"the Hessian products logged for iteration {k} were not asked at w_{k}")
            e, H = inverse_hessian_eigenvalues(S, Y, epsilon)
        eigs.append(e)
        matrices.append(H)
    history = result.history
    return FixedStepRun(alpha=float(lr), iterates=iterates, losses=history["loss"].to_numpy(dtype=np.float64),
                        grad_norms=history["grad_norm"].to_numpy(dtype=np.float64),
                        pairs_kept=history["pairs_kept"].to_numpy()[1:], h_eigs=eigs, status=result.status,
                        matrices=matrices if keep_matrices else None)


def _measured_extremes(run: FixedStepRun) -> tuple[float, float]:
    """(min, max) over k of eig(H_k): the measured μ1, μ2 of a run."""
    return float(min(e[0] for e in run.h_eigs)), float(max(e[-1] for e in run.h_eigs))


def theorem4_step(oracle: Oracle, w0: torch.Tensor, L: float, *, safety: float = 0.5, max_rounds: int = 5,
                  **run_options) -> tuple[float, FixedStepRun, int]:
    """A fixed α inside Theorem 4's condition α ≤ μ1/(μ2² L) for the *measured* μ1, μ2 of its own run.

    The measured extremes of eig(H_k) depend on the iterates, hence on α. Start from α_0 = 1/L (the classical
    gradient step) and set α_{j+1} = ``safety`` · μ1_j / (μ2_j² L) from run j's extremes, until run j's own α_j
    satisfies the condition (in practice the second run does).

    Args:
        oracle, w0: the problem's oracle and initial point.
        L: the smoothness constant of the condition.
        safety: the fraction of the measured bound taken, in (0, 1].
        max_rounds: the most runs.
        **run_options: :func:`fixed_step_run` options (memory, iterations, seed, first_step, epsilon,
            keep_matrices).

    Returns:
        (α, its run, the number of runs made).

    Raises:
        RuntimeError: when no α satisfied its own run's condition within ``max_rounds`` runs.
    """
    alpha = 1.0 / L
    for rounds in range(1, max_rounds + 1):
        run = fixed_step_run(oracle, w0, alpha, **run_options)
        bound = theorem4_max_step(*_measured_extremes(run), L)
        if alpha <= bound:
            return alpha, run, rounds
        alpha = safety * bound
    raise RuntimeError(f"no step inside Theorem 4's measured condition within {max_rounds} runs (last α {alpha:.3g})")


# -- the study ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TheoryReport:
    """What :func:`theory_study` measured.

    Attributes:
        rows: column name -> one value per iterate k = 0..K (a tidy table): ``iteration``, ``loss``, ``gap``
            (F_k − F*), ``ratio`` ((F_{k+1} − F*)/(F_k − F*), NaN on the last row or a gap ≤ 0), ``grad_norm``,
            ``h_eig_min``/``h_eig_max`` (extremes of eig(H_k), the matrix of the step from w_k; NaN on the last
            row), ``pairs_kept``, ``hess_eig_min``/``hess_eig_max`` (of ∇²F(w_k)), ``theorem4_envelope``
            ((1 − α μ μ1)^k (F_0 − F*), μ1 measured), ``above_roundoff``.
        constants: name -> number or string: the problem (d, n, lam, f_star), μ, L, the Lemma 3 bounds
            (``mu1_theory``, ``mu2_theory``, ``log10_mu2_theory``), the measured extremes (``mu1_measured``,
            ``mu2_measured``), α and its rule, Theorem 4's conditions (``alpha_max_measured``,
            ``log10_alpha_max_theory``, ``alpha_in_condition``) and factor, the fitted ``rate`` and ``r2`` over
            ``fit_iterations`` gaps above ``roundoff``, ``max_ratio`` there, the run's settings and status.
        run: the :class:`FixedStepRun`.
    """

    rows: dict
    constants: dict
    run: FixedStepRun


def _strong_convexity(oracle, run: FixedStepRun, w_star: torch.Tensor, at_iterates: list) -> tuple[float, float]:
    """(μ, max λ_max): λ_min of ∇²F minimised over the iterates (``at_iterates``: their eigenvalue ranges), w*
    and 11 points of [w_0, w*]."""
    segment = [run.iterates[0] + t * (w_star - run.iterates[0]) for t in np.linspace(0.0, 1.0, 11)]
    ranges = [*at_iterates, *(hessian_eigen_range(oracle, w) for w in [w_star, *segment])]
    return float(np.nanmin([r[0] for r in ranges])), float(np.nanmax([r[1] for r in ranges]))


def theory_study(oracle, w0: torch.Tensor, w_star: torch.Tensor, *, lr: float | None = None, memory: int = 10,
                 iterations: int = 200, seed: int = 0, first_step: str = "sampled",
                 epsilon: float = 1e-8) -> TheoryReport:
    """Lemma 3 and Theorem 4 checked on a fixed-step S-LBFGS run of the logistic problem.

    Args:
        oracle: a ``LogisticOracle`` (``Xt``, ``lam``, ``n``, ``hvps``) in float64.
        w0: the initial point; w_star: the minimiser w* (``sqn_ray.problems.logistic.solution()``).
        lr: the fixed step α; None (default): :func:`theorem4_step`'s α, inside Theorem 4's condition with the
            measured μ1, μ2 (a user α need not be; ``alpha_in_condition`` says).
        memory, iterations, seed, first_step, epsilon: the run's settings (m, K, the direction stream, the first
            iteration — ``"sampled"`` by default, so that every H_k is a Lemma 3 matrix — and ε).

    Returns:
        :class:`TheoryReport` (per-iterate rows and the constants).

    Raises:
        OptionError: (a ValueError) for a bad option value (``lr`` not a positive finite number, ...).
    """
    L = logistic_smoothness(oracle.Xt, oracle.lam)
    options = {"memory": memory, "iterations": iterations, "seed": seed, "first_step": first_step,
               "epsilon": epsilon}
    if lr is None:
        alpha, run, rounds = theorem4_step(oracle, w0, L, **options)
    else:
        alpha, run, rounds = float(lr), fixed_step_run(oracle, w0, lr, **options), 1
    f_star = float(oracle.loss(w_star))
    hess = [hessian_eigen_range(oracle, w) for w in run.iterates]
    mu, l_visited = _strong_convexity(oracle, run, w_star, hess)
    bounds = lemma3_bounds(mu, L, oracle.dim, memory)
    mu1, mu2 = _measured_extremes(run)
    gaps = run.losses - f_star
    fit = above_roundoff(gaps, f_star)
    rate, r2 = log_linear_fit(gaps[:fit])
    factor = theorem4_factor(alpha, mu, mu1)
    rows = _rows(run, hess, gaps, factor, fit)
    constants = {
        "d": oracle.dim, "n": oracle.n, "lam": oracle.lam, "f_star": f_star, "mu": mu, "L": L,
        "L_visited": l_visited, "mu1_theory": bounds.mu1, "mu2_theory": bounds.mu2,
        "log10_mu2_theory": bounds.log10_mu2, "mu1_measured": mu1, "mu2_measured": mu2, "alpha": alpha,
        "alpha_rule": "theorem4-measured" if lr is None else "user", "alpha_rounds": rounds,
        "alpha_max_measured": theorem4_max_step(mu1, mu2, L),
        "log10_alpha_max_theory": math.log10(bounds.mu1) - 2 * bounds.log10_mu2 - math.log10(L),
        "alpha_in_condition": bool(alpha <= theorem4_max_step(mu1, mu2, L)), "theorem4_factor": factor,
        "rate": rate, "r2": r2, "fit_iterations": fit, "roundoff": roundoff_level(f_star),
        "max_ratio": float(np.nanmax(rows["ratio"][:max(fit - 1, 0)])) if fit > 1 else math.nan,
        "memory": memory, "iterations": iterations, "seed": seed, "first_step": first_step, "epsilon": epsilon,
        "sampling": "hvp", "status": run.status}
    return TheoryReport(rows=rows, constants=constants, run=run)


def _rows(run: FixedStepRun, hess: list, gaps: np.ndarray, factor: float, fit: int) -> dict:
    K = len(run.losses)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(gaps[:-1] > 0, gaps[1:] / gaps[:-1], np.nan)
    pad = [math.nan]
    return {"iteration": list(range(K)), "loss": run.losses.tolist(), "gap": gaps.tolist(),
            "ratio": [*ratio.tolist(), math.nan], "grad_norm": run.grad_norms.tolist(),
            "h_eig_min": [float(e[0]) for e in run.h_eigs] + pad, "h_eig_max": [float(e[-1]) for e in run.h_eigs] + pad,
            "pairs_kept": [int(p) for p in run.pairs_kept] + [None],
            "hess_eig_min": [h[0] for h in hess], "hess_eig_max": [h[1] for h in hess],
            "theorem4_envelope": [gaps[0] * factor ** k for k in range(K)],
            "above_roundoff": [k < fit for k in range(K)]}


def write_theory(report: TheoryReport, path) -> None:
    """Write ``report.rows`` to Parquet atomically (a temporary file, then a rename), the constants as JSON in
    the schema metadata under :data:`METADATA_KEY` (``sqn_ray.io.read_parquet_metadata(path)`` reads them).

    Args:
        report: a :class:`TheoryReport`.
        path: the output file.
    """
    import json

    import pyarrow as pa

    from .io import write_table_atomic

    table = pa.table(report.rows)
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(report.constants, default=str)})
    write_table_atomic(table, path)
