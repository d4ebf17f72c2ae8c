"""One registry of methods: names, options with defaults and validators, and how to build each one.

Every option is validated before any evaluation, with the bad value and the allowed ones in the message.
``method_options(name)`` tells the study platform which options apply to a method, so a grid does not
cross options a method ignores (``radius`` for ``lbfgs``) into duplicate trials.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import torch

from ..curvature.models import B0_CHOICES, CompactLSR1, DenseBFGSInverse, DenseSR1, LBFGSInverse
from ..curvature.sampling import SAMPLINGS
from ..curvature.sources import PathPairs, SampledPairs
from ..objective import Objective
from ..options import OptionError
from ..options import boolean as _bool
from ..options import callable_or_none as _callable_or_none
from ..options import choice as _choice
from ..options import nonneg_float as _nonneg_float
from ..options import positive_float as _positive_float
from ..options import positive_int as _positive_int
from ..options import seed_or_none as _seed
from ..options import unit_interval as _unit_interval
from ..spectral import bfgs_family_matrix, compact_sr1_matrix, dense_sr1_matrix
from .globalization import TrustRegionRule
from .methods import STEP_RULES, Adam, GradientDescent, LineSearchMethod, NewtonTrustRegion, TrustRegionMethod

TR_SOLVERS = ("cg-steihaug", "exact")
FIRST_STEPS = ("gradient", "sampled")


@dataclass(frozen=True)
class OptionSpec:
    """One option of a method: ``default`` its default value, ``check(name, value)`` its validator (returns
    the normalised value or raises OptionError), ``doc`` what it means."""

    default: Any
    check: Callable[[str, Any], Any]  # returns the normalised value or raises OptionError (a ValueError)
    doc: str


SEED = {"seed": OptionSpec(0, _seed, "seed of the method's own generator (direction stream)")}
MEMORY = {"memory": OptionSpec(10, _positive_int, "m: number of curvature pairs (sampled per iteration or kept)")}
SAMPLED = {
    "radius": OptionSpec(1.0, _positive_float, "r: sampling radius, s_i = r σ_i"),
    "sampling": OptionSpec("hvp", _choice(*SAMPLINGS), "Option II ('hvp': Y = ∇²F S) or I ('grad-diff')"),
    "normalize_directions": OptionSpec(False, _bool, "scale σ_i to unit length so that ‖s_i‖ = r"),
    "directions": OptionSpec(None, _callable_or_none, "callable (d, m) -> Tensor[d, m] replacing N(0, I) draws"),
}
FILTER = {"epsilon": OptionSpec(1e-8, _positive_float, "ε of the pair filters (conditions (1) and (2))")}
TRIAL_STEPS = ("double-last", "unit")
ARMIJO = {"c1": OptionSpec(1e-4, _unit_interval, "Armijo sufficient-decrease constant"),
          "trial_step": OptionSpec("double-last", _choice(*TRIAL_STEPS),
                                   "first trial α of each search: 2 × last accepted α (reference) or 1"),
          "step_rule": OptionSpec("armijo", _choice(*STEP_RULES),
                                  "'armijo': backtracking search; 'fixed': w ← w + lr·p, no search (Theorem 4)"),
          "lr": OptionSpec(1.0, _positive_float, "α of step_rule='fixed' (unused by 'armijo')")}
TRUST = {
    "tr_solver": OptionSpec("cg-steihaug", _choice(*TR_SOLVERS), "trust-region subproblem solver"),
    "initial_trust_radius": OptionSpec(1.0, _positive_float, "Δ0"),
    "eta1": OptionSpec(1e-6, _nonneg_float, "η1: accept the step when ρ > η1"),
}


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: what :func:`get_method` returns.

    Attributes:
        name: the registry name (``"s-lsr1"``, ...; one of ``sqn_ray.METHODS``).
        summary: a one-line description (algorithm and globalization).
        options: option name -> :class:`OptionSpec` (default, validator, doc) of every option it takes.
        build: ``build(options, objective)`` -> the runnable method, from a validated option dict (as
            :meth:`validate` returns); the builders here ignore ``objective`` (the ``nn.Module`` adapter passes None).
        family: one of :data:`FAMILIES` (``"sampled QN"``, ``"classical QN"``, ``"first order"``,
            ``"external anchor"``): how the analysis groups and draws it.
        model_matrix: ``model_matrix(S, Y, eps=...)`` -> the explicit d×d Hessian approximation the method's
            model is on those pairs (float64; :func:`sqn_ray.spectral.model_matrix` dispatches here), or None
            for a method without one.
    """

    name: str
    summary: str
    options: dict[str, OptionSpec]
    build: Callable[[dict, Objective], Any]
    family: str = "other"  # one of FAMILIES: how the analysis groups and draws the method
    model_matrix: Callable[..., torch.Tensor] | None = None  # the explicit model, for the spectra

    def validate(self, given: dict) -> dict:
        """Check options for this method and fill in the defaults; runs no evaluation.

        Args:
            given: option name -> value, any subset of :attr:`options`.

        Returns:
            A new dict with every option of the method, in :attr:`options` order: each given value as its
            validator normalised it, the default for the others.

        Raises:
            OptionError: (a ValueError) for an option the method does not take (the message lists the valid
                ones) or a value its validator rejects (the message names the option, the value and what is
                allowed).
        """
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            raise OptionError(f"unknown option(s) {unknown} for method {self.name!r}; "
                              f"valid options: {sorted(self.options)}",
                              option=unknown[0] if len(unknown) == 1 else tuple(unknown),
                              value=given[unknown[0]] if len(unknown) == 1 else {k: given[k] for k in unknown},
                              allowed=tuple(sorted(self.options)))
        return {k: spec.check(k, given.get(k, spec.default)) for k, spec in self.options.items()}


def _generator(seed):
    return torch.Generator().manual_seed(0 if seed is None else seed)


def _sampled_source(o):
    return SampledPairs(memory=o["memory"], radius=o["radius"], sampling=o["sampling"],
                        normalize=o["normalize_directions"], generator=_generator(o["seed"]),
                        directions=o["directions"])


def _tr(source, model, o):
    return TrustRegionMethod(source=source, model=model, tr_solver=o["tr_solver"],
                             initial_radius=o["initial_trust_radius"], rule=TrustRegionRule(eta1=o["eta1"]))


def _line_search(source, model, o, **kwargs):
    return LineSearchMethod(source=source, model=model, c1=o["c1"], trial_step=o["trial_step"],
                            step_rule=o["step_rule"], lr=o["lr"], **kwargs)


def _external(name):
    def build(o, objective):
        from . import external  # scipy / torch.optim anchors, imported only when used
        return external.build(name, o)
    return build


_SPECS = [
    MethodSpec("s-lsr1", "sampled LSR1, trust region (Algorithm 1 + 3)",
               {**MEMORY, **SAMPLED, **FILTER, **TRUST,
                "b0": OptionSpec("zero", _choice(*B0_CHOICES), "B0 = 0 (reference) or γI"), **SEED},
               lambda o, obj: _tr(_sampled_source(o), CompactLSR1(eps=o["epsilon"], b0=o["b0"]), o),
               family="sampled QN", model_matrix=partial(compact_sr1_matrix, b0="zero")),
    MethodSpec("s-lbfgs", "sampled LBFGS, Armijo line search (Algorithm 1 + 2)",
               {**MEMORY, **SAMPLED, **FILTER, **ARMIJO,
                "first_step": OptionSpec("gradient", _choice(*FIRST_STEPS),
                                         "first iteration: gradient step (reference) or sampled QN step"),
                **SEED},
               lambda o, obj: _line_search(_sampled_source(o), LBFGSInverse(eps=o["epsilon"]), o,
                                           gradient_first_step=o["first_step"] == "gradient", on_failure="retry"),
               family="sampled QN", model_matrix=partial(bfgs_family_matrix, scale_from="last")),
    MethodSpec("lsr1", "limited-memory SR1 from the path, B0 = γI, trust region",
               {**MEMORY, **FILTER, **TRUST, "b0": OptionSpec("gamma", _choice(*B0_CHOICES), "B0 = 0 or γI"), **SEED},
               lambda o, obj: _tr(PathPairs(memory=o["memory"]), CompactLSR1(eps=o["epsilon"], b0=o["b0"]), o),
               family="classical QN", model_matrix=partial(compact_sr1_matrix, b0="gamma")),
    MethodSpec("lbfgs", "limited-memory BFGS from the path, Armijo line search",
               {**MEMORY, **FILTER, **ARMIJO, **SEED},
               lambda o, obj: _line_search(PathPairs(memory=o["memory"]), LBFGSInverse(eps=o["epsilon"]), o,
                                           on_failure="restart"),
               family="classical QN", model_matrix=partial(bfgs_family_matrix, scale_from="last")),
    MethodSpec("sr1", "dense SR1 from the path, B0 = I, trust region",
               {**FILTER, **TRUST, **SEED},
               lambda o, obj: _tr(PathPairs(memory=0), DenseSR1(eps=o["epsilon"]), o),
               family="classical QN", model_matrix=dense_sr1_matrix),
    MethodSpec("bfgs", "dense BFGS from the path, Armijo line search",
               {**FILTER, **ARMIJO, **SEED},
               lambda o, obj: _line_search(PathPairs(memory=0), DenseBFGSInverse(eps=o["epsilon"]), o,
                                           on_failure="restart"),
               # dense BFGS scales H0 once, from its first accepted pair; L-BFGS rescales from the newest
               family="classical QN", model_matrix=partial(bfgs_family_matrix, scale_from="first")),
    MethodSpec("newton-tr", "Newton on the exact Hessian (Hessian-vector products), trust region",
               {**TRUST, **SEED},
               lambda o, obj: NewtonTrustRegion(tr_solver=o["tr_solver"], initial_radius=o["initial_trust_radius"],
                                                rule=TrustRegionRule(eta1=o["eta1"])),
               family="second order"),
    MethodSpec("gd", "gradient descent with a fixed learning rate",
               {"lr": OptionSpec(0.1, _positive_float, "learning rate"), **SEED},
               lambda o, obj: GradientDescent(lr=o["lr"]),
               family="first order"),
    MethodSpec("adam", "Adam on the full-batch gradient",
               {"lr": OptionSpec(1e-3, _positive_float, "learning rate"),
                "beta1": OptionSpec(0.9, _unit_interval, "first-moment decay"),
                "beta2": OptionSpec(0.999, _unit_interval, "second-moment decay"),
                "eps": OptionSpec(1e-8, _positive_float, "denominator guard"), **SEED},
               lambda o, obj: Adam(lr=o["lr"], beta1=o["beta1"], beta2=o["beta2"], eps=o["eps"]),
               family="first order"),
    MethodSpec("torch-lbfgs", "anchor: torch.optim.LBFGS with strong Wolfe line search",
               {**MEMORY, "lr": OptionSpec(1.0, _positive_float, "torch.optim.LBFGS lr"), **SEED},
               _external("torch-lbfgs"),
               family="external anchor"),
    MethodSpec("scipy-lbfgsb", "anchor: scipy.optimize.minimize(method='L-BFGS-B') in float64",
               {**MEMORY, **SEED}, _external("scipy-lbfgsb"),
               family="external anchor"),
    MethodSpec("scipy-bfgs", "anchor: scipy.optimize.minimize(method='BFGS') in float64",
               {**SEED}, _external("scipy-bfgs"),
               family="external anchor"),
]
REGISTRY: dict[str, MethodSpec] = {spec.name: spec for spec in _SPECS}
METHODS: tuple[str, ...] = tuple(REGISTRY)
#: the families of methods, in the order the analysis lists them
FAMILIES = ("sampled QN", "classical QN", "second order", "first order", "external anchor")
SAMPLED_METHODS = tuple(m for m in METHODS if REGISTRY[m].family == "sampled QN")


def methods_of(family: str) -> tuple[str, ...]:
    """The registered methods of one family.

    Args:
        family: one of :data:`FAMILIES`.

    Returns:
        The method names of that family, in registry order (:data:`METHODS`).

    Raises:
        OptionError: (a ValueError) when ``family`` is not one of :data:`FAMILIES`.
    """
    if family not in FAMILIES:
        raise OptionError(f"unknown method family {family!r}; valid families: {list(FAMILIES)}",
                          option="family", value=family, allowed=FAMILIES)
    return tuple(m for m in METHODS if REGISTRY[m].family == family)


def method_family(name: str) -> str:
    """The family of a method; never raises.

    Args:
        name: a method name.

    Returns:
        Its family, one of :data:`FAMILIES`, or ``"other"`` for a name the registry does not know.
    """
    spec = REGISTRY.get(name)
    return spec.family if spec is not None else "other"


def get_method(name: str) -> MethodSpec:
    """The registry entry of a method.

    Args:
        name: one of :data:`METHODS` (``sqn_ray.METHODS``).

    Returns:
        Its :class:`MethodSpec` (name, summary, options, builder, family).

    Raises:
        OptionError: (a ValueError) for a name that is not registered (or not hashable); the message lists the
            valid names.
    """
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise OptionError(f"unknown method {name!r}; valid methods: {list(METHODS)}",
                          option="method", value=name, allowed=METHODS) from None


def method_options(name: str) -> dict[str, Any]:
    """The options a method takes, with their defaults.

    Args:
        name: one of :data:`METHODS`.

    Returns:
        A new dict option name -> default value, in the method's option order.

    Raises:
        OptionError: (a ValueError) for an unknown method, as :func:`get_method`.
    """
    return {k: spec.default for k, spec in get_method(name).options.items()}


def validate_options(method: str, **options) -> dict:
    """Validate options for a method without running it (:meth:`MethodSpec.validate` by name).

    Args:
        method: one of :data:`METHODS`.
        **options: option name -> value.

    Returns:
        The method's full option dict: the given values normalised, the defaults for the others.

    Raises:
        OptionError: (a ValueError naming the option, the value and what is allowed) for an unknown method, an
            option the method does not take or a bad value.
    """
    return get_method(method).validate(options)
