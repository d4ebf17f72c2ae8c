"""Problems from installed packages: the ``sqn_ray.problems`` entry-point group.

A package registers a problem in its ``pyproject.toml``::

    [project.entry-points."sqn_ray.problems"]
    digits-cnn = "sqn_ray_digits:digits_cnn"

The entry point's name is the problem's name; its object is a zero-argument callable returning the problem or
a recipe (``build(dtype=..., device=...)``, e.g. a :class:`~sqn_ray.problems.ModuleProblem`). Entry points are
listed without importing anything (a study file names them and validates), and loaded only when a problem is
built; a plugin that fails to load raises :class:`PluginError` naming it and its package, and hides no other
problem. A built-in name always wins over a plugin of the same name.
"""
from __future__ import annotations

from importlib import metadata
from typing import Any

from .protocol import ProblemError

ENTRY_POINT_GROUP = "sqn_ray.problems"


class PluginError(ProblemError):
    """A problem plugin that cannot be loaded or built; the message names the entry point and its package."""


def plugin_entry_points(builtin: tuple[str, ...] = ()) -> dict[str, metadata.EntryPoint]:
    """The installed problem plugins, name -> entry point (nothing is imported).

    Args:
        builtin: names that plugins may not take (the library's own; such plugins are left out).

    Returns:
        One entry point per name, sorted by name; of two installed under one name, the first found.
    """
    found: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in builtin and ep.name not in found:
            found[ep.name] = ep
    return dict(sorted(found.items()))


def shadowed_plugins(builtin: tuple[str, ...]) -> list[metadata.EntryPoint]:
    """Installed plugins whose name is a built-in problem's (they are never used)."""
    return [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name in builtin]


def describe(ep: metadata.EntryPoint) -> str:
    """``'name = module:object' (package version)`` of an entry point, for messages."""
    dist = getattr(ep, "dist", None)
    package = f" from {dist.name} {dist.version}" if dist is not None else ""
    return f"'{ep.name} = {ep.value}'{package}"


def load_plugin(ep: metadata.EntryPoint) -> Any:
    """The object behind a problem plugin, called (a problem or a recipe).

    Args:
        ep: one of :func:`plugin_entry_points`.

    Returns:
        What its zero-argument callable returned.

    Raises:
        PluginError: the entry point cannot be imported, is not callable, or raised when called.
    """
    try:
        factory = ep.load()
    except Exception as e:  # noqa: BLE001 - any import failure of a plugin is reported as the plugin's
        raise PluginError(f"problem plugin {describe(ep)} cannot be imported: {type(e).__name__}: {e}") from e
    if not callable(factory):
        raise PluginError(f"problem plugin {describe(ep)} is a {type(factory).__name__}, not a zero-argument "
                          "callable returning the problem")
    try:
        return factory()
    except Exception as e:  # noqa: BLE001 - the plugin's own error, named
        raise PluginError(f"problem plugin {describe(ep)} failed when called: {type(e).__name__}: {e}") from e
