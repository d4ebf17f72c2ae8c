"""The cost claim as measured ratios at equal m (analysis.costs): hand-computed values on the synthetic tuned
study (every trial of a method costs the same per iteration) and on the real test study's Parquet."""
import dataclasses

import pandas as pd
import pytest

from analysis import costs as C
from analysis.load import load_results
from tuned_study import TUNED_COST


@pytest.fixture(scope="module")
def tuned(tuned_dir):
    return load_results(tuned_dir)


def test_ratios_at_equal_m_match_the_hand_computation(tuned):
    table = C.cost_ratios(tuned.comparison())
    assert list(table.columns) == C.COLUMNS
    assert list(zip(table["problem"], table["pair"], table["Option"], table["m"])) == [
        ("toy-small", "S-LSR1 / LSR1", "Option II (hvp)", 8), ("toy-medium", "S-LSR1 / LSR1", "Option II (hvp)", 8)]
    r = table.iloc[0]
    assert r["trials (sampled)"] == r["trials (classical)"] == 10 and r["device"] == "cpu"
    s, c = TUNED_COST["s-lsr1"], TUNED_COST["lsr1"]
    # per iteration: 4 ms vs 1 ms; S-LSR1 accepts 3 of its 4 steps, LSR1 all 4
    assert r["ms / iteration, sampled"] == pytest.approx(1e3 * s["dt"])
    assert r["ms / iteration, classical"] == pytest.approx(1e3 * c["dt"])
    assert r["ratio / iteration"] == pytest.approx(4.0)
    assert r["ms / accepted step, sampled"] == pytest.approx(1e3 * 4 * s["dt"] / 3)
    assert r["ratio / accepted step"] == pytest.approx(16 / 3)
    # gradient-equivalents: 1 gradient + 8 HVPs = 9 vs 1 gradient + ½ loss = 1.5
    assert r["grad-eq / iteration, sampled"] == pytest.approx(9.0)
    assert r["grad-eq / iteration, classical"] == pytest.approx(1.5)
    assert r["grad-eq ratio / iteration"] == pytest.approx(6.0)
    assert r["grad-eq ratio / accepted step"] == pytest.approx(8.0)  # 9·4/3 vs 1.5
    assert (r["κ, sampled"], r["κ, classical"]) == (3, 2)
    # the poster: S-LSR1 nd + mnd + nd + κ_tr·md vs LSR1 nd + nd + κ_tr·md at n = 100, d = 36, m = 8
    n, d, m = 100, 36, 8
    assert (r["n"], r["d"]) == (n, d)
    assert r["poster's model ratio"] == pytest.approx((2 * n * d + m * n * d + 3 * m * d) / (2 * n * d + 2 * m * d))
    assert r["projected poster's model ratio (mnd → nd)"] == pytest.approx(
        (2 * n * d + n * d + 3 * m * d) / (2 * n * d + 2 * m * d))
    # the projection: t_pairs / m, the rest of the iteration as measured: 4 − 2·(1 − 1/8) = 2.25 ms vs 1 ms
    assert r["projected ratio / iteration (t_pairs / m)"] == pytest.approx(
        (s["dt"] - s["t_pairs"] * (1 - 1 / m)) / c["dt"]) == pytest.approx(2.25)
    assert r["projected ratio / accepted step (t_pairs / m)"] == pytest.approx(2.25 * 4 / 3)


def test_the_ratios_are_of_medians_over_trials_and_pair_equal_m_only(tuned):
    study = tuned.comparison()
    it = study.iterations.copy()
    slow = it["method"].eq("lsr1") & it["seed"].isin([0, 1, 2])  # 3 of 10 LSR1 trials 10× slower: not the median
    it.loc[slow, "wall_time"] *= 10
    r = C.cost_ratios(dataclasses.replace(study, iterations=it)).iloc[0]
    assert r["ms / iteration, classical"] == pytest.approx(1.0) and r["ratio / iteration"] == pytest.approx(4.0)
    # every stage: the tuning trials ran m = 4, 8, 16 (LSR1) and Option I at m = 8, Option II at m = 4, 8 (S-LSR1)
    pooled = C.cost_ratios(tuned)
    small = pooled[pooled["problem"] == "toy-small"]
    assert list(zip(small["Option"], small["m"])) == [("Option I (grad-diff)", 8), ("Option II (hvp)", 4),
                                                     ("Option II (hvp)", 8)]
    assert 16 not in set(pooled["m"])  # LSR1 at m = 16 has no sampled twin
    assert small.set_index("m").loc[4, "trials (sampled)"] == 2
    assert C.cost_ratios(tuned.of(["s-lsr1"])).empty  # no twin, no ratio


@pytest.mark.slow
def test_ratios_on_the_real_study_are_those_of_its_parquet(study_dir):
    study = load_results(study_dir)
    (row,) = C.cost_ratios(study).itertuples(index=False)  # S-LBFGS / LBFGS at m = 6, Option II; no LSR1 ran
    row = dict(zip(C.COLUMNS, row))
    assert (row["pair"], row["Option"], row["m"]) == ("S-LBFGS / LBFGS", "Option II (hvp)", 6)
    it = pd.read_parquet(study_dir / "iterations.parquet").sort_values(["trial_id", "iteration"])

    def per_trial(method):
        t = it[it["method"] == method]
        g = t.groupby("trial_id")
        steps = t[t["iteration"] >= 1]
        return pd.DataFrame({"s": g["wall_time"].last() - g["wall_time"].first(),
                             "ge": g["grad_equivalents"].last() - g["grad_equivalents"].first(),
                             "t_pairs": steps.groupby("trial_id")["t_pairs"].sum(),
                             "iterations": steps.groupby("trial_id").size(),
                             "accepted": steps.groupby("trial_id")["accepted"].sum()})

    s, c = per_trial("s-lbfgs"), per_trial("lbfgs")
    assert row["ratio / iteration"] == pytest.approx((s.s / s.iterations).median() / (c.s / c.iterations).median())
    assert row["ratio / accepted step"] == pytest.approx((s.s / s.accepted).median() / (c.s / c.accepted).median())
    assert row["grad-eq ratio / iteration"] == pytest.approx(
        (s["ge"] / s.iterations).median() / (c["ge"] / c.iterations).median())
    projected = (s.s - s.t_pairs * (1 - 1 / 6)) / s.iterations
    assert row["projected ratio / iteration (t_pairs / m)"] == pytest.approx(
        projected.median() / (c.s / c.iterations).median())
    assert row["projected ratio / iteration (t_pairs / m)"] < row["ratio / iteration"]


@pytest.mark.slow
def test_the_report_states_the_measured_ratios_and_labels_the_projection(tuned_report):
    from analysis.report import TABLE_TITLES

    rep = tuned_report
    assert rep.errors == {} and len(rep.tables["cost_ratios"]) == 2
    assert (rep.out_dir / "tables" / "cost_ratios.csv").is_file()
    page = rep.path.read_text(encoding="utf-8")
    assert "projection (not a measurement)" in TABLE_TITLES["cost_ratios"] and "projection (not a measurement)" in page
    (claim, _) = [f for f in rep.findings if f.topic.startswith("Cost claim")]
    assert claim.text.startswith("S-LSR1 / LSR1 at m = 8, Option II (hvp), measured on cpu: 4× the wall time per "
                                 "iteration (4 vs 1 ms) and 5.33× per accepted step (5.33 vs 1 ms); 6× the "
                                 "gradient-equivalents per iteration (9 vs 1.5); the poster's model gives 4.74×; "
                                 "projected, not measured, with the 8 pair products ideally parallel")
    assert "Comparable (within 2× per iteration): no as measured, no as projected." in claim.text


def test_a_pair_never_run_at_a_common_m_is_said_so(tuned):
    from analysis.findings import findings

    study = tuned.comparison()
    trials = study.trials.assign(memory=study.trials["memory"].where(study.trials["method"] != "lsr1", 4))
    other = dataclasses.replace(study, trials=trials)
    assert C.cost_ratios(other).empty
    (claim,) = [f for f in findings(other) if f.topic.startswith("Cost claim")]
    assert claim.text.startswith("s-lsr1 ran at m = 8 and lsr1 at m = 4 only: no ratio at equal m here")
