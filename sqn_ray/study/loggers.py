"""Experiment tracking: the Tune logger callbacks a study file names in ``loggers:``.

Each logger sees what a trial reports to Tune after the platform's own callback has taken the per-iteration
rows out (they go to Parquet): the live metrics (``loss``, ``grad_norm``, ``best_loss``, ``accuracy``,
``best_accuracy``, ``iteration``, ``grad_equivalents``, ``epochs``, ``wall_time``) and Tune's timings, with the
optimizer's ``iteration`` as the step. A trial's hyperparameters are its cell (``problem``, ``method``,
``seed`` and each option by its own name, as in ``trials.parquet``), not Tune's config (an index into the
grid). The loggers, Ray Tune 2.60's:

* ``tensorboard``: :class:`ray.tune.logger.TBXLoggerCallback`, writing each trial's event files to
  ``DIR/tensorboard/<trial id>/`` as it runs (Tune's own place is a staging folder synced into ``DIR/.tune``
  now and then): ``tensorboard --logdir DIR/tensorboard``; hyperparameters in the HPARAMS tab.
* ``mlflow``: :class:`ray.air.integrations.mlflow.MLflowLoggerCallback`, one run per trial (named by its trial
  id) in the MLflow experiment named after the study, at ``$MLFLOW_TRACKING_URI`` when set, else in the SQLite
  store ``DIR/mlflow.db`` (``mlflow ui --backend-store-uri sqlite:///DIR/mlflow.db``; MLflow 3 refuses its
  old file store ``mlruns/`` unless told otherwise).
* ``wandb``: :class:`ray.air.integrations.wandb.WandbLoggerCallback`, one run per trial in the W&B project
  ``$WANDB_PROJECT``, else the study's name; its local files in ``$WANDB_DIR``, else ``DIR/wandb`` (log in
  first with ``wandb login``, or set ``WANDB_MODE=offline``).

The study file's validation has checked that each logger's package is installed (:data:`~.spec.LOGGERS`).
The callbacks run on the driver; they must come after the platform's callback in Tune's list.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

from ray.air.constants import TRAINING_ITERATION
from ray.tune import Callback
from ray.tune.logger import TBXLoggerCallback
from ray.tune.result import TIMESTEPS_TOTAL

from .spec import LOGGERS, CellGrid, StudySpec
from .trainable import cell_from_config, trial_dirname

__all__ = ["logger_callbacks", "trial_params", "TENSORBOARD_DIR", "MLFLOW_DB"]

#: where in the study folder the loggers that keep files write them
TENSORBOARD_DIR = "tensorboard"
MLFLOW_DB = "mlflow.db"
logger = logging.getLogger(__name__)
#: Tune's bookkeeping in every result that is not worth a chart (TensorBoard's logger drops the last three itself;
#: the config is an index into the grid: the cell is logged as the hyperparameters instead)
_NOT_LOGGED = ("done", "config", "pid", "timestamp")


def logger_callbacks(study: StudySpec, out_dir: str | Path) -> list[Callback]:
    """The Tune callbacks of the study's ``loggers``, in its order (``[]`` for none).

    Args:
        study: the validated study (its ``loggers``, name and grid).
        out_dir: the study's folder (``DIR``): TensorBoard's event files and MLflow's default store go there.

    Returns:
        Fresh callbacks, to put after the platform's own callback in ``tune.RunConfig(callbacks=...)``.
    """
    out = Path(out_dir)
    build = {"tensorboard": lambda: _TensorBoard(out / TENSORBOARD_DIR, study.grid),
             "mlflow": lambda: _mlflow(study, out), "wandb": lambda: _wandb(study, out)}
    unknown = [name for name in study.loggers if name not in LOGGERS]
    if unknown:  # parse_study refuses them: only a hand-made StudySpec gets here
        raise ValueError(f"unknown logger(s) {', '.join(unknown)}; allowed: {', '.join(LOGGERS)}")
    return [build[name]() for name in study.loggers]


def trial_params(config: dict, grid: CellGrid | None) -> dict[str, Any]:
    """A trial's cell as flat hyperparameters: ``problem``, ``method``, ``seed``, then each option by its own
    name; values are str, bool, int or float (anything else, e.g. None, as its ``str``)."""
    cell = cell_from_config(config, grid)
    params: dict[str, Any] = {"problem": cell["problem"], "method": cell["method"], "seed": cell["seed"]}
    for name, value in cell["options"].items():
        params.setdefault(name, value if isinstance(value, (bool, int, float, str)) else str(value))
    return params


class _Placeholder(Callback):
    """What a logger callback becomes in Tune's saved state (``tuner.pkl``): nothing. A restore installs fresh
    callbacks; the saved state holds no writer, client or reference to a logger's package."""


def _placeholder() -> Callback:
    return _Placeholder()


class _StudyLogger:
    """What the three loggers share: the study's grid (to name a trial's hyperparameters), the step of a result
    (the optimizer's iteration, not Tune's count of reports), pickling as a placeholder."""

    grid: CellGrid | None = None

    def __reduce__(self):
        return _placeholder, ()

    def params(self, trial) -> dict[str, Any]:
        return trial_params(trial.config, self.grid)

    @staticmethod
    def stepped(result: dict) -> dict:
        """The result as the logger sees it: ``timesteps_total`` (the step Tune's loggers use) the iteration
        reached, without :data:`_NOT_LOGGED`."""
        out = {k: v for k, v in result.items() if k not in _NOT_LOGGED}
        iteration = result.get("iteration")
        if isinstance(iteration, (int, float)) and not isinstance(iteration, bool) and math.isfinite(iteration):
            out[TIMESTEPS_TOTAL] = int(iteration)
            if not iteration:  # their step is ``timesteps_total or training_iteration``: the initial point is 0
                out[TRAINING_ITERATION] = 0
        return out


class _TensorBoard(_StudyLogger, TBXLoggerCallback):
    """Tune's TensorBoard logger writing to ``logdir/<trial id>`` and naming the cell as hyperparameters."""

    def __init__(self, logdir: Path, grid: CellGrid):
        super().__init__()
        self.logdir, self.grid = Path(logdir), grid

    # Ray 2.60's log_trial_start with the folder changed (Tune's is the trial's staging folder on the driver)
    def log_trial_start(self, trial):
        if trial in self._trial_writer:
            self._trial_writer[trial].close()
        self._trial_writer[trial] = self._summary_writer_cls(str(self.logdir / trial_dirname(trial)), flush_secs=30)
        self._trial_result[trial] = {}

    def log_trial_result(self, iteration, trial, result):
        super().log_trial_result(iteration, trial, self.stepped(result))

    # Ray 2.60's _try_log_hparams with the cell in place of Tune's config (``{"cell": index, "draw": {...}}``)
    def _try_log_hparams(self, trial, result):
        from tensorboardX.summary import hparams

        writer = self._trial_writer[trial].file_writer
        try:  # as Tune's: a logger's trouble never fails the study
            for summary in hparams(hparam_dict=self.params(trial), metric_dict=result):
                writer.add_summary(summary)
        except Exception:  # noqa: BLE001
            logger.exception("TensorBoard: could not log the hyperparameters of trial %s", trial)


def _mlflow(study: StudySpec, out: Path) -> Callback:
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class MLflow(_StudyLogger, MLflowLoggerCallback):
        """Tune's MLflow logger with the cell as each run's parameters (logged once, when the run starts)."""

        # Ray 2.60's log_trial_start with the cell's parameters in place of Tune's config
        def log_trial_start(self, trial):
            if trial not in self._trial_runs:
                tags = {**self.tags, "trial_name": str(trial)}
                run = self.mlflow_util.start_run(tags=tags, run_name=str(trial))
                self._trial_runs[trial] = run.info.run_id
                self.mlflow_util.log_params(run_id=run.info.run_id, params_to_log=self.params(trial))

        def log_trial_result(self, iteration, trial, result):
            super().log_trial_result(iteration, trial, self.stepped(result))

    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(out / MLFLOW_DB).resolve()}"
    callback = MLflow(tracking_uri=uri, experiment_name=study.name, tags={"study": study.name})
    callback.grid = study.grid
    return callback


def _wandb(study: StudySpec, out: Path) -> Callback:
    import wandb  # noqa: F401 - an installed but broken wandb says what is wrong (Tune's says 'not found')
    from ray.air.integrations.wandb import WandbLoggerCallback

    class Wandb(_StudyLogger, WandbLoggerCallback):
        """Tune's W&B logger with the cell as each run's config (``wandb.init(config=...)``)."""

        def log_trial_start(self, trial):
            # the callback's own wandb.init keywords are applied last: the cell replaces Tune's config there
            self.kwargs = {**self.kwargs, "config": self.params(trial)}
            super().log_trial_start(trial)

        def log_trial_result(self, iteration, trial, result):
            super().log_trial_result(iteration, trial, self.stepped(result))

    where = {} if os.environ.get("WANDB_DIR") else {"dir": str(out)}  # wandb.init's; it adds wandb/ itself
    callback = Wandb(project=os.environ.get("WANDB_PROJECT") or study.name, **where)
    callback.grid = study.grid
    return callback
