"""Benchmark: the results store (``sqn_ray.study.results.ResultStore``) under millions of rows, no optimizer.

    python bench/bench_store.py                      # 10,000,000 rows: 2,000 trials x 5,000 iterations
    python bench/bench_store.py --rows 1000000       # a quicker look

Synthetic trials push rows through the store exactly as the driver does in a study: ``--concurrency`` trials
run at a time, each sending chunks of ``--chunk`` rows with every column of the iteration record (random
values, so that compression is not flattered), the writer's unforced ``flush()`` after every few chunks (as the
writer thread does every 0.5 s), ``finish`` at each trial's end, and the compaction (``flush(force=True)``)
at the end. The row chunks are made before the clock starts (the store's cost only).

Printed: rows/s through the store (with and without the final compaction), bytes the store wrote by kind
(segments, finished parts, live trials.parquet, final files) and in all against the final files' size
(goal ≤ 3×), the bytes the process wrote to disk (/proc/self/io write_bytes), and the driver's resident
memory: peak, and RSS after every 10 % of the rows (goal: flat in the number of rows).
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqn_ray.study import results as R  # noqa: E402
from sqn_ray.study.spec import parse_study  # noqa: E402


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def disk_writes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def chunk_pool(size: int, count: int, seed: int = 0) -> list[pa.Table]:
    """``count`` record chunks of ``size`` rows, every record column filled with plausible random values."""
    rng = np.random.default_rng(seed)
    types = {**R.RECORD_COLUMNS, **R.OPTIMIZER_COLUMNS}
    pool = []
    for _ in range(count):
        cols = {}
        for name, typ in types.items():
            if pa.types.is_floating(typ):
                cols[name] = pa.array(rng.lognormal(0.0, 1.0, size))
            elif pa.types.is_integer(typ):
                cols[name] = pa.array(rng.integers(0, 1000, size))
            else:
                cols[name] = pa.array(rng.random(size) < 0.9)
        pool.append(pa.table(cols))
    return pool


def with_iterations(chunk: pa.Table, start: int) -> pa.Table:
    i = chunk.column_names.index("iteration")
    return chunk.set_column(i, "iteration", pa.array(np.arange(start, start + chunk.num_rows, dtype=np.int64)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--rows-per-trial", type=int, default=5_000)
    ap.add_argument("--chunk", type=int, default=500, help="rows per result a trial sends")
    ap.add_argument("--concurrency", type=int, default=16, help="trials running at once")
    ap.add_argument("--flush-every", type=int, default=8, help="chunks between two live flushes")
    ap.add_argument("--out", default=None, help="folder to write into (default: a temporary one)")
    args = ap.parse_args(argv)

    n_trials = max(1, args.rows // args.rows_per_trial)
    per_trial = args.rows_per_trial
    study = parse_study({"name": "store-bench", "problems": ["toy-small"], "methods": {"s-lsr1": {"memory": [2]}},
                         "seeds": n_trials}, source="bench_store", text="name: store-bench\n")
    pool = chunk_pool(args.chunk, 64)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        store = R.ResultStore(out, study)
        info = {"node_id": "bench", "device": "cpu", "threads": 1, "problem_target_accuracy": None,
                "problem_dim": 36, "problem_n": 100}
        cells = {f"bench_{k:06d}": {"problem": "toy-small", "method": "s-lsr1", "seed": k, "options": {"memory": 2}}
                 for k in range(n_trials)}
        pending = list(cells)
        running: dict[str, int] = {}  # trial id -> next iteration
        sent = chunks = 0
        total = n_trials * per_trial
        marks, next_mark = [], total // 10
        writes0, rss0 = disk_writes(), rss_mb()
        t0 = time.perf_counter()
        while pending or running:
            while pending and len(running) < args.concurrency:
                tid = pending.pop(0)
                store.start(tid, cells[tid])
                running[tid] = 0
            for tid in list(running):
                start = running[tid]
                n = min(args.chunk, per_trial - start)
                chunk = with_iterations(pool[chunks % len(pool)].slice(0, n), start)
                store.add_rows(tid, cells[tid], chunk, info if start == 0 else None)
                running[tid] = start + n
                sent += n
                chunks += 1
                if running[tid] >= per_trial:
                    store.finish(tid, cells[tid], {"status": "budget", "stop_reason": "iterations"})
                    del running[tid]
                if chunks % args.flush_every == 0:
                    store.flush()
                if sent >= next_mark:
                    marks.append((sent, rss_mb()))
                    next_mark += total // 10
        t_stream = time.perf_counter() - t0
        store.flush(force=True)
        t_all = time.perf_counter() - t0
        final = store.iterations_path.stat().st_size + store.trials_path.stat().st_size
        written = sum(store.bytes_written.values())
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{sent:,} rows, {n_trials:,} trials x {per_trial:,} iterations, chunks of {args.chunk}, "
              f"{args.concurrency} trials at a time, {len(R.RECORD_COLUMNS) + len(R.OPTIMIZER_COLUMNS)} record "
              f"columns + {len(store._identity_types())} identity columns")  # noqa: SLF001
        print(f"rows/s: {sent / t_stream:,.0f} streaming ({t_stream:.1f} s), {sent / t_all:,.0f} with the final "
              f"compaction ({t_all - t_stream:.1f} s)")
        print(f"final files: {final / 1e6:.1f} MB (iterations.parquet {store.iterations_path.stat().st_size / 1e6:.1f}"
              f" MB, trials.parquet {store.trials_path.stat().st_size / 1e6:.2f} MB)")
        kinds = ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in store.bytes_written.items())
        print(f"bytes the store wrote: {written / 1e6:.1f} MB = {written / final:.2f} x the final files ({kinds})")
        print(f"bytes the process wrote to disk (/proc/self/io): {(disk_writes() - writes0) / 1e6:.1f} MB")
        print(f"RSS: {rss0:.0f} MB before, peak {peak:.0f} MB; after each 10 % of the rows: "
              + ", ".join(f"{rows / 1e6:.1f}M: {mb:.0f}" for rows, mb in marks) + " MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
