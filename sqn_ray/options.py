"""Option values and their one error type: the checkers of the method registry, study files and scaling files.

A bad value raises :class:`OptionError`, a ``ValueError`` whose attributes say what was wrong, so that no caller
has to parse the message::

    try:
        sqn_ray.validate_options("s-lsr1", memory=0)
    except OptionError as e:
        e.option, e.value, e.allowed   # ('memory', 0, 'a positive integer')

``option`` is the option's name or, in a file, its field path (``methods.s-lsr1.radius``); ``value`` the value
given; ``allowed`` a short description of what is allowed, or the tuple of the allowed choices. The file errors
(:class:`~sqn_ray.study.spec.StudySpecError`, :class:`~sqn_ray.scaling.ScalingSpecError`) are OptionErrors too,
with the file's name and the field path at the front of the message.

Every checker is ``check(name, value) -> normalised value`` (what :class:`~sqn_ray.optim.registry.OptionSpec`
takes) and raises OptionError with the wording ``"<name> must be <allowed>, got <value!r>"``, or
``"<name>=<value!r> is not one of <choices>"`` for :func:`choice`. Core module: no Ray, no platform imports.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable

__all__ = ["OptionError", "positive_int", "nonneg_int", "integer", "finite_float", "positive_float",
           "unit_interval", "nonneg_float", "seed_or_none", "boolean", "callable_or_none", "choice"]


class OptionError(ValueError):
    """A bad option value. ``option``: the option's name or field path (None when the error is about no one
    field); ``value``: the value given (None when there is none); ``allowed``: what is allowed, a short
    description or a tuple of choices (None when unknown). ``str()`` is the message.

    Without a ``message`` the message is made from the three: ``"memory must be a positive integer, got 0"``,
    or with a tuple of choices ``"sampling='x' is not one of ('hvp', 'grad-diff')"``.
    """

    def __init__(self, message: str | None = None, *, option: Any = None, value: Any = None, allowed: Any = None):
        if message is None:
            message = describe(option, value, allowed)
        super().__init__(message)
        self.option, self.value, self.allowed = option, value, allowed

    def __reduce__(self):  # keep the attributes through pickling (Ray ships exceptions between processes)
        return _rebuild, (type(self), str(self), self.option, self.value, self.allowed)


def _rebuild(cls, message, option, value, allowed):
    return cls(message, option=option, value=value, allowed=allowed)


def describe(option, value, allowed) -> str:
    """The default message of an :class:`OptionError`."""
    if isinstance(allowed, tuple):
        return f"{option}={value!r} is not one of {allowed}"
    return f"{option} must be {allowed}, got {value!r}"


def _fail(name, v, allowed):
    raise OptionError(option=name, value=v, allowed=allowed)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def integer(name, v):
    """Any integer (not a bool)."""
    if not _is_int(v):
        _fail(name, v, "an integer")
    return int(v)


def positive_int(name, v):
    if not _is_int(v) or v < 1:
        _fail(name, v, "a positive integer")
    return int(v)


def nonneg_int(name, v):
    if not _is_int(v) or v < 0:
        _fail(name, v, "an integer >= 0")
    return int(v)


def finite_float(name, v):
    if not _is_real(v) or not math.isfinite(v):
        _fail(name, v, "a finite number")
    return float(v)


def positive_float(name, v):
    if not _is_real(v) or not (math.isfinite(v) and v > 0):
        _fail(name, v, "a finite number > 0")
    return float(v)


def unit_interval(name, v):
    if not _is_real(v) or not 0 < v < 1:
        _fail(name, v, "a number in (0, 1)")
    return float(v)


def nonneg_float(name, v):
    if not _is_real(v) or not (math.isfinite(v) and v >= 0):
        _fail(name, v, "a finite number >= 0")
    return float(v)


def seed_or_none(name, v):
    if v is None:
        return None
    if not _is_int(v) or v < 0:
        _fail(name, v, "a non-negative integer or None")
    return int(v)


def boolean(name, v):
    if not isinstance(v, bool):
        _fail(name, v, "True or False")
    return v


def callable_or_none(name, v):
    if v is not None and not callable(v):
        _fail(name, v, "a callable (d, m) -> Tensor[d, m] or None")
    return v


def choice(*allowed) -> Callable[[str, Any], Any]:
    """A checker that accepts exactly the given values (``allowed`` of its error: that tuple)."""
    def check(name, v):
        if v not in allowed:
            _fail(name, v, allowed)
        return v
    check.allowed = allowed
    return check
