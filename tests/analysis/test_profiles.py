"""Performance and data profiles: hand-computed examples, invariances, and the study's own results."""
import math

import numpy as np
import pandas as pd
import pytest

from analysis import profiles


def _costs():
    index = pd.MultiIndex.from_tuples([("p", 0), ("p", 1), ("q", 0), ("q", 1)], names=["problem", "seed"])
    return pd.DataFrame({"A": [1.0, 2.0, 4.0, math.inf], "B": [2.0, 2.0, 1.0, math.inf], "C": [4.0, 1.0, math.inf,
                                                                                            math.inf]}, index=index)


def test_performance_profile_matches_the_hand_computation():
    prof = profiles.performance_profile(_costs(), taus=np.array([1.0, 2.0, 4.0, 100.0]))
    got = prof.pivot(index="tau", columns="solver", values="fraction")
    # ratios: A [1, 2, 4, inf], B [2, 2, 1, inf], C [4, 1, inf, inf]; the 4th instance nobody solves
    assert got.loc[1.0].to_dict() == {"A": 0.25, "B": 0.25, "C": 0.25}
    assert got.loc[2.0].to_dict() == {"A": 0.5, "B": 0.75, "C": 0.25}
    assert got.loc[100.0].to_dict() == {"A": 0.75, "B": 0.75, "C": 0.5}


def test_profiles_are_invariant_to_the_cost_unit_and_monotone():
    costs = _costs()
    a = profiles.performance_profile(costs)
    b = profiles.performance_profile(costs * 37.0)
    pd.testing.assert_frame_equal(a, b)
    for _, g in a.groupby("solver"):
        assert g.fraction.is_monotonic_increasing
    d = profiles.data_profile(costs)
    assert d.groupby("solver").fraction.max().to_dict() == {"A": 0.75, "B": 0.75, "C": 0.5}


def test_data_profile_budget_in_units_of_d_plus_one():
    costs = _costs()
    d = profiles.data_profile(costs, kappas=np.array([0.5, 1.0]), dims={"p": 1, "q": 3})
    got = d.pivot(index="kappa", columns="solver", values="fraction")
    # A/(d+1): [0.5, 1.0, 1.0, inf]
    assert got.loc[0.5, "A"] == 0.25 and got.loc[1.0, "A"] == 0.75


def test_profiles_of_a_real_study(study_dir):
    from analysis import load_results

    study = load_results(study_dir)
    costs = profiles.instance_costs(study, "iterations")
    assert set(costs.columns) <= set(study.configs) and costs.index.names == ["problem", "seed"]
    solved = study.trials.groupby(["problem", "seed", "config"]).solved.any().unstack()
    assert (np.isfinite(costs) == solved[costs.columns].fillna(False)).all().all()
    tol = profiles.instance_costs(study, "grad_equivalents", test=0.5)
    assert np.isfinite(tol.to_numpy()).any()
    fig = profiles.plot(study)
    assert len(fig.axes) == 4
    with pytest.raises(ValueError, match="cost='flops' is not one of"):
        profiles.instance_costs(study, "flops")
    with pytest.raises(ValueError, match="is not 'target' or a number in"):
        profiles.instance_costs(study, "iterations", test=1.5)
