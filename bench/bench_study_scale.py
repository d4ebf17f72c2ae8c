"""Benchmark: a whole study on embedded Ray, as the driver sees it: bytes it wrote, its memory, its CPU.

    python bench/bench_study_scale.py studies/sensitivity.yaml --out /tmp/sensitivity   # ~20 min on 2 cores
    python bench/bench_study_scale.py studies/sensitivity.yaml --smoke --out /tmp/sens-smoke

Runs ``run_study`` in this process (the driver) and prints: wall time, rows and trials, the final files' size,
the bytes the driver process wrote to disk (/proc/self/io write_bytes: the results store, Tune's experiment
state and checkpoints, logs) against the final files' size, the results store's own bytes by kind, the driver's
peak resident memory (getrusage, this process only: Ray's workers are other processes) and its CPU time. Then
the time pandas takes to read both Parquet files, and the time of ``sqn-ray report`` on the folder (a fresh
process, as a user runs it).
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def disk_writes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study")
    ap.add_argument("--out", required=True)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--num-cpus", type=int, default=None)
    ap.add_argument("--no-report", action="store_true")
    args = ap.parse_args(argv)

    import pandas as pd

    from sqn_ray.study.runner import run_study
    from sqn_ray.study.spec import load_study_spec

    study = load_study_spec(args.study, smoke=args.smoke)
    writes0, cpu0, t0 = disk_writes(), time.process_time(), time.perf_counter()
    outcome = run_study(study, args.out, progress=False, num_cpus=args.num_cpus)
    wall, cpu, written = time.perf_counter() - t0, time.process_time() - cpu0, disk_writes() - writes0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = Path(args.out)
    final = sum((out / f).stat().st_size for f in ("iterations.parquet", "trials.parquet"))
    t1 = time.perf_counter()
    it, tr = pd.read_parquet(out / "iterations.parquet"), pd.read_parquet(out / "trials.parquet")
    read = time.perf_counter() - t1
    store = outcome.extra.get("bytes_written", {})
    print(f"study {study.name}{' --smoke' if args.smoke else ''}: {len(tr):,} trials, {len(it):,} rows, "
          f"{outcome.counts}, wall {wall:.0f} s")
    print(f"final files {final / 1e6:.1f} MB; the driver wrote {written / 1e6:.1f} MB to disk = "
          f"{written / final:.2f} x "
          f"(results store {sum(store.values()) / 1e6:.1f} MB: "
          + ", ".join(f"{k} {v / 1e6:.1f}" for k, v in store.items()) + ")")
    print(f"driver peak RSS {peak:.0f} MB, driver CPU {cpu:.0f} s")
    print(f"pandas read of iterations.parquet + trials.parquet: {read:.2f} s")
    if not args.no_report:
        t2 = time.perf_counter()
        rep = subprocess.run([sys.executable, "-m", "analysis", "report", str(out)], cwd=ROOT, capture_output=True,
                             text=True)
        print(f"sqn-ray report: {time.perf_counter() - t2:.1f} s (exit {rep.returncode})")
        if rep.returncode:
            print(rep.stderr[-2000:])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
