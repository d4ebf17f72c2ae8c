"""The study platform: declarative studies (YAML) run as Ray Tune trials, results in tidy Parquet.

* :mod:`sqn_ray.study.spec`      load and validate a study file (no Ray needed)
* :mod:`sqn_ray.study.search`    trials generated one grid cell at a time, with stable trial ids
* :mod:`sqn_ray.study.outdir`    the output folder: its lock, checks before Ray starts, the study record
* :mod:`sqn_ray.study.runner`    :func:`run_study` on an embedded or an existing Ray cluster
* :mod:`sqn_ray.study.trainable` the Tune trainable (one trial = one ``sqn_ray.minimize`` run)
* :mod:`sqn_ray.study.results`   ``iterations.parquet`` / ``trials.parquet``: append-only parts, the compaction,
  metadata, reading a running study (:func:`read_live`, :func:`live_files`)
* :mod:`sqn_ray.study.loggers`   the study file's ``loggers`` (TensorBoard, MLflow, W&B) as Tune callbacks
* :mod:`sqn_ray.study.progress`  the compact live progress table
* :mod:`sqn_ray.study.cluster`   offline validation of a cluster-launcher file
* :mod:`sqn_ray.study.cli`       ``sqn-ray study run|validate|check-cluster``

Importing this package does not import Ray; :mod:`~sqn_ray.study.runner` and
:mod:`~sqn_ray.study.trainable` do.
"""
from .results import live_files, read_live
from .spec import Study, StudySpec, StudySpecError, load_study, load_study_spec, parse_study

# Study / load_study: the earlier names of StudySpec / load_study_spec
__all__ = ["StudySpec", "StudySpecError", "load_study_spec", "parse_study", "run_study", "read_live", "live_files",
           "Study", "load_study"]


def run_study(*args, **kwargs):
    """See :func:`sqn_ray.study.runner.run_study` (imported on first use: it brings Ray)."""
    from .runner import run_study as _run

    return _run(*args, **kwargs)
