"""The data-parallel oracle on Ray equals the single-process oracle to round-off, and every optimizer runs on it
unchanged. One round trip per call; communication counted exactly. (All Ray tests of the suite live here.)"""

import numpy as np
import pandas as pd
import pytest
import torch

import sqn_ray
from sqn_ray.distributed import DataParallelOracle, MLPShards, shard_bounds
from sqn_ray.problems.mlp import MLPOracle

F64 = torch.float64
SIZES = (6, 7, 3)
N = 103


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((N, SIZES[0])), rng.integers(0, SIZES[-1], N)


@pytest.fixture(scope="module")
def reference(data):
    X, y = data
    return MLPOracle(SIZES, "tanh", torch.tensor(X), torch.tensor(y), F64)


@pytest.fixture(scope="module")
def dp2(ray_local, data):
    X, y = data
    with DataParallelOracle(MLPShards(SIZES, "tanh", X, y, "float64", chunk_size=20), 2, cpus_per_worker=0.5) as dp:
        yield dp


def rel(a, b):
    return float((a - b).norm() / b.norm())


def point(seed, d, *shape):
    return torch.randn(d, *shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_every_oracle_call_matches_the_single_process_oracle(dp2, reference):
    d = reference.dim
    assert (dp2.dim, dp2.dtype, dp2.n, dp2.shard_sizes) == (d, F64, N, [52, 51])
    w, V, W = point(0, d), point(1, d, 5), point(2, d) [:, None] + 0.1 * point(3, d, 4)
    f, g = dp2.loss_and_grad(w)
    f0, g0 = reference.loss_and_grad(w)
    assert abs(float(f - f0)) <= 1e-14 * abs(float(f0)) and rel(g, g0) < 1e-13
    assert rel(dp2.hvps(w, V), reference.hvps(w, V)) < 1e-13
    assert rel(dp2.hvps(w, V[:, 0]), reference.hvps(w, V[:, :1])[:, 0]) < 1e-13
    assert rel(dp2.grads(W), reference.grads(W)) < 1e-13
    assert abs(float(dp2.loss(w + 1) - reference.loss(w + 1))) < 1e-13
    assert dp2.grads(W).dtype == F64 and dp2.hvps(w, V).shape == (d, 5)


def test_uneven_shards_over_three_workers(ray_local, data, reference):
    X, y = data
    assert [shard_bounds(N, 3, r) for r in range(3)] == [(0, 35), (35, 69), (69, 103)]
    with DataParallelOracle(MLPShards(SIZES, "tanh", X, y, "float64"), 3, cpus_per_worker=0.25) as dp:
        w = point(4, reference.dim)
        assert dp.shard_sizes == [35, 34, 34]
        assert rel(dp.loss_and_grad(w)[1], reference.loss_and_grad(w)[1]) < 1e-13


def test_communication_is_counted_per_call_and_a_point_is_sent_once(dp2):
    d, k, m = dp2.dim, 2, 3
    before = dp2.comm.snapshot()
    w = point(5, d)
    dp2.loss_and_grad(w)                    # sends w to both workers, gets (f, g) back
    dp2.hvps(w, point(6, d, m))             # w already there: only V goes down
    dp2.loss(w + 0.5)                       # a new point
    dp2.loss_and_grad((w + 0.5).clone())    # equal contents: not sent again
    c = dp2.comm.snapshot()
    delta = {key: c[key] - before[key] for key in ("calls", "round_trips", "values_down", "values_up",
                                                   "points_sent", "points_reused")}
    assert delta == {"calls": 4, "round_trips": 4, "values_down": k * d + k * d * m + k * d,
                     "values_up": k * (1 + d) + k * d * m + k * 1 + k * (1 + d),
                     "points_sent": 2, "points_reused": 2}
    assert c["bytes_down"] - before["bytes_down"] == 8 * delta["values_down"]
    assert c["compute_seconds"] <= c["wall_seconds"]


@pytest.mark.parametrize("method, options", [
    ("s-lsr1", {"memory": 4, "sampling": "hvp"}),
    ("s-lbfgs", {"memory": 4, "sampling": "grad-diff", "radius": 1e-2}),
    ("lbfgs", {"memory": 4}),
    ("adam", {"lr": 0.05}),
])
def test_optimizers_run_unchanged_and_follow_the_same_trajectory(dp2, reference, method, options):
    w0 = point(7, reference.dim)
    before = dp2.comm.snapshot()
    a = sqn_ray.minimize(dp2, w0.clone(), method, max_iters=8, seed=3, **options)
    b = sqn_ray.minimize(reference, w0.clone(), method, max_iters=8, seed=3, **options)
    cols = ["loss", "n_fun", "n_grad", "n_hvp", "accepted"]
    assert a.history[cols[1:]].equals(b.history[cols[1:]])
    np.testing.assert_allclose(a.history["loss"], b.history["loss"], rtol=1e-11, atol=0)
    assert rel(a.x, b.x) < 1e-10
    # one round trip per oracle call: value / value_and_grad / one HVP block / one Option I block each
    kinds = dp2.comm.snapshot()["by_kind"]
    calls = {key: kinds.get(key, {"calls": 0})["calls"] - before["by_kind"].get(key, {"calls": 0})["calls"]
             for key in ("loss", "loss_and_grad", "hvps", "grads")}
    last = a.history.iloc[-1]
    m = options.get("memory", 0)
    assert calls["loss"] + calls["loss_and_grad"] == last["n_fun"]
    assert calls["hvps"] * m == last["n_hvp"]
    assert calls["loss_and_grad"] + calls["grads"] * m == last["n_grad"]


def test_minibatch_gradient_is_the_gradient_on_the_union_of_the_workers_rows(dp2, data):
    X, y = data
    w = point(8, dp2.dim)
    f, g = dp2.minibatch_loss_and_grad(w, 1, 10)  # 5 rows per worker: shard rows [5, 10) of each
    rows = list(range(5, 10)) + list(range(52 + 5, 52 + 10))
    ref = MLPOracle(SIZES, "tanh", torch.tensor(X[rows]), torch.tensor(y[rows]), F64)
    f0, g0 = ref.loss_and_grad(w)
    assert abs(float(f - f0)) < 1e-14 and rel(g, g0) < 1e-13


def test_bad_input_fails_clearly(ray_local, dp2, data):
    with pytest.raises(ValueError, match=r"w must have shape"):
        dp2.loss(torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="num_workers must be a positive integer, got 0"):
        DataParallelOracle(MLPShards(SIZES, "tanh", *data), 0)
    with pytest.raises(RuntimeError, match=r"did not start within 1 s.*available"):
        DataParallelOracle(MLPShards(SIZES, "tanh", *data), 2, cpus_per_worker=8, startup_timeout=1)


@pytest.mark.slow
def test_scaling_runner_writes_tidy_parquet(ray_local, tmp_path):
    from sqn_ray.io import read_parquet_metadata
    from sqn_ray.scaling import parse_scaling_spec, run_scaling

    spec = parse_scaling_spec({
        "name": "t", "problem": "synthetic-mlp", "n_train": 600, "dtype": "float64",
        "throughput": {"batch_sizes": [32, 128], "operations": ["loss", "gradient", "hvp-batch", "grad-batch"],
                       "memory": 2, "repeats": 1},
        "workers": {"counts": [1, 2], "memory": 2, "iterations": 1, "sg_batch_size": 50, "sg_steps": 3,
                    "cpus_per_worker": 0.25, "chunk_size": None}})
    written = run_scaling(spec, tmp_path, figures=True, log=lambda s: None)
    tp = pd.read_parquet(written["throughput"])
    assert len(tp) == 8 and set(tp["operation"]) == {"loss", "gradient", "hvp-batch", "grad-batch"}
    assert (tp["samples_per_second"] > 0).all()
    np.testing.assert_allclose(tp["samples_per_second"], tp["batch_size"] / tp["seconds"])
    every = pd.read_parquet(written["workers"])
    # both engines, measured in the same run: the hand-written actors and Ray Train's all-reduce workers
    assert sorted(zip(every["path"], every["task"], every["workers"])) == sorted(
        (path, task, k) for path in ("actors", "train") for task in ("s-lsr1-iteration", "sg-epoch") for k in (1, 2))
    wk = every[every["path"] == "actors"]
    sg = wk[wk["task"] == "sg-epoch"].set_index("workers")
    assert (sg["round_trips"] == 600 // 50).all() and sg["extrapolated"].all()
    # per epoch each worker receives w and sends back (f, g) once per step
    d = int(wk["dim"].iloc[0])
    assert sg.loc[2, "values_up"] == 2 * sg.loc[1, "values_up"] == 2 * 12 * (1 + d)
    train = every[every["path"] == "train"]
    sg = train[train["task"] == "sg-epoch"].set_index("workers")
    # DDP's way: one all-reduce of (g, f) per step, whatever the number of workers
    assert (sg["collectives"] == 12).all() and (sg["values_allreduced"] == 12 * (1 + d)).all()
    it = train[train["task"] == "s-lsr1-iteration"].set_index("workers")
    # an S-LSR1 iteration (Option II): one all-reduce of (g, f), one of the m HVPs, one of the trial loss
    assert (it["collectives"] >= 2).all() and (it["values_allreduced"] >= (1 + d) + 2 * d).all()
    assert (train["seconds"] > 0).all() and (train["overhead_seconds"] >= 0).all()
    assert "sqn_ray.scaling" in read_parquet_metadata(written["workers"])
    assert written["workers_figure"].stat().st_size > 0 and written["throughput_figure"].exists()
