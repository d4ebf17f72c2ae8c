"""Benchmark: time to a large grid's first finished trial, against a small grid's, in the same run.

    python bench/bench_grid_start.py [--cells 100000] [--baseline-cells 100]

Each grid is ``gd`` on toy-small over ``cells / 10`` learning rates × 10 seeds, 2 iterations a trial. For each,
``sqn-ray study run`` is started as a user starts it (embedded Ray) and the time from the command to the first
trial recorded as finished in ``DIR/trials.parquet`` is taken; then the study is interrupted (Ctrl-C). Also
timed: ``sqn-ray study validate`` of the large file. Printed: both times and their ratio (goal: close to 1;
the fixed part, Python and Ray start, is the same for both). Before cells reached Tune as indices, Tune
expanded a grid of n cells in O(n²) and 100,000 cells never started a trial.
"""
from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SQN = [sys.executable, "-m", "sqn_ray.cli"]


def study_file(folder: Path, cells: int) -> Path:
    rates = ", ".join(f"{1e-4 * (i + 1):.6g}" for i in range(max(1, cells // 10)))
    path = folder / f"grid-{cells}.yaml"
    path.write_text(f"name: grid-{cells}\nproblems: [toy-small]\nmethods:\n  gd: {{lr: [{rates}]}}\nseeds: 10\n"
                    "budget: {iterations: 2}\nreport_interval: 0\n")
    return path


def first_trial_time(path: Path, out: Path, timeout: float = 300.0) -> float:
    import pandas as pd

    t0 = time.monotonic()
    proc = subprocess.Popen([*SQN, "study", "run", str(path), "--out", str(out), "--quiet"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while time.monotonic() - t0 < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"the study ended first ({proc.returncode}): {proc.stderr.read()[-2000:]}")
            try:
                if (pd.read_parquet(out / "trials.parquet", columns=["status"]).status != "running").any():
                    return time.monotonic() - t0
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"no trial finished within {timeout} s")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=100_000)
    ap.add_argument("--baseline-cells", type=int, default=100)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sqn-grid-") as tmp:
        tmp = Path(tmp)
        big, small = study_file(tmp, args.cells), study_file(tmp, args.baseline_cells)
        t0 = time.monotonic()
        subprocess.run([*SQN, "study", "validate", str(big)], cwd=ROOT, check=True, capture_output=True)
        validate = time.monotonic() - t0
        base = first_trial_time(small, tmp / "small")
        large = first_trial_time(big, tmp / "big")
    print(f"validate {args.cells:,} cells: {validate:.1f} s (the command, Python start included)")
    print(f"first finished trial: {args.baseline_cells:,} cells {base:.1f} s, {args.cells:,} cells {large:.1f} s, "
          f"ratio {large / base:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
