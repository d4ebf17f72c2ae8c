"""Fixtures of the analysis tests: one small real study run through the study platform (Ray Tune), plus the
figure-5 data made by the eigen command; shared by every test of the session."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parents[2]
STUDY_FILE = Path(__file__).with_name("analysis-test.yaml")


@pytest.fixture(scope="session")
def study_dir(tmp_path_factory) -> Path:
    """`sqn-ray study run tests/analysis/analysis-test.yaml` (16 real trials) and `sqn-ray eigen` into one folder."""
    out = tmp_path_factory.mktemp("analysis") / "study"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([sys.executable, "-m", "sqn_ray.study", "run", str(STUDY_FILE), "--out", str(out), "--quiet",
                          "--num-cpus", "2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    from analysis.__main__ import main

    assert main(["eigen", "--problem", "toy-small", "--seed", "0", "--out", str(out / "eigen.parquet")]) == 0
    return out


@pytest.fixture(scope="session")
def report(study_dir, tmp_path_factory):
    from analysis.report import build_report

    return build_report(study_dir, tmp_path_factory.mktemp("report"), formats=("png", "svg"))


@pytest.fixture
def copy_study():
    """copy_study(src, dst): the Parquet files of a study folder into a new folder (to perturb them)."""
    def copy(src: Path, dst: Path, files=("iterations.parquet", "trials.parquet", "eigen.parquet")) -> Path:
        dst.mkdir(parents=True, exist_ok=True)
        for name in files:
            if (src / name).exists():
                shutil.copy2(src / name, dst / name)
        return dst
    return copy


@pytest.fixture(scope="session")
def tuned_dir(tmp_path_factory) -> Path:
    """The synthetic tuned study of :func:`tuned_study.write_tuned_study`."""
    from tuned_study import write_tuned_study

    return write_tuned_study(tmp_path_factory.mktemp("tuned") / "study")


@pytest.fixture(scope="session")
def tuned_report(tuned_dir, tmp_path_factory):
    """The report of the synthetic tuned study (PNG figures only)."""
    from analysis.report import build_report

    return build_report(tuned_dir, tmp_path_factory.mktemp("tuned-report"), formats=("png",))
