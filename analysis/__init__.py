"""Analysis of sqn-ray studies: figures, tables, findings and an HTML report, from Parquet only.

    sqn-ray report results/paper-toy              # -> results/paper-toy/report/report.html (+ PNG/SVG, CSV)
    sqn-ray eigen --out results/paper-toy/eigen.parquet   # figure 5's data (eigen-spectra along S-LSR1)

    >>> from analysis import load_results, figures, tables
    >>> study = load_results("results/paper-toy")
    >>> tables.summary_table(study)
    >>> figures.convergence(study).savefig("convergence.png")

A tuned study's methods are compared on its evaluation stage: ``study = load_results(DIR).comparison()`` (a plain
study: every trial); its tuning stage is ``load_results(DIR).stage("tuning")`` (:mod:`~analysis.tuning`).

Modules: :mod:`~analysis.load` (Parquet in), :mod:`~analysis.tables`, :mod:`~analysis.figures` (one function per
figure), :mod:`~analysis.findings`, :mod:`~analysis.report`, :mod:`~analysis.profiles` (performance and data
profiles), :mod:`~analysis.costs` (the cost claim: sampled / classical at equal m), :mod:`~analysis.tuning` (a tuned
study's tuning curves and choice), :mod:`~analysis.eigen`, :mod:`~analysis.cli`.
``python -m analysis report DIR`` works without the package's CLI.
"""
__all__ = ["StudyResults", "load_results", "Study", "load_study"]  # the last two: the earlier names


def __getattr__(name):  # lazy: `sqn-ray --help` imports analysis.cli and should not pay for pandas
    if name in __all__:
        from . import load

        return getattr(load, name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
