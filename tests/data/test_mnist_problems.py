"""MNIST problems on a small fake cache (no download): the oracles equal autograd on the plain definition of F,
the sub-sampled oracle keeps one batch per iterate, test accuracy is reported, and a missing cache says what to run.
"""
from dataclasses import replace

import numpy as np
import pytest
import torch

import sqn_ray
from sqn_ray.data import DATASETS, DataNotFetchedError, encode_idx
from sqn_ray.data.store import _sha256
from sqn_ray.distributed import WeightedSumOracle, chunked_oracle
from sqn_ray.problems import Problem
from sqn_ray.problems import mnist as M
from sqn_ray.problems.mlp import MLPOracle

F64 = torch.float64
N_TRAIN, N_TEST = 40, 9


def write_fake_dataset(monkeypatch, cache, name: str, seed: int) -> None:
    """Random digits in the four idx files of dataset ``name`` under ``cache``, pinned as the real ones are."""
    rng = np.random.default_rng(seed)
    files = {"train-images-idx3-ubyte": encode_idx(rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8)),
             "train-labels-idx1-ubyte": encode_idx(rng.integers(0, 10, N_TRAIN, dtype=np.uint8)),
             "t10k-images-idx3-ubyte": encode_idx(rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8)),
             "t10k-labels-idx1-ubyte": encode_idx(rng.integers(0, 10, N_TEST, dtype=np.uint8))}
    monkeypatch.setitem(DATASETS, name, replace(DATASETS[name], pins={k: _sha256(v) for k, v in files.items()}))
    (cache / name).mkdir()
    for k, v in files.items():
        (cache / name / k).write_bytes(v)


@pytest.fixture
def fake_cache(monkeypatch, tmp_path):
    write_fake_dataset(monkeypatch, tmp_path, "mnist", seed=3)
    M._arrays.cache_clear()
    yield str(tmp_path)
    M._arrays.cache_clear()


def rel(a, b):
    return float((a - b).norm() / b.norm())


def autograd(fun, w, V):
    x = w.detach().clone().requires_grad_(True)
    f = fun(x)
    (g,) = torch.autograd.grad(f, x, create_graph=True)
    HV = torch.stack([torch.autograd.grad(g, x, V[:, i], retain_graph=True)[0] for i in range(V.shape[1])], 1)
    return f.detach(), g.detach(), HV


def test_names():
    assert M.MNIST_PROBLEMS == ("mnist-mlp", "mnist-cnn")
    assert M.parse_mnist_name("mnist-mlp") == ("mnist", "mlp", None)
    assert M.parse_mnist_name("fashion-mnist-cnn-b256") == ("fashion-mnist", "cnn", 256)
    for bad in ("mnist", "mnist-mlp-b0", "mnist-rnn", "mnist-mlp-1000"):
        with pytest.raises(ValueError, match="unknown MNIST problem"):
            M.parse_mnist_name(bad)


def test_missing_data_tells_the_user_to_fetch(tmp_path):
    M._arrays.cache_clear()
    with pytest.raises(DataNotFetchedError, match=r"sqn-ray data fetch mnist --dir .*never download"):
        M.make_mnist_problem("mnist-mlp", data_dir=str(tmp_path))


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_full_batch_oracle_equals_autograd_on_the_definition(fake_cache, model):
    p = M.make_mnist_problem(f"mnist-{model}", dtype=F64, data_dir=fake_cache, chunk_size=16)
    assert isinstance(p, Problem) and p.dim == {"mlp": 79_510, "cnn": 5_994}[model]
    assert p.n_samples == N_TRAIN and p.batch_size is None
    assert isinstance(p.oracle, WeightedSumOracle) and len(p.oracle.parts) == 3  # 16 + 16 + 8 rows
    w = p.init(0)
    V = torch.randn(p.dim, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    f0, g0, HV0 = autograd(p.fun, w, V)
    f, g = p.oracle.loss_and_grad(w)
    assert abs(float(f - f0)) < 1e-13 and rel(g, g0) < 1e-12
    assert rel(p.oracle.hvps(w, V), HV0) < 1e-11
    W = w[:, None] + 0.1 * V
    G0 = torch.stack([autograd(p.fun, W[:, i], V[:, :1])[1] for i in range(3)], 1)
    assert rel(p.oracle.grads(W), G0) < 1e-12
    assert 0.0 <= p.accuracy(w) <= 1.0
    m = p.metrics(w)
    assert set(m) == {"test_loss", "test_accuracy"} and m["test_accuracy"] == p.test_accuracy(w)
    assert m["test_accuracy"] * N_TEST == round(m["test_accuracy"] * N_TEST)


def test_a_pickled_problem_is_a_recipe_rebuilt_from_the_cache(fake_cache):
    import pickle

    p = M.make_mnist_problem("mnist-mlp-b8", dtype=torch.float32, data_dir=fake_cache, curvature_batch_size=4)
    blob = pickle.dumps(p)
    assert len(blob) < 2_000  # the recipe, not 40 images (nor 60,000)
    q = pickle.loads(blob)
    assert ((q.name, q.dim, q.dtype, q.batch_size, q.curvature_batch_size)
            == ("mnist-mlp-b8", p.dim, torch.float32, 8, 4))
    w = p.init(3)
    assert torch.equal(q.init(3), w) and q.accuracy(w) == p.accuracy(w)
    assert torch.equal(q.oracle.loss_and_grad(w)[1], p.oracle.loss_and_grad(w)[1])  # same seed, same first batch


def test_init_is_lecun_normal_and_seeded(fake_cache):
    p = M.make_mnist_problem("mnist-mlp", dtype=torch.float32, data_dir=fake_cache)
    w = p.init(5)
    assert w.dtype == torch.float32 and torch.equal(w, p.init(5)) and not torch.equal(w, p.init(6))
    W1 = w[:784 * 100]
    assert abs(float(W1.std()) - 1 / 28) < 2e-3  # N(0, 1/784)
    assert torch.count_nonzero(w[784 * 100:785 * 100]) == 0  # biases 0


def test_subsampled_oracle_keeps_one_batch_per_iterate(fake_cache):
    p = M.make_mnist_problem("mnist-mlp-b8", dtype=F64, data_dir=fake_cache, curvature_batch_size=4)
    o = p.oracle
    assert isinstance(o, M.SubsampledOracle) and (p.batch_size, p.curvature_batch_size) == (8, 4)
    assert o.batch_fraction == 8 / N_TRAIN and o.batches_per_epoch == 5
    X = torch.from_numpy(M._arrays("mnist", fake_cache).train_images.reshape(N_TRAIN, -1) / 255.0)
    y = torch.from_numpy(M._arrays("mnist", fake_cache).train_labels.astype(np.int64))

    def ref(idx):
        return MLPOracle(M.MLP_SIZES, M.ACTIVATION, X[idx], y[idx], F64)

    w = p.init(0)
    f, g = o.loss_and_grad(w)
    B0 = o.batch_indices.clone()
    f0, g0 = ref(B0).loss_and_grad(w)
    assert abs(float(f - f0)) < 1e-14 and rel(g, g0) < 1e-13
    V = torch.randn(p.dim, 2, dtype=F64)
    assert rel(o.hvps(w, V), ref(B0[:4]).hvps(w, V)) < 1e-12         # curvature pairs on H = first 4 of B
    assert rel(o.grads(w[:, None] + V), ref(B0).grads(w[:, None] + V)) < 1e-12  # Option I on B
    assert abs(float(o.loss(w + 1e-3) - ref(B0).loss(w + 1e-3))) < 1e-14  # trial losses on the same B
    o.loss_and_grad(w.clone())                                      # same point: same batch
    assert torch.equal(o.batch_indices, B0)
    seen = [B0]
    for i in range(4):                                              # new points: the rest of the epoch
        o.loss_and_grad(w + i + 1)
        seen.append(o.batch_indices.clone())
    assert sorted(torch.cat(seen).tolist()) == list(range(N_TRAIN))  # one epoch = a permutation, no repeats
    assert o.batches_drawn == 5
    p.init(0)                                                       # a run restarts the stream from its seed
    o.loss_and_grad(w)
    assert torch.equal(o.batch_indices, B0)
    p.init(1)
    o.loss_and_grad(w)
    assert not torch.equal(o.batch_indices, B0)


@pytest.mark.parametrize("method", ["s-lsr1", "s-lbfgs", "adam"])
def test_optimizers_run_on_the_subsampled_problem(fake_cache, method):
    p = M.make_mnist_problem("mnist-cnn-b10", dtype=torch.float32, data_dir=fake_cache)
    res = sqn_ray.minimize(p.oracle, p.init(0), method, max_iters=4, **({"memory": 3} if method != "adam" else {}))
    assert res.status == "max_iters" and np.isfinite(res.history["loss"]).all()
    assert p.oracle.batches_drawn >= 2


@pytest.mark.parametrize("method", ["s-lsr1", "lbfgs"])
def test_a_subsampled_run_continued_from_its_state_draws_the_same_batches(fake_cache, method):
    """The batch stream is part of a saved run: continuing it gives the unsplit run (same batches, same iterates)."""
    p = M.make_mnist_problem("mnist-mlp-b10", data_dir=fake_cache)
    whole = sqn_ray.minimize(p.oracle, p.init(0), method, max_iters=9, memory=3)
    first = sqn_ray.minimize(p.oracle, p.init(0), method, max_iters=4, memory=3)
    fresh = M.make_mnist_problem("mnist-mlp-b10", data_dir=fake_cache)  # as in a new process
    fresh.init(0)
    rest = sqn_ray.minimize(fresh.oracle, None, max_iters=9, state=first.state)
    assert torch.equal(rest.x, whole.x)
    assert rest.history.loss.tolist() == whole.history.loss.tolist()[5:]
    assert fresh.oracle.batches_drawn == whole.state["oracle"]["batches_drawn"] > first.state["oracle"]["batches_drawn"]


def test_batch_size_validation(fake_cache):
    with pytest.raises(ValueError, match=r"batch_size must be an integer in \[1, 40\], got 41"):
        M.make_mnist_problem("mnist-mlp", batch_size=41, data_dir=fake_cache)
    with pytest.raises(ValueError, match=r"names batch size 8 but batch_size=9"):
        M.make_mnist_problem("mnist-mlp-b8", batch_size=9, data_dir=fake_cache)
    with pytest.raises(ValueError, match="curvature_batch_size must be an integer in"):
        M.make_mnist_problem("mnist-mlp-b8", curvature_batch_size=9, data_dir=fake_cache)
    with pytest.raises(ValueError, match="needs a batch_size"):
        M.make_mnist_problem("mnist-mlp", curvature_batch_size=4, data_dir=fake_cache)


def test_weighted_sum_and_chunking_equal_the_whole():
    gen = torch.Generator().manual_seed(0)
    X, y = torch.randn(23, 4, generator=gen, dtype=F64), torch.randint(0, 3, (23,), generator=gen)
    whole = MLPOracle((4, 5, 3), "sigmoid", X, y, F64)
    parts = chunked_oracle(lambda a, b: MLPOracle((4, 5, 3), "sigmoid", X[a:b], y[a:b], F64), 23, 7)
    assert [o.n for o in parts.parts] == [7, 7, 7, 2] and sum(parts.weights) == pytest.approx(1)
    w = torch.randn(whole.dim, generator=gen, dtype=F64)
    V = torch.randn(whole.dim, 3, generator=gen, dtype=F64)
    assert rel(parts.loss_and_grad(w)[1], whole.loss_and_grad(w)[1]) < 1e-13
    assert rel(parts.hvps(w, V), whole.hvps(w, V)) < 1e-13
    assert rel(parts.grads(w[:, None] + V), whole.grads(w[:, None] + V)) < 1e-13
    assert abs(float(parts.loss(w) - whole.loss(w))) < 1e-14
    assert chunked_oracle(lambda a, b: whole, 23, None) is whole


@pytest.mark.slow
def test_real_mnist_problems_if_cached():
    from sqn_ray.data import verify

    if set(verify("mnist").values()) != {"ok"}:
        pytest.skip("MNIST is not in the cache (sqn-ray data fetch mnist)")
    M._arrays.cache_clear()
    p = M.make_mnist_problem("mnist-mlp", dtype=torch.float32)
    assert (p.n_samples, p.dim) == (60_000, 79_510)
    w = p.init(0)
    assert 0.05 < p.accuracy(w) < 0.2 and 0.05 < p.test_accuracy(w) < 0.2  # chance level at the start
    assert abs(p.test_loss(w) - float(p.oracle.loss(w))) < 0.1


@pytest.fixture
def fake_fashion_cache(monkeypatch, tmp_path):
    """A fake Fashion-MNIST in a cache folder named by SQN_RAY_DATA, as `sqn-ray data fetch` would leave it."""
    write_fake_dataset(monkeypatch, tmp_path, "fashion-mnist", seed=5)
    monkeypatch.setenv("SQN_RAY_DATA", str(tmp_path))
    M._arrays.cache_clear()
    yield tmp_path
    M._arrays.cache_clear()


def test_fashion_mnist_problems_work_in_studies_and_are_listed(fake_fashion_cache, capsys):
    import sqn_ray
    from sqn_ray.cli import main
    from sqn_ray.problems import FASHION_MNIST_PROBLEMS, PROBLEMS, get_problem
    from sqn_ray.study.spec import parse_study

    assert set(FASHION_MNIST_PROBLEMS) <= set(PROBLEMS)
    study = parse_study({"problems": ["fashion-mnist-mlp", "fashion-mnist-cnn-b1000"],
                         "methods": {"s-lsr1": {"memory": 4}}},
                        source="fashion.yaml")
    assert study.problems == ("fashion-mnist-mlp", "fashion-mnist-cnn-b1000")
    for name in ("fashion-mnist-mlp", "fashion-mnist-cnn"):  # what a trial builds, then runs
        problem = get_problem(name, dtype=torch.float32)
        assert problem.n_samples == N_TRAIN and problem.dim == (79_510 if name.endswith("mlp") else 5_994)
        res = sqn_ray.minimize(problem.oracle, problem.init(0), "s-lsr1", memory=4, max_iters=3, seed=0)
        assert len(res.history) == 4 and np.isfinite(res.history.loss).all()
    assert main(["problems"]) == 0
    listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "d = 79510" in listed["fashion-mnist-mlp"] and "d = 5994" in listed["fashion-mnist-cnn"]
    # the -b1000 problems need 1,000 training points: the fake set has 40, and the listing says why, in a line
    assert ("cannot be built here: batch_size must be an integer in [1, 40], got 1000"
            in listed["fashion-mnist-mlp-b1000"])
