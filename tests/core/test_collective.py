"""The all-reduce oracle over a real torch.distributed group (2 gloo ranks in 2 processes, no Ray): every call
equals the single-process oracle on all the data to round-off, the ranks hold the same bits, the optimizer
runs replicated and follows the single-process trajectory with the same counters, and the communication is
counted exactly (one collective per call, its values)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import sqn_ray
from sqn_ray.collective import AllReduceOracle, agree_on_stop, replicas_agree
from sqn_ray.problems.mlp import MLPOracle
from sqn_ray.problems.shards import shard_bounds

F64 = torch.float64
SIZES = (6, 7, 3)
N = 103  # uneven: shards of 52 and 51 rows
M = 3
RUNS = {"s-lsr1-hvp": ("s-lsr1", {"memory": M, "sampling": "hvp"}),
        "s-lsr1-gd": ("s-lsr1", {"memory": M, "sampling": "grad-diff", "radius": 1e-3}),
        "s-lbfgs": ("s-lbfgs", {"memory": M}), "lbfgs": ("lbfgs", {"memory": M})}


def data():
    rng = np.random.default_rng(0)
    return torch.tensor(rng.standard_normal((N, SIZES[0]))), torch.tensor(rng.integers(0, SIZES[-1], N))


def probes(d):
    gen = torch.Generator().manual_seed(3)
    return (torch.randn(d, generator=gen, dtype=F64), torch.randn(d, M, generator=gen, dtype=F64),
            torch.randn(d, M, generator=gen, dtype=F64))


def _rank(rank: int, world: int, store_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    store = dist.FileStore(store_path, world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    try:
        X, y = data()
        lo, hi = shard_bounds(N, world, rank)
        oracle = AllReduceOracle(MLPOracle(SIZES, "tanh", X[lo:hi], y[lo:hi], F64), hi - lo, N)
        w, V, W = probes(oracle.dim)
        out = {"loss": oracle.loss(w), "loss_and_grad": oracle.loss_and_grad(w), "hvps": oracle.hvps(w, V),
               "grads": oracle.grads(w[:, None] + 1e-2 * W), "comm": oracle.comm.snapshot(),
               "mean": oracle.mean(float(rank + 1)), "stop": agree_on_stop(rank == 0)}
        runs = {}
        for key, (method, options) in RUNS.items():
            res = sqn_ray.minimize(oracle, torch.zeros(oracle.dim, dtype=F64) + 0.1, method, max_iters=8, seed=5,
                                   **options)
            runs[key] = {"x": res.x, "history": res.history, "agree": replicas_agree(res.x)}
        out["runs"] = runs
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("collective")
    mp.start_processes(_rank, args=(2, str(tmp / "store"), str(tmp)), nprocs=2, join=True, start_method="spawn")
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def full():
    X, y = data()
    return MLPOracle(SIZES, "tanh", X, y, F64)


def rel(a, b):
    return float((a - b).norm() / b.norm())


def test_every_call_is_the_oracle_of_all_the_data(ranks, full):
    w, V, W = probes(full.dim)
    f, g = full.loss_and_grad(w)
    for out in ranks:
        assert abs(float(out["loss"]) - float(full.loss(w))) < 1e-14
        assert abs(float(out["loss_and_grad"][0]) - float(f)) < 1e-14 and rel(out["loss_and_grad"][1], g) < 1e-13
        assert rel(out["hvps"], full.hvps(w, V)) < 1e-13
        assert rel(out["grads"], full.grads(w[:, None] + 1e-2 * W)) < 1e-13


def test_the_ranks_get_the_same_bits(ranks):
    a, b = ranks
    for key in ("loss", "hvps", "grads"):
        assert torch.equal(a[key], b[key])
    assert torch.equal(a["loss_and_grad"][1], b["loss_and_grad"][1])


def test_one_collective_per_call_with_its_values_counted(ranks, full):
    d = full.dim
    comm = ranks[0]["comm"]
    assert comm["collectives"] == 4
    assert comm["values"] == 1 + (d + 1) + d * M + d * M
    assert comm["bytes"] == 8 * comm["values"]
    assert comm["by_kind"]["hvps"] == {"collectives": 1, "values": d * M, "seconds": comm["by_kind"]["hvps"]["seconds"]}


def test_weighted_mean_and_rank_zeros_decision(ranks):
    # shard weights 52/103 and 51/103 of the values 1 and 2
    for out in ranks:
        assert out["mean"] == pytest.approx((52 * 1 + 51 * 2) / 103, abs=1e-15)
        assert out["stop"] is True  # rank 0 said stop; rank 1 said go on: rank 0 decides


@pytest.mark.parametrize("key", sorted(RUNS))
def test_replicated_optimizer_follows_the_single_process_trajectory(ranks, full, key):
    method, options = RUNS[key]
    ref = sqn_ray.minimize(full, torch.zeros(full.dim, dtype=F64) + 0.1, method, max_iters=8, seed=5, **options)
    a, b = ranks[0]["runs"][key], ranks[1]["runs"][key]
    assert a["agree"] and b["agree"] and torch.equal(a["x"], b["x"])
    assert rel(a["x"], ref.x) < 1e-9
    np.testing.assert_allclose(a["history"]["loss"], ref.history["loss"], rtol=1e-9)
    for counter in ("n_fun", "n_grad", "n_hvp", "accepted"):
        assert list(a["history"][counter]) == list(ref.history[counter])


def test_needs_a_process_group():
    X, y = data()
    with pytest.raises(RuntimeError, match="process group"):
        AllReduceOracle(MLPOracle(SIZES, "tanh", X, y, F64), N, N)
