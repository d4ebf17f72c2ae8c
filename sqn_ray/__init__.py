"""sqn_ray: sampled quasi-Newton methods (S-LBFGS, S-LSR1) and their classical twins in PyTorch.

Berahas, Jahani & Takáč, "Quasi-Newton Methods for Machine Learning: Forget the Past, Just Sample".
The optimizer core imports no Ray; the study platform lives in :mod:`sqn_ray.study`.
"""
from .objective import AutogradOracle, Objective, module_objective_fun
from .optim.minimize import MinimizeResult, minimize
from .optim.registry import METHODS, SAMPLED_METHODS, get_method, method_options, validate_options
from .optim.adapter import SQNOptimizer
from .options import OptionError

__all__ = ["minimize", "MinimizeResult", "METHODS", "SAMPLED_METHODS", "get_method", "method_options",
           "validate_options", "Objective", "AutogradOracle", "module_objective_fun", "SQNOptimizer", "OptionError"]
__version__ = "0.1.0"
