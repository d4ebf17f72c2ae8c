"""Method state as a value: a run saved after iteration k and continued (in this process or a fresh one) is the
unsplit run, bit for bit; the components hold no iteration state; the restart policy and the reuse of an
evaluated trial point are explicit."""
from __future__ import annotations

import io
import math
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch

import sqn_ray
from sqn_ray import SQNOptimizer, minimize
from sqn_ray.curvature.models import DirectionModel, LBFGSInverse, QuadraticModel
from sqn_ray.curvature.sources import PairSource, PathPairs
from sqn_ray.objective import Objective
from sqn_ray.optim.methods import LineSearchMethod, State, StepMethod
from sqn_ray.optim.registry import get_method, methods_of, validate_options
from sqn_ray.problems import get_problem

STEP_METHODS = tuple(m for m in sqn_ray.METHODS if m not in methods_of("external anchor"))
# every option that changes what a method remembers or draws, besides the defaults
VARIANTS = [(m, {}) for m in STEP_METHODS] + [
    ("s-lsr1", {"sampling": "grad-diff", "memory": 3}), ("s-lbfgs", {"sampling": "grad-diff", "trial_step": "unit"}),
    ("s-lbfgs", {"first_step": "sampled", "normalize_directions": True}), ("lbfgs", {"memory": 2}),
    ("s-lsr1", {"tr_solver": "exact", "b0": "gamma"}),
]
TIMING = ("wall_time", "t_pairs", "t_model", "t_search", "t_grad")


def _comparable(history: pd.DataFrame) -> pd.DataFrame:
    return history.drop(columns=[c for c in TIMING if c in history]).reset_index(drop=True)


def _through_torch_save(value):
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # plain tensors and numbers only: no pickled objects


@pytest.fixture(scope="module")
def toy():
    return get_problem("toy-small")


def test_step_methods_are_every_registered_method_but_the_anchors():
    assert set(STEP_METHODS) == {"s-lsr1", "s-lbfgs", "lsr1", "lbfgs", "sr1", "bfgs", "newton-tr", "gd", "adam"}


@pytest.mark.parametrize("method, options", VARIANTS, ids=[f"{m}{o or ''}" for m, o in VARIANTS])
def test_a_run_split_at_any_iteration_is_the_unsplit_run_bit_for_bit(toy, method, options):
    total = 30
    whole = minimize(toy.oracle, toy.init(1), method, max_iters=total, seed=4, **options)
    assert whole.status == "max_iters"
    for k in (0, 1, 9, 22):
        first = minimize(toy.oracle, toy.init(1), method, max_iters=k, seed=4, **options)
        state = _through_torch_save(first.state)
        rest = minimize(toy.oracle, None, max_iters=total, state=state)  # method and options from the state
        assert rest.method == method and rest.status == whole.status
        joined = pd.concat([first.history, rest.history], ignore_index=True)
        pd.testing.assert_frame_equal(_comparable(joined[whole.history.columns]), _comparable(whole.history))
        assert torch.equal(rest.x, whole.x) and rest.loss == whole.loss
        assert rest.state["counters"] == whole.state["counters"]
        # the continued run's wall-time axis goes on from the saved one
        assert rest.history.wall_time.iloc[0] >= first.history.wall_time.iloc[-1]


CHECKPOINTED = [("s-lsr1", {}), ("s-lbfgs", {}), ("bfgs", {}), ("adam", {}), VARIANTS[len(STEP_METHODS)]]


@pytest.mark.parametrize("method, options", CHECKPOINTED, ids=[f"{m}{o or ''}" for m, o in CHECKPOINTED])
def test_a_checkpoint_taken_mid_run_continues_as_the_uninterrupted_run(toy, method, options):
    """The callback's save_state (what a trial checkpoints) at iteration k is the state a run stopped at k
    returns: continuing from it gives the uninterrupted run's iterates k+1... bit for bit."""
    snapshots = {}

    def callback(x, record, save_state=None):
        if record["iteration"] in (0, 9):
            snapshots[record["iteration"]] = _through_torch_save(save_state())

    whole = minimize(toy.oracle, toy.init(2), method, max_iters=15, seed=3, callback=callback, **options)
    assert sorted(snapshots) == [0, 9]
    for k, state in snapshots.items():
        rest = minimize(toy.oracle, None, max_iters=15, state=state)
        pd.testing.assert_frame_equal(_comparable(rest.history),
                                      _comparable(whole.history[whole.history.iteration > k]))
        assert torch.equal(rest.x, whole.x) and rest.state["counters"] == whole.state["counters"]


def test_callbacks_without_save_state_are_called_as_before(toy):
    seen = []
    minimize(toy.oracle, toy.init(0), "s-lsr1", max_iters=2,
             callback=lambda x, record: seen.append(record["iteration"]))
    assert seen == [0, 1, 2]


def test_continuing_from_the_same_state_twice_gives_the_same_run(toy):
    """The generator's state travels in the state value: an older state, not only the newest, continues exactly
    (warm starts from one checkpoint give one trajectory)."""
    first = minimize(toy.oracle, toy.init(0), "s-lsr1", max_iters=5, seed=2)
    a = minimize(toy.oracle, None, max_iters=12, state=first.state)
    b = minimize(toy.oracle, None, max_iters=12, state=first.state)
    pd.testing.assert_frame_equal(_comparable(a.history), _comparable(b.history))


def test_a_step_returns_a_new_state_and_leaves_the_old_one_alone(toy):
    runner = get_method("lbfgs").build(validate_options("lbfgs", memory=3), None)
    objective = Objective(toy.oracle)
    state = runner.start(objective, toy.init(0))
    for _ in range(4):
        state = runner.advance(objective, state).state
    before = (state.w.clone(), state.memo["source"]["s"], state.iteration, state.step_size)
    step = runner.advance(objective, state)
    assert step.state is not state and step.state.iteration == state.iteration + 1
    assert torch.equal(state.w, before[0]) and state.memo["source"]["s"] is before[1]
    assert (state.iteration, state.step_size) == before[2:]
    assert len(step.state.memo["source"]["s"]) == 3  # the window of m = 3 path pairs, oldest dropped


def test_options_given_when_continuing_replace_the_saved_ones(toy):
    first = minimize(toy.oracle, toy.init(0), "s-lsr1", max_iters=4, seed=1, memory=3)
    more = minimize(toy.oracle, None, max_iters=8, state=first.state, memory=5)
    assert more.options["memory"] == 5 and more.options["seed"] == 1
    assert (more.history.n_hvp.diff().dropna() == 5).all()


def test_bad_states_are_refused_before_any_work(toy):
    first = minimize(toy.oracle, toy.init(0), "lbfgs", max_iters=3)
    with pytest.raises(ValueError, match="saved by method 'lbfgs'; it cannot continue as 's-lsr1'"):
        minimize(toy.oracle, None, "s-lsr1", state=first.state)
    with pytest.raises(ValueError, match="w0 differs from the iterate the state was saved at"):
        minimize(toy.oracle, toy.init(1), state=first.state)
    with pytest.raises(ValueError, match="state must be MinimizeResult.state"):
        minimize(toy.oracle, None, state={"w": first.x})
    big = get_problem("toy-medium")
    with pytest.raises(ValueError, match="dimension"):
        minimize(big.oracle, None, state=first.state)
    assert minimize(toy.oracle, toy.init(0), "lbfgs", max_iters=3).state["step"]["iteration"] == 3


@pytest.mark.parametrize("anchor", methods_of("external anchor"))
def test_the_external_anchors_have_no_state_to_continue(toy, anchor):
    pytest.importorskip("scipy")
    res = minimize(toy.oracle, toy.init(0), anchor, max_iters=2)
    assert res.state is None
    fake = minimize(toy.oracle, toy.init(0), "lbfgs", max_iters=1).state
    with pytest.raises(ValueError, match="drives its own loop"):
        minimize(toy.oracle, None, state={**fake, "method": anchor, "options": {}})


def test_components_declare_the_protocols_they_play():
    for method in STEP_METHODS:
        runner = get_method(method).build(validate_options(method), None)
        assert isinstance(runner, StepMethod)
        if hasattr(runner, "source"):
            assert isinstance(runner.source, PairSource)
            protocol = DirectionModel if isinstance(runner, LineSearchMethod) else QuadraticModel
            assert isinstance(runner.model, protocol), (method, runner.model)
            assert not any(torch.is_tensor(v) for v in vars(runner.model).values())  # nothing remembered there


class _StalledLine:
    """F(w) = ‖w‖² seen through a line search whose smallest allowed step is too long to accept."""

    dim, dtype, device = 2, torch.float64, torch.device("cpu")

    def loss(self, w):
        return (w * w).sum()

    def loss_and_grad(self, w):
        return (w * w).sum(), 2 * w

    def hvps(self, w, V):
        return 2 * V

    def grads(self, W):
        return 2 * W


@pytest.mark.parametrize("on_failure, expect", [("restart", "stalled"), ("retry", "max_iters")])
def test_the_restart_policy_after_a_failed_search_is_an_explicit_option(on_failure, expect):
    method = LineSearchMethod(source=PathPairs(memory=3), model=LBFGSInverse(), min_step=10.0, on_failure=on_failure)
    objective = Objective(_StalledLine())
    emitted = []
    outcome = method.run(objective, torch.tensor([1.0, -2.0], dtype=torch.float64), 5, 0.0,
                         lambda w, f, g, fields, **_: emitted.append(fields) and None)
    assert outcome.status == expect
    assert all(not f["accepted"] for f in emitted[1:]) and "stalled" not in emitted[-1]
    assert len(emitted) == (2 if expect == "stalled" else 6)
    with pytest.raises(ValueError, match="on_failure='forget' is not one of"):
        LineSearchMethod(source=PathPairs(memory=3), model=LBFGSInverse(), on_failure="forget")


class _PointSpy(_StalledLine):
    def __init__(self):
        self.loss_points, self.grad_points = [], []

    def loss(self, w):
        self.loss_points.append(w)
        return super().loss(w)

    def loss_and_grad(self, w):
        self.grad_points.append(w)
        return super().loss_and_grad(w)


@pytest.mark.parametrize("method", ["lbfgs", "lsr1"])
def test_an_accepted_trial_point_is_completed_at_the_very_tensor_that_was_evaluated(method):
    """Oracles that cache their last forward pass recognise the point by identity: the globalization hands the
    evaluated tensor back (TrialPoint), so the gradient at an accepted point never re-does the forward pass."""
    spy = _PointSpy()
    minimize(spy, torch.tensor([1.0, -2.0], dtype=torch.float64), method, max_iters=3)
    accepted = spy.grad_points[1:]
    assert accepted and all(any(p is q for q in spy.loss_points) for p in accepted)


def test_state_round_trip_keeps_every_field(toy):
    runner = get_method("s-lsr1").build(validate_options("s-lsr1", seed=3), None)
    objective = Objective(toy.oracle)
    state = runner.advance(objective, runner.start(objective, toy.init(0))).state
    back = runner.restore_state(_through_torch_save(runner.export_state(state)), objective)
    assert isinstance(back, State)
    assert torch.equal(back.w, state.w) and torch.equal(back.g, state.g) and torch.equal(back.rng, state.rng)
    assert (back.f, back.iteration, back.trust_radius, back.step_size) == (state.f, 1, state.trust_radius, None)
    other = get_method("lbfgs").build(validate_options("lbfgs"), None)
    with pytest.raises(ValueError, match="saved by a TrustRegionMethod method, not by LineSearchMethod"):
        other.restore_state(runner.export_state(state))


# -- the torch.optim adapter ---------------------------------------------------------------------------------
ADAPTER_SCRIPT = textwrap.dedent("""
    import sys, torch
    from sqn_ray import SQNOptimizer
    sys.path.insert(0, {here!r})
    from test_method_state import adapter_problem
    saved = torch.load(sys.argv[1], weights_only=True)
    out = {{}}
    for method, blob in saved.items():
        net, closure = adapter_problem()
        net.load_state_dict(blob["model"])
        opt = SQNOptimizer(net.parameters(), method=method)  # the saved options replace these
        opt.load_state_dict(blob["optimizer"])
        for _ in range(6):
            opt.step(closure)
        out[method] = opt.history.drop(columns=[c for c in {timing!r} if c in opt.history]).to_dict("list")
    torch.save(out, sys.argv[2])
""")


def adapter_problem():
    """A small net, data and closure, the same in every process."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).double()
    gen = torch.Generator().manual_seed(1)
    X, y = torch.randn(30, 3, dtype=torch.float64, generator=gen), torch.randint(0, 2, (30,), generator=gen)
    return net, (lambda: torch.nn.functional.cross_entropy(net(X), y))


def test_an_optimizer_restored_in_a_fresh_process_continues_exactly(tmp_path):
    saved, expected = {}, {}
    for method in STEP_METHODS:
        net, closure = adapter_problem()
        opt = SQNOptimizer(net.parameters(), method=method, seed=5, hvp_backend="loop")
        for _ in range(10):
            opt.step(closure)
        expected[method] = _comparable(opt.history)
        net, closure = adapter_problem()
        opt = SQNOptimizer(net.parameters(), method=method, seed=5, hvp_backend="loop")
        for _ in range(4):
            opt.step(closure)
        saved[method] = {"model": net.state_dict(), "optimizer": opt.state_dict()}
    torch.save(saved, tmp_path / "saved.pt")
    script = tmp_path / "continue.py"
    script.write_text(ADAPTER_SCRIPT.format(here=str(__import__("pathlib").Path(__file__).parent), timing=TIMING))
    subprocess.run([sys.executable, str(script), str(tmp_path / "saved.pt"), str(tmp_path / "out.pt")],
                   check=True, capture_output=True, timeout=300)
    continued = torch.load(tmp_path / "out.pt", weights_only=True)
    for method in STEP_METHODS:
        got = pd.DataFrame(continued[method])[expected[method].columns]
        pd.testing.assert_frame_equal(got, expected[method], check_dtype=False, obj=method)


def test_the_adapter_history_is_a_dataframe_like_minimize(toy):
    net, closure = adapter_problem()
    opt = SQNOptimizer(net.parameters(), method="s-lbfgs", memory=3)
    assert isinstance(opt.history, pd.DataFrame) and len(opt.history) == 0
    for _ in range(3):
        opt.step(closure)
    reference = minimize(toy.oracle, toy.init(0), "s-lbfgs", max_iters=2, memory=3)
    assert list(opt.history.columns) == list(reference.history.columns)
    assert opt.history.iteration.tolist() == [0, 1, 2, 3] and len(opt.records) == 4
    assert opt.stop is None and math.isfinite(opt.history.loss.iloc[-1])


def test_loading_another_methods_state_dict_is_refused():
    net, closure = adapter_problem()
    opt = SQNOptimizer(net.parameters(), method="lbfgs")
    opt.step(closure)
    other = SQNOptimizer(net.parameters(), method="s-lsr1")
    with pytest.raises(ValueError, match="saved by method 'lbfgs'; this optimizer runs 's-lsr1'"):
        other.load_state_dict(opt.state_dict())
    with pytest.raises(ValueError, match="not an SQNOptimizer state_dict"):
        other.load_state_dict(torch.optim.SGD(net.parameters(), lr=0.1).state_dict())
