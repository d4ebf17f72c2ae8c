"""Timing shared by the benchmarks (torch only, so that bench/gpu_check.py runs on a machine with torch alone)."""
from __future__ import annotations

import statistics
import time

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn, device: torch.device, repeats: int, *, warmup: bool = False) -> float:
    """Median seconds of ``repeats`` synchronised calls of ``fn`` (after one untimed call when ``warmup``)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def mean_seconds(fn, device: torch.device, window: float, *, warmup: bool = False) -> float:
    """Mean seconds per call of ``fn`` over calls filling at least ``window`` seconds (synchronised; one untimed
    call first when ``warmup``): the unit of a ratio whose numerator is itself a mean over a long call (a whole
    run), so that both average over comparable stretches of a machine whose speed drifts (a shared VM's varies
    ±30 % within a second)."""
    if warmup:
        fn()
    calls = 0
    sync(device)
    t0 = time.perf_counter()
    while True:
        fn()
        calls += 1
        sync(device)
        elapsed = time.perf_counter() - t0
        if elapsed >= window:
            return elapsed / calls
