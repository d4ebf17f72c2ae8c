"""The layers the code must keep, read from every module's imports (lazy ones inside functions too):

    core      sqn_ray (package), objective, options, curvature, linalg, optim, spectral, io,
              records (the per-iteration record's schema), stopping (the stop rules),
              collective (all-reduce oracles over torch.distributed)                      -> core only
    problems  sqn_ray.problems, sqn_ray.data                                        -> core, problems
    platform  sqn_ray.study, distributed, scaling, ray_session                      -> anything but the shells
    shells    sqn_ray.cli, analysis                                                 -> see below

Only the platform imports Ray. The analysis reads Parquet and its metadata: its readers (everything but
``analysis.eigen``, which computes spectra along a run) import neither the problems nor the optimizer, and
from the platform only the Ray-free spec and results modules. A wrong arrow fails here.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYERS = {
    "core": ("sqn_ray.objective", "sqn_ray.options", "sqn_ray.curvature", "sqn_ray.linalg", "sqn_ray.optim",
             "sqn_ray.spectral", "sqn_ray.io", "sqn_ray.records", "sqn_ray.stopping", "sqn_ray.theory",
             "sqn_ray.collective"),
    "problems": ("sqn_ray.problems", "sqn_ray.data"),
    "platform": ("sqn_ray.study", "sqn_ray.distributed", "sqn_ray.scaling", "sqn_ray.ray_session"),
    "cli": ("sqn_ray.cli",),
    "analysis": ("analysis",),
}
ALLOWED = {
    "core": {"core"},
    "problems": {"core", "problems"},
    "platform": {"core", "problems", "platform"},
    "cli": {"core", "problems", "platform", "analysis"},
    "analysis": {"core", "problems", "platform", "analysis"},
}
RAY_LAYERS = {"platform"}
# what the analysis readers may use of the rest (Parquet metadata helpers; the study file reader)
ANALYSIS_READER_IMPORTS = ("sqn_ray.io", "sqn_ray.options", "sqn_ray.study.spec", "sqn_ray.study.results",
                           "sqn_ray.optim.registry", "sqn_ray.records")


def layer_of(module: str) -> str | None:
    if module == "sqn_ray":
        return "core"
    for layer, prefixes in LAYERS.items():
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return layer
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            out.add(target)
            out.update(f"{target}.{a.name}" for a in node.names)  # `from pkg import module`
    return out


MODULES = sorted(p for folder in ("sqn_ray", "analysis") for p in (ROOT / folder).rglob("*.py")
                 if "__pycache__" not in p.parts)


def test_every_module_has_a_layer():
    assert MODULES and all(layer_of(module_name(p)) for p in MODULES), \
        [module_name(p) for p in MODULES if not layer_of(module_name(p))]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_follow_the_layers(path):
    me = layer_of(module_name(path))
    wrong = []
    for target in imports_of(path):
        top = target.split(".")[0]
        if top == "ray" and me not in RAY_LAYERS:
            wrong.append(f"{target} (Ray, outside the platform)")
        layer = layer_of(target) if top in ("sqn_ray", "analysis") else None
        if layer is not None and layer not in ALLOWED[me]:
            wrong.append(f"{target} ({me} -> {layer})")
    assert not wrong, f"{module_name(path)} imports {wrong}"


@pytest.mark.parametrize("path", [p for p in MODULES if module_name(p).startswith("analysis")
                                  and module_name(p) not in ("analysis.eigen", "analysis.cli", "analysis.__main__")],
                         ids=lambda p: module_name(p))
def test_the_analysis_readers_read_files_only(path):
    """No problem is built and no optimizer run to draw a report: n, d and targets come from the metadata."""
    used = {t for t in imports_of(path) if t.split(".")[0] == "sqn_ray"}
    wrong = sorted(t for t in used if not any(t == a or t.startswith(a + ".") for a in ANALYSIS_READER_IMPORTS)
                   and t != "sqn_ray")
    assert not wrong, f"{module_name(path)} imports {wrong}"
